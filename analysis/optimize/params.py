"""Image parameterisations: plain pixels (in a chosen pixel space), a Fourier spectrum with
decorrelated colour (Olah et al. 2017), or a phase-only spectrum with a natural-image
magnitude (MACO, Fel et al. 2023)."""
from __future__ import annotations

import threading

import numpy as np
import torch

from analysis.core.errors import ParameterError
from analysis.core.models.bundle import ModelBundle
from analysis.optimize.objectives import IMAGENET_MEAN, IMAGENET_STD

# ============================================================ parameterisations

class ImageParam:
    """An image parameterisation: trainable tensors -> images (B, C, H, W) in [0, 1]."""
    kind = "?"
    tensors: list[torch.Tensor]

    def image(self) -> torch.Tensor:
        """The current images (B, C, H, W) in [0, 1], with a graph to ``tensors``; each
        parameterisation implements it.
        """
        raise NotImplementedError

    @property
    def pixels(self) -> torch.Tensor | None:
        return None

    def describe(self) -> dict:
        """A JSON-able record of the parameterisation for the run's params (at least ``kind``)."""
        return {"kind": self.kind}


# pixel space -> per-channel (scale, offset) such that image = pixels * scale + offset
PIXEL_SPACES = {
    "standard": lambda bundle: (IMAGENET_STD, IMAGENET_MEAN),      # ImageNet-standardised (CS231n's settings)
    "caffe": lambda bundle: ((1 / 255.0,) * 3, IMAGENET_MEAN),     # 0-255 minus the mean (Yosinski, deepdream)
    "model": lambda bundle: (tuple(bundle.preprocess.std), tuple(bundle.preprocess.mean)),  # the model's own
    "unit": lambda bundle: ((1.0,) * 3, (0.0,) * 3),
}


def _space_stats(space: str, channels: int, bundle: ModelBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, offset) such that image = pixels * scale + offset."""
    if space not in PIXEL_SPACES:
        raise ParameterError(f"Unknown pixel space {space!r}: use {', '.join(PIXEL_SPACES)}.")
    scale, offset = PIXEL_SPACES[space](bundle)
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
        """The images (B, C, H, W) in [0, 1]: the raw pixels mapped out of their space
        (``p * scale + offset``).
        """
        return self.p * self.scale + self.offset

    @property
    def pixels(self) -> torch.Tensor:
        return self.p

    def clip_(self):
        """Clamp the raw pixels in place to the range that maps to [0, 1] in every channel."""
        with torch.no_grad():
            self.p.copy_(torch.maximum(torch.minimum(self.p, self.hi), self.lo))

    def describe(self) -> dict:
        """``kind``, pixel ``space``, initialisation, batch and (H, W) size."""
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
        """The images (B, C, H, W) in [0, 1]: inverse FFT of the scaled spectrum, colour
        decorrelation undone (if on), then a sigmoid.
        """
        s = torch.view_as_complex(self.spectrum * self.spec_scale)
        x = torch.fft.irfftn(s, s=(self.h, self.w), norm="ortho") / 4.0
        if self.decorrelate:
            m = _COLOR_SQRT.to(x.device)
            x = torch.einsum("bchw,dc->bdhw", x, m)
        return torch.sigmoid(x)

    def describe(self) -> dict:
        """The settings recorded at construction (kind, sd, decay power, decorrelation, batch, size)."""
        return dict(self.meta)


_MAGNITUDES: dict[tuple, torch.Tensor] = {}
_MAGNITUDES_LOCK = threading.Lock()
NATURAL_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower")


def natural_magnitude(h: int, w: int, channels: int = 3) -> torch.Tensor:
    """The mean amplitude spectrum (C, H, W//2+1) of natural photographs in the decorrelated
    colour space, each standardised first: MACO's magnitude template (Fel et al. 2023), here
    measured on the gallery's seven photographs (the paper averages ImageNet, which is not
    available offline). Cached per size.

    Args:
        h: image height in pixels.
        w: image width in pixels.
        channels: 3 (decorrelated colour) or 1 (grey).
    """
    key = (int(h), int(w), int(channels))
    with _MAGNITUDES_LOCK:
        if key in _MAGNITUDES:
            return _MAGNITUDES[key]
    from PIL import Image

    from analysis.core.images import gallery_image
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
        """The images (B, C, H, W) in [0, 1]: the fixed magnitude with the optimised phase,
        inverse FFT, colour decorrelation undone for 3 channels, contrast, then a sigmoid.
        """
        x = self.spatial()
        if self.c == 3:
            x = torch.einsum("bchw,dc->bdhw", x, _COLOR_SQRT.to(x.device))
        return torch.sigmoid(x * self.contrast)

    def describe(self) -> dict:
        """The settings recorded at construction (kind, magnitude source, contrast, batch, size)."""
        return dict(self.meta)


def _size(size, bundle) -> tuple[int, int]:
    if size is None:
        return bundle.input_size, bundle.input_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise ParameterError(f"Image size {h}x{w} is out of range (8 to 4096 px).")
    return int(h), int(w)

