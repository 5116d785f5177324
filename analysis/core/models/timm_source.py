"""timm models: any architecture of ``timm.list_models()`` by name, with seeded random
weights, a user weights file (.safetensors, or .pt/.pth read with ``weights_only=True``) or
timm's pretrained weights (a download; offline it fails with a message naming the
alternatives). Preprocessing comes from the model's ``pretrained_cfg`` (input size,
mean/std, interpolation, crop fraction and mode); class names from timm's offline ImageNet
metadata when the output size is 1000 / 11821 / 21841, or from a user class-names file.
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from analysis.core.errors import ModelLoadError, ParameterError, WeightsError
from analysis.core.models.bundle import MAX_INPUT, ModelBundle, Preprocessing
from analysis.core.models.loaders import (
    OFFLINE_ALTERNATIVES,
    describe_mismatch,
    read_state_dict,
    select_device,
    upload_classes,
)
from analysis.core.models.registry import ModelSpec, parse_overrides, register_source

IMAGENET_SUBSETS = {1000: "imagenet-1k", 11821: "imagenet-12k", 21841: "imagenet-22k"}
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")


@lru_cache(maxsize=1)
def timm_architectures() -> tuple[str, ...]:
    """Every architecture name timm can build (``timm.list_models()``, no download)."""
    import timm
    return tuple(timm.list_models())


def check_timm_arch(name: str) -> None:
    """ParameterError unless ``name`` is one of ``timm.list_models()``."""
    if not isinstance(name, str) or name not in timm_architectures():
        close = [a for a in timm_architectures() if isinstance(name, str) and name and name.split("_")[0] in a][:6]
        raise ParameterError(f"Unknown timm architecture {name!r}." + (f" Similar: {', '.join(close)}." if close else
                                                                       " See timm.list_models()."))


def _create(name: str, *, seed: int, img_size: int | None = None, num_classes: int | None = None,
            pretrained: bool = False) -> nn.Module:
    """timm.create_model with seeded initialisation; ``img_size`` only for models that take
    one (ViT, DeiT, Swin...), silently not for CNNs that accept any size."""
    import timm
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if img_size is not None:
            try:
                return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError:
                pass                     # a model without img_size: it takes any input size
        return timm.create_model(name, pretrained=pretrained, **kwargs)


HUB_HOST = "huggingface.co"


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds (name
    resolution included: it runs in a daemon thread, since getaddrinfo has no timeout)."""
    import socket
    import threading
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)
    t = threading.Thread(target=probe, daemon=True, name="convlens-hub-probe")
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def _pretrained_cached(name: str) -> bool:
    """Whether timm's pretrained weights of ``name`` are already in the local hub cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
        repo = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
        return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str)
                                  for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:  # noqa: BLE001 - a cache we cannot read is a cache we do not have
        return False


def timm_preprocessing(model: nn.Module) -> tuple[Preprocessing, str]:
    """The model's preprocessing from its ``pretrained_cfg`` (timm's resolve_data_config):
    input size, mean/std, interpolation, crop_pct (resize = floor(size / crop_pct)) and
    crop_mode. Returns (preprocessing, a note saying where it came from)."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config(model=model)
    _, h, w = cfg["input_size"]
    note = f"From timm's pretrained_cfg of {getattr(model, 'default_cfg', {}).get('architecture', 'the model')}"
    if h != w:
        note += f" (its {h}×{w} input is used as {h}×{h})"
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    resize = max(h, int(math.floor(h / crop_pct)))
    mode = cfg.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        note += f"; its crop mode {mode!r} is applied as a centre crop"
        mode = "center"
    interp = cfg.get("interpolation", "bilinear")
    interp = interp if interp in _INTERPOLATIONS else "bilinear"
    mean, std = tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])
    return Preprocessing(int(h), resize, mean, std, interp, crop_mode=mode), note + "."


def timm_categories(num_classes: int) -> list[str] | None:
    """Class names from timm's offline ImageNet metadata for 1000 / 11821 / 21841 outputs
    (the first lemma of each WordNet synset), else None.

    Args:
        num_classes: the model's output count.
    """
    subset = IMAGENET_SUBSETS.get(int(num_classes))
    if subset is None:
        return None
    from timm.data import ImageNetInfo
    return list(ImageNetInfo(subset).label_descriptions())


