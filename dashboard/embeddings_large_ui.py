"""The Embeddings page for data sets past the in-memory limit (issue 18).

A data set with more images than ``limits.max_dataset_images`` (a manifest of up to
millions of rows, its images read lazily) never has all its images or all its features in
this process's memory:

* **features**: the data-set executor's ``features`` job (in-process or Ray: the configured
  ``engine``) writes Parquet parts; they are copied part by part into one float32 array on
  disk (:func:`analysis.embeddings.large.store_features`) that the page opens memory-mapped.
  Per image only the data-set index, label, prediction and confidence stay in memory;
* **map**: :func:`analysis.embeddings.large.large_map` (t-SNE or UMAP of a stratified sample,
  every other point placed among its nearest sample points), kept on disk beside the
  features, drawn by the canvas point map (:mod:`dashboard.pointmap`);
* **neighbours**: :class:`analysis.embeddings.large.NeighbourIndex` (exact up to
  ``EXACT_QUERY_MAX`` vectors, faiss HNSW beyond, its recall measured on 200 random images);
  the page says which search ran;
* **images**: only those shown (neighbours, the first 48 of a selection, the hover sprite
  sheets when asked for) are read from their files.

Every long step runs through :func:`dashboard.widgets.run_job` (progress and Stop).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

import analysis.embeddings.large as large
from analysis.core.config import get_config
from analysis.core.errors import ConvlensError
from dashboard import dataset_ui as dui
from dashboard import state
from dashboard.text import plain
from dashboard.widgets import run_job

THUMB = 64
ss = st.session_state


def is_large(ds) -> bool:
    """Whether ``ds`` is past the in-memory limit (the page takes this module's path)."""
    return len(ds) > get_config().limits.max_dataset_images


def features_folder(bundle, ds, layer: str) -> Path:
    """Where the features of (model, preprocessing, data set, layer) are stored."""
    key = large.store_key(bundle.model_id, bundle.preprocess.spec_id, ds.content_hash, layer)
    return Path(get_config().data_dir) / "embeddings" / key


@st.cache_resource(show_spinner=False, max_entries=4)
def _open_features(folder: str, stamp: float) -> large.StoredFeatures | None:
    return large.open_features(folder)


def open_stored(folder: Path) -> large.StoredFeatures | None:
    """The stored features of ``folder`` (memory-mapped), opened once per server while
    their meta.json is unchanged; None when there are none."""
    try:
        stamp = (folder / "meta.json").stat().st_mtime_ns
    except OSError:
        return None
    return _open_features(str(folder), stamp)


def extract_features(bundle, ds, layer: str, progress) -> large.StoredFeatures | None:
    """The executor's ``features`` job on every image (configured engine), then its parts
    copied into the memory-mapped store. None when the job stopped before the end."""
    from analysis.dataset.executor import JobSpec, run
    spec = JobSpec("features", state.model_spec(), dui.executor_ref(ds), params={"layer": layer})
    res = run(spec, progress=progress, dataset=ds, bundle=bundle, on_info=lambda s: st.toast(s))
    if not res.complete:
        return None
    if res.n_rows < 5:
        raise ConvlensError(f"Only {res.n_rows} of {res.n_images:,} images could be read: too few for a map.")
    dim = int(np.prod(res.meta["arrays"]["features"]))
    meta = {"job": res.key, "engine": res.meta.get("engine"), "job_seconds": res.meta.get("seconds"),
            "layer": layer, "model_id": bundle.model_id, "dataset_hash": ds.content_hash,
            "skipped": len(res.skipped)}
    return large.store_features(res.iter_tables(["index", "label", "pred", "confidence", "features"]), res.n_rows,
                                dim, features_folder(bundle, ds, layer), meta=meta, progress=progress)


def neighbour_index(sf: large.StoredFeatures, metric: str, progress) -> large.NeighbourIndex:
    """The page's neighbour index of ``sf`` (exact or HNSW by size; HNSW recall measured)."""
    idx = large.NeighbourIndex(sf.features, metric, exact_max=large.EXACT_QUERY_MAX, progress=progress)
    if idx.kind != "exact":
        idx.measure_recall(queries=200, k=10)
    return idx


def page(bundle, ds, layer: str, mapping) -> None:
    """The whole large-data-set flow of the Embeddings page (after the layer choice)."""
    limit = get_config().limits.max_dataset_images
    engine = get_config().engine
    folder = features_folder(bundle, ds, layer)
    st.info(f"{len(ds):,} images: more than the {limit:,} this page holds in memory (max_dataset_images). "
            f"Features come from the data-set executor's features job ({engine} engine) and are read "
            "memory-mapped from disk; the map is fitted on a sample and places every other image among its "
            "nearest sample points; images are read from their files only when shown.",
            icon=":material/dataset:")
    sf = open_stored(folder)
    if sf is None:
        st.caption(f"Features of `{layer}` are not stored for this data set yet: one pass over "
                   f"{len(ds):,} images; a stopped job keeps its finished chunks and resumes.")
        go = st.button("Extract features", type="primary", key="em_big_extract")
        sf = run_job(None, f"Extracting {layer} ({engine} engine)", lambda p: extract_features(bundle, ds, layer, p),
                     start=go, stop="em_big_stop", cache=False, title="Feature extraction (data-set job)",
                     meta={"layer": layer, "image": False})
        if sf is None:
            return
    correct = mapping.correct(sf.labels, sf.preds) if mapping.status == "identity" else None
    acc = (f"prediction accuracy {correct.mean():.1%}" if correct is not None else
           "no accuracy: the model's classes and the data set's differ (map them on the Data-set audit page)")
    size_mb = sf.features.nbytes / 1e6
    skipped = int(sf.meta.get("skipped") or 0)
    st.caption(f"{sf.n:,} × {sf.features.shape[1]} features, memory-mapped ({size_mb:,.0f} MB on disk, "
               f"{sf.meta.get('engine', '?')} engine) · {acc}"
               + (f" · {skipped:,} unreadable images have no features" if skipped else ""))

    def describe(i: int) -> str:
        return f"#{i} · {ds.class_names[int(ds.labels[i])]}"

    t_nn, t_map = st.tabs(["Nearest neighbours", "Map of the data set"], key="em_tab", on_change="rerun")
    with t_nn:
        neighbours_tab(bundle, ds, sf, folder, layer)
    with t_map:
        map_tab(bundle, ds, sf, folder, mapping, correct)


def neighbours_tab(bundle, ds, sf: large.StoredFeatures, folder: Path, layer: str) -> None:
    """k nearest images of a data-set image or the sidebar image, by the stored features."""
    from analysis.embeddings.features import features_for_images

    def describe(i: int) -> str:
        return f"#{i} · {ds.class_names[int(ds.labels[i])]}"
    q1, q2, q3, q4 = st.columns([2, 2, 1, 1])
    source = q1.radio("Query", ["data set image", "sidebar image"], horizontal=True, key="em_q_src")
    qi = int(q2.number_input("Image index", 0, len(ds) - 1, 0, key="em_q_idx")) if source == "data set image" \
        else None
    k = int(q3.number_input("k", 1, 32, 8, key="em_k"))
    metric = q4.radio("Metric", ["cosine", "l2"], key="em_metric")
    index = run_job(("em-big-index", str(folder), metric, large.EXACT_QUERY_MAX), f"Neighbour index of {sf.n:,} vectors",
                    lambda p: neighbour_index(sf, metric, p), record=False)
    if index is None:
        return
    st.caption(f"Neighbour search: **{index.describe()}**.")
    row = None
    if qi is not None:
        row = sf.row_of(qi)
        if row is None:
            st.warning(f"Image #{qi} could not be read by the features job: it has no features.")
            return
        q = np.asarray(sf.features[row:row + 1], np.float32)
        st.image(bundle.preprocess.geometry(ds.get(qi)), width=128, caption=plain(f"query {describe(qi)}"))
    else:
        q = features_for_images(bundle, [state.current_image()], layer)[0]
        st.image(bundle.preprocess.geometry(state.current_image()), width=128,
                 caption=plain(f"query: {state.image_ref().label}"))
    rows, dist = index.query(q, k + 1)
    keep = [(int(r), float(d)) for r, d in zip(rows[0], dist[0]) if r >= 0 and r != row][:k]
    found = [int(sf.index[r]) for r, _ in keep]
    ss["_em_big_nn_result"] = found                         # what the page shows (tests read it)
    agree = (f" · label agreement **{np.mean([ds.labels[i] == ds.labels[qi] for i in found]):.0%}**"
             if qi is not None and found else "")
    st.markdown(f"**Feature space**: {len(found)} nearest images{agree}")
    dui.image_grid(ds, bundle, found, "em_big_nn", captions=[
        plain(f"{describe(i)} · {bundle.categories[int(sf.preds[r])]} · {d:.3f}") for i, (r, d) in zip(found, keep)])
    st.caption("Pixel-space neighbours need every image in memory: not offered past "
               f"{get_config().limits.max_dataset_images:,} images.")


def hover_sheets(bundle, ds, sf: large.StoredFeatures, folder: Path) -> dict | None:
    """The point map's hover thumbnails: sprite sheets of every row's image, made on request
    (one read of every image, sheet by sheet, with progress and Stop; a stopped run keeps
    its sheets and resumes). None until they are made."""
    from dashboard.embedding_map import THUMB_PX, stored_sheets, stream_sheets
    from dashboard.pointmap import ensure_assets
    root = ensure_assets()
    key = f"big-{folder.name[:24]}-{THUMB_PX}"
    got = stored_sheets(key, sf.n, root)
    if got is not None:
        return got
    go = st.button("Make hover thumbnails", key="em_big_thumbs",
                   help=f"Reads each of the {sf.n:,} images once and keeps {THUMB_PX} px thumbnails on disk, "
                   "so that hovering a point shows its image.")

    def read_rows(a: int, b: int) -> np.ndarray:
        return np.stack([dui.thumb(ds, bundle, int(i), THUMB_PX) for i in sf.index[a:b]])
    return run_job(("em-big-thumbs", key), f"Hover thumbnails of {sf.n:,} images",
                   lambda p: stream_sheets(sf.n, read_rows, key, root, THUMB_PX, progress=p), start=go,
                   stop="em_big_thumbs_stop", record=False)


def map_tab(bundle, ds, sf: large.StoredFeatures, folder: Path, mapping, correct) -> None:
    """The map of every stored feature row: parameters, the kept or computed map, colours,
    the point map and the selected images."""
    from dashboard.embedding_map import slice_assignment
    from dashboard.pointmap import colouring, point_map, slice_colouring
    m1, m2 = st.columns(2)
    method = m1.selectbox("Method", ["tsne", "umap"], key="em_big_method", format_func={"tsne": "t-SNE",
                                                                                         "umap": "UMAP"}.get)
    colours = ["label", "prediction"] + (["correct", "slice"] if correct is not None else []) + ["confidence"]
    if ss.get("em_colour") not in colours:
        ss.pop("em_colour", None)
    colour = m2.selectbox("Colour by", colours, key="em_colour",
                          help="slice: clusters of the feature space (k-means, as on the Data-set audit page) "
                          "whose error rate is at least 1.5× the mean." + (
                              "" if correct is not None else " 'correct' and 'slice' need the model's classes to "
                              "be the data set's."))
    with st.expander("Parameters"):
        p1, p2, p3, p4 = st.columns(4)
        sample = int(p1.number_input("sample mapped by t-SNE / UMAP", 1_000, 500_000, large.DEFAULT_SAMPLE, 1_000,
                                     key="em_big_sample", help="The other points are placed among their "
                                     "nearest sample points."))
        kk = int(p2.number_input("placement neighbours", 1, 100, large.DEFAULT_K, key="em_big_k"))
        seed = int(p3.number_input("seed", 0, 10_000, 0, key="em_seed"))
        nclus = int(p4.number_input("slice clusters (k)", 2, 64, 8, key="em_slice_k", disabled=colour != "slice"))
    params = large.map_params(method, sample=sample, k=kk, pca_dims=50, seed=seed)
    m = large.load_map(folder, method, params, sf.n)
    if m is None:
        go = st.button(f"Draw the map of {sf.n:,} points", type="primary", key="em_big_map_go")
        if go:
            ss["em_big_map_req"] = params
        if ss.get("em_big_map_stop"):                  # Stop: forget the request (the rerun ends the job)
            ss.pop("em_big_map_req", None)
        start = ss.get("em_big_map_req") == params

        def compute(p):
            got = large.large_map(sf.features, method, sample=sample, k=kk, pca_dims=50, seed=seed,
                                  labels=sf.labels, progress=p)
            large.save_map(folder, got)
            return got
        m = run_job(("em-big-map", str(folder), json.dumps(params, sort_keys=True)), f"Map of {sf.n:,} points",
                    compute, start=start, stop="em_big_map_stop", title="Embedding map (large)",
                    meta={"layer": sf.meta.get("layer"), "image": False})
        if m is None:
            st.caption(f"{'t-SNE' if method == 'tsne' else 'UMAP'} of a {min(sample, sf.n):,}-point sample, then "
                       "placement of the others: a few minutes for a million points on 2 cores.")
            return
    if colour == "slice":
        wrong = ~np.asarray(correct, bool)
        sa = run_job(("em-big-slices", str(folder), nclus, m.params["seed"], len(m.sample_index)),
                     f"Slices of {sf.n:,} points", lambda p: slice_assignment(
                         sf.features, wrong, sf.labels, n_clusters=nclus, sample_index=m.sample_index, progress=p),
                     record=False)
        cidx, palette, legend = slice_colouring(sa.assignment, wrong)
    else:
        cidx, palette, legend = colouring(colour, sf.labels, sf.preds, sf.confidences, ds.class_names,
                                          bundle.categories, correct)
    ss["_em_big_colours"] = cidx                                   # the colours drawn (tests read them)
    ss["_em_big_map_points"] = m.n_points
    sheets = hover_sheets(bundle, ds, sf, folder)
    sel, count = point_map(m.coords, cidx, palette, legend, labels=sf.labels, preds=sf.preds,
                           confidence=sf.confidences, label_names=ds.class_names, pred_names=bundle.categories,
                           thumbs=sheets, key=f"em_bigmap_{folder.name[:16]}")
    s = m.seconds
    fit = f"{sum(s.values()):.0f} s" if s else "kept on disk"
    st.caption(f"{'t-SNE' if method == 'tsne' else 'UMAP'} of a {len(m.sample_index):,}-point stratified sample, "
               f"the other {m.n_points - len(m.sample_index):,} placed at the median of their {m.params['k']} "
               f"nearest sample points · {fit} · {m.n_points:,} points. Hover a point for its "
               + ("image, " if sheets else "label and prediction (no thumbnails yet), ")
               + "click, shift-click, box or lasso points to see their images below.")
    if sel:
        found = [int(sf.index[r]) for r in sel]
        st.markdown(f"**{count:,} selected** (first 48 shown)")
        dui.image_grid(ds, bundle, found[:48], "em_big_sel", captions=[
            plain(f"#{i} · {ds.class_names[int(ds.labels[i])]} · {bundle.categories[int(sf.preds[r])]}")
            for i, r in zip(found[:48], sel[:48])])
