"""Model sources as a registry, in the spirit of torchvision's ``register_model``.

A model *source* is one way of getting a ``ModelBundle``: the embedded models, torchvision
architectures, user weights, the operator's trusted folder, timm, Hugging Face. Each one
registers its loader here (``@register_source(kind, title, label)``) and its sidebar form
in ``dashboard/model_forms.py`` under the same ``kind``; ``load_bundle`` looks the kind up
and calls the loader, so adding a source is one entry in each place.

``ModelSpec`` is the hashable, JSON-serialisable description of a choice (the dashboard's
cache key, the share link's ``model=`` value and part of the audit record).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from analysis.core.errors import ParameterError
from analysis.core.models.bundle import MAX_INPUT, MIN_INPUT, ModelBundle, Preprocessing


@dataclass(frozen=True)
class ModelSpec:
    """A hashable description of a model choice (cache key and share-link state).

    kind: a registered source ("default", "digits", "torchvision", "random", "upload",
    "trusted", "timm", "hf"). ``arch``: the architecture name (torchvision or timm).
    ``weights``: upload: sha256 file name in the uploads store; trusted: relative path;
    hf: a folder of the trusted directory or an uploaded zip's sha256 name. ``classes``:
    sha256 name of an uploaded class-names file (optional). ``pretrained``: timm only,
    download the pretrained weights. ``preprocess``: canonical JSON of the user's changes
    to the source's preprocessing (see ``parse_overrides``), "" for none.
    """
    kind: str = "default"
    arch: str = ""
    weights: str = ""
    classes: str = ""
    seed: int = 0
    pretrained: bool = False
    preprocess: str = ""

    def label(self) -> str:
        """The model choice as a short label for the sidebar and records: its source's label
        (e.g. the architecture), plus " · own preprocessing" when the user changed it.
        """
        _import_sources()
        src = SOURCES.get(self.kind)
        base = src.label(self) if src else self.kind
        return base + (" · own preprocessing" if self.preprocess else "")


Loader = Callable[[ModelSpec, torch.device, "Path | None"], ModelBundle]


@dataclass(frozen=True)
class ModelSource:
    """One registered way of getting a model.

    kind: the ``ModelSpec.kind`` it serves; title: the sidebar's option text; load:
    ``(spec, device, uploads_dir) -> ModelBundle``; label: ``spec -> str`` for captions;
    form: the kind of sidebar form that draws it (several kinds may share one, e.g.
    torchvision pretrained and random); available: whether the sidebar offers it now
    (e.g. only when the operator configured a trusted folder); editable_preprocessing:
    whether users may change its preprocessing (uploaded weights, timm: yes; embedded
    models and trusted files: no, their preprocessing is known).
    """
    kind: str
    title: str
    load: Loader
    label: Callable[[ModelSpec], str]
    form: str
    available: Callable[[], bool]
    editable_preprocessing: bool = False
    offered: bool = True            # False: reachable only through another form's choice


SOURCES: dict[str, ModelSource] = {}
# Modules that register sources when imported (like entry points): the built-in ones in
# loaders, timm and Hugging Face in their own modules. Imported on the first look-up, so
# that this module does not import them (they import it) and heavy libraries load late.
SOURCE_MODULES = ("analysis.core.models.loaders", "analysis.core.models.timm_source",
                  "analysis.core.models.hf_source")


def _import_sources() -> None:
    for name in SOURCE_MODULES:
        importlib.import_module(name)


def _always() -> bool:
    return True


def register_source(kind: str, title: str, label: Callable[[ModelSpec], str] | None = None, *,
                    form: str | None = None, available: Callable[[], bool] | None = None,
                    editable_preprocessing: bool = False, offered: bool = True):
    """Decorator registering ``fn(spec, device, uploads_dir) -> ModelBundle`` as the loader of
    ``kind``. Args: kind (unique name, the ModelSpec.kind), title (sidebar text), label
    (spec -> caption; default: the title), form (sidebar form kind; default: ``kind``),
    available (() -> bool; default: always), editable_preprocessing, offered (shown as its
    own sidebar option)."""
    def deco(fn: Loader) -> Loader:
        if kind in SOURCES:
            raise ValueError(f"model source {kind!r} is registered twice")
        SOURCES[kind] = ModelSource(kind, title, fn, label or (lambda spec: title), form or kind,
                                    available or _always, editable_preprocessing, offered)
        return fn
    return deco


def get_source(kind: str) -> ModelSource:
    """The registered source of ``kind`` (ParameterError naming the known ones otherwise)."""
    _import_sources()
    try:
        return SOURCES[kind]
    except KeyError:
        raise ParameterError(f"Unknown model kind {kind!r}; known: {', '.join(SOURCES)}.") from None


def offered_sources() -> list[ModelSource]:
    """Sources the sidebar offers now, in registration order."""
    _import_sources()
    return [s for s in SOURCES.values() if s.offered and s.available()]


# ------------------------------------------------------------------ preprocessing overrides

OVERRIDE_KEYS = ("input_size", "resize_size", "mean", "std", "interpolation", "grayscale",
                 "crop_mode", "channel_order")


def _int_side(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParameterError(f"{name} must be a whole number of pixels (got {v!r}).")
    if not MIN_INPUT <= v <= 4 * MAX_INPUT:
        raise ParameterError(f"{name} {v} is outside {MIN_INPUT}..{4 * MAX_INPUT} pixels.")
    return v


def parse_overrides(text: str) -> dict:
    """Check a preprocessing-overrides JSON object and return it as a dict.

    Keys (all optional): input_size, resize_size (ints), mean, std (lists of numbers, one
    per input channel), interpolation ("bilinear" | "bicubic" | "nearest" | "lanczos"),
    grayscale (bool), crop_mode ("center" | "squash"), channel_order ("rgb" | "bgr").
    Raises ParameterError with a message for anything else.

    Args:
        text: the JSON text from the sidebar or a share link; "" for no changes.
    """
    if not text:
        return {}
    if len(text) > 4000:
        raise ParameterError("The preprocessing settings are too long.")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParameterError(f"The preprocessing settings are not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ParameterError("The preprocessing settings must be a JSON object.")
    unknown = sorted(set(d) - set(OVERRIDE_KEYS))
    if unknown:
        raise ParameterError(f"Unknown preprocessing setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(OVERRIDE_KEYS)}.")
    for k in ("input_size", "resize_size"):
        if k in d:
            _int_side(k.replace("_", " "), d[k])
    for k in ("mean", "std"):
        if k in d:
            v = d[k]
            if not isinstance(v, list) or not v or len(v) > 4 or any(
                    isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
                raise ParameterError(f"{k} must be a list of 1 to 4 numbers (got {v!r}).")
            d[k] = [float(x) for x in v]
    if "grayscale" in d and not isinstance(d["grayscale"], bool):
        raise ParameterError("grayscale must be true or false.")
    for k in ("interpolation", "crop_mode", "channel_order"):
        if k in d and not isinstance(d[k], str):
            raise ParameterError(f"{k} must be a string.")
    return d


def overrides_json(overrides: dict) -> str:
    """Canonical JSON of checked overrides (sorted keys, compact): the ModelSpec field."""
    return json.dumps(parse_overrides(json.dumps(overrides)), sort_keys=True, separators=(",", ":")) \
        if overrides else ""


def apply_overrides(pre: Preprocessing, overrides: dict) -> Preprocessing:
    """``pre`` with the user's changes. A changed input size without a resize size keeps
    the source's resize/crop ratio. Raises ParameterError for an inconsistent result
    (e.g. three means for a grey model).

    Args:
        pre: the source's preprocessing.
        overrides: the checked changes from :func:`parse_overrides`.
    """
    if not overrides:
        return pre
    spec = dict(pre.spec, crop_mode=pre.crop_mode, channel_order=pre.channel_order)
    if "input_size" in overrides and "resize_size" not in overrides:
        ratio = pre.resize_size / pre.input_size
        spec["resize_size"] = max(overrides["input_size"], round(overrides["input_size"] * ratio))
    if overrides.get("grayscale") is True and not pre.grayscale and "mean" not in overrides:
        raise ParameterError("Grey input needs one mean and one std value; set them too.")
    spec.update(overrides)
    try:
        return Preprocessing(int(spec["input_size"]), int(spec["resize_size"]), tuple(spec["mean"]),
                             tuple(spec["std"]), spec["interpolation"], bool(spec["grayscale"]),
                             spec["crop_mode"], spec["channel_order"])
    except ParameterError as e:
        raise ParameterError(f"Preprocessing refused: {e}") from None
