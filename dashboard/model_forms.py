"""The sidebar's model forms, one per model source (analysis.core.models.registry).

``model_picker(select)`` draws the source choice from the registry and the chosen source's
form; a form reads its widgets and calls ``select(ModelSpec)`` when the user loads a model.
Adding a source is one ``@model_form(kind)`` function here and one ``@register_source``
loader in analysis; ``tests/core/test_model_sources.py`` checks that every source has a form.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

from analysis.core.config import get_config
from analysis.core.errors import ParameterError
from analysis.core.models.hf_source import hf_model_folders
from analysis.core.models.loaders import (
    parse_class_names,
    read_state_dict,
    torchvision_architectures,
    trusted_model_files,
)
from analysis.core.models.registry import ModelSpec, get_source, offered_sources, overrides_json
from analysis.core.models.timm_source import timm_architectures
from analysis.core.store import discard_upload, has_upload, save_upload, upload_digest
from dashboard import state
from dashboard.errors import guard
from dashboard.text import plain

Select = Callable[[ModelSpec], bool]
Form = Callable[[ModelSpec, Select], None]
FORMS: dict[str, Form] = {}


def model_form(kind: str):
    """Decorator registering ``fn(current_spec, select)`` as the sidebar form of ``kind``."""
    def deco(fn: Form) -> Form:
        FORMS[kind] = fn
        return fn
    return deco


def model_picker(select: Select) -> None:
    """The model part of the sidebar: the source (from the registry), then its form."""
    current = state.model_spec()
    sources = offered_sources()
    kinds = [s.kind for s in sources]
    titles = {s.kind: s.title for s in sources}
    cur_form = get_source(current.kind).form
    cur_kind = current.kind if current.kind in kinds else next(
        (s.kind for s in sources if s.form == cur_form), kinds[0])
    kind = st.selectbox("Model", kinds, index=kinds.index(cur_kind), format_func=titles.get, key="sb_model_kind")
    form = get_source(kind).form
    # A form starts from the active model's values when it drew that model (the same kind, or
    # a kind it draws without offering it: torchvision's form also draws "random"), else
    # from a fresh spec of the chosen kind.
    mine = current.kind == kind or (cur_form == form and not get_source(current.kind).offered)
    FORMS[form](current if mine else ModelSpec(kind=kind), select)
    st.caption(f"Active: **{plain(state.model_spec().label())}**")


# ------------------------------------------------------------------ shared widgets

def store_upload(data: bytes, name: str, new: list[str], max_bytes: int | None = None) -> str:
    """Store an upload; its digest goes into ``new`` if this call created it (so a refusal
    can remove it without touching a file someone else stored and uses)."""
    existed = has_upload(upload_digest(data))
    digest = save_upload(data, name, max_bytes=max_bytes)
    if not existed:
        new.append(digest)
    return digest


def _select_or_discard(select: Select, spec: ModelSpec, new: list[str]) -> None:
    """Switch to ``spec``; if it does not load, the uploads this form stored are removed again."""
    if not select(spec):
        for d in new:
            discard_upload(d)


def _class_names_file(key: str, new: list[str]) -> str | None:
    """An optional class-names uploader; its upload's sha256 name ("" for none), None when
    the file was refused (the message is shown). A stored new file's digest goes into ``new``."""
    cfile = st.file_uploader("Class names (optional: .txt one per line, or .json)", type=["txt", "json"], key=key)
    if cfile is None:
        return ""
    with guard("Class names"):
        parse_class_names(cfile.getvalue(), cfile.name)
        return store_upload(cfile.getvalue(), cfile.name, new)
    return None


