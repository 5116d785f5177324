"""Feature visualisation by optimisation: one engine, many pictures.

Change the pixels, not the weights: find ``I* = argmax_I f(I) + R(I)``. The same loop serves
class visualisation, channel / neuron visualisation, DeepDream, feature inversion and
(texture / style) Gram matching. Its pieces compose, in the spirit of lucent:

* **objectives** add and scale: ``class_logit(1) - 1e-3 * l2()``, ``channel("_blocks.9", 12)
  + 0.5 * diversity("_blocks.9")``, ``feature_match(layer, target) - 1e-4 * total_variation()``;
  every term's value is reported separately;
* **parameterisations** of the image: plain pixels (in a chosen pixel space, so published
  settings keep their meaning), a Fourier spectrum with decorrelated colour (Olah et al.
  2017), or a phase-only spectrum with a natural-image magnitude (MACO, Fel et al. 2023);
* **transforms** for robustness (roll / jitter / pad / scale / rotate, or MACO's batches of
  noisy random crops), applied to the image before each forward;
* **step rules**: Adam, L-BFGS, normalised gradient ascent (CS231n), constant or
  "progress" learning rates (Yosinski et al. 2015), mean-|g| steps (DeepDream);
* **pixel regularisers** between steps (plain pixels): L2 decay, Gaussian blur every N
  steps, clipping to the valid range, zeroing small-norm or small-contribution pixels.

``optimize`` is a generator: it yields an ``OptStep`` after every step (with a preview image
every ``preview_every`` steps) and returns an ``OptResult``; ``send("stop")`` ends it early
and still returns the current image. It runs on the bundle's device (CUDA when the model is
there), is deterministic for a seed on CPU, never changes the shared model, and holds
``bundle.lock`` around each step's hooks, forward and backward.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LayerError, ParameterError
from .hooks import _first_tensor, get_module
from .models.bundle import ModelBundle

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ===================================================================== objectives

@dataclass
class Context:
    """What an objective sees for one step: captured activations (with graph), the model
    output (``None`` when the forward stopped early), the image in [0, 1] before the
    transforms, and the raw pixel parameter (plain-pixel parameterisation only)."""
    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    image: torch.Tensor
    pixels: torch.Tensor | None
    pixel_scale: torch.Tensor | None = None

    def act(self, layer: str) -> torch.Tensor:
        if layer not in self.acts:
            raise LayerError(f"Layer {layer!r} did not run in the forward pass.")
        return self.acts[layer]


@dataclass(frozen=True)
class Term:
    name: str
    fn: Callable[[Context], torch.Tensor]
    layers: frozenset = frozenset()
    needs_output: bool = False


class Objective:
    """A weighted sum of terms; maximised. ``a + b``, ``a - b``, ``k * a`` and ``-a`` work."""

    def __init__(self, terms: Sequence[tuple[float, Term]]):
        self.terms = list(terms)

    @classmethod
    def of(cls, name: str, fn, layers: Iterable[str] = (), needs_output: bool = False) -> "Objective":
        return cls([(1.0, Term(name, fn, frozenset(layers), needs_output))])

    @property
    def layers(self) -> frozenset:
        return frozenset().union(*(t.layers for _, t in self.terms)) if self.terms else frozenset()

    @property
    def needs_output(self) -> bool:
        return any(t.needs_output for _, t in self.terms)

    def __add__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective([(c * float(k), t) for c, t in self.terms])

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def evaluate(self, ctx: Context) -> tuple[torch.Tensor, dict[str, float]]:
        total, values = 0.0, {}
        for c, t in self.terms:
            v = t.fn(ctx)
            values[t.name] = values.get(t.name, 0.0) + float(v.detach())
            total = total + c * v
        return total, values

    def describe(self) -> str:
        parts = []
        for c, t in self.terms:
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            parts.append(f"{sign} {'' if mag == 1 else f'{mag:g}·'}{t.name}")
        s = " ".join(parts)
        return s[2:] if s.startswith("+ ") else s

    def __repr__(self):
        return f"Objective({self.describe()})"


def _channels_of(a: torch.Tensor, c: int, layer: str) -> torch.Tensor:
    if a.dim() < 2 or not 0 <= c < a.shape[1]:
        raise ParameterError(f"Channel {c} is out of range for layer {layer!r} "
                             f"({a.shape[1] if a.dim() >= 2 else 0} channels).")
    return a[:, c]


def class_logit(c: int) -> Objective:
    """The class score before the softmax (the CS231n / Simonyan objective)."""
    def fn(ctx):
        if not 0 <= c < ctx.logits.shape[1]:
            raise ParameterError(f"Class {c} is out of range (the model has {ctx.logits.shape[1]} classes).")
        return ctx.logits[:, c].mean()
    return Objective.of(f"logit[{c}]", fn, needs_output=True)


def class_prob(c: int, log: bool = True) -> Objective:
    """The class probability (log-softmax by default: its gradient does not vanish near 1)."""
    def fn(ctx):
        if not 0 <= c < ctx.logits.shape[1]:
            raise ParameterError(f"Class {c} is out of range (the model has {ctx.logits.shape[1]} classes).")
        p = F.log_softmax(ctx.logits.float(), dim=1)[:, c]
        return (p if log else p.exp()).mean()
    return Objective.of(f"{'log ' if log else ''}p[{c}]", fn, needs_output=True)


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel ``c`` of ``layer`` (over positions and the batch)."""
    return Objective.of(f"{layer}:{c}", lambda ctx: _channels_of(ctx.act(layer), c, layer).mean(), [layer])


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel ``c`` at position (y, x) of a conv layer (default the centre)."""
    def fn(ctx):
        a = _channels_of(ctx.act(layer), c, layer)
        if a.dim() == 1:
            return a.mean()
        h, w = a.shape[-2:]
        yy, xx = (h // 2 if y is None else y), (w // 2 if x is None else x)
        if not (0 <= yy < h and 0 <= xx < w):
            raise ParameterError(f"Position ({yy}, {xx}) is outside {layer!r}'s {h}x{w} map.")
        return a[:, yy, xx].mean()
    return Objective.of(f"{layer}:{c}@centre" if y is None and x is None else f"{layer}:{c}@({y},{x})", fn, [layer])


def layer_l2(layer: str) -> Objective:
    """DeepDream: the mean squared activation of a whole layer (amplify what it sees)."""
    return Objective.of(f"‖{layer}‖²", lambda ctx: ctx.act(layer).float().pow(2).mean(), [layer])


def feature_match(layer: str, target: torch.Tensor) -> Objective:
    """Feature inversion: minus the squared error to ``target`` features, relative to the
    target's energy (Mahendran & Vedaldi 2015); 0 is a perfect reconstruction."""
    t = target.detach()
    energy = float(t.float().pow(2).sum().clamp_min(1e-12))

    def fn(ctx):
        a = ctx.act(layer)
        if a.shape[1:] != t.shape[1:]:
            raise ParameterError(f"Feature shapes differ at {layer!r}: {tuple(a.shape[1:])} vs {tuple(t.shape[1:])}; "
                                 "invert at the image's own size.")
        return -(a.float() - t.float()).pow(2).sum() / (energy * a.shape[0] / t.shape[0])
    return Objective.of(f"match {layer}", fn, [layer])


