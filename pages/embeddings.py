"""Embeddings: are images close in feature space alike (when far apart in pixel space)?
And what does the data set look like laid out in 2-D / 3-D (PCA, t-SNE, UMAP)?"""
import streamlit as st

from analysis.embeddings.features import extract, load_features, penultimate_layer
from dashboard import state
from dashboard.dataset_ui import current_mapping
from dashboard.embeddings_large_ui import is_large
from dashboard.embeddings_large_ui import page as large_page
from dashboard.embeddings_ui import map_tab, neighbours_tab
from dashboard.errors import guard
from dashboard.text import plain
from dashboard.widgets import drive_with_progress

st.title("Embeddings — feature space vs pixel space")
st.caption("Nearest neighbours by the network's features and by raw pixels, and maps of the "
           "whole data set (CS231n lecture 12: the last layer).")

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
    c2.caption(f"Data set: **{plain(ds.name)}** ({len(ds):,} images, {len(ds.class_names)} classes) — change it in the sidebar.")

    if is_large(ds):           # past max_dataset_images: executor features, memory-mapped, large_map
        large_page(bundle, ds, layer, current_mapping(bundle, ds))
        st.stop()
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
    mapping = current_mapping(bundle, ds)
    if mapping.source == "edited":
        st.session_state["em_classmap"] = mapping.to_state()      # the edited mapping travels with this link
    if mapping.status == "identity":
        acc = f"prediction accuracy on this data set {mapping.correct(fs.labels, fs.predictions).mean():.1%}"
    elif mapping.status == "none":
        acc = "no accuracy: the model's classes and the data set's differ"
    else:
        ok = mapping.scorable(fs.labels)
        acc = (f"accuracy through the class mapping {mapping.correct(fs.labels, fs.predictions)[ok].mean():.1%} "
               f"on {int(ok.sum()):,} images of mapped classes")
    st.caption(f"{fs.n:,} × {fs.features.shape[1]} features · {acc} · extracted in {fs.seconds:.1f} s")
    if mapping.status != "identity":
        st.info(mapping.describe() + " Under thumbnails and in the map, *model:* names the model's own class. "
                "Map classes on the **Data-set audit** page to score the model.", icon=":material/swap_horiz:")

    # stateful tabs: a link restores the tab it was made on (both tabs are drawn, as before)
    t_nn, t_map = st.tabs(["Nearest neighbours", "Map of the data set"], key="em_tab", on_change="rerun")
    with t_nn, guard("Nearest neighbours"):
        neighbours_tab(bundle, ds, fs, layer, mapping)
    with t_map, guard("Map"):
        map_tab(bundle, ds, fs, layer, mapping)