def _numbers(text: str, what: str) -> list[float] | None:
    if not text.strip():
        return None
    try:
        return [float(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise ParameterError(f"{what}: write numbers separated by commas, e.g. 0.485, 0.456, 0.406.") from None


def preprocessing_editor(prefix: str, current: ModelSpec) -> str | None:
    """An expander where users change the source's preprocessing (blank = keep the
    source's value). Returns the overrides' canonical JSON ("" for none), or None after
    showing a message for an invalid value."""
    bundle_pre = None
    try:
        if current.kind == state.model_spec().kind:
            bundle_pre = state.current_bundle().preprocess
    except Exception:  # noqa: BLE001 - the form works without a loaded model
        bundle_pre = None

    def hint(name):
        return f"now {getattr(bundle_pre, name)}" if bundle_pre is not None else "the source's value"

    with st.expander("Preprocessing (leave blank to keep the source's)", expanded=bool(current.preprocess)):
        st.caption("What the model was trained with: size, resize and crop, normalisation, channel order. "
                   "The model card shows what is used and where it came from.")
        c1, c2 = st.columns(2)
        size = c1.text_input("Input size (px)", key=f"{prefix}_pp_size", placeholder=hint("input_size"))
        resize = c2.text_input("Resize to (px)", key=f"{prefix}_pp_resize", placeholder=hint("resize_size"),
                               help="The shorter side is resized to this, then the centre is cropped to the input size.")
        mean = st.text_input("Mean (one per channel)", key=f"{prefix}_pp_mean",
                             placeholder=", ".join(f"{m:.3f}" for m in bundle_pre.mean) if bundle_pre else "0.485, 0.456, 0.406")
        std = st.text_input("Std (one per channel)", key=f"{prefix}_pp_std",
                            placeholder=", ".join(f"{s:.3f}" for s in bundle_pre.std) if bundle_pre else "0.229, 0.224, 0.225")
        c3, c4 = st.columns(2)
        crop = c3.selectbox("Resize mode", ["(source's)", "center", "squash"], key=f"{prefix}_pp_crop",
                            help="center: keep the aspect ratio and crop the centre; squash: stretch to a square.")
        interp = c4.selectbox("Interpolation", ["(source's)", "bilinear", "bicubic", "nearest", "lanczos"],
                              key=f"{prefix}_pp_interp")
        c5, c6 = st.columns(2)
        order = c5.selectbox("Channel order", ["(source's)", "rgb", "bgr"], key=f"{prefix}_pp_order")
        grey = c6.selectbox("Colour", ["(source's)", "RGB", "grey"], key=f"{prefix}_pp_grey")
    with guard("Preprocessing"):
        ov: dict = {}
        for k, text in (("input_size", size), ("resize_size", resize)):
            if text.strip():
                try:
                    ov[k] = int(text)
                except ValueError:
                    raise ParameterError(f"{k.replace('_', ' ')}: a whole number of pixels, e.g. 224.") from None
        for k, text in (("mean", mean), ("std", std)):
            v = _numbers(text, k)
            if v is not None:
                ov[k] = v
        for k, v in (("crop_mode", crop), ("interpolation", interp), ("channel_order", order)):
            if not v.startswith("("):
                ov[k] = v
        if not grey.startswith("("):
            ov["grayscale"] = grey == "grey"
        return overrides_json(ov)
    return None


# ------------------------------------------------------------------ one form per source

@model_form("embedded")
def _embedded_form(current: ModelSpec, select: Select) -> None:
    if state.model_spec().kind != current.kind:
        select(ModelSpec(kind=current.kind))


@model_form("torchvision")
def _torchvision_form(current: ModelSpec, select: Select) -> None:
    archs = list(torchvision_architectures())
    arch = st.selectbox("Architecture", archs, key="sb_arch",
                        index=archs.index(current.arch) if current.arch in archs else archs.index("resnet18"))
    pretrained = st.toggle("Pretrained ImageNet weights", value=True, key="sb_pretrained",
                           help="Downloads torchvision's weights once into torch's cache; offline, use random weights.")
    seed = 0 if pretrained else st.number_input("Random-weights seed", 0, 2**31 - 1, 0, key="sb_seed")
    if st.button("Load model", key="sb_load_tv", width="stretch"):
        select(ModelSpec(kind="torchvision" if pretrained else "random", arch=arch, seed=int(seed)))


@model_form("upload")
def _upload_form(current: ModelSpec, select: Select) -> None:
    archs = list(torchvision_architectures())
    arch = st.selectbox("Architecture of the weights", archs, key="sb_up_arch",
                        index=archs.index(current.arch) if current.arch in archs else archs.index("resnet18"))
    wfile = st.file_uploader("State dict (.safetensors, .pt, .pth)", type=["safetensors", "pt", "pth", "bin"],
                             key="sb_up_weights", help="Pickles are read with weights_only=True.")
    new: list[str] = []
    classes = _class_names_file("sb_up_classes", new)
    st.caption(f"Preprocessing: torchvision's for {arch}'s ImageNet weights is assumed unless you change it here.")
    pre = preprocessing_editor("sb_up", current)
    if st.button("Load weights", key="sb_load_up", disabled=wfile is None or classes is None or pre is None,
                 width="stretch"):
        with guard("Weights"):
            data = wfile.getvalue()
            read_state_dict(data, wfile.name)                  # validate before storing
            weights = store_upload(data, wfile.name, new, get_config().limits.max_weights_bytes)
            _select_or_discard(select, ModelSpec(kind="upload", arch=arch, weights=weights, classes=classes,
                                                 preprocess=pre), new)


@model_form("trusted")
def _trusted_form(current: ModelSpec, select: Select) -> None:
    files = trusted_model_files()
    rel = st.selectbox("Model file", files, key="sb_trusted",
                       index=files.index(current.weights) if current.weights in files else 0)
    if st.button("Load model", key="sb_load_trusted", width="stretch"):
        select(ModelSpec(kind="trusted", weights=rel))


_TIMM_WEIGHTS = {"random": "Random weights (seeded)", "file": "Your weights file",
                 "pretrained": "timm's pretrained weights (download)"}


@model_form("timm")
def _timm_form(current: ModelSpec, select: Select) -> None:
    archs = list(timm_architectures())
    arch = st.selectbox("timm architecture", archs, key="sb_timm_arch",
                        index=archs.index(current.arch) if current.arch in archs else archs.index("resnet18"),
                        help="Any name of timm.list_models(); type to search.")
    how = st.radio("Weights", list(_TIMM_WEIGHTS), format_func=_TIMM_WEIGHTS.get, key="sb_timm_weights",
                   index=2 if current.pretrained else (1 if current.weights else 0))
    seed, wfile, classes, new = int(current.seed), None, "", []
    if how == "random":
        seed = int(st.number_input("Seed", 0, 2**31 - 1, seed, key="sb_timm_seed"))
    elif how == "file":
        wfile = st.file_uploader("State dict (.safetensors, .pt, .pth)", type=["safetensors", "pt", "pth", "bin"],
                                 key="sb_timm_file", help="Pickles are read with weights_only=True.")
        classes = _class_names_file("sb_timm_classes", new)
    else:
        st.caption("Needs internet access to the Hugging Face hub; offline, use random weights or your file.")
    st.caption("Preprocessing: from the model's timm pretrained_cfg unless you change it here. For ViT-like "
               "models a changed input size builds the model at that size.")
    pre = preprocessing_editor("sb_timm", current)
    if st.button("Load model", key="sb_load_timm", width="stretch",
                 disabled=pre is None or classes is None or (how == "file" and wfile is None)):
        with guard("timm model"):
            weights = ""
            if wfile is not None:
                data = wfile.getvalue()
                read_state_dict(data, wfile.name)
                weights = store_upload(data, wfile.name, new, get_config().limits.max_weights_bytes)
            _select_or_discard(select, ModelSpec(kind="timm", arch=arch, seed=seed, weights=weights, classes=classes,
                                                 pretrained=how == "pretrained", preprocess=pre), new)


@model_form("hf")
def _hf_form(current: ModelSpec, select: Select) -> None:
    folders = hf_model_folders()
    options = (["dir"] if folders else []) + ["zip"]
    how = st.radio("From", options, key="sb_hf_from", horizontal=True,
                   format_func={"dir": "Server folder", "zip": "Upload a zip"}.get)
    st.caption("config.json + model.safetensors + preprocessor_config.json of a transformers image classifier. "
               "No remote code is ever run; class names from id2label, preprocessing from the processor config.")
    if how == "dir":
        rel = st.selectbox("Model folder", folders, key="sb_hf_dir")
        if st.button("Load model", key="sb_load_hf_dir", width="stretch"):
            select(ModelSpec(kind="hf", weights=f"dir:{rel}"))
    else:
        up = st.file_uploader("Model zip", type=["zip"], key="sb_hf_zip")
        if st.button("Load model", key="sb_load_hf_zip", disabled=up is None, width="stretch"):
            with guard("Hugging Face model"):
                new = []
                digest = store_upload(up.getvalue(), up.name, new, get_config().limits.max_weights_bytes)
                _select_or_discard(select, ModelSpec(kind="hf", weights=f"zip:{digest}"), new)
