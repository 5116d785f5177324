"""ModelBundle: a frozen model with everything needed to use it honestly.

Like torchvision's ``Weights(transforms, meta)``, a model carries its own preprocessing,
the inverse for display, its class names and an identity (``model_id`` = sha256 of the
weights) so caches and audit records name exactly what ran.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from analysis.core.errors import ParameterError
from analysis.core.schema import is_real

# Preprocessing.interpolation name -> Pillow's resampling filter
PIL_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                     "lanczos": Image.LANCZOS}
CROP_MODES = ("center", "squash")       # timm's crop_mode names; "border" is read as "center"
CHANNEL_ORDERS = ("rgb", "bgr")
MIN_INPUT, MAX_INPUT = 8, 1024          # bounds on input sides (pixels); MIN_INPUT for user values


@dataclass(frozen=True)
class Preprocessing:
    """Image (RGB uint8) -> model input tensor, and back.

    Geometry first (``crop_mode`` "center": resize the shorter side to ``resize_size``,
    centre-crop ``input_size``; "squash": resize the whole image to ``resize_size`` square,
    ignoring its aspect ratio, then centre-crop), then scale to [0, 1], optionally convert
    to one grey channel, then normalise with ``mean``/``std`` (given in the model's channel
    order; ``channel_order`` "bgr" feeds the model blue, green, red). Analyses work on the
    cropped RGB image the model sees (``geometry``) and on RGB [0, 1] tensors; the channel
    flip happens in ``normalize`` / ``denormalize``, so ``to_display`` shows RGB again.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    grayscale: bool = False
    crop_mode: str = "center"
    channel_order: str = "rgb"

    def __post_init__(self):
        if self.interpolation not in PIL_INTERPOLATION:
            raise ParameterError(f"Unknown interpolation {self.interpolation!r}; use one of {', '.join(PIL_INTERPOLATION)}.")
        if self.crop_mode not in CROP_MODES:
            raise ParameterError(f"Unknown crop mode {self.crop_mode!r}; use one of {', '.join(CROP_MODES)}.")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ParameterError(f"Unknown channel order {self.channel_order!r}; use rgb or bgr.")
        for name in ("input_size", "resize_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ParameterError(f"{name} must be a whole number of pixels (got {v!r}).")
        if not 1 <= self.input_size <= MAX_INPUT:
            raise ParameterError(f"input size {self.input_size} is outside 1..{MAX_INPUT} pixels.")
        if self.resize_size > 4 * MAX_INPUT:
            raise ParameterError(f"resize size {self.resize_size} is over {4 * MAX_INPUT} pixels.")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ParameterError(
                f"mean and std need one value per input channel ({self.channels}: "
                f"{'grey' if self.grayscale else 'RGB'}); got {len(self.mean)} mean and {len(self.std)} std values.")
        for v in (*self.mean, *self.std):
            if not is_real(v):
                raise ParameterError(f"mean/std values must be finite numbers (got {v!r}).")
        if any(s <= 0 for s in self.std):
            raise ParameterError("every std value must be positive.")
        if self.resize_size < self.input_size:
            raise ParameterError(f"resize size ({self.resize_size}) must be at least the input size ({self.input_size}).")

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def spec(self) -> dict:
        out = {"input_size": self.input_size, "resize_size": self.resize_size,
               "mean": list(self.mean), "std": list(self.std),
               "interpolation": self.interpolation, "grayscale": self.grayscale}
        # Defaults left out, so existing preprocessings keep their spec_id (cache keys).
        if self.crop_mode != "center":
            out["crop_mode"] = self.crop_mode
        if self.channel_order != "rgb":
            out["channel_order"] = self.channel_order
        return out

    @property
    def flips_channels(self) -> bool:
        return self.channel_order == "bgr" and not self.grayscale

    @property
    def spec_id(self) -> str:
        """Stable short hash of the preprocessing, for cache keys."""
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]

    def geometry(self, image: np.ndarray) -> np.ndarray:
        """Resize + centre crop: the RGB uint8 view (input_size x input_size) the model sees.

        Args:
            image: RGB uint8 (H, W, 3), any size.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ParameterError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        im = Image.fromarray(np.ascontiguousarray(image))
        w, h = im.size
        if self.crop_mode == "squash":
            nw = nh = self.resize_size
        else:
            s = self.resize_size / min(w, h)
            nw, nh = max(self.input_size, round(w * s)), max(self.input_size, round(h * s))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), PIL_INTERPOLATION[self.interpolation])
        left, top = (nw - self.input_size) // 2, (nh - self.input_size) // 2
        im = im.crop((left, top, left + self.input_size, top + self.input_size))
        return np.asarray(im)

    def _stats(self, x: torch.Tensor):
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def to_unit(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Already-cropped RGB uint8 image(s) -> float tensor N,C,H,W in [0, 1].

        Args:
            images: one (H, W, 3) RGB uint8 crop, or a sequence / (N, H, W, 3) array of them, all of
                the same size (grey models average the channels).
        """
        arr = np.asarray(images, dtype=np.uint8)
        if arr.ndim == 3:
            arr = arr[None]
        if not arr.flags.writeable:                 # torch.from_numpy wants writable memory
            arr = arr.copy()
        # .float() makes a new tensor (nothing shares the caller's array); divided in place:
        # the same operation as ``/ 255.0``, without another buffer
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        if self.grayscale:
            x = x.mean(dim=1, keepdim=True)
        return x

    def normalize(self, x01: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """[0, 1] RGB (or grey) tensor N,C,H,W -> model input (channel order and mean/std).

        Args:
            x01: (N, C, H, W) in [0, 1], RGB order (flipped to BGR here when the model wants it).
            inplace: overwrite ``x01`` (when not flipped) instead of allocating the result:
                the same operations and bits, for a tensor nobody else holds.
        """
        if self.flips_channels:
            x01, inplace = x01.flip(1), True          # flip made a new tensor
        mean, std = self._stats(x01)
        if inplace:
            return x01.sub_(mean).div_(std)
        return (x01 - mean) / std

    def model_input(self, crops: np.ndarray | Sequence[np.ndarray], *, grey: bool | None = None) -> torch.Tensor:
        """Already-cropped RGB uint8 crop(s) -> normalised model input (CPU float32):
        ``normalize(to_unit(crops))`` with one buffer less.

        A grey model's input depends on each pixel's value alone when the crops are grey
        (R == G == B: scans, the digits), so those are looked up in a 256-entry table built
        by that same computation: about twice as fast for a batch, with the same bits (the
        table is checked against the computation on the first batch of each process, and
        not used if they differ).

        Args:
            crops: as for :meth:`to_unit`.
            grey: True when the caller knows every crop is grey, False when it knows one is
                not, None to have it checked here (grey models only).
        """
        if self.grayscale and grey is not False and isinstance(crops, np.ndarray) and crops.ndim == 4 \
                and crops.shape[3] == 3 and crops.dtype == np.uint8 and len(crops):
            lut = _grey_table(self)
            if lut is not None and (grey or all_grey(crops)):
                out = np.empty((len(crops), 1, *crops.shape[1:3]), np.float32)
                np.take(lut, crops[..., 0], out=out[:, 0])
                x = torch.from_numpy(out)
                if _GREY_CHECKED.get(self) is None:       # once per process: the table's bits
                    ok = torch.equal(x, self.normalize(self.to_unit(crops), inplace=True))
                    with _GREY_LOCK:
                        _GREY_CHECKED[self] = ok
                    if not ok:
                        return self.normalize(self.to_unit(crops), inplace=True)
                return x
        return self.normalize(self.to_unit(crops), inplace=True)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> [0, 1] RGB space (not clipped).

        Args:
            x: model-space tensor (N, C, H, W).
        """
        mean, std = self._stats(x)
        u = x * std + mean
        return u.flip(1) if self.flips_channels else u

    def valid_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel min and max of a valid image in model space, in the model's channel
        order (for pixel clipping)."""
        lo = torch.tensor([(0 - m) / s for m, s in zip(self.mean, self.std)]).view(1, -1, 1, 1)
        hi = torch.tensor([(1 - m) / s for m, s in zip(self.mean, self.std)]).view(1, -1, 1, 1)
        return lo, hi

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Raw RGB uint8 image(s) of any size -> normalised model input (CPU float32)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        return self.model_input(np.stack([self.geometry(im) for im in images]))

    def to_display(self, x: torch.Tensor) -> np.ndarray:
        """Model-space tensor (C,H,W or N,C,H,W) -> RGB uint8 (H,W,3 or N,H,W,3), clipped.

        Args:
            x: model-space tensor (C, H, W) or (N, C, H, W), any device (grey models give grey RGB).
        """
        single = x.dim() == 3
        x = x[None] if single else x
        u = self.denormalize(x.detach().float().cpu()).clamp(0, 1)
        if u.shape[1] == 1:
            u = u.expand(-1, 3, -1, -1)
        out = (u.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        return out[0] if single else out


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes), in key order.

    Args:
        model: the model whose ``state_dict`` (parameters and buffers) is hashed.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_GREY_LOCK = threading.Lock()
_GREY_TABLES: dict = {}         # Preprocessing -> (256,) float32 table of a grey model's input
_GREY_CHECKED: dict = {}        # Preprocessing -> whether the table gave the computation's bits


def _grey_table(pre: Preprocessing) -> np.ndarray | None:
    """The model input of a grey pixel of each value 0..255, computed by ``normalize(to_unit())``
    itself (None once a check found other bits)."""
    if _GREY_CHECKED.get(pre) is False:
        return None
    table = _GREY_TABLES.get(pre)
    if table is None:
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None, None], 3, axis=3)    # (1, 256, 1, 3)
        table = pre.normalize(pre.to_unit(ramp), inplace=True)[0, 0, :, 0].numpy().copy()
        with _GREY_LOCK:
            _GREY_TABLES[pre] = table
    return table


