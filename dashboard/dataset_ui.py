"""Shared UI of the data-set pages: the class mapping (editor and current value), data-set
jobs through the executor (progress, Stop, audit trail), thumbnail grids with "explain this
image", and the figures of the audit page (confusion matrix, reliability diagram, AUC and
ρ distributions).

The class mapping lives in session state under ``da_classmap`` (the audit page's key
prefix, so it is part of that page's share links) and is mirrored under ``em_classmap``
by the Embeddings page; :func:`current_mapping` reads either, checks it belongs to the
current model and data set, and falls back to the name-matching suggestion.
"""
from __future__ import annotations

import json
import logging
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.core.datasets import Dataset
from analysis.core.errors import ConvlensError
from analysis.core.images import colormap_rgb
from analysis.core.models.bundle import ModelBundle
from analysis.dataset.classmap import ClassMapping, classes_fingerprint, mapping_from_state, suggest_mapping
from analysis.saliency import registry
from dashboard import state
from dashboard.subject import explain_button

MAP_KEYS = ("da_classmap", "em_classmap")
log = logging.getLogger("convlens")
THUMB = 64


# ====================================================================== class mapping

def current_mapping(bundle: ModelBundle, ds: Dataset) -> ClassMapping:
    """The mapping of this model and data set: the stored one (audit page or Embeddings
    link) when it was made for these classes, else the suggestion by name."""
    for key in MAP_KEYS:
        stored = st.session_state.get(key)
        try:
            m = mapping_from_state(stored, ds.class_names, bundle.categories)
        except ConvlensError as exc:
            st.warning(f"The class mapping in this link was ignored: {exc}")
            m = None
        if m is not None:
            return m
    return _suggested(tuple(ds.class_names), tuple(bundle.categories))


@st.cache_data(show_spinner=False, max_entries=16)
def _suggested_state(ds_classes: tuple, model_classes: tuple) -> dict:
    return suggest_mapping(list(ds_classes), list(model_classes)).to_state()


def _suggested(ds_classes: tuple, model_classes: tuple) -> ClassMapping:
    return mapping_from_state(_suggested_state(ds_classes, model_classes), list(ds_classes), list(model_classes))


def mapping_note(m: ClassMapping) -> None:
    """Say what the mapping means for the scores (an info for identity, a warning otherwise)."""
    if m.status == "identity":
        st.caption(m.describe())
    elif m.status == "none":
        st.warning(m.describe() + " Map data-set classes to model classes in **Class mapping** to score the "
                   "model; until then the page shows predictions, not accuracy.")
    else:
        st.info(m.describe())


def mapping_editor(bundle: ModelBundle, ds: Dataset, max_rows: int = 60) -> ClassMapping:
    """The class-mapping editor: one multiselect of model classes per data-set class,
    starting from the name suggestion. Returns the mapping in force."""
    m = current_mapping(bundle, ds)
    fp = classes_fingerprint(bundle.categories)[:6] + classes_fingerprint(ds.class_names)[:6]
    ss = st.session_state
    mapping_note(m)
    if m.status == "identity":
        return m
    c1, c2 = st.columns([3, 1])
    c1.caption("Each data-set class → the model classes that count as it (a model class can stand for one "
               "data-set class only). Started from a match by name; the mapping is saved in this view's link "
               "and in the audit records of the runs that use it.")
    if c2.button("Reset to the suggestion", key="da_cm_reset"):
        for k in [k for k in ss if isinstance(k, str) and k.startswith(f"da_cm_{fp}_")]:
            del ss[k]
        for key in MAP_KEYS:
            ss.pop(key, None)
        m = _suggested(tuple(ds.class_names), tuple(bundle.categories))
    classes = list(range(len(ds.class_names)))
    shown = classes
    if len(classes) > max_rows:
        shown = st.multiselect("Data-set classes to edit", classes, default=classes[:10], key=f"da_cm_{fp}_which",
                               format_func=lambda k: ds.class_names[k])
    options = list(range(bundle.num_classes))
    targets = dict(m.targets)
    cols = st.columns(2)
    for j, k in enumerate(shown):
        key = f"da_cm_{fp}_{k}"
        if key not in ss:
            ss[key] = list(targets.get(k, ()))
        picked = cols[j % 2].multiselect(f"{ds.class_names[k]}", options, key=key,
                                         format_func=lambda i: f"{bundle.categories[i]} ({i})",
                                         placeholder="no model class: not scored")
        targets[k] = tuple(int(i) for i in picked)
    try:
        new = m.with_targets(targets, source="edited")
    except ConvlensError as exc:
        st.error(f"Class mapping: {exc}")
        return m
    if new.targets != m.targets:
        ss["da_classmap"] = new.to_state()
        st.rerun()
    return m


