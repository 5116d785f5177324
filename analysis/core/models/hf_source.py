"""Hugging Face transformers image classifiers, offline and without remote code.

A model is a folder with ``config.json``, ``model.safetensors`` and
``preprocessor_config.json``: either a sub-folder of the operator's trusted model folder or
an uploaded zip holding these three files (other files in it are ignored, never
extracted). What could run code is refused before anything is built: ``trust_remote_code``
is never set, a config naming remote code (``auto_map``) is refused, the model type must be
one transformers itself knows with an image-classification head, and weights are read only
from safetensors. Class names come from ``id2label``, preprocessing from the processor
config (sizes bounded). The model is wrapped so that it returns the logits as a tensor.
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from analysis.core.config import get_config
from analysis.core.errors import ModelLoadError
from analysis.core.models.bundle import MAX_INPUT, MIN_INPUT, ModelBundle, Preprocessing
from analysis.core.models.loaders import list_trusted, select_device
from analysis.core.models.registry import ModelSpec, register_source

CONFIG, WEIGHTS, PROCESSOR = "config.json", "model.safetensors", "preprocessor_config.json"
HF_FILES = (CONFIG, WEIGHTS, PROCESSOR)
MAX_JSON_BYTES = 1 << 20
# PIL resampling codes used by transformers' image processors.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


class HFImageClassifier(nn.Module):
    """A transformers ``*ForImageClassification`` model that returns logits as a tensor
    (``forward(x) -> (N, classes)``); ``attentions(x)`` returns (logits, attention
    probabilities per layer) for the attention saliency methods."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's logits as a tensor.

        Args:
            x: model-space batch (N, C, H, W), passed as ``pixel_values``.
        """
        return self.hf(pixel_values=x).logits

    def attentions(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(logits, attention probabilities (N, heads, T, T) of every layer).

        Args:
            x: model-space batch (N, C, H, W), passed as ``pixel_values``.
        """
        out = self.hf(pixel_values=x, output_attentions=True)
        if not out.attentions:
            raise ModelLoadError("This Hugging Face model does not return attention probabilities.")
        return out.logits, tuple(out.attentions)


# ---------------------------------------------------------------- checks before building

def _json(data: bytes, name: str) -> dict:
    if len(data) > MAX_JSON_BYTES:
        raise ModelLoadError(f"{name} is {len(data):,} bytes, over the {MAX_JSON_BYTES:,}-byte limit.")
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{name} must hold a JSON object.")
    return obj


def check_config(cfg: dict) -> str:
    """Refuse configs that would need remote code or are not image classifiers transformers
    knows. Returns the architecture name (e.g. "ViTForImageClassification").

    Args:
        cfg: the parsed ``config.json``.
    """
    if "auto_map" in cfg or cfg.get("trust_remote_code"):
        raise ModelLoadError("config.json names custom code (auto_map): convlens never runs code from a model "
                             "folder (trust_remote_code is never set). Use a model type built into transformers.")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    mtype = cfg.get("model_type")
    if not isinstance(mtype, str) or mtype not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(f"config.json: model_type {mtype!r} is not a model type built into transformers.")
    head = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(mtype)
    if head is None:
        raise ModelLoadError(f"config.json: transformers has no image-classification model for {mtype!r}.")
    archs = cfg.get("architectures") or [head]
    if not isinstance(archs, list) or not set(archs) <= set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values()):
        raise ModelLoadError(f"config.json: architectures {archs!r} is not [{head!r}]; only image classifiers "
                             "built into transformers are loaded.")
    if cfg.get("num_channels", 3) not in (1, 3):
        raise ModelLoadError(f"config.json: num_channels {cfg.get('num_channels')!r}; images have 1 or 3 channels.")
    return head


def _side(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not MIN_INPUT <= v <= MAX_INPUT:
        raise ModelLoadError(f"preprocessor_config.json: {what} {v!r} is not a size between {MIN_INPUT} and "
                             f"{MAX_INPUT} pixels.")
    return v


def _square(d, what: str) -> int:
    if isinstance(d, int) and not isinstance(d, bool):
        return _side(d, what)
    if not isinstance(d, dict):
        raise ModelLoadError(f"preprocessor_config.json: {what} must be a number or an object, got {d!r}.")
    if "height" in d or "width" in d:
        h, w = _side(d.get("height"), f"{what} height"), _side(d.get("width"), f"{what} width")
        if h != w:
            raise ModelLoadError(f"preprocessor_config.json: {what} {h}×{w} is not square; convlens uses "
                                 "square inputs.")
        return h
    if "shortest_edge" in d:
        return _side(d["shortest_edge"], f"{what} shortest_edge")
    raise ModelLoadError(f"preprocessor_config.json: {what} {d!r} has neither height/width nor shortest_edge.")


def _floats(v, what: str, n: int) -> tuple[float, ...]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v] * n
    if not isinstance(v, list) or len(v) != n or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                     for x in v):
        raise ModelLoadError(f"preprocessor_config.json: {what} must be {n} number(s) (one per channel), got {v!r}.")
    return tuple(float(x) for x in v)