def gram(a: torch.Tensor) -> torch.Tensor:
    """Gram matrices (B, C, C) of feature maps (B, C, H, W), divided by the positions H·W."""
    b, c = a.shape[:2]
    f = a.float().reshape(b, c, -1)
    return f @ f.transpose(1, 2) / f.shape[-1]


def gram_match(layer: str, target_gram: torch.Tensor) -> Objective:
    """Texture / style: minus the squared error of Gram matrices at ``layer``, relative to the
    target's energy."""
    t = target_gram.detach().float()
    energy = float(t.pow(2).sum().clamp_min(1e-12)) / max(1, t.shape[0])

    def fn(ctx):
        g = gram(ctx.act(layer))
        return -(g - t).pow(2).sum() / (energy * g.shape[0])
    return Objective.of(f"gram {layer}", fn, [layer])


def diversity(layer: str) -> Objective:
    """Batch diversity (lucent): minus the mean cosine similarity between the images'
    Gram matrices at ``layer``; only meaningful for a batch of several images."""
    def fn(ctx):
        a = ctx.act(layer)
        b = a.shape[0]
        if b < 2:
            return a.sum() * 0.0
        g = F.normalize(gram(a).reshape(b, -1), dim=1)
        sim = g @ g.T
        return -(sim.sum() - sim.diagonal().sum()) / (b * (b - 1))
    return Objective.of(f"diversity {layer}", fn, [layer])