def mapping_key(m: ClassMapping) -> str:
    return json.dumps(m.to_state()["map"], sort_keys=True)


# ====================================================================== jobs

ENGINES = {"local": "In this process", "ray": "On Ray (the cluster at ray_address, else an embedded single-node Ray)"}
PIPELINES = {"data": "Ray Data: Ray's worker processes keep the model between jobs (default)",
             "pool": "Keep Ray workers warm between jobs (faster repeated jobs on one model)"}
_ENGINE, _PIPELINE, _PRESTARTED = "_ds_engine", "_ds_ray_pipeline", "_ds_prestarted"   # not in share links


def engine_choice() -> None:
    """Where this session's data-set jobs run (default: the configuration's ``engine`` and
    ``ray_pipeline``; results are the same either way). With Ray's warm workers, the
    model's actors start in the background as soon as the choice is made."""
    from analysis.core.config import get_config
    cfg = get_config()
    with st.expander("Where data-set jobs run", icon=":material/dns:"):
        engine = st.radio("Engine", list(ENGINES), index=list(ENGINES).index(cfg.engine), key=_ENGINE,
                          format_func=ENGINES.get)
        if engine == "ray":
            _prestart(state.model_spec(), st.radio("Ray", list(PIPELINES), index=list(PIPELINES).index(cfg.ray_pipeline),
                                                   key=_PIPELINE, format_func=PIPELINES.get))


def _prestart(spec, pipeline: str) -> None:
    """Get the model ready on Ray in a background thread (its warm pool, or with Ray Data
    the model built in Ray's idle worker processes), once per model, pipeline and session."""
    import threading

    from analysis.dataset import ray_backend
    if st.session_state.get(_PRESTARTED) == (spec, pipeline):
        return
    st.session_state[_PRESTARTED] = (spec, pipeline)

    def start() -> None:
        try:
            ray_backend.prestart(spec, pipeline=pipeline)
        except Exception:  # noqa: BLE001 - the first job then starts the actors and reports any error
            log.warning("Ray warm pool: prestart failed", exc_info=True)
    threading.Thread(target=start, name="convlens-ray-prestart", daemon=True).start()
    st.caption("Getting this model ready on the Ray workers in the background; they keep it between jobs.")


def dataset_job(kind: str, bundle: ModelBundle, ds: Dataset, indices: Sequence[int] | None, params: dict,
                progress: Callable[[int, int], None] | None = None):
    """Run one data-set job (``predict`` / ``features`` / ``saliency`` / ``trust``) through
    the executor on the engine chosen in :func:`engine_choice` (default the configured
    one), on ``indices`` of the sidebar's data set."""
    from analysis.dataset.executor import JobSpec, run
    spec = JobSpec(kind, state.model_spec(), executor_ref(ds), params=params,
                   indices=None if indices is None else tuple(int(i) for i in indices))
    ss = st.session_state
    res = run(spec, ss.get(_ENGINE), progress=progress, dataset=ds, bundle=bundle, on_info=lambda s: st.toast(s),
              ray_pipeline=ss.get(_PIPELINE))
    if not res.complete:
        raise ConvlensError("The job stopped before the end; nothing was kept as complete. Run it again to resume.")
    return res