def all_grey(images: np.ndarray) -> bool:
    """Whether every pixel of a stack of RGB images ((..., 3) uint8) has R == G == B.

    Args:
        images: an array whose last axis holds R, G, B.
    """
    r = images[..., 0]
    return bool(np.array_equal(r, images[..., 1]) and np.array_equal(r, images[..., 2]))


@dataclass(eq=False)
class ModelBundle:
    """A frozen model plus what is needed to use it.

    Invariants: ``model`` is in eval mode with ``requires_grad=False`` on every
    parameter and is never mutated after construction (several browser sessions share
    one bundle). Anything that registers hooks or runs backward holds ``lock``; methods
    that need a changed model work on ``copy_model()``.
    """

    model: nn.Module
    preprocess: Preprocessing
    categories: list[str]
    name: str
    architecture: str
    source: str                       # "embedded", "torchvision", "upload", "trusted", "random"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model_id: str = ""
    description: str = ""
    preprocess_note: str = ""         # where the preprocessing came from / what is assumed
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Derived copies of the model that methods build once and reuse (e.g. the attention
    # saliency's copy with timm's fused attention off); never the shared model itself.
    derived: dict = field(default_factory=dict, repr=False)
    # Data derived from the model once and kept with it (declared here, never attached at
    # run time): the guided-backprop copy (analysis.core.guided.guided_model) and the
    # analytic receptive-field trace (analysis.inside.receptive). Not init fields, so that
    # ``dataclasses.replace`` (a bundle with other preprocessing) starts them empty.
    guided_cache: tuple | None = field(default=None, init=False, repr=False)
    receptive_cache: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.model.to(self.device)
        # channels_last: 2x faster forwards of EfficientNet-Lite0 on CPU (1.3x resnet18),
        # same results to ~1e-5 (docs/benchmarks.md). Done once, before the model is shared.
        if not isinstance(self.model, torch.jit.ScriptModule) and any(
                isinstance(m, nn.Conv2d) for m in self.model.modules()):
            self.model.to(memory_format=torch.channels_last)
        if not self.model_id:
            self.model_id = weights_sha256(self.model)

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def short_id(self) -> str:
        return self.model_id[:12]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> [0, 1] RGB (not clipped), as ``preprocess.denormalize``.

        Args:
            x: model-space tensor (N, C, H, W).
        """
        return self.preprocess.denormalize(x)

    def inputs(self, images) -> torch.Tensor:
        """Raw RGB uint8 image(s) -> model input on the bundle's device.

        Args:
            images: one RGB uint8 image (H, W, 3), or a sequence / (N, H, W, 3) array of them (any
                sizes: each is resized and cropped by the preprocessing).
        """
        return self.preprocess(images).to(self.device)

    def copy_model(self) -> nn.Module:
        """A deep copy for methods that must change the model (never the shared one)."""
        with self.lock:
            return copy.deepcopy(self.model)

    def card(self) -> dict:
        """The model card shown on the home page and stored with audit runs: name, architecture,
        source, parameter count, input size, classes, ``model_id``, device and preprocessing.
        """
        return {"name": self.name, "architecture": self.architecture, "source": self.source,
                "parameters": self.num_parameters, "input_size": self.input_size,
                "classes": self.num_classes, "model_id": self.model_id,
                "device": str(self.device), "preprocessing": self.preprocess.spec,
                "preprocessing_source": self.preprocess_note, "description": self.description}
