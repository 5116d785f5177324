"""Shared UI of the texture, style-transfer and fast-style pages: the feature-extractor
picker (sidebar model, or torchvision VGG-16/19 when its weights can be downloaded), image
pickers for textures and style images (gallery or upload), per-layer weights, the
loss-curve figure and the live training runner of a fast-style network."""
from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Callable, Generator

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.core.errors import ModelLoadError
from analysis.core.images import GALLERY, gallery_image, gallery_names, load_image
from analysis.core.models.bundle import ModelBundle
from analysis.core.models.loaders import ModelSpec
from analysis.optimize import run as drive
from dashboard import state

_EXTRACTORS = {"sidebar": None, "vgg19": "VGG-19 (torchvision, ImageNet; downloads once)",
               "vgg16": "VGG-16 (torchvision, ImageNet; downloads once)"}


def extractor_picker(key: str) -> tuple[ModelBundle, list]:
    """The feature extractor and its layer table: the sidebar's model (EfficientNet-Lite0
    by default, or any model chosen there), or VGG-16/19 with torchvision's pretrained
    weights. VGG is loaded only on a click; a failed download (offline) is remembered and
    explained, and the sidebar model is used meanwhile."""
    side = state.current_bundle(), state.current_layers()
    choice = st.selectbox("Feature extractor", list(_EXTRACTORS), key=f"{key}_extractor",
                          format_func=lambda k: _EXTRACTORS[k] or f"Sidebar model: {side[0].name}",
                          help="Gatys et al. and most published settings use VGG; convlens ships tuned "
                               "layers for the embedded EfficientNet-Lite0, which works offline.")
    if choice == "sidebar":
        return side
    failed = st.session_state.get(f"{key}_vgg_failed", {})
    spec = ModelSpec(kind="torchvision", arch=choice)
    loaded = st.session_state.get(f"{key}_vgg_loaded", set())
    if choice not in loaded:
        if choice in failed:
            st.error(failed[choice])
        if not st.button(f"Load {choice.upper()} weights", key=f"{key}_load_{choice}"):
            st.info(f"{choice.upper()} needs torchvision's pretrained weights (about 550 MB, downloaded once into "
                    "torch's cache). Until then the sidebar model is used.")
            return side
        try:
            with st.spinner(f"Loading {choice.upper()}…"):
                state._bundle(state._key(spec))
        except ModelLoadError as e:
            failed[choice] = str(e)
            st.session_state[f"{key}_vgg_failed"] = failed
            st.error(str(e))
            return side
        loaded.add(choice)
        st.session_state[f"{key}_vgg_loaded"] = loaded
    return state._bundle(state._key(spec)), state._layers(state._key(spec))


def image_choice(label: str, key: str, default: str, *, allow_sidebar: bool = True,
                 kinds_first: str = "texture") -> tuple[np.ndarray | None, str | None]:
    """One image: the sidebar's, a gallery image, or an upload. Returns (image, reference),
    or (None, None) while the upload is still missing."""
    names = gallery_names(kinds_first) + [n for n in gallery_names() if GALLERY[n].kind != kinds_first]
    opts = (["sidebar image"] if allow_sidebar else []) + names + ["upload…"]
    choice = st.selectbox(label, opts, index=opts.index(default) if default in opts else 0, key=key,
                          format_func=lambda n: GALLERY[n].description if n in GALLERY else n)
    if choice == "sidebar image":
        return state.current_image(), f"sidebar:{state.image_ref()}"
    if choice == "upload…":
        up = st.file_uploader("Image file", type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"],
                              key=f"{key}_upload")
        if up is None:
            st.info("Upload an image, or choose one from the list.")
            return None, None
        data = up.getvalue()
        return _decode(data, up.name), "upload:" + hashlib.sha256(data).hexdigest()
    return gallery_image(choice), f"gallery:{choice}"


@st.cache_resource(show_spinner=False, max_entries=32)
def _decode_cached(digest: str, data: bytes, name: str) -> np.ndarray:
    arr = load_image(data, name=name)
    arr.setflags(write=False)
    return arr


def _decode(data: bytes, name: str) -> np.ndarray:
    return _decode_cached(hashlib.sha256(data).hexdigest(), data, name)