def processor_preprocessing(proc: dict, channels: int = 3) -> tuple[Preprocessing, str]:
    """Preprocessing from a transformers image-processor config: resize (height/width:
    squash to that size; shortest_edge: shorter side, with crop_pct or a crop_size: centre
    crop), rescale factor, mean/std in the model's scale. Sizes are bounded. Returns
    (preprocessing, note).

    Args:
        proc: the parsed ``preprocessor_config.json``.
        channels: the model's input channels (grey models take the mean of the RGB image).
    """
    size = _square(proc.get("size", 224), "size") if proc.get("do_resize", True) else None
    squash = isinstance(proc.get("size"), dict) and "height" in proc["size"]
    crop = _square(proc["crop_size"], "crop_size") if proc.get("do_center_crop") and "crop_size" in proc else None
    if size is None:
        raise ModelLoadError("preprocessor_config.json: do_resize is false; convlens needs a fixed input size.")
    crop_pct = proc.get("crop_pct")
    if crop is not None:
        input_size, resize = crop, max(size, crop)
    elif not squash and isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and 0.1 <= crop_pct <= 1:
        input_size, resize = size, max(size, int(size / crop_pct))
    else:
        input_size, resize = size, size
    rf = proc.get("rescale_factor", 1 / 255) if proc.get("do_rescale", True) else 1.0
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not 1e-6 <= rf <= 1:
        raise ModelLoadError(f"preprocessor_config.json: rescale_factor {rf!r} is out of range.")
    if proc.get("do_normalize", True):
        mean = _floats(proc.get("image_mean", [0.5] * channels), "image_mean", channels)
        std = _floats(proc.get("image_std", [0.5] * channels), "image_std", channels)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    if any(s <= 0 for s in std):
        raise ModelLoadError("preprocessor_config.json: image_std values must be positive.")
    # model input = (x255 * rf - mean) / std = (x01 - mean / (255 rf)) / (std / (255 rf))
    k = 255.0 * rf
    interp = _RESAMPLE.get(proc.get("resample", 2), "bilinear")
    pre = Preprocessing(input_size, resize, tuple(m / k for m in mean), tuple(s / k for s in std), interp,
                        grayscale=channels == 1, crop_mode="squash" if squash else "center")
    return pre, f"From preprocessor_config.json ({proc.get('image_processor_type', 'image processor')})."


# ---------------------------------------------------------------- building

def _build(folder: Path, name: str, device: torch.device | None, origin: str) -> ModelBundle:
    """Load the checked files of ``folder`` (the three HF_FILES) into a bundle."""
    cfg = _json((folder / CONFIG).read_bytes(), CONFIG)
    head = check_config(cfg)
    proc = _json((folder / PROCESSOR).read_bytes(), PROCESSOR)
    pre, note = processor_preprocessing(proc, int(cfg.get("num_channels", 3)))
    import transformers
    from transformers import AutoConfig, AutoModelForImageClassification
    transformers.utils.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        hf, info = AutoModelForImageClassification.from_pretrained(
            str(folder), config=config, trust_remote_code=False, local_files_only=True, use_safetensors=True,
            attn_implementation="eager", output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "cannot load"
        raise ModelLoadError(f"transformers could not load {name}: {type(e).__name__}: {str(e)[:300]}") from None
    bad = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        raise ModelLoadError(f"model.safetensors does not match config.json ({head}): "
                             + "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v))}" for k, v in bad.items()))
    n = int(hf.config.num_labels)
    id2label = hf.config.id2label or {}
    cats = [str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(n)]
    digest = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    return ModelBundle(
        model=HFImageClassifier(hf), preprocess=pre, categories=cats, name=f"{name} (Hugging Face)",
        architecture=head, source="hf", device=device or select_device(), preprocess_note=note,
        description=f"Hugging Face transformers {head} from {origin} (model.safetensors sha256 {digest[:12]}); "
                    "no remote code, safetensors only.")


