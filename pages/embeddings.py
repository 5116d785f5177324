"""Embeddings: are images close in feature space alike (when far apart in pixel space)?
And what does the data set look like laid out in 2-D / 3-D (PCA, t-SNE, UMAP)?"""
import numpy as np
import pandas as pd
import streamlit as st

from analysis.embeddings.features import extract, load_features, penultimate_layer
from analysis.embeddings.neighbors import neighbors
from dashboard import state
from dashboard.embedding_map import embedding_map, hover_thumbnails
from dashboard.errors import guard
from dashboard.render import embedding_figure
from dashboard.widgets import drive_with_progress, run_job

st.title("Embeddings — feature space vs pixel space")
st.caption("Nearest neighbours by the network's features and by raw pixels, and maps of the "
           "whole data set (CS231n lecture 12: the last layer).")

THUMB = 64


def thumbs(ds, bundle, idx):
    from PIL import Image
    return [np.asarray(Image.fromarray(bundle.preprocess.geometry(ds.get(int(i)))).resize(
        (THUMB, THUMB), Image.NEAREST if bundle.input_size < THUMB else Image.BILINEAR)) for i in idx]


with guard("Embeddings"):
    bundle = state.current_bundle()
    ds = state.current_dataset()
    infos = state.current_layers()
    default = penultimate_layer(bundle)
    names = [i.name for i in infos if i.calls > 0 and i.output_shape   # maps, tokens, vectors by layout
             and (i.spatial or i.layout.kind in ("vector", "tokens"))]
    c1, c2 = st.columns([3, 2])
    layer = c1.selectbox("Feature layer", names, index=names.index(default) if default in names else 0,
                         key=f"em_layer_{bundle.short_id}", help="Maps are global-average-pooled; token layers give their class token. "
                         "Default: the layer that feeds the classifier.")
    c2.caption(f"Data set: **{ds.name}** ({len(ds):,} images, {len(ds.class_names)} classes) — change it in the sidebar.")

    fs = load_features(bundle, ds, layer)
    if fs is None:
        st.info(f"Features of `{layer}` are not extracted for this data set yet (one batched pass, "
                "stored on disk keyed by model, layer, data and preprocessing).")
        go_, stop_ = st.columns([1, 5])
        if go_.button("Extract features", type="primary", key="em_extract"):
            stop_.button("Stop", key="em_stop", help="Stops extraction; nothing is saved.")
            fs = drive_with_progress(extract(bundle, ds, layer), f"Extracting {layer}")
            if fs is not None:
                st.rerun()
        st.stop()
    st.caption(f"{fs.n:,} × {fs.features.shape[1]} features · prediction accuracy on this data set "
               f"{(fs.predictions == fs.labels).mean():.1%} · extracted in {fs.seconds:.1f} s")

    t_nn, t_map = st.tabs(["Nearest neighbours", "Map of the data set"])
    with t_nn, guard("Nearest neighbours"):
        q1, q2, q3, q4 = st.columns([2, 2, 1, 1])
        source = q1.radio("Query", ["data set image", "sidebar image"], horizontal=True, key="em_q_src")
        qi = int(q2.number_input("Image index", 0, len(ds) - 1, 0, key="em_q_idx")) if source == "data set image" else None
        k = int(q3.number_input("k", 1, 32, 8, key="em_k"))
        metric = q4.radio("Metric", ["cosine", "l2"], key="em_metric")
        qimg = None if qi is not None else state.current_image()
        qshow = bundle.preprocess.geometry(ds.get(qi) if qi is not None else qimg)
        st.image(qshow, width=128, caption=(f"query #{qi}: {ds.ids[qi]} · label {ds.class_names[ds.labels[qi]]}"
                                            if qi is not None else f"query: {state.image_ref().label}"))
        cols = st.columns(2)
        for col, space in zip(cols, ["feature", "pixel"]):
            key = ("nn", bundle.model_id, ds.content_hash, layer, space, metric, k, qi,
                   None if qi is not None else str(state.image_ref()))
            res = run_job(key, f"{space} neighbours", lambda p, space=space: neighbors(
                bundle, ds, fs, query_index=qi, query_image=qimg, k=k, metric=metric, space=space),
                with_progress=False)
            with col:
                st.markdown(f"**{'Feature' if space == 'feature' else 'Pixel'} space**" + (
                    f" · label agreement **{res.agreement:.0%}**" if res.agreement is not None else ""))
                st.image(thumbs(ds, bundle, res.indices), width=THUMB, caption=[
                    f"{ds.class_names[ds.labels[i]]} / {bundle.categories[fs.predictions[i]]} · {d:.3f}"
                    for i, d in zip(res.indices, res.distances)])
        st.caption("Under each thumbnail: label / prediction · distance.")

    with t_map, guard("Map"):
        from analysis.embeddings.projection import project
        m1, m2, m3 = st.columns(3)
        method = m1.selectbox("Method", ["tsne", "umap", "pca"], key="em_method",
                              format_func={"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}.get)
        dims = m2.radio("Dimensions", [2, 3], horizontal=True, key="em_dims")
        colour = m3.selectbox("Colour by", ["label", "prediction", "correct", "confidence"], key="em_colour")
        params = {}
        with st.expander("Parameters"):
            # every widget is always drawn (those of other methods disabled), so switching
            # the method keeps their values
            p1, p2, p3, p4, p5 = st.columns(5)
            params["seed"] = int(p1.number_input("seed", 0, 10_000, 0, key="em_seed"))
            pca = int(p2.number_input("PCA pre-reduction (0 = off)", 0, 512, 50, key="em_pca",
                                      disabled=method == "pca", help="t-SNE and UMAP only."))
            perp = float(p3.number_input("perplexity", 2.0, 200.0, 30.0, key="em_perp", disabled=method != "tsne",
                                         help=f"t-SNE only; must be less than N/3 = {fs.n / 3:,.1f}."))
            nn = int(p4.number_input("n_neighbors", 2, 200, 15, key="em_nn", disabled=method != "umap",
                                     help=f"UMAP only; must be less than N = {fs.n:,}."))
            md = float(p5.number_input("min_dist", 0.0, 1.0, 0.1, 0.05, key="em_md", disabled=method != "umap",
                                       help="UMAP only."))
            pmetric = st.radio("metric", ["euclidean", "cosine"], horizontal=True, key="em_pmetric",
                               disabled=method == "pca", help="t-SNE and UMAP only.")
        if method != "pca":
            params.update(pca_dims=pca, metric=pmetric)
        if method == "tsne":
            params["perplexity"] = perp
        if method == "umap":
            params.update(n_neighbors=nn, min_dist=md)
        parts = ("proj", bundle.model_id, ds.content_hash, layer, bundle.preprocess.spec_id)
        proj = run_job(parts + (method, dims, tuple(sorted(params.items()))), f"{method} map",
                       lambda p: project(fs.features, method, dims, progress=p, cache_parts=parts,
                                                 labels=fs.labels, **params))
        search = st.text_input("Highlight (label or file name contains)", key="em_search")
        fig = embedding_figure(proj.coords, fs, ds, bundle, colour, search)
        sheets = run_job(("hover-thumbs", ds.content_hash, bundle.preprocess.spec_id), "Thumbnails for hover",
                         lambda p: hover_thumbnails(bundle, ds, progress=p))
        sel, live = embedding_map(fig, fs.n, key=f"em_map_{bundle.short_id}_{ds.content_hash[:16]}_{layer}",
                                  thumbs=sheets)
        q = (proj.quality or {}).get("knn_accuracy")
        name = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}[method]
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
            st.markdown(f"**{len(sel)} selected** (first 48 shown)")
            st.image(thumbs(ds, bundle, sel[:48]), width=THUMB,
                     caption=[f"{ds.class_names[ds.labels[i]]} · {ds.ids[i]}" for i in sel[:48]])
