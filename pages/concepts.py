"""Concepts discovered from data (CRAFT): for one class, the parts of its images a layer
encodes as distinct concepts, how much each matters for the class, and where each is."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.compare.agreement import label_to_model
from analysis.concepts.craft import cached_concepts, concept_maps
from analysis.core.images import colormap_rgb
from analysis.core.layers import last_conv_block, spatial_infos
from dashboard import state
from dashboard.render import overlay
from dashboard.widgets import layer_picker, page, run_job

with page("Concepts — what the network has learned to look for in a class",
          "CRAFT (Fel et al. 2023): crops of the class's images → a layer's activations → non-negative matrix "
          "factorisation into k concepts; each concept's typical crops, its importance for the class "
          "(gradient × concept) and its map on any image. See docs/relevance.md.",
          what="Concepts"):
    bundle = state.current_bundle()
    infos = state.current_layers()
    ds = state.current_dataset()
    counts = np.bincount(ds.labels, minlength=len(ds.class_names))
    c1, c2, c3 = st.columns(3)
    cls = c1.selectbox("Class of the data set", [i for i in range(len(ds.class_names)) if counts[i]],
                       format_func=lambda i: f"{ds.class_names[i]} ({counts[i]} images)", key="con_class")
    mapped = int(label_to_model(ds.class_names, bundle.categories)[cls])
    target = c1.selectbox("Model class explained", range(bundle.num_classes), index=max(mapped, 0),
                          format_func=lambda i: f"{bundle.categories[i]} ({i})", key="con_target")
    with c2:
        relu = [i for i in spatial_infos(infos) if "relu" in i.type.lower()]
        default = relu[-1].name if relu else last_conv_block(infos)
        layer = layer_picker(infos, default, key="con_layer", label="Layer (non-negative activations)")
    k = c3.slider("Concepts (k)", 2, 12, 5, key="con_k")
    grid = c3.select_slider("Crops per image", [1, 4, 9, 16], 9, key="con_grid")
    n_img = c2.number_input("Images of the class (at most)", 4, 256, min(int(counts[cls]), 48), key="con_n")
    if st.button("Extract concepts", type="primary", key="con_run"):
        st.session_state["con_active"] = {"cls": int(cls), "target": int(target), "layer": layer, "k": int(k),
                                          "grid": int(grid), "n": int(n_img)}
    req = st.session_state.get("con_active")
    if not req:
        st.info("Choose a class, a layer and k, then press **Extract concepts**.")
        st.stop()
    idx = np.flatnonzero(ds.labels == req["cls"])[:req["n"]]
    side = int(round(req["grid"] ** 0.5))
    key = ("craft", bundle.model_id, ds.content_hash, req["cls"], req["target"], req["layer"], req["k"], side, req["n"])
    cs = run_job(key, "Concepts (crops → activations → NMF)", lambda prog: cached_concepts(
        bundle, ds.content_hash, ds.get_many(idx), req["target"], req["layer"], req["k"], grid=side, progress=prog))
    for w in cs.warnings:
        st.warning(w)
    order = cs.order
    fig = go.Figure(go.Bar(x=[f"concept {i}" for i in order], y=cs.importance[order]))
    fig.update_layout(title=f"Importance for {cs.target_label} (gradient × concept)", height=280,
                      margin=dict(l=40, r=10, t=40, b=30))
    st.plotly_chart(fig, key="con_imp", width="stretch")
    st.caption(f"{cs.n_images} images · {len(cs.crops)} crops · the concepts reconstruct {cs.explained:.0%} of the "
               f"activations · layer {cs.layer}")
    image = state.current_image()
    maps = run_job(key + ("maps", state.image_ref().ref), "Concept maps on the sidebar image",
                   lambda prog: concept_maps(bundle, cs, image), with_progress=False, record=False)
    crop = bundle.preprocess.geometry(image)
    for c in order:
        st.markdown(f"**Concept {c}** · importance {cs.importance[c]:.3g}")
        a, b = st.columns([3, 1])
        a.image([cs.crops[i] for i in cs.typical(c, 6)], width=80)
        m = maps[c] / (maps[c].max() or 1)
        heat = colormap_rgb(m, "viridis")
        b.image(overlay(crop, heat, 0.6, weight=m), width="stretch", caption="where, on the sidebar image")