def _classifier_outputs(model: nn.Module, state: dict) -> int | None:
    """The number of classes in ``state`` read from the model's classifier weights (timm's
    pretrained_cfg names them), when it differs from the model's."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    outs = {int(state[f"{h}.weight"].shape[0]) for h in heads if f"{h}.weight" in state
            and state[f"{h}.weight"].dim() >= 1}
    return outs.pop() if len(outs) == 1 else None


def _load_state(model: nn.Module, name: str, state: dict) -> None:
    """Strict load; on a mismatch, once more through the architecture's own
    ``checkpoint_filter_fn`` (timm's: e.g. a ViT's position embeddings resampled to the grid
    of another input size). Raises RuntimeError when neither matches."""
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError:
        import importlib

        from timm.models import model_entrypoint
        fn = getattr(importlib.import_module(model_entrypoint(name).__module__), "checkpoint_filter_fn", None)
        if fn is None:
            raise
    try:
        filtered = fn(dict(state), model)
    except Exception as e:  # noqa: BLE001 - a filter that cannot adapt the file means "does not match"
        raise RuntimeError(str(e)) from None
    model.load_state_dict(filtered, strict=True)


def timm_bundle(name: str, *, seed: int = 0, weights: bytes | None = None, filename: str = "",
                class_names: list[str] | None = None, pretrained: bool = False, img_size: int | None = None,
                device: torch.device | None = None) -> ModelBundle:
    """A timm architecture as a ModelBundle.

    Args: name (one of ``timm.list_models()``); seed (random initialisation); weights /
    filename (a user's state dict, read safely by ``read_state_dict``; the number of
    classes is taken from its classifier); class_names (must match the outputs);
    pretrained (download timm's weights; offline this raises ModelLoadError); img_size
    (build fixed-size models such as ViT at this input side); device.
    """
    check_timm_arch(name)
    if img_size is not None and not 8 <= img_size <= MAX_INPUT:
        raise ParameterError(f"input size {img_size} is outside 8..{MAX_INPUT} pixels.")
    if pretrained and weights is not None:
        raise ParameterError("Choose either timm's pretrained weights or your own file, not both.")
    digest = ""
    if pretrained:
        if not _pretrained_cached(name) and not _hub_reachable():
            # Fail at once instead of after the hub client's minute of retries.
            raise ModelLoadError(
                f"timm's pretrained weights of {name} are not in the local cache and {HUB_HOST} cannot be "
                f"reached: this machine seems to be offline. Alternatives: random weights, your own weights "
                f"file for {name}, or {OFFLINE_ALTERNATIVES}.")
        try:
            model = _create(name, seed=seed, img_size=img_size, pretrained=True)
        except Exception as e:  # noqa: BLE001 - hub, network and cache errors all mean "no weights"
            raise ModelLoadError(
                f"Could not download timm's pretrained weights of {name}: {type(e).__name__}: {str(e)[:200]}. "
                f"This machine seems to be offline (or {name} has no pretrained weights). Alternatives: random "
                f"weights, your own weights file for {name}, or {OFFLINE_ALTERNATIVES}.") from None
        origin = "timm pretrained weights"
    else:
        try:
            model = _create(name, seed=seed, img_size=img_size)
        except (RuntimeError, ValueError, AssertionError, TypeError) as e:
            raise ModelLoadError(f"timm could not build {name}: {type(e).__name__}: {str(e)[:300]}") from None
        origin = f"random weights, seed {seed}"
        if weights is not None:
            state = read_state_dict(weights, filename)
            n = _classifier_outputs(model, state)
            if n is not None and n != model.num_classes:
                model = _create(name, seed=seed, img_size=img_size, num_classes=n)
            try:
                _load_state(model, name, state)
            except RuntimeError:
                raise WeightsError(f"'{filename}' does not match timm's {name}: {describe_mismatch(model, state)}. "
                                   "Pick the architecture (and input size, for ViT-like models) these weights "
                                   "were trained with.") from None
            digest = hashlib.sha256(weights).hexdigest()
            origin = f"your weights '{filename}'"
    pre, note = timm_preprocessing(model)
    n_out = int(model.num_classes)
    if class_names is not None and len(class_names) != n_out:
        raise ParameterError(f"{len(class_names)} class names given but the model has {n_out} outputs.")
    cats = class_names or timm_categories(n_out) or [f"class {i}" for i in range(n_out)]
    if weights is not None and class_names is None and n_out in IMAGENET_SUBSETS:
        note += f" Class names: timm's {IMAGENET_SUBSETS[n_out]} metadata (assumed from the output size)."
    return ModelBundle(
        model=model, preprocess=pre, categories=cats, name=f"{name} (timm, {origin})", architecture=name,
        source="timm", device=device or select_device(), preprocess_note=note,
        description=f"timm {name} with {origin}" + (f" (file sha256 {digest[:12]})" if digest else "") + ".")


def _label(spec: ModelSpec) -> str:
    how = "pretrained" if spec.pretrained else ("your weights" if spec.weights else f"random, seed {spec.seed}")
    return f"{spec.arch} (timm, {how})"


@register_source("timm", "timm architecture (any of timm.list_models())", _label, editable_preprocessing=True)
def _load_timm(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    data, filename = None, ""
    if spec.weights:
        from analysis.core.store import read_upload
        data, filename = read_upload(spec.weights, uploads_dir)
    size = parse_overrides(spec.preprocess).get("input_size")
    return timm_bundle(spec.arch, seed=spec.seed, weights=data, filename=filename, pretrained=spec.pretrained,
                       class_names=upload_classes(spec, uploads_dir), img_size=size, device=device)