def style_images(key: str, default: list[str]) -> list[tuple[np.ndarray, float, str, str]]:
    """Several style images (gallery and uploads), each with a mixing weight.
    Returns [(image, weight, reference, label)]."""
    names = gallery_names()
    picked = st.multiselect("Style images (gallery)", names, default=default, key=f"{key}_gallery",
                            format_func=lambda n: GALLERY[n].description)
    ups = st.file_uploader("…and / or your own style images", type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"],
                           accept_multiple_files=True, key=f"{key}_uploads")
    items = [(gallery_image(n), f"gallery:{n}", n) for n in picked]
    for up in ups or []:
        data = up.getvalue()
        items.append((_decode(data, up.name), "upload:" + hashlib.sha256(data).hexdigest(), up.name))
    if not items:
        return []
    out = []
    cols = st.columns(4)
    for i, (img, ref, label) in enumerate(items):
        with cols[i % len(cols)]:
            st.image(img, caption=label, width=150)
            w = st.number_input("mix weight", 0.0, 100.0, 1.0, 0.1, key=f"{key}_w_{ref}",
                                disabled=len(items) == 1, help="Gram targets mix as the weighted mean.")
        out.append((img, float(w), ref, label))
    return out


def layer_weights(label: str, options: list[str], default: dict, key: str, shapes: dict | None = None) -> dict:
    """A multiselect of layers plus a weight per chosen layer (in an expander)."""
    chosen = st.multiselect(label, options, default=[k for k in default if k in options], key=key,
                            format_func=lambda n: f"{n}  {'x'.join(map(str, shapes[n]))}" if shapes and n in shapes else n)
    weights = {}
    if chosen:
        with st.expander(f"Weights of the {len(chosen)} layers (normalised to sum 1)"):
            cols = st.columns(min(5, len(chosen)))
            for i, n in enumerate(chosen):
                weights[n] = float(cols[i % len(cols)].number_input(n, 0.0, 100.0, float(default.get(n, 1.0)), 0.1,
                                                                  key=f"{key}_w_{n}"))
    return weights


def losses_figure(history: dict[str, list[float]], title: str = "Loss") -> go.Figure:
    fig = go.Figure()
    for k, v in history.items():
        if v:
            fig.add_scatter(x=list(range(1, len(v) + 1)), y=v, name=k, mode="lines",
                            line=dict(dash=None if k == "loss" else "dot"))
    fig.update_layout(title=title, height=280, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step",
                      yaxis_title="loss (minimised)", yaxis_type="log")
    return fig


def _slot(bar):
    try:
        from dashboard.widgets import job_slot
    except ImportError:            # older checkouts without the device queue
        return contextlib.nullcontext()
    return job_slot(True, bar)


def run_training(key: str, make_gen: Callable[[], Generator], *, chart_every: int = 10):
    """Drive a fast-style training generator: progress, loss curves, preview. The Stop
    button (any rerun) interrupts the page; closing the generator saves a checkpoint, so
    the run can be resumed. Returns the TrainResult, or None when interrupted."""
    stop_col, info_col = st.columns([1, 5])
    stop_col.button("Stop", key=f"{key}_stop", help="Stops after the current step and saves a checkpoint.")
    bar = st.progress(0.0, text="starting…")
    left, right = st.columns([3, 2])
    chart, preview = left.empty(), right.empty()
    gen = None
    result = None
    try:
        history: dict[str, list[float]] = {}
        last = [0.0]

        def on_step(s) -> None:
            history.setdefault("loss", []).append(s.loss)
            for k, v in s.terms.items():
                history.setdefault(k, []).append(v)
            bar.progress(min(1.0, s.step / s.total), text=f"step {s.step}/{s.total} · loss {s.loss:.4g} · "
                         f"{s.seconds:.0f} s" + (" · checkpoint saved" if s.checkpoint else ""))
            if s.step % chart_every == 0 or s.step == s.total or time.time() - last[0] > 5:
                chart.plotly_chart(losses_figure(history, "Training loss (this run)"), key=f"{key}_live_{s.step}")
                last[0] = time.time()
            if s.preview is not None:
                preview.image(s.preview, caption=f"preview after {s.step} steps", width="stretch")

        with _slot(bar):
            gen = make_gen()
            result = drive(gen, on_step=on_step)
    finally:
        if gen is not None:
            gen.close()             # interrupted: the generator saves a checkpoint on close
        bar.empty()
    if result is not None:
        from analysis.optimize.engine import convergence
        from dashboard.audit_ui import record
        if len(history.get("loss", [])) >= 2:     # minimised: did the loss go down?
            for w in convergence([-v for v in history["loss"]])[1]:
                st.warning(w.replace("objective did not improve", "training loss did not go down"))
        for w in getattr(result, "warnings", []) or []:
            st.warning(w)
        record(result, None, "fast style training")
    return result
