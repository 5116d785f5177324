"""Shared UI of the texture, style-transfer and fast-style pages: the feature-extractor
picker (sidebar model, or torchvision VGG-16/19 when its weights can be downloaded), image
pickers for textures and style images (gallery or upload), per-layer weights, the
loss-curve figure and the live training runner of a fast-style network."""
from __future__ import annotations

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
from dashboard import state
from dashboard.text import plain

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
                state.bundle_for(spec)
        except ModelLoadError as e:
            failed[choice] = str(e)
            st.session_state[f"{key}_vgg_failed"] = failed
            st.error(str(e))
            return side
        loaded.add(choice)
        st.session_state[f"{key}_vgg_loaded"] = loaded
    return state.bundle_for(spec), state.layers_for(spec)


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
            st.image(img, caption=plain(label), width=150)
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


def log_ticks(values, most: int = 8) -> tuple[list[float], list[str]]:
    """Tick positions and full labels for a log axis over ``values`` (the positive ones):
    1-2-5 per decade, thinned to 1 per decade (or more) when there are too many, all digits
    per decade when the range is narrow. Every label is the value itself ("0.02", "5",
    "2e+03"), never plotly's bare minor digits ("2, 10, 5, 2, 1")."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], np.float64)
    if v.size == 0:
        return [], []
    lo, hi = float(v.min()), float(v.max())
    e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    ticks: list[float] = []
    for mant in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m}e{e}") for e in range(e0, e1 + 1) for m in mant]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) < 2:                          # a very narrow range: the ends themselves
        ticks = sorted({float(f"{lo:.3g}"), float(f"{hi:.3g}")})
    step = 1
    while len(ticks[::step]) > most:
        step += 1
    ticks = ticks[::step]
    if len(ticks) > most or (e1 - e0 > most):   # many decades: powers of ten only
        ticks = [10.0 ** e for e in range(e0, e1 + 1)][:: max(1, (e1 - e0) // most + 1)]
    return ticks, [f"{t:g}" for t in ticks]


def losses_figure(history: dict[str, list[float]], title: str = "Loss") -> go.Figure:
    fig = go.Figure()
    for k, v in history.items():
        if v:
            fig.add_scatter(x=list(range(1, len(v) + 1)), y=v, name=k, mode="lines",
                            line=dict(dash=None if k == "loss" else "dot"))
    ticks, labels = log_ticks([x for v in history.values() for x in v])
    fig.update_layout(title=title, height=280, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step",
                      yaxis=dict(title="loss (minimised)", type="log", tickmode="array" if ticks else "auto",
                                 tickvals=ticks or None, ticktext=labels or None))
    return fig


def run_training(key: str, make_gen: Callable[[], Generator], *, start: bool = True, chart_every: int = 10):
    """A fast-style training run through the one job runner (``dashboard.widgets.run_job``):
    progress, Stop, live loss curves and preview while it runs (cleared when it ends: the
    page then shows the network's saved history and preview once). Stop (any rerun)
    interrupts it; the closed generator saves a checkpoint, so the run can be resumed.
    Returns the TrainResult, or None when not started or interrupted."""
    from dashboard.widgets import run_job
    live: list = []                             # chart and preview slots, drawn below the bar
    history: dict[str, list[float]] = {}
    last = [0.0]

    def on_step(s) -> None:
        if not live:
            left, right = st.columns([3, 2])
            live.extend([left.empty(), right.empty()])
        chart, preview = live
        history.setdefault("loss", []).append(s.loss)
        for k, v in s.terms.items():
            history.setdefault(k, []).append(v)
        if s.step % chart_every == 0 or s.step == s.total or time.time() - last[0] > 5:
            chart.plotly_chart(losses_figure(history, "Training loss (this run)"), key=f"{key}_live_{s.step}")
            last[0] = time.time()
        if s.preview is not None:
            preview.image(s.preview, caption=f"preview after {s.step} steps", width="stretch")

    result = None
    try:
        result = run_job(None, "Training", lambda _p: make_gen(), start=start, stop=f"{key}_stop", on_step=on_step,
                       cache=False, title="Fast style training", meta={"image": False},
                       step_text=lambda s: f"step {s.step}/{s.total} · loss {s.loss:.4g} · {s.seconds:.0f} s"
                       + (" · checkpoint saved" if s.checkpoint else ""))
    finally:
        for slot in live:
            slot.empty()
    if result is not None:
        from analysis.optimize.engine import convergence
        if len(history.get("loss", [])) >= 2:     # minimised: did the loss go down?
            for w in convergence([-v for v in history["loss"]])[1]:
                st.warning(w.replace("objective did not improve", "training loss did not go down"))
        for w in getattr(result, "warnings", []) or []:
            st.warning(w)
    return result
