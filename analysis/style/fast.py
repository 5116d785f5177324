"""Fast (feed-forward) style transfer: Johnson, Alahi & Fei-Fei 2016, with instance
normalisation (Ulyanov, Vedaldi & Lempitsky 2016).

A small image-to-image network is trained once per style to minimise the same perceptual
loss that Gatys et al. minimise per image (content features at one layer, Gram matrices at
several, total variation; analysis/style/gatys.py, on the same feature extractor); afterwards one
forward pass stylises any image.

* ``TransformerNet``: reflection-padded convolutions 9×9 → 3×3/2 → 3×3/2, five residual
  blocks, two nearest-neighbour upsamplings each followed by a 3×3 convolution, a 9×9
  output convolution; InstanceNorm after every convolution but the last. Upsampling goes
  back to the exact sizes seen on the way down, so odd image sizes are kept.
* ``train_fast_style``: a generator (``TrainStep`` per step, ``TrainResult`` at the end)
  over random crops and flips of a content set (the gallery photos by default, or any
  ``Dataset``), with loss curves, a preview of a fixed image, checkpoints every N steps, on
  stop and on close, and resume from the last checkpoint.
* Networks live in ``<data_dir>/style_networks/<name>/``: ``network.safetensors`` (the
  architecture in its metadata), ``optimizer.safetensors`` (Adam's moments, for resume),
  ``meta.json`` (settings, style image hash, loss history), ``style.png``, ``preview.png``.
  Loading reads safetensors only — nothing is ever unpickled — and refuses files whose
  names, shapes or values do not fit the architecture with a ``WeightsError``.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import analysis.optimize as O
import analysis.style.gatys as S
from analysis.core.config import get_config
from analysis.core.errors import ConvlensError, ParameterError, WeightsError
from analysis.core.fsio import atomic_write
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import is_int

FORMAT = "convlens-fast-style-v1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_META_BYTES = 8 * 2**20


# ====================================================================== network


class ConvLayer(nn.Module):
    """Reflection padding + convolution (no zero borders, so no dark frames)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        """Reflection-pad then convolve.

        Args:
            x: feature batch (B, C_in, H, W); the output is (B, C_out, ceil(H / stride), ceil(W / stride)).
        """
        return self.conv(self.pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(ch, ch, 3), nn.InstanceNorm2d(ch, affine=True)
        self.conv2, self.in2 = ConvLayer(ch, ch, 3), nn.InstanceNorm2d(ch, affine=True)

    def forward(self, x):
        """``x`` plus two instance-normalised 3×3 convolutions of it (ReLU between them).

        Args:
            x: feature batch (B, C, H, W); the output has the same shape.
        """
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network; input and output RGB in [0, 1]
    (the output is not clipped while training; ``stylize`` clips it)."""

    def __init__(self, width: int = 32, n_res: int = 5):
        super().__init__()
        w = int(width)
        self.width, self.n_res = w, int(n_res)
        self.conv1, self.in1 = ConvLayer(3, w, 9), nn.InstanceNorm2d(w, affine=True)
        self.conv2, self.in2 = ConvLayer(w, 2 * w, 3, 2), nn.InstanceNorm2d(2 * w, affine=True)
        self.conv3, self.in3 = ConvLayer(2 * w, 4 * w, 3, 2), nn.InstanceNorm2d(4 * w, affine=True)
        self.res = nn.Sequential(*[ResidualBlock(4 * w) for _ in range(self.n_res)])
        self.up1, self.in4 = ConvLayer(4 * w, 2 * w, 3), nn.InstanceNorm2d(2 * w, affine=True)
        self.up2, self.in5 = ConvLayer(2 * w, w, 3), nn.InstanceNorm2d(w, affine=True)
        self.out = ConvLayer(w, 3, 9)

    @property
    def config(self) -> dict:
        return {"width": self.width, "n_res": self.n_res}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stylise a batch.

        Args:
            x: RGB batch (B, 3, H, W) in [0, 1], any H and W (the upsampling returns to the input
                size); the output has the same shape, values not clamped.
        """
        s0 = x.shape[-2:]
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        s1 = y.shape[-2:]
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = F.relu(self.in4(self.up1(F.interpolate(y, size=s1, mode="nearest"))))
        y = F.relu(self.in5(self.up2(F.interpolate(y, size=s0, mode="nearest"))))
        return self.out(y)


def _check_arch(width, n_res) -> tuple[int, int]:
    if not (is_int(width) and 4 <= width <= 128) or not (is_int(n_res) and 1 <= n_res <= 16):
        raise ParameterError(f"Network width must be 4-128 and residual blocks 1-16 (got {width!r}, {n_res!r}).")
    return width, n_res


def stylize(net: TransformerNet, image: np.ndarray, max_side: int | None = None,
            device: torch.device | str | None = None) -> np.ndarray:
    """One forward pass: RGB uint8 (H, W, 3) -> stylised RGB uint8 of the same size (or
    of the image scaled so its longer side is ``max_side``, if it is longer; never more
    than 2048 px, whose activations already take about 2 GB).

    Args:
        net: the trained network.
        image: RGB uint8 (H, W, 3).
        max_side: upper bound of the longer side in pixels (None: 2048).
        device: where to run; None for the device the network's parameters are on.
    """
    S.check_rgb(image, "image")
    if max_side is not None:
        S.check_side(max_side, "maximum side")
    max_side = min(max_side or S.MAX_SIDE, S.MAX_SIDE)
    h, w = image.shape[:2]
    size = S.fit_size(h, w, max_side) if max(h, w) > max_side else None
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    x = S.to_unit_tensor(image, size).to(dev)
    with torch.no_grad():
        y = net(x)
    return O.to_uint8(y)[0]


# ====================================================================== storage


def networks_dir() -> Path:
    """The folder of saved fast-style networks (created if needed). Takes no arguments."""
    d = get_config().data_dir / "style_networks"
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_name(name: str) -> str:
    """``name`` if it is an allowed network name (1-64 letters, digits, "_", "-", "."), else ParameterError.

    Args:
        name: the network's name.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ParameterError(f"Network name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
                             "starting with a letter or digit.")
    return name


def network_bytes(net: TransformerNet) -> bytes:
    """The network as safetensors bytes, its architecture in the metadata.

    Args:
        net: the network; its weights are saved as float32 on the CPU.
    """
    from safetensors.torch import save
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    return save(state, metadata={"format": FORMAT, "width": str(net.width), "n_res": str(net.n_res)})


def read_network(data: bytes, filename: str = "network.safetensors") -> TransformerNet:
    """A TransformerNet from safetensors bytes, validated: safetensors only (pickles and
    anything else are refused), architecture from the metadata, exact parameter names and
    shapes, finite float values. Every failure is a ``WeightsError``.

    Args:
        data: the file's bytes (at most the configured ``max_weights_bytes``).
        filename: the name shown in error messages; must end in ``.safetensors``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise WeightsError(f"'{filename}' is empty.")
    limit = get_config().limits.max_weights_bytes
    if len(data) > limit:
        raise WeightsError(f"'{filename}' is larger than the {limit // 2**20} MB limit for weights files.")
    if not filename.lower().endswith(".safetensors"):
        raise WeightsError(f"'{filename}': style networks are read from .safetensors files only "
                           "(pickled .pt/.pth files can run code when loaded and are never opened).")
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise WeightsError(f"'{filename}' is a pickle / torch.save file, not safetensors: refused "
                           "(pickles can run code when loaded).")
    try:
        header_len = int.from_bytes(bytes(data[:8]), "little")
        if header_len <= 0 or header_len > min(len(data) - 8, 100 * 2**20):
            raise ValueError("bad header length")
        header = json.loads(bytes(data[8:8 + header_len]))
        meta = header.get("__metadata__") or {}
        state = st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, OSError, UnicodeDecodeError, AttributeError) as e:
        raise WeightsError(f"'{filename}' is not a valid safetensors file (truncated or corrupt?): {str(e)[:200]}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"'{filename}' is not a convlens style network (metadata format "
                           f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}).")
    try:
        width, n_res = _check_arch(int(meta.get("width", "")), int(meta.get("n_res", "")))
    except (ValueError, ParameterError) as e:
        raise WeightsError(f"'{filename}': its architecture metadata is invalid ({e}).") from e
    net = TransformerNet(width, n_res)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise WeightsError(f"'{filename}' does not match the network: missing {missing[:4]}, unexpected {extra[:4]}.")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsError(f"'{filename}': {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}.")
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise WeightsError(f"'{filename}': {k} is not a finite floating-point tensor.")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _optimizer_bytes(opt: torch.optim.Optimizer) -> bytes:
    from safetensors.torch import save
    sd = opt.state_dict()
    flat = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            flat[f"{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(float(v))).detach().float().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return save(flat, metadata={"format": FORMAT + "-adam", "groups": json.dumps(groups, default=str)})


def _load_optimizer(opt: torch.optim.Optimizer, data: bytes) -> bool:
    """Adam's state from safetensors bytes; False (fresh Adam) when it does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load
    try:
        flat = st_load(data)
        sd = opt.state_dict()
        state = {}
        for key, v in flat.items():
            i, k = key.split(".", 1)
            state.setdefault(int(i), {})[k] = v
        params = sd["param_groups"][0]["params"]
        if sorted(state) != sorted(params):
            return False
        opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
        return True
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError):
        return False


@dataclass
class NetworkInfo:
    name: str
    path: Path
    steps: int = 0
    total_steps: int = 0
    final_loss: float | None = None
    created: str = ""
    settings: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def style_path(self) -> Path:
        return self.path / "style.png"

    @property
    def preview_path(self) -> Path:
        return self.path / "preview.png"


def _read_meta(folder: Path) -> dict:
    p = folder / "meta.json"
    try:
        if p.stat().st_size > MAX_META_BYTES:
            raise WeightsError(f"{p.name} of '{folder.name}' is too large.")
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        raise WeightsError(f"'{folder.name}' has no meta.json (not a saved style network).") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise WeightsError(f"meta.json of '{folder.name}' is corrupt: {str(e)[:200]}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"meta.json of '{folder.name}' is not a convlens style-network record.")
    return meta


def list_networks() -> list[NetworkInfo]:
    """Saved networks, newest first; broken folders are listed with their ``error``."""
    out = []
    for d in sorted(networks_dir().iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            meta = _read_meta(d)
            if not (d / "network.safetensors").is_file():
                raise WeightsError(f"'{d.name}' has no network.safetensors.")
            hist = meta.get("history", {}).get("loss", [])
            out.append(NetworkInfo(d.name, d, int(meta.get("steps_done", 0)), int(meta.get("settings", {}).get("steps", 0)),
                                   float(hist[-1]) if hist else None, str(meta.get("updated", "")),
                                   dict(meta.get("settings", {}))))
        except (ConvlensError, ValueError, TypeError, AttributeError) as e:
            out.append(NetworkInfo(d.name, d, error=str(e)))
    return sorted(out, key=lambda i: i.created, reverse=True)


def load_network(name: str, device: torch.device | str | None = None) -> tuple[TransformerNet, dict]:
    """A saved network (safetensors only) and its meta record.

    Args:
        name: the saved network's name (checked as a safe folder name).
        device: move the network there; None leaves it on the CPU.
    """
    folder = networks_dir() / check_name(name)
    if not folder.is_dir():
        raise ParameterError(f"No saved style network named {name!r}.")
    meta = _read_meta(folder)
    path = folder / "network.safetensors"
    if not path.is_file():
        raise WeightsError(f"'{name}' has no network.safetensors.")
    net = read_network(path.read_bytes(), f"{name}/network.safetensors")
    if device is not None:
        net.to(device)
    return net, meta


def import_network(data: bytes, name: str, filename: str = "network.safetensors") -> NetworkInfo:
    """Store an uploaded network (validated first) under ``name`` so it can be listed and applied.

    Args:
        data: the uploaded file's bytes.
        name: the name to store it under (a new, safe folder name).
        filename: the upload's file name (must end in ``.safetensors``), recorded in the meta.
    """
    check_name(name)
    net = read_network(data, filename)
    folder = networks_dir() / name
    if folder.exists():
        raise ParameterError(f"A network named {name!r} exists already; choose another name.")
    folder.mkdir(parents=True)
    atomic_write(folder / "network.safetensors", network_bytes(net))
    meta = {"format": FORMAT, "name": name, "steps_done": 0, "imported_from": Path(filename).name,
            "settings": {"width": net.width, "n_res": net.n_res}, "history": {}, "updated": _now()}
    atomic_write(folder / "meta.json", json.dumps(meta, indent=1).encode())
    return next(i for i in list_networks() if i.name == name)


def delete_network(name: str) -> None:
    """Delete a saved fast-style network (nothing happens if there is none).

    Args:
        name: the network's name.
    """
    folder = networks_dir() / check_name(name)
    if folder.is_dir():
        shutil.rmtree(folder)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ====================================================================== content set


class ContentSampler:
    """Random square crops (scale jitter 1-1.5×) and horizontal flips of a content set,
    deterministic per (seed, step): resuming draws the same batches."""

    def __init__(self, images: Sequence[np.ndarray] | None = None, dataset=None, size: int = 128, seed: int = 0,
                 max_images: int = 5000):
        if images is None and dataset is None:
            from analysis.core.images import gallery_image, gallery_names
            images = [gallery_image(n) for n in gallery_names("photo")]
        self.images, self.dataset = (list(images) if images is not None else None), dataset
        self.n = len(self.images) if self.images is not None else min(len(dataset), max_images)
        if self.n == 0:
            raise ParameterError("The content set is empty.")
        self.size, self.seed = int(size), int(seed)
        self._cache: dict[int, Image.Image] = {}

    def _image(self, i: int) -> Image.Image:
        if i not in self._cache:
            arr = self.images[i] if self.images is not None else self.dataset.get(i)
            S.check_rgb(np.asarray(arr), "content image")
            im = Image.fromarray(np.ascontiguousarray(arr))
            s = 1.5 * self.size / min(im.size)            # keep only what the largest crop scale needs
            if s < 1:
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
            if self.images is not None or len(self._cache) < 256:
                self._cache[i] = im
            else:
                return im
        return self._cache[i]

    def batch(self, step: int, batch: int) -> torch.Tensor:
        """One training batch of content crops, the same for the same (seed, step).

        Args:
            step: the training step (seeds the draw together with the sampler's seed).
            batch: how many crops.

        Returns:
            (batch, 3, size, size) float in [0, 1].
        """
        rng = np.random.default_rng([self.seed, int(step)])
        out = []
        for i in rng.integers(0, self.n, batch):
            im = self._image(int(i))
            side = self.size * rng.uniform(1.0, 1.5)
            s = side / min(im.size)
            w, h = max(self.size, round(im.width * s)), max(self.size, round(im.height * s))
            im2 = im.resize((w, h), Image.BILINEAR)
            x0, y0 = int(rng.integers(0, w - self.size + 1)), int(rng.integers(0, h - self.size + 1))
            crop = np.asarray(im2.crop((x0, y0, x0 + self.size, y0 + self.size)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(np.ascontiguousarray(crop))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


# ====================================================================== training


@dataclass
class TrainStep:
    step: int
    total: int
    loss: float
    terms: dict[str, float]             # content, style, tv (the weighted parts of the loss)
    preview: np.ndarray | None          # (H, W, 3) uint8 on preview steps
    seconds: float
    checkpoint: bool = False


@dataclass
class TrainResult:
    name: str
    path: Path
    history: dict[str, list[float]]
    steps: int
    total: int
    stopped: bool
    seconds: float
    meta: dict
    preview: np.ndarray | None = None
    net: TransformerNet | None = field(default=None, repr=False)   # the trained network (eval mode)


FAST_DEFAULTS = dict(steps=400, size=128, batch=4, lr=1e-3, width=32, n_res=5, style_weight=10.0, content_weight=1.0,
                     tv_weight=1e-3, style_scale=1.0, checkpoint_every=100, preview_every=20)


def _settings(bundle: ModelBundle, kw: dict) -> dict:
    d = S.default_settings(bundle)
    s = dict(FAST_DEFAULTS)
    s.update(content_layer=d.content_layer, style_layers=dict(d.style_layers))
    for k, v in kw.items():
        if v is not None:
            s[k] = v
    limit = get_config().limits.max_optimisation_steps * 20
    for k, lo, hi in (("steps", 1, limit), ("size", 32, 1024), ("batch", 1, 64), ("checkpoint_every", 1, 10 ** 6),
                      ("preview_every", 0, 10 ** 6)):
        v = s[k]
        if not is_int(v) or not lo <= v <= hi:
            raise ParameterError(f"{k.replace('_', ' ')} must be a whole number between {lo} and {hi} (got {v!r}).")
        s[k] = int(v)
    _check_arch(s["width"], s["n_res"])
    for k in ("lr", "style_weight", "content_weight", "tv_weight", "style_scale"):
        S.check_nonneg(k.replace("_", " "), s[k])
    if s["lr"] <= 0 or s["lr"] > 1:
        raise ParameterError(f"The learning rate must be in (0, 1] (got {s['lr']}).")
    if s["style_weight"] == 0 and s["content_weight"] == 0:
        raise ParameterError("Content and style weights are both 0: nothing to learn.")
    if not 0.1 <= s["style_scale"] <= 4:
        raise ParameterError("The style scale must be between 0.1 and 4.")
    s["style_layers"] = S.layer_weights_of(s["style_layers"], "style")
    s["content_layer"] = str(s["content_layer"])
    return s


def train_fast_style(bundle: ModelBundle, style_image: np.ndarray | None, name: str, *, content=None,
                     preview_image: np.ndarray | None = None, preview_side: int = 256, resume: bool = False,
                     overwrite: bool = False, seed: int = 0, **settings) -> Generator[TrainStep, str | None, TrainResult]:
    """Train (or, with ``resume``, continue training) the network ``name`` for ``style_image``.

    ``steps`` (one of the settings) is the total to reach; resuming continues from the last
    checkpoint with the saved settings, style image and history (``steps`` may be raised).
    ``send("stop")`` (or closing the generator) saves a checkpoint; so does every
    ``checkpoint_every``-th step.

    Args:
        bundle: the feature extractor whose Gram matrices define the loss.
        style_image: RGB uint8 style image; ignored (may be None) when resuming.
        name: the network's name (a safe folder name).
        content: the content images: None (the gallery photos), a list of RGB images, or a
            ``Dataset``.
        preview_image: RGB uint8 image stylised for the progress previews (None: the gallery cat).
        preview_side: the preview image's longer side in pixels.
        resume: continue the saved network ``name`` (same feature extractor required).
        overwrite: allow training a new network under the name of an existing one.
        seed: seed of the initial weights and of the content batches (a resumed run keeps its own).
        **settings: any of ``FAST_DEFAULTS`` plus ``content_layer`` and ``style_layers``
            (default: the extractor's style defaults).
    """
    check_name(name)
    folder = networks_dir() / name
    dev = bundle.device
    if resume:
        if not folder.is_dir():
            raise ParameterError(f"No saved network {name!r} to resume.")
        meta = _read_meta(folder)
        if meta.get("model_id") != bundle.model_id:
            raise ParameterError(f"'{name}' was trained with another feature extractor (model_id "
                                 f"{str(meta.get('model_id'))[:12]}); select that model to resume it.")
        net = read_network((folder / "network.safetensors").read_bytes(), f"{name}/network.safetensors")
        saved = dict(meta["settings"])
        if settings.get("steps") is not None:
            saved["steps"] = settings["steps"]
        s = _settings(bundle, saved)
        from analysis.core.images import load_image
        style_image = load_image((folder / "style.png").read_bytes(), name="style.png")
        history = {k: list(map(float, v)) for k, v in meta.get("history", {}).items()}
        done = int(meta.get("steps_done", 0))
        seed = int(meta.get("seed", seed))
    else:
        S.check_rgb(style_image, "style image")
        if folder.exists() and not overwrite:
            raise ParameterError(f"A network named {name!r} exists already: resume it, or choose another name.")
        s = _settings(bundle, settings)
        torch.manual_seed(int(seed))
        net = TransformerNet(s["width"], s["n_res"])
        history, done, meta = {"loss": [], "content": [], "style": [], "tv": []}, 0, {}
    net.to(dev).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
    resumed_opt = resume and (folder / "optimizer.safetensors").is_file() and \
        _load_optimizer(opt, (folder / "optimizer.safetensors").read_bytes())

    sampler = ContentSampler(content if isinstance(content, (list, tuple)) else None,
                             None if isinstance(content, (list, tuple)) or content is None else content,
                             size=s["size"], seed=seed)
    size = s["size"]
    style_unit = S.to_unit_tensor(style_image, S.fit_size(*style_image.shape[:2], max(16, round(size * s["style_scale"]))))
    lw, c_layer = s["style_layers"], s["content_layer"]
    targets = S.gram_targets(bundle, [(S.model_channels(style_unit, bundle).to(dev), 1.0)], list(lw)) \
        if s["style_weight"] > 0 else {}
    if preview_image is None:
        from analysis.core.images import gallery_image
        preview_image = gallery_image("chelsea")
    S.check_rgb(preview_image, "preview image")
    prev_x = S.to_unit_tensor(preview_image, S.fit_size(*preview_image.shape[:2], preview_side)).to(dev)

    record = {"format": FORMAT, "name": name, "settings": s, "seed": seed, "model_id": bundle.model_id,
              "extractor": bundle.name, "content_set": _describe_content(content),
              "style_image_sha256": _sha(style_image), "created": meta.get("created", _now())}
    if not folder.exists():
        folder.mkdir(parents=True)
    atomic_write(folder / "style.png", _png(style_image))
    saved_at = [done]

    def preview() -> np.ndarray:
        net.eval()
        with torch.no_grad():
            img = O.to_uint8(net(prev_x))[0]
        net.train()
        return img

    def save() -> None:
        atomic_write(folder / "network.safetensors", network_bytes(net))
        atomic_write(folder / "optimizer.safetensors", _optimizer_bytes(opt))
        atomic_write(folder / "preview.png", _png(preview()))
        rec = dict(record, steps_done=done, history=history, updated=_now(), device=str(dev))
        atomic_write(folder / "meta.json", json.dumps(rec, indent=1).encode())
        saved_at[0] = done

    total, t0, stopped = s["steps"], time.perf_counter(), False
    sw, cw, tvw = s["style_weight"], s["content_weight"], s["tv_weight"]
    try:
        while done < total:
            x = sampler.batch(done, s["batch"]).to(dev)
            xm = S.model_channels(x, bundle)
            with bundle.lock:
                c_feat = S.features(bundle, xm, [c_layer])[c_layer] if cw > 0 else None
                with torch.enable_grad():
                    y = net(x)
                    ym = S.model_channels(y, bundle)
                    if sw > 0:
                        obj = S.style_objective(targets, lw, sw, (c_layer, c_feat) if cw > 0 else None, cw, tvw,
                                                size * size)
                    else:
                        obj = cw * O.feature_match(c_layer, c_feat)
                        if tvw > 0:
                            obj = obj - (tvw / (size * size)) * O.total_variation()
                    ctx = O.forward_context(bundle, obj, ym, ym, None)
                    value, terms = obj.evaluate(ctx)
                    loss = -value
                    if not torch.isfinite(loss):
                        raise ParameterError("The training loss became infinite or NaN; lower the learning rate.")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
            opt.step()
            done += 1
            tot_w = sum(lw.values())
            parts = {"content": cw * -terms.get(f"match {c_layer}", 0.0),
                     "style": sw * sum(-terms.get(f"gram {k}", 0.0) * w / tot_w for k, w in lw.items()),
                     "tv": tvw / (size * size) * terms.get("TV", 0.0)}
            history["loss"].append(float(loss.detach()))
            for k, v in parts.items():
                history.setdefault(k, []).append(float(v))
            ckpt = done % s["checkpoint_every"] == 0 or done == total
            if ckpt:
                save()
            pv = s["preview_every"]
            show = bool(pv) and (done % pv == 0 or done == total)
            cmd = yield TrainStep(done, total, float(loss.detach()), parts, preview() if show else None,
                                  time.perf_counter() - t0, ckpt)
            if cmd == "stop":
                stopped = done < total
                break
    finally:
        # stop, close (a page rerun) or error: keep what was learnt
        if done > saved_at[0]:
            save()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    meta = dict(record, steps_done=done, history=history, resumed_optimizer=bool(resumed_opt))
    return TrainResult(name, folder, history, done, total, stopped, time.perf_counter() - t0, meta,
                       preview=np.asarray(Image.open(folder / "preview.png").convert("RGB")) if (folder / "preview.png").is_file()
                       else None, net=net)


def _describe_content(content) -> str:
    if content is None:
        return "gallery photos (random crops and flips)"
    if isinstance(content, (list, tuple)):
        return f"{len(content)} images (random crops and flips)"
    return f"data set {getattr(content, 'name', '?')} ({len(content)} images; random crops and flips)"


def _sha(image: np.ndarray) -> str:
    from analysis.core.images import image_hash
    return image_hash(image)


def _png(image: np.ndarray) -> bytes:
    from analysis.core.images import to_png_bytes
    return to_png_bytes(np.ascontiguousarray(image))
