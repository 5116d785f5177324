"""The layer table: every named module with its type, output shape, layout and warnings.

Shapes come from one dry forward with hooks on every module (inside ``capture``-style
try/finally); layouts (``nchw`` / ``nhwc`` / ``tokens`` / ``vector``) from the same forward
under ``analysis.core.layout.LayoutProbe``, which follows axis labels from the input
image, so a channels-last block's channels are its last axis, not its second. Warnings flag
what breaks gradient methods: modules reused within one forward (a hook sees several calls)
and in-place activations. The table is computed once per bundle (its model is frozen).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from analysis.core.errors import LayerError
from analysis.core.hooks import forward_hooks
from analysis.core.layout import OTHER, Layout, LayoutProbe, classify, shape_guess
from analysis.core.models.bundle import ModelBundle

_INPLACE_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Hardtanh,
                  nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Mish, nn.RReLU, nn.Threshold,
                  nn.Dropout, nn.Dropout2d, nn.AlphaDropout)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


@dataclass
class LayerInfo:
    name: str
    type: str
    output_shape: tuple | None          # without the batch dimension; None if never called
    parameters: int
    calls: int
    finish_order: int                   # when its (last) call finished in the dry forward; -1 never
    is_leaf: bool
    is_conv: bool
    warnings: list[str] = field(default_factory=list)
    layout: Layout = field(default_factory=lambda: shape_guess(None))
    layout_source: str = "shape"        # "probe": followed through the forward; "shape": guessed

    @property
    def spatial(self) -> bool:
        """Output is a feature map with channels and positions (channels-first,
        channels-last, or patch tokens on a grid)."""
        return self.output_shape is not None and self.layout.is_map \
            and self.layout.map_hw(self.output_shape) is not None

    @property
    def channels(self) -> int | None:
        """The real channel count (the last axis of a channels-last map or of tokens)."""
        return None if self.output_shape is None else self.layout.channels(self.output_shape)

    @property
    def map_hw(self) -> tuple[int, int] | None:
        """(H, W) of the feature map (the patch grid for tokens); None if not a map."""
        return None if self.output_shape is None else self.layout.map_hw(self.output_shape)

    def as_row(self) -> dict:
        """The layer as one row of the layer table on the page (name, type, output shape,
        layout, channels, parameters, calls per forward, warnings).
        """
        return {"layer": self.name or "(model)", "type": self.type,
                "output shape": "x".join(map(str, self.output_shape)) if self.output_shape else "-",
                "layout": str(self.layout), "channels": self.channels,
                "parameters": self.parameters, "calls per forward": self.calls,
                "warnings": "; ".join(self.warnings)}


_TABLES: "weakref.WeakKeyDictionary[ModelBundle, tuple]" = weakref.WeakKeyDictionary()


def layer_table(bundle: ModelBundle) -> list[LayerInfo]:
    """All named submodules of ``bundle``'s model in definition order, with output shapes
    and layouts from one dry forward of a zero image (computed once per bundle)."""
    key = (bundle.model_id, bundle.preprocess.spec_id, str(bundle.device))
    got = _TABLES.get(bundle)
    if got is not None and got[0] == key:
        return list(got[1])
    infos = _layer_table(bundle)
    _TABLES[bundle] = (key, infos)
    return list(infos)


def layer_layout(bundle: ModelBundle, layer: str) -> Layout:
    """The output layout of ``layer`` (LayerError for an unknown name).

    Args:
        bundle: the model (its cached layer table).
        layer: the layer's qualified name.
    """
    return check_layer(layer_table(bundle), layer).layout


def _layer_table(bundle: ModelBundle) -> list[LayerInfo]:
    model = bundle.model
    if isinstance(model, torch.jit.ScriptModule):
        # Hooks are not supported on ScriptModules: list the modules without shapes.
        return [LayerInfo(name=n, type=getattr(m, "original_name", type(m).__name__), output_shape=None,
                          parameters=sum(p.numel() for p in m.parameters()), calls=0, finish_order=-1,
                          is_leaf=len(list(m.children())) == 0, is_conv=False,
                          warnings=["TorchScript: no layer-level hooks"])
                for n, m in model.named_modules() if n]
    shapes: dict[str, tuple] = {}
    failed = ""
    layouts: dict[str, Layout] = {}
    calls: dict[str, int] = {}
    finished: dict[str, int] = {}
    x = torch.zeros(1, bundle.preprocess.channels, bundle.input_size, bundle.input_size,
                    device=bundle.device)

    def make_hook(_name: str):
        def hook(mod, inputs, output):
            calls[_name] = calls.get(_name, 0) + 1
            finished[_name] = len(finished) + sum(calls.values())
            out = output
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
                out = output[0]
            if isinstance(out, torch.Tensor):
                shapes[_name] = tuple(out.shape[1:])
                found = classify(probe.tag(out))
                inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                if found is None and inp is not None and inp.shape == out.shape:
                    # A module that keeps its input's shape (attention, MLP, norm)
                    # keeps its axes: the convention where the probe lost the labels.
                    found = classify(probe.tag(inp))
                if found is not None:
                    layouts[_name] = found
                else:
                    layouts.pop(_name, None)
        return hook

    probe = LayoutProbe(x)
    with bundle.lock, forward_hooks((module, make_hook(name)) for name, module in model.named_modules() if name):
        try:
            with torch.inference_mode(), probe:
                model(x)
        except Exception as exc:  # noqa: BLE001 - keep what ran; the layers after it say why
            failed = f"{type(exc).__name__}: {exc}"

    infos = []
    for name, module in model.named_modules():
        if name == "":
            continue
        n_calls = calls.get(name, 0)
        warnings = []
        if n_calls > 1:
            warnings.append(f"reused {n_calls}x in one forward: hooks see only the last call "
                            "and gradients mix all uses")
        if failed and n_calls == 0:
            warnings.append(f"not reached: the dry forward of a zero image failed ({failed[:200]})")
        if getattr(module, "inplace", False) and isinstance(module, _INPLACE_TYPES):
            warnings.append("in-place: gradient methods run it on a copy with inplace=False")
        is_leaf = len(list(module.children())) == 0
        shape = shapes.get(name)
        if name in layouts:
            layout, source = layouts[name], "probe"
        elif layouts:
            # The probe followed this model but lost this output (attention internals,
            # windows): no channel reading rather than a guess from the shape.
            layout, source = OTHER, "probe"
        else:
            layout, source = shape_guess(shape), "shape"
        if layout.kind == "tokens" and layout.prefix + layout.grid[0] * layout.grid[1] != shape[0]:
            layout, source = shape_guess(shape), "shape"
        if layout.kind == "nhwc":
            warnings.append("channels-last output (N, H, W, C): channels are read on the last axis")
        infos.append(LayerInfo(
            name=name, type=type(module).__name__, output_shape=shape,
            parameters=sum(p.numel() for p in module.parameters()), calls=n_calls,
            finish_order=finished.get(name, -1),
            is_leaf=is_leaf, is_conv=isinstance(module, CONV_TYPES), warnings=warnings,
            layout=layout, layout_source=source))
    return infos


def spatial_infos(infos: list[LayerInfo]) -> list[LayerInfo]:
    """The layers that ran and whose output is a feature map (C, H, W), in forward order.

    Args:
        infos: a layer table (``layer_table(bundle)``).
    """
    return [i for i in infos if i.spatial and i.calls > 0]


def spatial_layers(infos: list[LayerInfo]) -> list[str]:
    """Names of the layers that ran and whose output is a feature map (C, H, W), in forward order.

    Args:
        infos: a layer table (``layer_table(bundle)``).
    """
    return [i.name for i in spatial_infos(infos)]


_ADAPTIVE_POOLS = ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d")


def last_conv_block(infos: list[LayerInfo]) -> str:
    """The last layer (in execution order) whose output is a feature map larger than 1x1:
    Grad-CAM's usual target. A container finishes after its children, so this names the
    whole last block (resnet "layer4", vgg "features", EfficientNet-Lite "_relu_head").
    Adaptive pooling layers are skipped: they only resample the last map. On token models
    (ViT) it is the input of the last attention (e.g. ``blocks.11.norm1``).

    Args:
        infos: the model's layer table (``layer_table(bundle)``).
    """
    cands = [i for i in spatial_infos(infos) if i.map_hw[0] * i.map_hw[1] > 1
             and i.type not in _ADAPTIVE_POOLS]
    if not cands:
        raise LayerError("The model has no layer with a spatial feature map.")
    best = max(cands, key=lambda i: i.finish_order)
    if best.layout.kind == "tokens":
        # After the last attention only the class token reaches a class-token head: the
        # patch tokens' gradients are zero there. Use the input of the last attention (the
        # last block's first norm: pytorch-grad-cam's choice for ViTs).
        attn = [i for i in infos if "Attention" in i.type and i.calls > 0]
        if attn:
            last = max(attn, key=lambda i: i.finish_order)
            before = [i for i in cands if i.layout.kind == "tokens" and i.finish_order < last.finish_order
                      and not i.name.startswith(last.name + ".")]
            if before:
                best = max(before, key=lambda i: i.finish_order)
    return best.name


def check_layer(infos: list[LayerInfo], name: str) -> LayerInfo:
    """The row of ``name`` in a layer table, else LayerError.

    Args:
        infos: the layer table (``layer_table(bundle)``).
        name: the layer's module name.
    """
    for i in infos:
        if i.name == name:
            return i
    raise LayerError(f"The model has no layer named {name!r}.")


def block_layers(infos: list[LayerInfo]) -> list[str]:
    """Spatial layers at most one level deep (whole blocks such as "_blocks.10", "layer3.1",
    "features.4"), in forward order: sensible defaults for layer pickers.

    Args:
        infos: the model's layer table (``layer_table(bundle)``).
    """
    cands = [i for i in spatial_infos(infos) if i.name.count(".") <= 1
             and i.map_hw[0] * i.map_hw[1] > 1]
    return [i.name for i in sorted(cands, key=lambda i: i.finish_order)]


def default_layer(infos: list[LayerInfo], fraction: float = 0.5) -> str:
    """A block ``fraction`` of the way through the network (0 = first, 1 = last).

    Args:
        infos: the model's layer table (``layer_table(bundle)``).
        fraction: position in [0, 1] along the block layers (or the spatial layers when no
            block qualifies).
    """
    blocks = block_layers(infos) or spatial_layers(infos)
    if not blocks:
        raise LayerError("The model has no layer with a spatial feature map.")
    return blocks[min(len(blocks) - 1, int(round(fraction * (len(blocks) - 1))))]
