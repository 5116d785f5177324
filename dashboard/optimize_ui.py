"""Shared UI of the optimisation pages (class / channel visualisation, DeepDream, inversion):
run an engine generator with a progress bar, a live preview and a Stop button; keep the
last preview when stopped; show the result with its objective curve, its recorded
parameters and downloads. Results of an unchanged request come from the shared cache.

``live_run`` is the start button and live preview around the one job runner
(``dashboard.widgets.run_job``): the run queues behind the device's semaphore, its result
is recorded in the audit trail, and a share link of a shown result computes it again in
a fresh session without waiting for the button."""
from __future__ import annotations

import json
import re
from typing import Callable, Generator

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.core.layers import LayerInfo, spatial_infos
from analysis.core.models.bundle import ModelBundle
from analysis.optimize import OptResult
from dashboard import share, state
from dashboard.render import npy_bytes, png_bytes
from dashboard.widgets import result_cache, run_job


def spatial_model() -> tuple[ModelBundle, list[LayerInfo], list[LayerInfo]]:
    """The sidebar's model, its layer table and its layers with a feature map; a model
    without any gets a note and the page stops there."""
    bundle, infos = state.current_bundle(), state.current_layers()
    spatial = spatial_infos(infos)
    if not spatial:
        st.info("This model has no spatial layers.")
        st.stop()
    return bundle, infos, spatial


def slug(name: str) -> str:
    """A display name as a widget-key part that share links carry (letters, digits and
    '_' only): ``"MACO (Fel et al. 2023)"`` → ``"MACO_Fel_et_al_2023"``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "x"


def stretch_contrast(img: np.ndarray, pct: float = 0.0) -> np.ndarray:
    """Per-image stretch to the full 0-255 range: min-max (``pct`` 0, how Yosinski's toolbox
    saves its images) or between the ``pct`` and 100 - ``pct`` percentiles, clipped (MACO's
    low-contrast pictures). Display only; the raw result is what gets recorded."""
    out = []
    for im in np.atleast_3d(img)[None] if img.ndim == 3 else img:
        f = im.astype(np.float32)
        lo, hi = ((float(f.min()), float(f.max())) if pct <= 0 else
                  tuple(float(v) for v in np.percentile(f, [pct, 100 - pct])))
        out.append((np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.stack(out) if img.ndim == 4 else out[0]


def history_figure(result: OptResult, title: str = "Objective") -> go.Figure:
    fig = go.Figure()
    steps = list(range(1, len(result.history) + 1))
    fig.add_scatter(x=steps, y=result.history, name="objective (total)", mode="lines")
    if len(result.terms) > 1:
        for k, v in result.terms.items():
            fig.add_scatter(x=steps, y=v, name=k, mode="lines", line=dict(dash="dot"), visible="legendonly")
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step",
                      yaxis_title="value (maximised)")
    return fig


def _show_images(images: np.ndarray, width: int, captions: list[str] | None, stretch: bool, pct: float = 0.0):
    imgs = stretch_contrast(images, pct) if stretch else images
    st.image(list(imgs), width=width, caption=captions)


def live_run(key: str, cache_key: tuple, make_gen: Callable[[], Generator], *, label: str = "Run",
             width: int = 320, stretch: bool = False, stretch_pct: float = 0.0,
             captions: list[str] | None = None, title: str | None = None, meta: dict | None = None
             ) -> OptResult | None:
    """Start button → live run (progress, preview, Stop) → the result, or the cached result
    when the request is unchanged. Returns the result, or None before a run / after a stop.
    The run itself is ``dashboard.widgets.run_job`` (queue slot, audit record under
    ``title`` with ``meta``, share-link mark ``{key}_result``)."""
    ss = st.session_state
    cached = result_cache().get(cache_key)
    go_col, info_col = st.columns([1, 5])
    clicked = go_col.button(label if cached is None else f"{label} again", type="primary", key=f"{key}_go",
                            disabled=cached is not None,
                            help=None if cached is None else "Unchanged settings: the result below comes from the cache.")
    previews: list = []                     # drawn below the bar on the first preview

    def on_step(s) -> None:
        if s.image is not None:
            if not previews:
                previews.append(st.empty())
            with previews[0].container():
                _show_images(s.image, width, captions, stretch, stretch_pct)
            ss[f"{key}_partial"] = {"key": cache_key, "image": s.image, "step": s.step, "total": s.total}

    try:
        result = run_job(cache_key, label, lambda _p: make_gen(), start=clicked, stop=f"{key}_stop",
                         on_step=on_step, share_name=key, title=title or _title(), meta=meta,
                         step_text=lambda s: f"step {s.step}/{s.total} · objective {s.value:.4g} · {s.seconds:.1f} s")
    finally:
        for p in previews:
            p.empty()
    if result is None:
        partial = ss.get(f"{key}_partial")
        if partial and partial["key"] == cache_key:
            st.warning(f"Stopped at step {partial['step']} of {partial['total']}: the last preview is shown. "
                       "Run again for the full result.")
            _show_images(partial["image"], width, captions, stretch, stretch_pct)
            st.download_button("Download preview (PNG)", png_bytes(np.concatenate(list(partial["image"]), 1)),
                               f"{key}_step{partial['step']}.png", key=f"{key}_partial_png")
        return None
    ss.pop(f"{key}_partial", None)
    info_col.caption(f"{result.steps} steps in {result.seconds:.1f} s ({result.steps_per_second:.1f} steps/s)"
                     + (" · stopped early" if result.stopped else ""))
    return result


def show_warnings(result) -> None:
    """Every warning of an optimisation result (or of a list of them), once each."""
    seen: list[str] = []
    for r in result if isinstance(result, (list, tuple)) else [result]:
        seen.extend(w for w in getattr(r, "warnings", []) or [] if w not in seen)
    for w in seen:
        st.warning(w)

def _title() -> str:
    """The audit title of a page's optimisation run: the page's name."""
    return {"classvis": "Class visualisation", "channelvis": "Channel visualisation", "deepdream": "DeepDream",
            "inversion": "Feature inversion", "texture": "Texture synthesis",
            "style": "Style transfer"}.get(share.current_page(), share.current_page())


def show_result(key: str, result: OptResult, *, width: int = 320, stretch: bool = False, stretch_pct: float = 0.0,
                captions: list[str] | None = None, filename: str = "result") -> None:
    """The images, downloads (PNG as shown, raw .npy, parameters JSON) and the objective curve;
    the result's warnings (did not converge, stopped early) above them."""
    show_warnings(result)
    _show_images(result.images, width, captions, stretch, stretch_pct)
    strip = np.concatenate(list(stretch_contrast(result.images, stretch_pct) if stretch else result.images), 1)
    c1, c2, c3 = st.columns(3)
    c1.download_button("PNG", png_bytes(strip), f"{filename}.png", key=f"{key}_png")
    c2.download_button("Raw .npy ([0, 1], N×C×H×W)", npy_bytes(result.unit), f"{filename}.npy", key=f"{key}_npy")
    c3.download_button("Parameters (JSON)", json.dumps(result.params, indent=2, default=str),
                       f"{filename}.json", key=f"{key}_json")
    st.plotly_chart(history_figure(result), key=f"{key}_hist")
    with st.expander("Recorded parameters (everything needed to reproduce this result)"):
        st.json(result.params)