def executor_ref(ds: Dataset):
    """The executor's reference of the sidebar's data set."""
    from analysis.dataset.manifest import DatasetRef
    ref = state.dataset_ref()
    if ref.kind == "digits":
        return DatasetRef("digits")
    if ref.kind == "folder":
        return DatasetRef("folder", path=ref.ref)
    if ref.kind == "manifest":
        return DatasetRef("manifest", path=ref.ref)
    if ref.kind == "zip":
        from analysis.core.config import get_config
        return DatasetRef("zip", path=str(get_config().data_dir / "datasets" / f"{ref.ref}.zip"))
    raise ConvlensError(f"Data-set jobs do not know the data-set kind {ref.kind!r}.")


# ====================================================================== thumbnails

def thumb(ds: Dataset, bundle: ModelBundle, i: int, size: int = THUMB) -> np.ndarray:
    """The model's view of image ``i`` (its input crop), resized for a grid."""
    from PIL import Image
    crop = bundle.preprocess.geometry(ds.get(int(i)))
    resample = Image.NEAREST if crop.shape[0] < size else Image.BILINEAR
    return np.asarray(Image.fromarray(crop).resize((size, size), resample))


def _positive_heat(smap: np.ndarray) -> np.ndarray:
    """A saliency map's positive part, normalised to its maximum, through inferno (RGB uint8)."""
    a = np.clip(np.nan_to_num(np.asarray(smap, np.float64)), 0, None)
    return colormap_rgb(a / a.max() if a.max() > 0 else a, "inferno")


def overlay_map(crop: np.ndarray, smap: np.ndarray, size: int = THUMB * 2, alpha: float = 0.55) -> np.ndarray:
    """A saliency map over its input crop (inferno, positive part normalised to its maximum)."""
    from PIL import Image
    heat = _positive_heat(smap)
    base = np.asarray(Image.fromarray(crop).resize(heat.shape[1::-1], Image.BILINEAR)) if crop.shape[:2] != heat.shape[:2] else crop
    mix = (alpha * heat + (1 - alpha) * base).astype(np.uint8)
    return np.asarray(Image.fromarray(mix).resize((size, size), Image.NEAREST if mix.shape[0] < size else Image.BILINEAR))


def heat_image(smap: np.ndarray, size: int = THUMB * 2) -> np.ndarray:
    from PIL import Image
    heat = _positive_heat(smap)
    return np.asarray(Image.fromarray(heat).resize((size, size), Image.NEAREST if heat.shape[0] < size else Image.BILINEAR))


def image_grid(ds: Dataset, bundle: ModelBundle, indices: Sequence[int], key: str, *,
               captions: Sequence[str] | None = None, images: Sequence[np.ndarray] | None = None,
               per_row: int = 8, width: int = THUMB, limit: int = 48) -> None:
    """Thumbnails (or given ``images``) in rows, each with an "Explain" button that makes
    it the subject of every page."""
    idx = [int(i) for i in indices][:limit]
    if not idx:
        st.caption("No images.")
        return
    for start in range(0, len(idx), per_row):
        cols = st.columns(per_row)
        for j, i in enumerate(idx[start:start + per_row]):
            n = start + j
            with cols[j]:
                img = images[n] if images is not None else thumb(ds, bundle, i, width)
                cap = captions[n] if captions is not None else f"#{i} · {ds.class_names[int(ds.labels[i])]}"
                st.image(img, width=width, caption=cap)
                explain_button(i, f"{key}_x{i}", label="Explain")
    if len(indices) > limit:
        st.caption(f"First {limit} of {len(indices):,} shown.")


# ====================================================================== figures

