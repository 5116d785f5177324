"""Relevance: LRP, which channels of a layer carry the decision (CRP), where they are in the
image, and reference galleries of the images where a channel is most relevant."""
import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.core.layers import last_conv_block
from analysis.core.predict import predict
from analysis.relevance.crp import channel_relevance, conditional_heatmaps
from analysis.relevance.lrp import COMPOSITES
from dashboard import state
from dashboard.errors import guard
from dashboard.render import clip_map, colorize, overlay
from dashboard.widgets import layer_picker, run_job, target_picker

st.title("Relevance — which concept carries the decision?")
st.caption("Layer-wise relevance propagation (zennit) sends the class score back to the pixels; concept "
           "relevance propagation (CRP) keeps only one channel of a layer on the way, showing what that "
           "channel contributes and where. See docs/relevance.md.")


def heat(m: np.ndarray, image: np.ndarray) -> np.ndarray:
    norm = clip_map(m, 1.0, signed=True)
    return overlay(image, colorize(norm, "RdBu_r", signed=True), 0.6, weight=np.abs(norm))


with guard("Relevance"):
    bundle = state.current_bundle()
    infos = state.current_layers()
    image = state.current_image()
    pred = predict(bundle, image, k=5)
    left, right = st.columns(2)
    with left:
        composite = st.selectbox("LRP composite", list(COMPOSITES), format_func=lambda c: COMPOSITES[c][0],
                                 key="rel_composite")
        st.caption(COMPOSITES[composite][1])
        target = target_picker(bundle, pred, key="rel_target")
    with right:
        layer = layer_picker(infos, last_conv_block(infos), key="rel_layer", label="Layer (concepts = its channels)")
        top_k = st.slider("Top channels shown", 1, 16, 6, key="rel_topk")
    if st.button("Compute relevance", type="primary", key="rel_compute"):
        st.session_state["rel_active"] = {"composite": composite, "target": int(target), "layer": layer}
    req = st.session_state.get("rel_active")
    if not req:
        st.info("Choose a composite, a target and a layer, then press **Compute relevance**.")
        st.stop()
    img_key = json.dumps(state.image_ref().__dict__, sort_keys=True)
    key = ("crp_channels", bundle.model_id, img_key, req["target"], req["layer"], req["composite"])
    cr = run_job(key, "Channel relevance (LRP)", lambda prog: channel_relevance(
        bundle, image, req["target"], req["layer"], req["composite"]))
    chans = cr.top(top_k)
    c1, c2 = st.columns([1, 2])
    with c1:
        st.markdown(f"**LRP map** for **{bundle.categories[cr.target]}** · score {cr.score:.3g} · "
                    f"relevance at {cr.layer}: {cr.relevance.sum():.3g}")
        st.image(heat(cr.heatmap, cr.image), width="stretch", caption="red: evidence for, blue: against")
    with c2:
        order = cr.top(min(32, len(cr.relevance)))
        fig = go.Figure(go.Bar(x=[str(c) for c in order], y=cr.relevance[order],
                               marker_color=["#c0392b" if v > 0 else "#2c7fb8" for v in cr.relevance[order]],
                               customdata=cr.activation[order],
                               hovertemplate="channel %{x}<br>relevance %{y:.3g}<br>mean activation %{customdata:.3g}"))
        fig.update_layout(title=f"Channels of {cr.layer} by relevance (top {len(order)})", height=320,
                          xaxis_title="channel", yaxis_title="relevance", xaxis_type="category",
                          margin=dict(l=40, r=10, t=40, b=40))
        st.plotly_chart(fig, key="rel_bar", width="stretch")
    mkey = key + (tuple(chans),)
    cm = run_job(mkey, "Conditional heatmaps (CRP)", lambda prog: conditional_heatmaps(
        bundle, image, req["target"], req["layer"], chans, req["composite"]))
    st.subheader(f"Where each of the top {len(chans)} channels finds its evidence")
    cols = st.columns(min(len(chans), 6))
    for i, c in enumerate(cm.channels):
        with cols[i % len(cols)]:
            st.image(heat(cm.maps[i], cm.image), width="stretch",
                     caption=f"channel {c} · relevance {cr.relevance[c]:.3g} ({cr.relevance[c] / (cr.relevance.sum() or 1):.0%})")

    st.divider()
    st.subheader("Reference gallery: where is this channel most relevant in the data set?")
    st.caption("Relevance maximisation (Achtibat et al. 2023): the data-set images in which the channel passes on the "
               "most relevance for their own prediction, beside the images that merely activate it most. Built by the "
               "data-set executor (job kind `crp`), cached by model, data set, layer and composite.")
    ds = state.current_dataset()
    g1, g2, g3 = st.columns(3)
    channel = g1.number_input("Channel", 0, len(cr.relevance) - 1, int(chans[0]), key="rel_gal_channel")
    n_use = g2.number_input("Images of the data set to scan", 8, len(ds), min(len(ds), 300), key="rel_gal_n")
    n_show = g3.slider("Images shown", 3, 16, 8, key="rel_gal_show")
    if st.button("Build reference gallery", key="rel_gal_run"):
        st.session_state["rel_gal"] = {"n": int(n_use)}
    gal = st.session_state.get("rel_gal")
    if gal:
        from analysis.dataset.executor import JobSpec, run
        from analysis.relevance.workers import reference_gallery
        spec = JobSpec("crp", state.model_spec(), "digits", batch_size=32, indices=tuple(range(gal["n"])),
                       params={"layer": req["layer"], "composite": req["composite"]})
        gkey = ("crp_gallery", bundle.model_id, ds.content_hash, json.dumps(spec.to_dict(), sort_keys=True, default=str))
        res = run_job(gkey, "Channel relevance over the data set", lambda prog: run(
            spec, engine="local", dataset=ds, bundle=bundle, progress=prog))
        a, b = st.columns(2)
        for col, by, title in ((a, "relevance", "most relevant"), (b, "activation", "most active")):
            rows = reference_gallery(res, int(channel), n=int(n_show), by=by)
            with col:
                st.markdown(f"**{title}** (channel {int(channel)})")
                st.image([bundle.preprocess.geometry(ds.get(r["index"])) for r in rows], width=96,
                         caption=[f"{ds.class_names[r['label']]} → {bundle.categories[r['target']]} · {r['value']:.2g}"
                                  for r in rows])