def hf_bundle_from_dir(path: Path | str, *, name: str | None = None,
                       device: torch.device | None = None) -> ModelBundle:
    """A Hugging Face image classifier from a local folder holding the three HF_FILES.
    Args: path; name (for captions; default the folder name); device."""
    path = Path(path)
    missing = [f for f in HF_FILES if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(f"{path.name}: missing {', '.join(missing)} (a Hugging Face model folder needs "
                             f"{', '.join(HF_FILES)}).")
    limit = get_config().limits.max_weights_bytes
    if (path / WEIGHTS).stat().st_size > limit:
        raise ModelLoadError(f"{path.name}/model.safetensors is over the {limit >> 20} MB weights limit.")
    return _build(path, name or path.name, device, f"folder {path.name}")


def hf_bundle_from_zip(data: bytes, filename: str = "model.zip", *, device: torch.device | None = None) -> ModelBundle:
    """A Hugging Face image classifier from a zip holding the three HF_FILES (at its top or
    in one folder). Only those files are read, with size limits checked before reading.

    Args:
        data: the zip's bytes.
        filename: the upload's name for messages and the model's label.
        device: where the model runs; None for ``select_device()``.
    """
    limits = get_config().limits
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelLoadError(f"'{filename}' is not a zip file.") from None
    with zf, tempfile.TemporaryDirectory(prefix="convlens-hf-") as tmp:
        found: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if base in HF_FILES and not info.is_dir() and info.filename.count("/") <= 1:
                if base in found:
                    raise ModelLoadError(f"'{filename}' holds more than one {base}.")
                found[base] = info
        missing = [f for f in HF_FILES if f not in found]
        if missing:
            raise ModelLoadError(f"'{filename}' lacks {', '.join(missing)} (a Hugging Face model zip needs "
                                 f"{', '.join(HF_FILES)}).")
        for base, info in found.items():
            cap = limits.max_weights_bytes if base == WEIGHTS else MAX_JSON_BYTES
            if info.file_size > cap:
                raise ModelLoadError(f"'{filename}': {base} is {info.file_size:,} bytes, over the {cap:,}-byte limit.")
            with zf.open(info) as src:
                blob = src.read(cap + 1)
            if len(blob) > cap:
                raise ModelLoadError(f"'{filename}': {base} is over the {cap:,}-byte limit.")
            (Path(tmp) / base).write_bytes(blob)
        return _build(Path(tmp), Path(filename).stem, device, f"upload '{filename}'")


def hf_model_folders(root: Path | None = None) -> list[str]:
    """Sub-folders of the trusted model folder that hold the three HF_FILES (relative names).

    Args:
        root: the trusted model folder; None for the configured ``trusted_model_dir``.
    """
    return list_trusted(CONFIG, lambda p: p.parent if all((p.parent / f).is_file() for f in HF_FILES) else None,
                        root)


def _resolve_folder(rel: str, root: Path | None = None) -> Path:
    root = root if root is not None else get_config().trusted_model_dir
    if root is None or not Path(root).is_dir():
        raise ModelLoadError("No trusted model folder is configured (trusted_model_dir).")
    path = (Path(root) / rel).resolve()
    if Path(root).resolve() not in (path, *path.parents) or not path.is_dir():
        raise ModelLoadError(f"{rel!r} is not a folder inside the trusted model folder.")
    return path


def _label(spec: ModelSpec) -> str:
    how, _, ref = spec.weights.partition(":")
    return f"{ref} (Hugging Face)" if how == "dir" else f"uploaded zip {ref[:8]} (Hugging Face)"


@register_source("hf", "Hugging Face image classifier (folder or zip)", _label)
def _load_hf(spec: ModelSpec, device: torch.device, uploads_dir: Path | None) -> ModelBundle:
    """spec.weights: "dir:<folder in the trusted model folder>" or "zip:<upload sha256 name>"."""
    how, _, ref = spec.weights.partition(":")
    if how == "dir":
        return hf_bundle_from_dir(_resolve_folder(ref), device=device)
    if how == "zip":
        from analysis.core.store import read_upload
        data, filename = read_upload(ref, uploads_dir)
        return hf_bundle_from_zip(data, filename, device=device)
    raise ModelLoadError(f"Hugging Face model reference {spec.weights!r} is neither dir:<folder> nor zip:<upload>.")
