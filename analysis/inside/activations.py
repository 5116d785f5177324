"""Inside the network: filters, activation maps, and the gradient of one neuron or
channel of an intermediate layer (plain or guided backprop, CS231n lecture 12)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import capture, get_module
from analysis.core.layers import layer_layout, layer_table
from analysis.core.layout import to_nchw
from analysis.core.models.bundle import ModelBundle
from analysis.core.sanity import constant_warning

# ------------------------------------------------------------------------------- filters

@dataclass
class Filters:
    layer: str
    weight: np.ndarray          # (out, in, kh, kw) float32
    norms: np.ndarray           # (out,) L2 norm of each filter

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def is_rgb(self) -> bool:
        return self.weight.shape[1] == 3

    def order(self, by: str = "index") -> np.ndarray:
        """Filter indices in display order: "index" or "norm" (largest first).

        Args:
            by: "index" or "norm"; else ``ParameterError``.
        """
        if by == "index":
            return np.arange(len(self.norms))
        if by == "norm":
            return np.argsort(-self.norms, kind="stable")
        raise ParameterError(f"Unknown filter order {by!r}; use 'index' or 'norm'.")

    def rgb_images(self) -> np.ndarray:
        """First-layer filters as colour images (out, kh, kw, 3) uint8, each normalised to
        its own range: mid-grey is zero, so positive and negative weights both show."""
        if not self.is_rgb:
            raise ParameterError(f"{self.layer} has {self.weight.shape[1]} input channels; colour images need 3.")
        w = self.weight.transpose(0, 2, 3, 1)
        scale = np.abs(w).reshape(len(w), -1).max(1).reshape(-1, 1, 1, 1)
        return ((w / np.maximum(scale, 1e-12) * 0.5 + 0.5) * 255 + 0.5).clip(0, 255).astype(np.uint8)

    def slices(self, out_channel: int) -> np.ndarray:
        """One filter's per-input-channel kernels (in, kh, kw) as grey uint8, normalised together.

        Args:
            out_channel: the filter's index (output channel), 0 to the filter count - 1.
        """
        if not 0 <= out_channel < self.weight.shape[0]:
            raise ParameterError(f"Filter {out_channel} does not exist ({self.weight.shape[0]} filters).")
        w = self.weight[out_channel]
        scale = max(float(np.abs(w).max()), 1e-12)
        return ((w / scale * 0.5 + 0.5) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def conv_layers(bundle: ModelBundle) -> list[str]:
    """Conv2d layers in forward order (the first is the one the lecture visualises).

    Args:
        bundle: the model (its layer table's dry forward gives the order).
    """
    infos = [i for i in layer_table(bundle) if i.type in ("Conv2d", "Conv2dSame") or i.is_conv]
    infos = [i for i in infos if isinstance(bundle.model.get_submodule(i.name), nn.Conv2d) and i.calls > 0]
    return [i.name for i in sorted(infos, key=lambda i: i.finish_order)]


def filters(bundle: ModelBundle, layer: str | None = None) -> Filters:
    """Weights of a conv layer (default: the first conv layer of the forward pass).

    Args:
        bundle: the model.
        layer: qualified name of a ``nn.Conv2d``; None for the first one run.
    """
    names = conv_layers(bundle)
    if not names:
        raise LayerError("The model has no Conv2d layer.")
    layer = layer or names[0]
    module = get_module(bundle.model, layer)
    if not isinstance(module, nn.Conv2d):
        raise LayerError(f"{layer} is a {type(module).__name__}, not a Conv2d layer.")
    w = module.weight.detach().float().cpu().contiguous().numpy()
    return Filters(layer, w, np.sqrt((w.reshape(len(w), -1) ** 2).sum(1)))


# ------------------------------------------------------------------------------- activations

@dataclass
class Activations:
    layer: str
    maps: np.ndarray            # (C, H, W) float32
    image: np.ndarray           # the model's input crop (RGB uint8)
    warnings: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.maps.shape[0]

    def channel_stats(self) -> dict[str, np.ndarray]:
        """Per-channel statistics of the maps: ``mean``, ``max`` and ``zero_fraction`` (share
        of positions ≤ 0), each a (C,) array.
        """
        flat = self.maps.reshape(self.channels, -1)
        return {"mean": flat.mean(1), "max": flat.max(1), "zero_fraction": (flat <= 0).mean(1)}

    def summary(self) -> dict[str, float]:
        """Whole-layer figures for the audit trail: channel count, map height and width, share
        of values ≤ 0, mean, max and min.
        """
        return {"channels": self.channels, "height": self.maps.shape[1], "width": self.maps.shape[2],
                "zero_fraction": float((self.maps <= 0).mean()), "mean": float(self.maps.mean()),
                "max": float(self.maps.max()), "min": float(self.maps.min())}

    def order(self, by: str = "mean") -> np.ndarray:
        """Channel indices sorted by "mean" or "max" activation (largest first) or "index"."""
        if by == "index":
            return np.arange(self.channels)
        stats = self.channel_stats()
        if by not in ("mean", "max"):
            raise ParameterError(f"Unknown order {by!r}; use 'mean', 'max' or 'index'.")
        return np.argsort(-stats[by], kind="stable")

    def upsampled(self, channel: int) -> np.ndarray:
        """One channel resized (bilinear) to the input crop, for overlays at the right scale."""
        t = torch.from_numpy(self.maps[channel][None, None])
        size = self.image.shape[:2]
        return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def activations(bundle: ModelBundle, image: np.ndarray, layer: str) -> Activations:
    """The output of ``layer`` for one RGB uint8 image (any map layer: channels-first,
    channels-last or patch tokens, always returned as (C, H, W); a token layer's class /
    register tokens are left out).

    Args:
        bundle: the model (held under ``bundle.lock`` for the forward).
        image: RGB uint8 (H, W, 3), cropped and normalised as the model's input.
        layer: the layer's qualified name; it must run in the forward.
    """
    crop = bundle.preprocess.geometry(image)
    x = bundle.preprocess.normalize(bundle.preprocess.to_unit(crop)).to(bundle.device)
    with bundle.lock, torch.inference_mode(), capture(bundle.model, [layer]) as acts:
        bundle.model(x)
    if layer not in acts:
        raise LayerError(f"{layer} did not run in the forward pass.")
    # Channels-last maps and patch tokens are read on their real channel axis.
    out = to_nchw(acts[layer], layer_layout(bundle, layer), layer)[0].float().cpu()
    w = constant_warning(out, f"The output of {layer}")
    return Activations(layer, out.contiguous().numpy(), crop, [w] if w else [])


# ------------------------------------------------------------------------------- neuron gradients

@dataclass
class NeuronGradient:
    layer: str
    channel: int
    position: tuple[int, int] | None     # None = the whole channel (its mean)
    guided: bool
    gradient: np.ndarray                 # (C_in, H, W) signed gradient w.r.t. the input
    image: np.ndarray                    # input crop
    activation: np.ndarray               # the channel's activation map (H', W')
    value: float                         # the objective's value (activation mean or neuron)
    warnings: list[str]

    def as_image(self) -> np.ndarray:
        """The gradient as an RGB image (Springenberg's display: scaled around mid-grey)."""
        g = self.gradient.transpose(1, 2, 0)
        if g.shape[2] == 1:
            g = np.repeat(g, 3, axis=2)
        g = g / max(float(np.abs(g).max()), 1e-12)
        return ((g * 0.5 + 0.5) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def neuron_gradient(bundle: ModelBundle, image: np.ndarray, layer: str, channel: int,
                    position: tuple[int, int] | None = None, guided: bool = True) -> NeuronGradient:
    """Gradient of one channel (mean over positions) or one neuron of ``layer`` w.r.t. the
    input pixels, through the guided copy of the model (guided=True) or the shared model.

    Args:
        bundle: the model; the guided path uses a guided copy, never the cached model.
        image: RGB uint8 (H, W, 3), cropped and normalised as the model's input.
        layer: the layer's qualified name.
        channel: channel index in the layer's channels-first output.
        position: (y, x) on the layer's map for one neuron; None for the channel mean.
        guided: guided backprop (only positive gradients through rectifiers) instead of the
            plain gradient.
    """
    from analysis.core.guided import guided_model
    crop = bundle.preprocess.geometry(image)
    x = bundle.preprocess.normalize(bundle.preprocess.to_unit(crop)).to(bundle.device)
    warnings: list[str] = []
    if guided:
        model, n_guided, n_functional = guided_model(bundle)
        if n_guided == 0:
            warnings.append("No ReLU-like modules: the guided gradient equals the plain one here.")
        if n_functional:
            warnings.append(f"{n_functional} functional rectifier call(s) cannot be guided.")
    else:
        model = bundle.model
    get_module(model, layer)
    layout = layer_layout(bundle, layer)
    xg = x.detach().clone().requires_grad_(True)
    with bundle.lock, torch.enable_grad(), capture(model, [layer], detach=False) as acts:
        model(xg)
        if layer not in acts:
            raise LayerError(f"{layer} did not run in the forward pass.")
        out = to_nchw(acts[layer], layout, layer)      # differentiable view on the real channel axis
        if not 0 <= channel < out.shape[1]:
            raise ParameterError(f"Channel {channel} does not exist ({out.shape[1]} channels in {layer}).")
        if position is None:
            objective = out[0, channel].mean()
        else:
            y, xpos = position
            if not (0 <= y < out.shape[2] and 0 <= xpos < out.shape[3]):
                raise ParameterError(f"Position {position} is outside the {out.shape[2]}x{out.shape[3]} map.")
            objective = out[0, channel, y, xpos]
        (g,) = torch.autograd.grad(objective, xg)
    w = constant_warning(g, "The gradient")
    if w:
        warnings.append(w + " The unit does not respond to small changes of the input here.")
    return NeuronGradient(layer, channel, position, guided, g[0].float().cpu().numpy(), crop,
                          out[0, channel].detach().float().cpu().numpy(), float(objective.detach()), warnings)