def confusion_figure(cm: np.ndarray, class_names: Sequence[str], normalise: bool) -> go.Figure:
    """Heatmap of a (K, K+1) confusion matrix (last column "unmapped") with an invisible
    scatter point on every cell, so a click selects the cell (customdata = [row, col])."""
    k = cm.shape[0]
    cols = list(class_names) + (["(unmapped)"] if cm.shape[1] == k + 1 else [])
    z = cm.astype(np.float64)
    if normalise:
        rs = z.sum(axis=1, keepdims=True)
        z = np.divide(z, rs, out=np.zeros_like(z), where=rs > 0)
    text = [[f"{cm[r, c]}" for c in range(cm.shape[1])] for r in range(k)]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=list(class_names), colorscale="Blues", text=text,
                               texttemplate="%{text}" if k <= 20 else None, hoverinfo="skip",
                               colorbar=dict(title="share of row" if normalise else "images")))
    rr, cc = np.meshgrid(np.arange(k), np.arange(cm.shape[1]), indexing="ij")
    fig.add_trace(go.Scatter(
        x=[cols[c] for c in cc.ravel()], y=[class_names[r] for r in rr.ravel()], mode="markers",
        marker=dict(size=max(8, min(40, 400 // max(k, 1))), color="rgba(0,0,0,0)", symbol="square"),
        customdata=np.stack([rr.ravel(), cc.ravel()], axis=1),
        hovertext=[f"true {class_names[r]} → predicted {cols[c]}: {cm[r, c]} images" for r, c in
                   zip(rr.ravel(), cc.ravel())],
        hovertemplate="%{hovertext}<extra></extra>", showlegend=False))
    fig.update_layout(height=max(360, 34 * k + 120), margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="predicted", type="category"), clickmode="event+select",
                      yaxis=dict(title="true", autorange="reversed", type="category"))
    return fig


def reliability_figure(cal) -> go.Figure:
    centres = (cal.edges[:-1] + cal.edges[1:]) / 2
    width = float(cal.edges[1] - cal.edges[0])
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres, y=np.nan_to_num(cal.accuracy), width=width * 0.95, name="accuracy",
                         customdata=cal.counts, hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} "
                         "(%{customdata} images)<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dot", color="grey")))
    fig.add_trace(go.Scatter(x=centres, y=cal.confidence, mode="markers", name="mean confidence",
                             marker=dict(color="crimson")))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(title="confidence", range=[0, 1]),
                      yaxis=dict(title="accuracy", range=[0, 1]), title=f"ECE {cal.ece:.3f}")
    return fig


def auc_figure(verdicts, kind: str) -> go.Figure:
    fig = go.Figure()
    for v in [v for v in verdicts if v.kind == kind]:
        fig.add_trace(go.Box(y=v.auc, name=registry.title(v.method), boxmean=True))
    rand = next((v.random_auc.mean(axis=1) for v in verdicts if v.kind == kind), None)
    if rand is not None:
        fig.add_trace(go.Box(y=rand, name="random (mean of maps)", boxmean=True, marker=dict(color="grey")))
    better = "lower" if kind == "deletion" else "higher"
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      title=f"{kind} AUC per image ({better} is better)", yaxis=dict(title="AUC"))
    return fig


def rho_figure(layers: Sequence[str], summary: dict) -> go.Figure:
    fig = go.Figure()
    for m, s in summary.items():
        rho = s["rho"]
        xs = np.repeat(np.array(list(layers), dtype=object)[None, :], rho.shape[0], axis=0).ravel()
        fig.add_trace(go.Box(x=xs, y=rho.ravel(), name=registry.title(m), boxpoints="outliers"))
    lo = min([-0.25] + [float(np.nanmin(s["rho"])) - 0.05 for s in summary.values() if np.isfinite(s["rho"]).any()])
    fig.update_layout(boxmode="group", height=380, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(title="Spearman ρ with the original map", range=[lo, 1.05]),
                      xaxis=dict(title="randomised down to", type="category"))
    return fig
