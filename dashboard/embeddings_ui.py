"""The Embeddings page's two tabs on data sets held in memory: nearest neighbours in
feature vs pixel space, and the map of the whole data set (pages/embeddings.py draws the
header, the layer choice and the feature extraction; dashboard/embeddings_large_ui.py
the same page for data sets past the in-memory limit)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from analysis.embeddings.neighbors import neighbors
from dashboard import state
from dashboard.embedding_map import embedding_map, hover_thumbnails, slice_assignment
from dashboard.render import embedding_figure
from dashboard.subject import explain_picker
from dashboard.text import plain
from dashboard.widgets import record_button, run_job

THUMB = 64
POINT_MAP_FROM = 20_000        # 2-D maps from this many points are drawn by dashboard/pointmap.py


def thumbs(ds, bundle, idx) -> list[np.ndarray]:
    """THUMB-pixel views (the model's crop) of data-set images ``idx``."""
    from PIL import Image
    return [np.asarray(Image.fromarray(bundle.preprocess.geometry(ds.get(int(i)))).resize(
        (THUMB, THUMB), Image.NEAREST if bundle.input_size < THUMB else Image.BILINEAR)) for i in idx]


def pred_text(bundle, ds, fs, mapping, i: int) -> str:
    """Label and prediction of image ``i`` under a thumbnail (the model's class named as
    such when the classes differ)."""
    if mapping.status == "identity":
        return ds.class_names[int(fs.labels[i])] + " / " + bundle.categories[int(fs.predictions[i])]
    return f"{ds.class_names[int(fs.labels[i])]} · model: {bundle.categories[int(fs.predictions[i])]}"


def neighbours_tab(bundle, ds, fs, layer: str, mapping) -> None:
    """Nearest neighbours of a data-set or sidebar image, in feature and in pixel space."""
    q1, q2, q3, q4 = st.columns([2, 2, 1, 1])
    source = q1.radio("Query", ["data set image", "sidebar image"], horizontal=True, key="em_q_src")
    qi = int(q2.number_input("Image index", 0, len(ds) - 1, 0, key="em_q_idx")) if source == "data set image" else None
    k = int(q3.number_input("k", 1, 32, 8, key="em_k"))
    metric = q4.radio("Metric", ["cosine", "l2"], key="em_metric")
    qimg = None if qi is not None else state.current_image()
    qshow = bundle.preprocess.geometry(ds.get(qi) if qi is not None else qimg)
    st.image(qshow, width=128, caption=(plain(f"query #{qi}: {ds.ids[qi]} · label {ds.class_names[ds.labels[qi]]}")
                                        if qi is not None else plain(f"query: {state.image_ref().label}")))
    cols = st.columns(2)
    for col, space in zip(cols, ["feature", "pixel"]):
        key = ("nn", bundle.model_id, ds.content_hash, layer, space, metric, k, qi,
               None if qi is not None else str(state.image_ref()))
        res = run_job(key, f"{space} neighbours", lambda p, space=space: neighbors(
            bundle, ds, fs, query_index=qi, query_image=qimg, k=k, metric=metric, space=space),
            with_progress=False, record=False)                 # shown on a visit: recorded on demand
        with col:
            record_button(f"em_nn_{space}", res, key, f"{space.capitalize()}-space neighbours",
                          meta={"layer": layer, "image": qi is None})
            st.markdown(f"**{'Feature' if space == 'feature' else 'Pixel'} space**" + (
                f" · label agreement **{res.agreement:.0%}**" if res.agreement is not None else ""))
            st.image(thumbs(ds, bundle, res.indices), width=THUMB, caption=[
                plain(f"{pred_text(bundle, ds, fs, mapping, int(i))} · {d:.3f}") for i, d in zip(res.indices, res.distances)])
            explain_picker(ds, res.indices, key=f"em_x_{space}")
    st.caption("Under each thumbnail: " + ("label / prediction" if mapping.status == "identity" else
                                          "label · the model's class") + " · distance.")


def map_tab(bundle, ds, fs, layer: str, mapping) -> None:
    """The 2-D / 3-D map of the data set (plotly, or the canvas point map for many points),
    with selection, slices and highlight."""
    from analysis.embeddings.projection import PROJECTIONS, project
    m1, m2, m3 = st.columns(3)
    method = m1.selectbox("Method", list(PROJECTIONS), key="em_method", format_func=lambda m: PROJECTIONS[m].title)
    uses = PROJECTIONS[method].options          # the options this method reads; the others' widgets are disabled

    def only(option: str) -> str:
        names = [m.title for m in PROJECTIONS.values() if option in m.options]
        return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) + " only"
    dims = m2.radio("Dimensions", [2, 3], horizontal=True, key="em_dims")
    colours = ["label", "prediction"] + (["correct", "slice"] if mapping.status == "identity" else []) + \
        ["confidence"]
    if st.session_state.get("em_colour") not in colours:
        st.session_state.pop("em_colour", None)
    colour = m3.selectbox("Colour by", colours, key="em_colour",
                          help="slice: clusters of the feature space (k-means, as on the Data-set audit page) "
                          "whose error rate is at least 1.5× the mean." + ("" if mapping.status == "identity" else
                          " 'correct' and 'slice' need the model's classes to be the data set's; see the "
                          "Data-set audit page for accuracy through a mapping."))
    params = {}
    with st.expander("Parameters"):
        # every widget is always drawn (those of other methods disabled), so switching
        # the method keeps their values
        p1, p2, p3, p4, p5 = st.columns(5)
        params["seed"] = int(p1.number_input("seed", 0, 10_000, 0, key="em_seed"))
        drawn = {
            "pca_dims": int(p2.number_input("PCA pre-reduction (0 = off)", 0, 512, 50, key="em_pca",
                                            disabled="pca_dims" not in uses, help=only("pca_dims") + ".")),
            "perplexity": float(p3.number_input("perplexity", 2.0, 200.0, 30.0, key="em_perp",
                                                disabled="perplexity" not in uses,
                                                help=f"{only('perplexity')}; must be less than N/3 = {fs.n / 3:,.1f}.")),
            "n_neighbors": int(p4.number_input("n_neighbors", 2, 200, 15, key="em_nn",
                                               disabled="n_neighbors" not in uses,
                                               help=f"{only('n_neighbors')}; must be less than N = {fs.n:,}.")),
            "min_dist": float(p5.number_input("min_dist", 0.0, 1.0, 0.1, 0.05, key="em_md",
                                              disabled="min_dist" not in uses, help=only("min_dist") + ".")),
            "metric": st.radio("metric", ["euclidean", "cosine"], horizontal=True, key="em_pmetric",
                               disabled="metric" not in uses, help=only("metric") + "."),
        }
        nclus = int(st.number_input("slice clusters (k)", 2, 64, 8, key="em_slice_k", disabled=colour != "slice"))
    params.update((k, v) for k, v in drawn.items() if k in uses)
    parts = ("proj", bundle.model_id, ds.content_hash, layer, bundle.preprocess.spec_id)
    pkey = parts + (method, dims, tuple(sorted(params.items())))
    proj = run_job(pkey, f"{method} map", lambda p: project(fs.features, method, dims, progress=p,
                                                            cache_parts=parts, labels=fs.labels, **params),
                   record=False)                               # shown on a visit: recorded on demand
    record_button("em_map", proj, pkey, "Embedding map", meta={"layer": layer, "image": False})
    search = st.text_input("Highlight (label or file name contains)", key="em_search",
                           disabled=dims == 2 and fs.n >= POINT_MAP_FROM,
                           help=f"Plotly map only (below {POINT_MAP_FROM:,} points or in 3-D).")
    slices = None
    if colour == "slice":                   # the data-set audit's slices, on the same features
        wrong = ~mapping.correct(fs.labels, fs.predictions)
        slices = run_job(("em-slices", bundle.model_id, ds.content_hash, layer, bundle.preprocess.spec_id, nclus),
                         f"Slices ({nclus} clusters)", lambda p: slice_assignment(
                             fs.features, wrong, fs.labels, n_clusters=nclus), record=False)
        st.session_state["_em_slice_assignment"] = slices.assignment          # tests compare the colours
    if dims == 2 and fs.n >= POINT_MAP_FROM:
        # many points: the canvas point map (binary files, no per-point JSON; docs/benchmarks.md)
        from analysis.embeddings.neighbors import pixel_thumbnails
        from dashboard.pointmap import colouring, point_map, slice_colouring, thumbnail_sheets
        tarr = run_job(("pixel-thumbs", ds.content_hash, bundle.preprocess.spec_id), "Thumbnails for hover",
                       lambda p: pixel_thumbnails(bundle, ds, 32, progress=p), record=False)
        sheets = thumbnail_sheets(tarr, f"{ds.content_hash}:{bundle.preprocess.spec_id}:32")
        correct = mapping.correct(fs.labels, fs.predictions) if mapping.status == "identity" else None
        if slices is not None:
            cidx, palette, legend = slice_colouring(slices.assignment, ~correct)
        else:
            cidx, palette, legend = colouring(colour, fs.labels, fs.predictions, fs.confidences,
                                              ds.class_names, bundle.categories, correct)
        st.session_state["_em_colours"] = cidx
        sel, count = point_map(proj.coords, cidx, palette, legend, labels=fs.labels, preds=fs.predictions,
                               confidence=fs.confidences, label_names=ds.class_names,
                               pred_names=bundle.categories, thumbs=sheets,
                               key=f"em_pmap_{bundle.short_id}_{ds.content_hash[:16]}_{layer}")
        live = True
    else:
        cats = None
        if slices is not None:
            from dashboard.pointmap import slice_colouring
            cidx, _, legend = slice_colouring(slices.assignment, wrong)
            cats = np.asarray(legend, dtype=object)[cidx]
            st.session_state["_em_colours"] = cidx
        fig = embedding_figure(proj.coords, fs, ds, bundle, colour, search, categories=cats)
        sheets = run_job(("hover-thumbs", ds.content_hash, bundle.preprocess.spec_id), "Thumbnails for hover",
                         lambda p: hover_thumbnails(bundle, ds, progress=p), record=False)
        sel, live = embedding_map(fig, fs.n, key=f"em_map_{bundle.short_id}_{ds.content_hash[:16]}_{layer}",
                                  thumbs=sheets)
        count = len(sel)
    q = (proj.quality or {}).get("knn_accuracy")
    name = PROJECTIONS[method].title
    took = "from the cache" if getattr(proj, "from_cache", False) else f"{proj.seconds:.1f} s"
    st.caption(f"{name} · {took} · {fs.n:,} points, no sampling"
               + (f" · 5-NN accuracy of the map {q:.1%}" if q is not None else "")
               + (". Hover a point for its image; " if live and sheets else
                  ". Hover shows text only (thumbnails unavailable, see the server log); ")
               + ("click or shift-click points (3-D has no box or lasso)" if dims == 3 else
                  "click, shift-click, box or lasso points") + " to see their images below.")
    if proj.explained_variance_ratio is not None:
        ev = np.asarray(proj.explained_variance_ratio)
        st.bar_chart(pd.DataFrame({"explained variance": ev}, index=np.arange(1, len(ev) + 1)), height=180)
    if sel:
        st.markdown(f"**{count:,} selected** (first 48 shown)")
        st.image(thumbs(ds, bundle, sel[:48]), width=THUMB,
                 caption=[plain(f"{ds.class_names[ds.labels[i]]} · {ds.ids[i]}") for i in sel[:48]])
        explain_picker(ds, sel[:48], key="em_x_sel")
