"""Textures and style by Gram matrices, on the optimisation engine (analysis/optimize.py).

A texture is the Gram matrices of a CNN's feature maps (Gatys, Ecker & Bethge 2015):
``G_l = F_l F_lᵀ / (H·W)``, the channel co-activations averaged over positions, blind to
where things are. Matching them from noise synthesises a new sample of the texture;
matching them while keeping another image's features at one deeper layer is style
transfer (Gatys et al. 2016). Both are sums of the engine's objectives:

    content_weight · feature_match(content_layer, F_content)
  + style_weight · Σ_l w_l · gram_match(l, G_style,l)
  - tv_weight · total_variation / (H·W)

each term relative to its target's energy (so 0 is a perfect match and the weights are
ratios of comparable numbers). Several style images mix as the weighted mean of their Gram
matrices. Colour preservation (Gatys et al. 2017, "Preserving color in neural artistic
style transfer"): transfer on luminance only — the style's luminance matched to the
content's mean and spread, a one-channel image optimised — then the content's chroma
(YIQ's I and Q) put back.

Everything is a generator like the engine's (``OptStep`` per step, ``OptResult`` at the
end), deterministic for a seed on CPU; the shared model is never changed (the engine
holds ``bundle.lock`` around each step's hooks, forward and backward).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import analysis.optimize as O
from analysis.core.errors import LayerError, ParameterError
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import is_int, is_real

MIN_SIDE, MAX_SIDE = 32, 2048

# ===================================================================== defaults


@dataclass(frozen=True)
class StyleDefaults:
    """Layers and weights that work for one feature extractor, with where they come from."""
    content_layer: str
    style_layers: dict                  # layer -> weight (style transfer)
    texture_layers: dict                # layer -> weight (texture synthesis, shallow -> deep)
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 0.0              # per pixel, 0-255 units (size independent)
    lr_lbfgs: float = 1.0
    lr_adam: float = 0.02
    pad: int = 0                        # reflection padding (px) before each forward
    source: str = ""

    def as_dict(self) -> dict:
        """The settings as a plain dict, one entry per field (for the UI and the run's params)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# EfficientNet-Lite0, found by experiment (docs/style.md): the ReLU6 activations inside the
# MBConv blocks. Block outputs are linear projections (no ReLU); their Gram matrices gave
# blotchy, rainbow-speckled textures and coloured seams. Style: the expanded activations
# (``_relu0``) at strides 2, 4, 8, 16 and 16, content at stride 16, style weight 10 (1 kept
# too little style, 30 smeared the content). Texture: one activation per resolution down
# to stride 32 (after the depthwise convolutions, ``_relu1``), which keeps larger
# structures than stopping at stride 16. No TV by default (1e-4 already softened the fur,
# 1e-3 blurred it); 8 px reflection padding against edge seams.
_R0 = "_blocks.{}._relu0".format
_R1 = "_blocks.{}._relu1".format
LITE0 = StyleDefaults(
    content_layer=_R0(5),
    style_layers={"_relu_stem": 1.0, _R0(1): 1.0, _R0(3): 1.0, _R0(5): 1.0, _R0(8): 1.0},
    texture_layers={_R1(0): 1.0, _R1(1): 1.0, _R1(3): 1.0, _R1(5): 1.0, _R1(11): 1.0},
    content_weight=1.0, style_weight=10.0, tv_weight=0.0, pad=8,
    source="EfficientNet-Lite0 defaults found by experiment in convlens (docs/style.md)")

# VGG (Gatys et al. 2015/2016): style relu1_1 … relu5_1 with equal weights, content
# relu4_2 (the paper's conv4_2 is read after its ReLU in every public implementation);
# texture conv1_1 + pool1 … pool4 (Gatys et al. 2015, Fig. 1).
_VGG_INDEX = {
    "vgg16": dict(relu1_1=1, relu2_1=6, relu3_1=11, relu4_1=18, relu4_2=20, relu5_1=25, conv1_1=0,
                  pool1=4, pool2=9, pool3=16, pool4=23),
    "vgg19": dict(relu1_1=1, relu2_1=6, relu3_1=11, relu4_1=20, relu4_2=22, relu5_1=29, conv1_1=0,
                  pool1=4, pool2=9, pool3=18, pool4=27),
}


def _vgg_defaults(arch: str) -> StyleDefaults:
    arch = arch.removesuffix("_bn") if arch.endswith("_bn") else arch
    ix = _VGG_INDEX[arch]
    f = lambda k: f"features.{ix[k]}"  # noqa: E731 - one-line name map
    return StyleDefaults(
        content_layer=f("relu4_2"),
        style_layers={f(k): 1.0 for k in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")},
        texture_layers={f(k): 1.0 for k in ("conv1_1", "pool1", "pool2", "pool3", "pool4")},
        content_weight=1.0, style_weight=10.0, tv_weight=0.0, pad=8,
        source=f"Gatys et al. 2015/2016 layers for {arch} (style relu1_1…relu5_1, content relu4_2; "
               "texture conv1_1, pool1…pool4)")


def default_settings(bundle: ModelBundle, infos=None) -> StyleDefaults:
    """Content / style / texture layers and weights for ``bundle``: tuned ones for
    EfficientNet-Lite0, the published ones for VGG-16/19, and for any other model block
    outputs spread over its first two thirds (content at about 45 % depth).

    Args:
        bundle: the feature extractor.
        infos: its layer table (``layer_table(bundle)``) if the caller has it already; None
            computes it.

    Raises:
        LayerError: the model has no layer with a spatial feature map.
    """
    arch = (bundle.architecture or "").lower()
    if arch == "efficientnet-lite0":
        return LITE0
    if arch in ("vgg16", "vgg19") and bundle.preprocess.channels == 3:
        return _vgg_defaults(arch)
    from analysis.core.layers import block_layers, layer_table, spatial_layers
    infos = infos if infos is not None else layer_table(bundle)
    blocks = block_layers(infos) or spatial_layers(infos)
    if not blocks:
        raise LayerError("The model has no layer with a spatial feature map: it cannot describe style.")
    upto = blocks[:max(1, int(np.ceil(len(blocks) * 2 / 3)))]
    idx = np.unique(np.linspace(0, len(upto) - 1, min(5, len(upto))).round().astype(int))
    style = {upto[i]: 1.0 for i in idx}
    content = blocks[min(len(blocks) - 1, int(round(0.45 * (len(blocks) - 1))))]
    return StyleDefaults(content_layer=content, style_layers=style, texture_layers=dict(style),
                         source="generic: block outputs over the first two thirds of the network")


# ===================================================================== colour


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
_YIQ_INV = torch.linalg.inv(_YIQ)


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> YIQ (Y in [0, 1]).

    Args:
        x: RGB batch (B, 3, H, W), values in [0, 1]; I and Q come out signed (about ±0.6).
    """
    return torch.einsum("dc,bchw->bdhw", _YIQ.to(x.device, x.dtype), x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """YIQ images back to RGB (the inverse of ``rgb_to_yiq``).

    Args:
        x: (B, 3, H, W) YIQ tensor.
    """
    return torch.einsum("dc,bchw->bdhw", _YIQ_INV.to(x.device, x.dtype), x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luminance Y (a 1-channel input is returned as is).

    Args:
        x: image batch (B, 3, H, W) RGB in [0, 1], or (B, 1, H, W) already grey.
    """
    if x.shape[1] == 1:
        return x
    return rgb_to_yiq(x)[:, :1]


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Gatys et al. 2017: L_s' = σ_c / σ_s · (L_s − μ_s) + μ_c, clipped to [0, 1].

    Args:
        style_y: the style image's luminance (1, 1, H, W) in [0, 1].
        content_y: the content image's luminance (any size) in [0, 1]; only its mean and standard
            deviation are used.
    """
    mu_s, sd_s = style_y.mean(), style_y.std().clamp_min(1e-6)
    mu_c, sd_c = content_y.mean(), content_y.std()
    return ((style_y - mu_s) * (sd_c / sd_s) + mu_c).clamp(0, 1)


def recombine_chroma(y: torch.Tensor, content_rgb: torch.Tensor) -> torch.Tensor:
    """Luminance ``y`` (B, 1|3, H, W) with the chroma (I, Q) of ``content_rgb`` -> RGB in [0, 1]."""
    if y.shape[1] == 3:
        y = y.mean(1, keepdim=True)
    iq = rgb_to_yiq(content_rgb.to(y.device, y.dtype))[:, 1:]
    if iq.shape[-2:] != y.shape[-2:]:
        iq = F.interpolate(iq, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return yiq_to_rgb(torch.cat([y, iq.expand(y.shape[0], -1, -1, -1)], 1)).clamp(0, 1)


# ===================================================================== images


def check_rgb(image, what: str) -> np.ndarray:
    """``image`` if it is an RGB uint8 array (H, W, 3) of at least 8x8 pixels, else ParameterError.

    Args:
        image: the array to check.
        what: what it is, for the message ("style image").
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ParameterError(f"The {what} must be an RGB uint8 image (H, W, 3); got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}.")
    if min(image.shape[:2]) < 8:
        raise ParameterError(f"The {what} is too small ({image.shape[1]}x{image.shape[0]} px).")
    return image


def check_side(size, what="size"):
    """``size`` as an int if it is a whole number of pixels in [MIN_SIDE, MAX_SIDE], else ParameterError.

    Args:
        size: the side length to check.
        what: what it is, for the message.
    """
    if not is_int(size) or not MIN_SIDE <= size <= MAX_SIDE:
        raise ParameterError(f"The {what} must be a whole number of pixels between {MIN_SIDE} and {MAX_SIDE} "
                             f"(got {size!r}).")
    return int(size)


def fit_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``long_side`` (aspect kept, each side ≥ 16)."""
    s = long_side / max(h, w)
    return max(16, round(h * s)), max(16, round(w * s))


def to_unit_tensor(image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, h, w) float in [0, 1], resized (antialiased) to ``size``.

    Args:
        image: RGB uint8 image (H, W, 3).
        size: target (h, w); None (or the image's own size) keeps it.
    """
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x


def model_channels(x: torch.Tensor, bundle: ModelBundle) -> torch.Tensor:
    """RGB [0, 1] -> the model's channel count (grey models get the mean).

    Args:
        x: (B, 3, H, W) images in [0, 1].
        bundle: the model whose input channels are wanted.
    """
    return x.mean(1, keepdim=True) if bundle.preprocess.channels == 1 else x


# ===================================================================== features


def features(bundle: ModelBundle, unit: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for [0, 1] images (B, C, H, W), no graph; the forward stops
    after the last needed layer.

    Args:
        bundle: the feature extractor; held under ``bundle.lock`` for the forward.
        unit: image batch (B, C, H, W) in [0, 1] with the model's channel count, any device.
        layers: layer names (duplicates ignored); each must have a (C, H, W) output, else
            ``LayerError``.
    """
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ParameterError("Choose at least one layer.")
    obj = O.Objective([(1.0, O.Term("features", lambda ctx: torch.zeros(()), frozenset(layers)))])
    x = unit.to(bundle.device)
    with bundle.lock, torch.no_grad():
        ctx = O.forward_context(bundle, obj, x, x, None)
    acts = {}
    for name in layers:
        a = ctx.acts[name]
        if a.dim() != 4:
            raise LayerError(f"Layer {name!r} has no spatial feature map (output shape {tuple(a.shape[1:])}); "
                             "Gram matrices need (C, H, W) features.")
        acts[name] = a.detach()
    return acts


class ReflectPad(O.Transform):
    """Mirror ``n`` pixels around the image before the forward: border pixels then sit
    inside the receptive fields like any other (no coloured seams along the edges that
    TensorFlow-style "SAME" padding, top/left, otherwise leaves)."""

    def __init__(self, n: int):
        self.n = int(n)

    def __call__(self, x, rng):
        if self.n <= 0:
            return x
        n = min(self.n, x.shape[-1] - 1, x.shape[-2] - 1)
        return F.pad(x, [n] * 4, mode="reflect")


def gram_targets(bundle: ModelBundle, images: Sequence[tuple[torch.Tensor, float]],
                 layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Weighted mean of the Gram matrices of several [0, 1] images (each (1, C, H, W), any
    size): the target of a style mix. Weights must be ≥ 0 with a positive sum.

    Args:
        bundle: the feature extractor.
        images: (image, weight) pairs, each image (1, C, H, W) in [0, 1]; a weight of 0 skips its
            image.
        layers: the layers whose Gram matrices are matched.
    """
    weights = [float(w) for _, w in images]
    if not images:
        raise ParameterError("Choose at least one style image.")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ParameterError("Style mixing weights must be ≥ 0 with a positive sum.")
    total = sum(weights)
    out: dict[str, torch.Tensor] = {}
    for (img, _), w in zip(images, weights):
        if w == 0:
            continue
        acts = features(bundle, img, layers)
        for name, a in acts.items():
            g = O.gram(a) * (w / total)
            out[name] = out[name] + g if name in out else g
    return out


def layer_weights_of(d, what: str) -> dict[str, float]:
    """Layer weights as ``{layer: weight > 0}`` from a list of names (weight 1 each) or a dict;
    ParameterError when none is left or a weight is negative or not finite.

    Args:
        d: a list/tuple of layer names or a ``{layer: weight}`` dict.
        what: "style" or "content", for the message.
    """
    if isinstance(d, (list, tuple)):
        d = {k: 1.0 for k in d}
    if not isinstance(d, dict) or not d:
        raise ParameterError(f"Choose at least one {what} layer.")
    out = {}
    for k, v in d.items():
        v = float(v)
        if not np.isfinite(v) or v < 0:
            raise ParameterError(f"The weight of {what} layer {k!r} must be ≥ 0 (got {v}).")
        if v > 0:
            out[str(k)] = v
    if not out:
        raise ParameterError(f"At least one {what} layer needs a positive weight.")
    return out


def check_nonneg(name, v) -> float:
    """``v`` as a float if it is a finite real ≥ 0, else ParameterError.

    Args:
        name: the parameter's name, for the message.
        v: the value to check.
    """
    if not is_real(v) or v < 0:
        raise ParameterError(f"{name} must be a number ≥ 0 (got {v!r}).")
    return float(v)


def style_objective(style_targets: dict[str, torch.Tensor], layer_weights: dict[str, float],
                    style_weight: float = 1.0, content: tuple[str, torch.Tensor] | None = None,
                    content_weight: float = 1.0, tv_weight: float = 0.0, pixels: int = 1) -> O.Objective:
    """The maximised objective: content_weight·feature_match + style_weight·Σ w_l gram_match
    (layer weights normalised to sum 1) − tv_weight·TV/pixels.

    Args:
        style_targets: layer -> target Gram matrix (from ``gram_targets``).
        layer_weights: layer -> relative weight of its Gram term (> 0 in total).
        style_weight: factor of the whole style term.
        content: (content layer, its target activations) or None for no content term.
        content_weight: factor of the content term (a term with weight 0 is left out).
        tv_weight: total-variation weight per pixel; 0 leaves the term out.
        pixels: the image's h·w, dividing ``tv_weight`` so it does not depend on the size.
    """
    total_w = sum(layer_weights.values())
    obj = None
    for layer, w in layer_weights.items():
        term = (style_weight * w / total_w) * O.gram_match(layer, style_targets[layer])
        obj = term if obj is None else obj + term
    if content is not None and content_weight > 0:
        obj = obj + content_weight * O.feature_match(content[0], content[1])
    if tv_weight > 0:
        obj = obj - (tv_weight / max(1, pixels)) * O.total_variation()
    return obj


class LuminanceImage(O.PixelImage):
    """One grey channel in [0, 1], shown to the model as RGB (or as its one channel):
    the image parameterisation of luminance-only style transfer."""
    kind = "luminance"

    def __init__(self, bundle: ModelBundle, init: torch.Tensor):
        self.space = "unit"
        self.channels = bundle.preprocess.channels
        dev = bundle.device
        self.scale = torch.ones(1, 1, 1, 1, device=dev)
        self.offset = torch.zeros(1, 1, 1, 1, device=dev)
        self.lo, self.hi = torch.zeros(1, 1, 1, 1, device=dev), torch.ones(1, 1, 1, 1, device=dev)
        self.p = init.detach().float().to(dev).clone().contiguous().requires_grad_(True)
        self.tensors = [self.p]
        self.init_desc = "luminance"

    def image(self) -> torch.Tensor:
        """The image the model sees: the grey channel repeated to the model's channel count,
        (1, C, H, W) in [0, 1].
        """
        return self.p.expand(-1, self.channels, -1, -1)


def _noise(shape, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (0.5 + 0.2 * torch.randn(*shape, generator=g)).clamp(0, 1).to(device)


def _pad(d: StyleDefaults, pad) -> int:
    pad = d.pad if pad is None else pad
    if not is_int(pad) or not 0 <= pad <= 64:
        raise ParameterError(f"The reflection padding must be between 0 and 64 px (got {pad!r}).")
    return int(pad)


def _rules(optimizer: str, lr, defaults: StyleDefaults) -> tuple[str, float]:
    if optimizer not in ("lbfgs", "adam"):
        raise ParameterError(f"Unknown optimiser {optimizer!r}: use lbfgs or adam.")
    lr = (defaults.lr_lbfgs if optimizer == "lbfgs" else defaults.lr_adam) if lr is None else lr
    if not is_real(lr) or lr <= 0:
        raise ParameterError(f"The learning rate must be a positive number (got {lr!r}).")
    return optimizer, float(lr)


# ===================================================================== texture synthesis


def synthesize_texture(bundle: ModelBundle, image: np.ndarray, layers=None, *, size: int | tuple[int, int] = 256,
                       steps: int = 200, source_scale: float = 1.0, optimizer: str = "lbfgs",
                       lr: float | None = None, tv_weight: float = 0.0, pad: int | None = None, seed: int = 0,
                       preview_every: int = 10) -> Generator[O.OptStep, str | None, O.OptResult]:
    """A new sample of the texture in ``image``: from noise, match its Gram matrices at
    ``layers`` (list, or dict layer -> weight; default: the model's texture layers).

    ``size``: output side (or (h, w)); the source is resized so its longer side is
    ``source_scale × size`` (the texture's scale in the output). The result's params
    record the layers, sizes and the final relative Gram error per layer.

    Args:
        bundle: the feature extractor.
        image: the texture, RGB uint8 (H, W, 3).
        layers: layers to match, a list or dict layer -> weight; None for the defaults.
        size: output side in pixels, or (h, w).
        steps: optimisation steps.
        source_scale: 0.1-4, the source's longer side relative to the output's.
        optimizer: "lbfgs" or "adam".
        lr: learning rate; None for the defaults' ``lr_lbfgs`` / ``lr_adam``.
        tv_weight: total-variation weight per pixel (≥ 0; 0 for none).
        pad: reflection padding in pixels (0-64) added before each forward; None for the defaults'.
        seed: seed of the initial noise and of the optimiser.
        preview_every: yield a preview image every this many steps (0: no previews).
    """
    check_rgb(image, "texture image")
    d = default_settings(bundle)
    lw = layer_weights_of(d.texture_layers if layers is None else layers, "texture")
    h, w = (size, size) if is_int(size) else tuple(size)
    h, w = check_side(h), check_side(w)
    if not isinstance(source_scale, (int, float)) or not 0.1 <= source_scale <= 4:
        raise ParameterError(f"The source scale must be between 0.1 and 4 (got {source_scale!r}).")
    tv_weight = check_nonneg("TV weight", tv_weight)
    rule, lr = _rules(optimizer, lr, d)
    src_size = fit_size(*image.shape[:2], min(MAX_SIDE, max(16, round(max(h, w) * source_scale))))
    src = model_channels(to_unit_tensor(image, src_size), bundle)
    pad = _pad(d, pad)
    targets = gram_targets(bundle, [(src, 1.0)], list(lw))
    obj = style_objective(targets, lw, tv_weight=tv_weight, pixels=h * w)
    param = O.PixelImage(bundle, space="unit", init=_noise((1, bundle.preprocess.channels, h, w), seed, bundle.device))
    result = yield from O.optimize(bundle, obj, param, steps=steps, step_rule=rule, lr=lr, seed=seed,
                                   transforms=[ReflectPad(pad)] if pad else [], preview_every=preview_every)
    result.params.update(kind="texture", layers=lw, size=[h, w], source_size=list(src_size), pad=pad,
                         source_scale=source_scale, tv_weight=tv_weight, optimizer=rule,
                         gram_error={k: -result.terms[f"gram {k}"][-1] for k in lw})
    return result


def texture_strip_sets(layers: Sequence[str] | dict) -> list[list[str]]:
    """Cumulative layer sets, shallow to deep: [l1], [l1, l2], … (Gatys et al. 2015, Fig. 1:
    matching only shallow layers keeps local colour and grain; adding deeper ones brings
    back larger structures)."""
    names = list(layers)
    if not names:
        raise ParameterError("Choose at least one layer.")
    return [names[:i + 1] for i in range(len(names))]


@dataclass
class StripResult:
    sets: list[list[str]]
    results: list[O.OptResult]
    stopped: bool
    seconds: float
    params: dict = field(default_factory=dict)

    @property
    def images(self) -> np.ndarray:
        return np.concatenate([r.images for r in self.results], 0)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.results)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def texture_strip(bundle: ModelBundle, image: np.ndarray, layers=None, *, size: int = 128, steps: int = 100,
                  seed: int = 0, preview_every: int = 10, **kw) -> Generator[O.OptStep, str | None, StripResult]:
    """Texture synthesis once per cumulative layer set (``texture_strip_sets``): the
    shallow-vs-deep strip. Yields ``OptStep`` with the overall step count; ``send("stop")``
    stops after the current step and returns the sets finished so far (and the stopped one).

    Args:
        bundle: the feature extractor.
        image: the texture, RGB uint8 (H, W, 3).
        layers: the full layer list (or dict layer -> weight), shallow to deep; None for the
            defaults' texture layers.
        size: output side in pixels of each synthesis.
        steps: optimisation steps per layer set.
        seed: seed of each synthesis (the same for every set, so they differ only by the layers).
        preview_every: yield a preview image every this many steps (0: none).
        **kw: further arguments of :func:`synthesize_texture` (optimizer, lr, tv_weight, pad,
            source_scale).
    """
    d = default_settings(bundle)
    names = list(layer_weights_of(d.texture_layers if layers is None else layers, "texture"))
    sets = texture_strip_sets(names)
    total, done, t0, results, stopped = steps * len(sets), 0, time.perf_counter(), [], False
    for s in sets:
        gen = synthesize_texture(bundle, image, s, size=size, steps=steps, seed=seed, preview_every=preview_every, **kw)
        try:
            st = next(gen)
            while True:
                done += 1
                cmd = yield O.OptStep(done, total, st.value, st.terms, st.image, time.perf_counter() - t0)
                if cmd == "stop":
                    stopped = True
                st = gen.send(cmd)
        except StopIteration as fin:
            results.append(fin.value)
        if stopped:
            break
    return StripResult(sets[:len(results)], results, stopped, time.perf_counter() - t0,
                       {"kind": "texture_strip", "sets": sets[:len(results)], "size": size, "steps": steps,
                        "seed": seed, "model_id": bundle.model_id})


# ===================================================================== style transfer


def style_transfer(bundle: ModelBundle, content: np.ndarray, styles: Sequence[tuple[np.ndarray, float]], *,
                   content_layer: str | None = None, style_layers: dict | Sequence[str] | None = None,
                   content_weight: float | None = None, style_weight: float | None = None,
                   tv_weight: float | None = None, optimizer: str = "lbfgs", lr: float | None = None,
                   init: str = "content", size: int = 256, style_scale: float = 1.0,
                   preserve_colour: bool = False, steps: int = 200, pad: int | None = None, seed: int = 0,
                   preview_every: int = 10) -> Generator[O.OptStep, str | None, O.OptResult]:
    """Gatys et al. style transfer of ``styles`` (a list of (RGB image, mixing weight)) onto
    ``content``. Unset layers and weights come from ``default_settings(bundle)``.

    The output has the content's aspect ratio with its longer side ``size``; each style
    image is resized so its longer side is ``style_scale × size``. ``init``: "content" or
    "noise". ``preserve_colour``: luminance-only transfer, then the content's chroma.

    Args:
        bundle: the feature extractor.
        content: the content photo, RGB uint8 (H, W, 3).
        styles: (RGB uint8 style image, mixing weight ≥ 0) pairs with a positive weight sum.
        content_layer: layer whose activations are matched to the content's.
        style_layers: layers whose Gram matrices are matched, list or dict layer -> weight.
        content_weight: weight of the content term (≥ 0).
        style_weight: weight of the style term (≥ 0; not both weights 0).
        tv_weight: total-variation weight per pixel (≥ 0).
        optimizer: "lbfgs" or "adam".
        lr: learning rate; None for the defaults' ``lr_lbfgs`` / ``lr_adam``.
        init: "content" (start from the photo) or "noise".
        size: longer side of the output in pixels.
        style_scale: 0.1-4, a style image's longer side relative to ``size``.
        preserve_colour: optimise luminance only and put the content's chroma back.
        steps: optimisation steps.
        pad: reflection padding in pixels (0-64) added before each forward; None for the defaults'.
        seed: seed of the noise initialisation and of the optimiser.
        preview_every: yield a preview image every this many steps (0: no previews).
    """
    check_rgb(content, "content image")
    if not isinstance(styles, (list, tuple)) or not styles:
        raise ParameterError("Choose at least one style image.")
    for s in styles:
        if not (isinstance(s, (list, tuple)) and len(s) == 2):
            raise ParameterError("Styles must be (image, weight) pairs.")
        check_rgb(s[0], "style image")
    d = default_settings(bundle)
    size = check_side(size)
    if not isinstance(style_scale, (int, float)) or not 0.1 <= style_scale <= 4:
        raise ParameterError(f"The style scale must be between 0.1 and 4 (got {style_scale!r}).")
    if init not in ("content", "noise"):
        raise ParameterError(f"Unknown initialisation {init!r}: use content or noise.")
    lw = layer_weights_of(d.style_layers if style_layers is None else style_layers, "style")
    c_layer = d.content_layer if content_layer is None else str(content_layer)
    cw = check_nonneg("Content weight", d.content_weight if content_weight is None else content_weight)
    sw = check_nonneg("Style weight", d.style_weight if style_weight is None else style_weight)
    tvw = check_nonneg("TV weight", d.tv_weight if tv_weight is None else tv_weight)
    if cw == 0 and sw == 0:
        raise ParameterError("Content and style weights are both 0: nothing to optimise.")
    rule, lr = _rules(optimizer, lr, d)
    pad = _pad(d, pad)

    h, w = fit_size(*content.shape[:2], size)
    content_rgb = to_unit_tensor(content, (h, w)).to(bundle.device)
    style_imgs = []
    for img, wt in styles:
        s = to_unit_tensor(img, fit_size(*img.shape[:2], min(MAX_SIDE, max(16, round(size * style_scale)))))
        style_imgs.append((s.to(bundle.device), wt))

    if preserve_colour:
        cy = luminance(content_rgb)
        def to_model(y):
            return y.expand(-1, bundle.preprocess.channels, -1, -1)

        c_in = to_model(cy)
        style_in = [(to_model(match_luminance(luminance(s), cy)), wt) for s, wt in style_imgs]
        init_t = cy if init == "content" else _noise((1, 1, h, w), seed, bundle.device)
        param = LuminanceImage(bundle, init_t)
    else:
        c_in = model_channels(content_rgb, bundle)
        style_in = [(model_channels(s, bundle), wt) for s, wt in style_imgs]
        init_t = c_in if init == "content" else _noise(c_in.shape, seed, bundle.device)
        param = O.PixelImage(bundle, space="unit", init=init_t)

    targets = gram_targets(bundle, style_in, list(lw)) if sw > 0 else {}
    # the content target sees the same mirrored border as the optimised image
    c_feat = features(bundle, ReflectPad(pad)(c_in, None), [c_layer])[c_layer] if cw > 0 else None
    if sw > 0:
        obj = style_objective(targets, lw, sw, (c_layer, c_feat) if cw > 0 else None, cw, tvw, h * w)
    else:
        obj = cw * O.feature_match(c_layer, c_feat)
        if tvw > 0:
            obj = obj - (tvw / (h * w)) * O.total_variation()

    def colour(img_u8: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(img_u8).permute(0, 3, 1, 2).float().to(bundle.device) / 255.0
        return O.to_uint8(recombine_chroma(y, content_rgb))

    gen = O.optimize(bundle, obj, param, steps=steps, step_rule=rule, lr=lr, seed=seed,
                     transforms=[ReflectPad(pad)] if pad else [], preview_every=preview_every)
    try:
        st = next(gen)
        while True:
            if preserve_colour and st.image is not None:
                st = replace(st, image=colour(st.image))
            st = gen.send((yield st))
    except StopIteration as fin:
        result = fin.value
    if preserve_colour:
        unit = recombine_chroma(torch.from_numpy(result.unit).to(bundle.device), content_rgb)
        result.unit = unit.float().cpu().numpy()
        result.images = O.to_uint8(unit)
    result.params.update(
        kind="style_transfer", content_layer=c_layer, style_layers=lw, content_weight=cw, style_weight=sw,
        tv_weight=tvw, optimizer=rule, init=init, size=[h, w], style_scale=style_scale,
        style_sizes=[list(s.shape[-2:]) for s, _ in style_imgs], style_mix=[float(wt) for _, wt in styles],
        preserve_colour=bool(preserve_colour), pad=pad, defaults_source=d.source,
        content_error=(-result.terms[f"match {c_layer}"][-1] if cw > 0 else None),
        style_error=({k: -result.terms[f"gram {k}"][-1] for k in lw} if sw > 0 else None))
    return result


def style_losses(result: O.OptResult) -> dict[str, list[float]]:
    """Per-step content and (weighted-mean) style losses of a style-transfer result, ≥ 0."""
    p = result.params
    out = {}
    if p.get("content_error") is not None:
        out["content"] = [-v for v in result.terms[f"match {p['content_layer']}"]]
    if p.get("style_error") is not None:
        lw = p["style_layers"]
        tot = sum(lw.values())
        n = len(result.history)
        out["style"] = [sum(-result.terms[f"gram {k}"][i] * w / tot for k, w in lw.items()) for i in range(n)]
    return out