def l2() -> Objective:
    """Squared L2 norm of the image: of the pixel parameter (CS231n's ``img.norm()**2``) for
    plain pixels, of ``image - 0.5`` otherwise. Subtract it to regularise."""
    def fn(ctx):
        p = ctx.pixels if ctx.pixels is not None else ctx.image - 0.5
        return p.float().pow(2).sum() / p.shape[0]
    return Objective.of("L2", fn)


def total_variation(beta: float = 2.0) -> Objective:
    """Total variation of the [0, 1] image, sum over pixels of (dx² + dy²)^(β/2), in 0–255
    units (Mahendran & Vedaldi's R_TV^β). Subtract it to regularise."""
    def fn(ctx):
        x = ctx.image.float() * 255.0
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        return (dx.pow(2) + dy.pow(2) + 1e-8).pow(beta / 2).sum() / x.shape[0]
    return Objective.of("TV", fn)


# ============================================================ parameterisations

class ImageParam:
    """An image parameterisation: trainable tensors -> images (B, C, H, W) in [0, 1]."""
    kind = "?"
    tensors: list[torch.Tensor]

    def image(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def pixels(self) -> torch.Tensor | None:
        return None

    def describe(self) -> dict:
        return {"kind": self.kind}


def _space_stats(space: str, channels: int, bundle: ModelBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, offset) such that image = pixels * scale + offset."""
    if space == "standard":      # ImageNet-standardised, the space CS231n's settings assume
        scale, offset = IMAGENET_STD, IMAGENET_MEAN
    elif space == "caffe":       # 0-255 minus the mean (Yosinski's toolbox, google/deepdream)
        scale, offset = (1 / 255.0,) * 3, IMAGENET_MEAN
    elif space == "model":       # the model's own input normalisation
        scale, offset = tuple(bundle.preprocess.std), tuple(bundle.preprocess.mean)
    elif space == "unit":
        scale, offset = (1.0,) * 3, (0.0,) * 3
    else:
        raise ParameterError(f"Unknown pixel space {space!r}: use standard, caffe, model or unit.")
    s, o = torch.tensor(scale[:3]), torch.tensor(offset[:3])
    if channels == 1:
        s, o = s.mean().view(1), o.mean().view(1)
    return s.view(1, -1, 1, 1), o.view(1, -1, 1, 1)


class PixelImage(ImageParam):
    """Plain pixels in a pixel space (image = pixels·scale + offset, per channel).

    ``init``: "noise" (Gaussian of ``init_std`` in that space), "zeros" (the mean colour)
    or an (already cropped) RGB uint8 image / [0, 1] tensor to start from."""
    kind = "pixels"

    def __init__(self, bundle: ModelBundle, size: int | tuple[int, int] | None = None, batch: int = 1,
                 space: str = "standard", init="noise", init_std: float = 1.0, seed: int = 0):
        c = bundle.preprocess.channels
        self.space = space
        self.scale, self.offset = (t.to(bundle.device) for t in _space_stats(space, c, bundle))
        if isinstance(init, (np.ndarray, torch.Tensor)):
            x = (bundle.preprocess.to_unit(init) if isinstance(init, np.ndarray) else init.detach().float().cpu())
            if x.dim() == 3:
                x = x[None]
            x = x.to(bundle.device).expand(batch, -1, -1, -1)
            p = (x - self.offset) / self.scale
            self.init_desc = "image"
        else:
            h, w = _size(size, bundle)
            gen = torch.Generator().manual_seed(int(seed))
            if init == "noise":
                p = torch.randn(batch, c, h, w, generator=gen) * float(init_std)
            elif init == "zeros":
                p = torch.zeros(batch, c, h, w)
            else:
                raise ParameterError(f"Unknown init {init!r}: use noise, zeros or an image.")
            self.init_desc = f"{init}" + (f" σ={init_std:g}" if init == "noise" else "")
            p = p.to(bundle.device)
        self.p = p.clone().contiguous().requires_grad_(True)
        self.tensors = [self.p]
        self.lo, self.hi = (0 - self.offset) / self.scale, (1 - self.offset) / self.scale

    def image(self) -> torch.Tensor:
        return self.p * self.scale + self.offset

    @property
    def pixels(self) -> torch.Tensor:
        return self.p

    def clip_(self):
        with torch.no_grad():
            self.p.copy_(torch.maximum(torch.minimum(self.p, self.hi), self.lo))

    def describe(self) -> dict:
        return {"kind": self.kind, "space": self.space, "init": self.init_desc,
                "batch": self.p.shape[0], "size": list(self.p.shape[-2:])}


# Colour decorrelation (lucent / Olah et al. 2017): the square root of ImageNet's colour
# covariance; images are generated in a decorrelated space and mapped back.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class FourierImage(ImageParam):
    """A spectrum scaled by 1/frequency^decay (natural-image statistics), inverse FFT,
    decorrelated colour, sigmoid to [0, 1] (Olah et al. 2017, lucent)."""
    kind = "fourier"

    def __init__(self, bundle: ModelBundle, size: int | tuple[int, int] | None = None, batch: int = 1,
                 sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True, seed: int = 0):
        self.c = bundle.preprocess.channels
        self.h, self.w = _size(size, bundle)
        fy = np.fft.fftfreq(self.h)[:, None]
        fx = np.fft.rfftfreq(self.w)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(self.h, self.w)) ** decay_power
        self.spec_scale = torch.tensor(scale, dtype=torch.float32, device=bundle.device)[None, None, ..., None]
        gen = torch.Generator().manual_seed(int(seed))
        spec = torch.randn(batch, self.c, *freqs.shape, 2, generator=gen) * sd
        self.spectrum = spec.to(bundle.device).requires_grad_(True)
        self.tensors = [self.spectrum]
        self.decorrelate = decorrelate and self.c == 3
        self.meta = {"kind": self.kind, "sd": sd, "decay_power": decay_power, "decorrelate": self.decorrelate,
                     "batch": batch, "size": [self.h, self.w]}

    def image(self) -> torch.Tensor:
        s = torch.view_as_complex(self.spectrum * self.spec_scale)
        x = torch.fft.irfftn(s, s=(self.h, self.w), norm="ortho") / 4.0
        if self.decorrelate:
            m = _COLOR_SQRT.to(x.device)
            x = torch.einsum("bchw,dc->bdhw", x, m)
        return torch.sigmoid(x)

    def describe(self) -> dict:
        return dict(self.meta)


_MAGNITUDES: dict[tuple, torch.Tensor] = {}
_MAGNITUDES_LOCK = threading.Lock()
NATURAL_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower")


def natural_magnitude(h: int, w: int, channels: int = 3) -> torch.Tensor:
    """The mean amplitude spectrum (C, H, W//2+1) of natural photographs in the decorrelated
    colour space, each standardised first: MACO's magnitude template (Fel et al. 2023), here
    measured on the gallery's seven photographs (the paper averages ImageNet, which is not
    available offline). Cached per size."""
    key = (int(h), int(w), int(channels))
    with _MAGNITUDES_LOCK:
        if key in _MAGNITUDES:
            return _MAGNITUDES[key]
    from PIL import Image

    from .images import gallery_image
    inv = torch.linalg.inv(_COLOR_SQRT)
    mags = []
    for name in NATURAL_PHOTOS:
        im = Image.fromarray(gallery_image(name)).convert("RGB")
        s = max(h / im.height, w / im.width)
        im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        x = torch.from_numpy(np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1)
        if channels == 1:
            d = x.mean(0, keepdim=True)
        else:
            d = torch.einsum("chw,dc->dhw", x - x.mean((1, 2), keepdim=True), inv)
        d = (d - d.mean()) / d.std().clamp_min(1e-6)
        mags.append(torch.fft.rfft2(d).abs())
    m = torch.stack(mags).mean(0)
    with _MAGNITUDES_LOCK:
        _MAGNITUDES[key] = m
    return m


class MacoImage(ImageParam):
    """Magnitude-constrained parameterisation (MACO, Fel et al. 2023): the image's amplitude
    spectrum is fixed to that of natural photographs and only the phase is optimised; the
    inverse FFT is standardised, colour-recorrelated and squashed by a sigmoid. With random
    crops it gives class visualisations that look like objects rather than textures."""
    kind = "maco"

    def __init__(self, bundle: ModelBundle, size: int | tuple[int, int] | None = None, batch: int = 1,
                 contrast: float = 1.0, seed: int = 0):
        self.c = bundle.preprocess.channels
        self.h, self.w = _size(size, bundle)
        if not 0 < contrast <= 10:
            raise ParameterError("MACO contrast must be in (0, 10].")
        self.contrast = float(contrast)
        self.magnitude = natural_magnitude(self.h, self.w, self.c).to(bundle.device)[None]
        gen = torch.Generator().manual_seed(int(seed))
        phase = torch.randn(batch, self.c, self.h, self.w // 2 + 1, generator=gen)
        self.phase = phase.to(bundle.device).requires_grad_(True)
        self.tensors = [self.phase]
        self.meta = {"kind": self.kind, "magnitude": "gallery photographs", "contrast": self.contrast,
                     "batch": batch, "size": [self.h, self.w]}

    @staticmethod
    def _standardise(t: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, t.dim()))
        return (t - t.mean(dims, keepdim=True)) / (t.std(dim=dims, keepdim=True) + 1e-4)

    def spatial(self) -> torch.Tensor:
        """The standardised image before colour recorrelation and the sigmoid."""
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self._standardise(self.phase))
        return self._standardise(torch.fft.irfft2(spectrum, s=(self.h, self.w)))

    def image(self) -> torch.Tensor:
        x = self.spatial()
        if self.c == 3:
            x = torch.einsum("bchw,dc->bdhw", x, _COLOR_SQRT.to(x.device))
        return torch.sigmoid(x * self.contrast)

    def describe(self) -> dict:
        return dict(self.meta)


def _size(size, bundle) -> tuple[int, int]:
    if size is None:
        return bundle.input_size, bundle.input_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise ParameterError(f"Image size {h}x{w} is out of range (8 to 4096 px).")
    return int(h), int(w)


# =================================================================== transforms

class Transform:
    """A random, differentiable image transform; ``rng`` is the run's seeded generator."""
    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


def _randint(rng, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


class Roll(Transform):
    """Circular shift by up to ``max_px`` (CS231n's and DeepDream's jitter)."""
    def __init__(self, max_px: int):
        self.max_px = int(max_px)

    def __call__(self, x, rng):
        if self.max_px <= 0:
            return x
        oy, ox = _randint(rng, -self.max_px, self.max_px), _randint(rng, -self.max_px, self.max_px)
        return torch.roll(x, shifts=(oy, ox), dims=(-2, -1))


class Jitter(Transform):
    """Random crop that removes up to ``d`` pixels (lucent's jitter)."""
    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x, rng):
        if self.d <= 0:
            return x
        h, w = x.shape[-2:]
        dy, dx = _randint(rng, 0, self.d - 1), _randint(rng, 0, self.d - 1)
        return x[..., dy:h - self.d + dy + 1, dx:w - self.d + dx + 1]


class Pad(Transform):
    def __init__(self, n: int, value: float = 0.5):
        self.n, self.value = int(n), float(value)

    def __call__(self, x, rng):
        return F.pad(x, [self.n] * 4, value=self.value) if self.n > 0 else x


class RandomScale(Transform):
    """Random zoom by a factor from ``scales`` about the centre, keeping the image size
    (reflection at the borders). Keeping the size matters on a GPU: every new input shape
    costs the convolution libraries about a second of planning the first time it is seen."""
    def __init__(self, scales: Sequence[float]):
        self.scales = list(scales)

    def __call__(self, x, rng):
        s = self.scales[_randint(rng, 0, len(self.scales) - 1)]
        if s == 1:
            return x
        theta = torch.tensor([[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomRotate(Transform):
    def __init__(self, degrees: Sequence[float]):
        self.degrees = list(degrees)

    def __call__(self, x, rng):
        a = math.radians(self.degrees[_randint(rng, 0, len(self.degrees) - 1)])
        if a == 0:
            return x
        cos, sin = math.cos(a), math.sin(a)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomCrops(Transform):
    """``n`` random square crops of each image, each resized to ``out`` px, with Gaussian and
    uniform noise (MACO's robustness, Fel et al. 2023): the batch grows ``n`` times and the
    objective averages over the crops. Crop sides are drawn in [``lo``, ``hi``] of the image
    side, centres around the middle with spread ``spread``; borders reflect."""
    def __init__(self, n: int, lo: float, hi: float, out: int, noise: float = 0.05, spread: float = 0.15):
        if not (1 <= int(n) <= 64):
            raise ParameterError("crops per step must be between 1 and 64.")
        if not (0 < lo <= hi <= 1.5):
            raise ParameterError("crop sides must satisfy 0 < min ≤ max ≤ 1.5 (fractions of the image).")
        if not (0 <= noise <= 1 and 0 <= spread <= 1):
            raise ParameterError("crop noise and spread must be in [0, 1].")
        self.n, self.lo, self.hi, self.out = int(n), float(lo), float(hi), int(out)
        self.noise, self.spread = float(noise), float(spread)

    def __call__(self, x, rng):
        m = x.shape[0] * self.n
        centre = (torch.randn(m, 2, generator=rng) * self.spread).clamp(-0.5, 0.5)
        side = self.lo + torch.rand(m, generator=rng) * (self.hi - self.lo)
        theta = torch.zeros(m, 2, 3)
        theta[:, 0, 0] = side
        theta[:, 1, 1] = side
        theta[:, :, 2] = 2 * centre
        grid = F.affine_grid(theta.to(x.device, x.dtype), [m, x.shape[1], self.out, self.out], align_corners=False)
        y = F.grid_sample(x.repeat_interleave(self.n, 0), grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        if self.noise:
            g = torch.randn(y.shape, generator=rng).to(y.device, y.dtype)
            u = torch.rand(y.shape, generator=rng).to(y.device, y.dtype) - 0.5
            y = y + self.noise * (g + u)
        return y


def standard_transforms() -> list[Transform]:
    """lucent's transformation-robustness stack: pad 12, jitter 8, scale ±10 %, rotate ±10°, jitter 4
    (scaling here keeps the size, so every step has the same input shape)."""
    return [Pad(12), Jitter(8), RandomScale([1 + (i - 5) / 50 for i in range(11)]),
            RandomRotate(list(range(-10, 11)) + 5 * [0]), Jitter(4)]


# ========================================================= forward with captures

class _Stop(Exception):
    pass


@contextlib.contextmanager
def _captures(model, layers: frozenset, stop_early: bool):
    """Capture ``layers`` with their graph; with ``stop_early``, abort the forward as soon
    as all of them have run (the rest of the network is not needed). Hooks are
    thread-scoped and always removed."""
    store: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()
    handles = []
    try:
        for name in sorted(layers):
            module = get_module(model, name)

            def hook(mod, inp, out, _name=name):
                if threading.get_ident() != owner:
                    return
                store[_name] = _first_tensor(out)
                if stop_early and len(store) == len(layers):
                    raise _Stop
            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_context(bundle: ModelBundle, objective: Objective, image: torch.Tensor,
                    transformed: torch.Tensor, pixels: torch.Tensor | None) -> Context:
    """Run the shared model on a transformed [0, 1] image and build the objective's context.
    The caller holds ``bundle.lock``."""
    inp = bundle.preprocess.normalize(transformed)
    need_out = objective.needs_output or not objective.layers
    with _captures(bundle.model, objective.layers, stop_early=not need_out) as acts:
        try:
            logits = bundle.model(inp)
        except _Stop:
            logits = None
        missing = objective.layers - set(acts)
        if missing:
            raise LayerError(f"Layer(s) {', '.join(sorted(missing))} did not run in the forward pass.")
        return Context(dict(acts), logits, image, pixels)


# =============================================================== the optimiser

STEP_RULES = ("adam", "lbfgs", "normalized", "constant", "progress", "mean_abs")


@dataclass
class OptStep:
    step: int
    total: int
    value: float                       # the whole objective (maximised)
    terms: dict[str, float]
    image: np.ndarray | None           # (B, H, W, 3) uint8 on preview steps, else None
    seconds: float


@dataclass
class OptResult:
    images: np.ndarray                 # (B, H, W, 3) uint8
    unit: np.ndarray                   # (B, C, H, W) float32 in [0, 1]
    history: list[float]
    terms: dict[str, list[float]]
    steps: int
    stopped: bool
    seconds: float
    params: dict = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def to_uint8(unit: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    u = unit.detach().float().clamp(0, 1).cpu()
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    return (u.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def _percentile_mask(v: torch.Tensor, pct: float) -> torch.Tensor:
    """Per image: True where ``v`` (B, H, W) is below its ``pct`` percentile."""
    flat = v.reshape(v.shape[0], -1)
    thr = torch.quantile(flat.float(), pct / 100.0, dim=1).view(-1, 1, 1)
    return v < thr


def _check(name, value, lo, hi=None):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= lo
    if not ok or (hi is not None and value > hi):
        raise ParameterError(f"{name} must be between {lo} and {hi} (got {value!r})." if hi is not None
                             else f"{name} must be at least {lo} (got {value!r}).")


def optimize(bundle: ModelBundle, objective: Objective, param: ImageParam, *, steps: int = 100,
             step_rule: str = "adam", lr: float = 0.05, transforms: Sequence[Transform] = (),
             decay: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.0, clip: bool = True,
             small_norm_pct: float = 0.0, small_contrib_pct: float = 0.0, max_lr: float | None = None,
             desired_progress: float | None = None, seed: int = 0, preview_every: int = 10,
             ) -> Generator[OptStep, str | None, OptResult]:
    """Gradient ascent of ``objective`` over the image ``param``; see the module docstring.

    Pixel regularisers (``decay``, ``blur_*``, ``clip``, ``small_*_pct``) apply to plain
    pixels only. Step rules: "adam" and "lbfgs" (torch.optim, ``lr``), "normalized"
    (``p += lr·g/‖g‖``), "constant" (``p += lr·g``), "progress" (``lr = min(max_lr,
    desired_progress/‖g‖²)``), "mean_abs" (``p += lr·g/mean|g|``).
    """
    from .config import get_config
    from .saliency import gaussian_blur

    limit = get_config().limits.max_optimisation_steps
    if not isinstance(steps, int) or not 1 <= steps <= limit:
        raise ParameterError(f"steps must be between 1 and {limit} (got {steps!r}); the limit is "
                             "max_optimisation_steps in the configuration.")
    if step_rule not in STEP_RULES:
        raise ParameterError(f"Unknown step rule {step_rule!r}; use one of {', '.join(STEP_RULES)}.")
    _check("learning rate", lr, 0)
    _check("decay", decay, 0, 1)
    _check("blur sigma", blur_sigma, 0, 50)
    _check("blur every", blur_every, 0)
    _check("small-norm percentile", small_norm_pct, 0, 100)
    _check("small-contribution percentile", small_contrib_pct, 0, 100)
    _check("preview every", preview_every, 0)
    if step_rule == "progress" and (max_lr is None or desired_progress is None):
        raise ParameterError("The progress step rule needs max_lr and desired_progress.")
    if not objective.terms:
        raise ParameterError("The objective is empty.")
    pixel = isinstance(param, PixelImage)
    if not pixel and (decay or blur_every or small_norm_pct or small_contrib_pct):
        raise ParameterError("Decay, blur and pixel clipping apply to the plain-pixel parameterisation only.")

    rng = torch.Generator().manual_seed(int(seed))
    tensors = param.tensors
    opt = None
    if step_rule == "adam":
        opt = torch.optim.Adam(tensors, lr=lr)
    elif step_rule == "lbfgs":
        opt = torch.optim.LBFGS(tensors, lr=lr, max_iter=1, history_size=20)

    record = {"objective": objective.describe(), "param": param.describe(), "steps": steps,
              "step_rule": step_rule, "lr": lr, "transforms": [repr(t) for t in transforms],
              "decay": decay, "blur_every": blur_every, "blur_sigma": blur_sigma, "clip": clip,
              "small_norm_pct": small_norm_pct, "small_contrib_pct": small_contrib_pct,
              "max_lr": max_lr, "desired_progress": desired_progress, "seed": seed,
              "model_id": bundle.model_id}
    history: list[float] = []
    term_hist: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    done, stopped = 0, False
    last: dict = {}

    def evaluate():
        """Forward + backward under the lock; returns (objective, terms, grads)."""
        with bundle.lock, torch.enable_grad():
            img = param.image()
            x = img
            for tf in transforms:
                x = tf(x, rng)
            ctx = forward_context(bundle, objective, img, x, param.pixels)
            total, values = objective.evaluate(ctx)
            if not torch.isfinite(total):
                raise ParameterError("The objective became infinite or NaN; lower the learning rate.")
            grads = torch.autograd.grad(total, tensors)
        return float(total.detach()), values, grads

    for t in range(steps):
        if opt is not None:
            def closure():
                opt.zero_grad(set_to_none=False)
                v, vals, grads = evaluate()
                for p_, g in zip(tensors, grads):
                    p_.grad = -g.contiguous()     # channels_last models give strided grads; L-BFGS views them flat
                last.update(value=v, values=vals, grads=grads)
                return torch.tensor(-v)
            opt.step(closure)
            grads = last["grads"]
        else:
            v, vals, grads = evaluate()
            last.update(value=v, values=vals)
            with torch.no_grad():
                for p_, g in zip(tensors, grads):
                    dims = tuple(range(1, g.dim()))
                    if step_rule == "normalized":
                        p_.add_(lr * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * len(dims)))
                    elif step_rule == "constant":
                        p_.add_(lr * g)
                    elif step_rule == "progress":
                        sq = g.pow(2).sum(dim=dims, keepdim=True).clamp_min(1e-24)
                        p_.add_(torch.clamp(desired_progress / sq, max=max_lr) * g)
                    else:  # mean_abs
                        p_.add_(lr * g / g.abs().mean(dim=dims, keepdim=True).clamp_min(1e-12))
        if pixel:
            with torch.no_grad():
                p = param.p
                if decay:
                    p.mul_(1 - decay)
                if blur_every and blur_sigma > 0 and t % blur_every == 0:
                    p.copy_(gaussian_blur(p, blur_sigma))
                if small_norm_pct:
                    p.mul_(~_percentile_mask(p.norm(dim=1), small_norm_pct)[:, None])
                if small_contrib_pct:
                    contrib = (grads[0] * -p).sum(dim=1).abs()
                    p.mul_(~_percentile_mask(contrib, small_contrib_pct)[:, None])
                if clip:
                    param.clip_()
        done = t + 1
        history.append(last["value"])
        for k, val in last["values"].items():
            term_hist.setdefault(k, []).append(val)
        show = preview_every and (done % preview_every == 0 or done == steps)
        with torch.no_grad():
            preview = to_uint8(param.image()) if show else None
        cmd = yield OptStep(done, steps, last["value"], dict(last["values"]), preview, time.perf_counter() - t0)
        if cmd == "stop":
            stopped = done < steps
            break

    with torch.no_grad():
        unit = param.image().detach().float().clamp(0, 1)
    return OptResult(to_uint8(unit), unit.cpu().numpy(), history, term_hist, done, stopped,
                     time.perf_counter() - t0, record)


def run(gen: Generator, stop_after: int | None = None, on_step: Callable[[OptStep], None] | None = None):
    """Drive an engine generator to its end (or stop it after ``stop_after`` steps) and
    return its result."""
    try:
        s = next(gen)
        while True:
            if on_step is not None:
                on_step(s)
            s = gen.send("stop" if stop_after is not None and s.step >= stop_after else None)
    except StopIteration as fin:
        return fin.value
