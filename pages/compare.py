"""Compare two models: side by side on one image, agreement over the data set, and how
similar their layers' representations are (linear CKA)."""
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.compare.agreement import compare_predictions, predict_dataset
from analysis.compare.cka import compare_layers
from analysis.core.layers import spatial_infos, spatial_layers
from analysis.core.predict import predict
from analysis.saliency import registry
from analysis.saliency.methods import attribute
from dashboard import state
from dashboard.compare_ui import model_b_picker
from dashboard.errors import guard
from dashboard.render import clip_map, colorize, overlay, topk_figure
from dashboard.widgets import run_job

st.title("Compare two models")
st.caption("Model A is the sidebar's model; choose model B below (before / after fine-tuning, or two "
           "architectures). See docs/relevance.md.")


def default_layers(infos, n: int = 6) -> list[str]:
    names = [i.name for i in spatial_infos(infos) if i.is_leaf]
    if len(names) <= n:
        return names
    return [names[int(round(k))] for k in np.linspace(0, len(names) - 1, n)]


with guard("Compare"):
    bundle_a = state.current_bundle()
    infos_a = state.current_layers()
    picked = model_b_picker()
    if picked is None:
        st.stop()
    spec_b, bundle_b = picked
    from analysis.core.layers import layer_table
    infos_b = infos_a if bundle_b is bundle_a else run_job(("layers", bundle_b.model_id), "Tracing model B's layers",
                                                          lambda p: layer_table(bundle_b), with_progress=False,
                                                          record=False)
    image = state.current_image()
    t_img, t_data, t_cka = st.tabs(["Same image", "Over the data set", "Representations (CKA)"])

    with t_img:
        ca, cb = st.columns(2)
        preds = {}
        for col, tag, b in ((ca, "A", bundle_a), (cb, "B", bundle_b)):
            with col:
                preds[tag] = predict(b, image, k=5)
                st.plotly_chart(topk_figure(preds[tag], f"Model {tag}: {b.name}"), key=f"cmp_top_{tag}", width="stretch")
        method = st.selectbox("Saliency method", registry.names(), format_func=lambda m: registry.get(m).title,
                              index=registry.names().index("gradient"), key="cmp_method")
        if st.button("Compute both maps", key="cmp_maps"):
            st.session_state["cmp_map_active"] = method
        m = st.session_state.get("cmp_map_active")
        if m:
            img_key = json.dumps(state.image_ref().__dict__, sort_keys=True)
            for col, tag, b in ((ca, "A", bundle_a), (cb, "B", bundle_b)):
                with col, guard(f"Model {tag}"):
                    a = run_job(("saliency", b.model_id, img_key, None, m, "{}"), f"{registry.get(m).title} ({tag})",
                                lambda prog, b=b: attribute(b, image, None, m, progress=prog))
                    signed = registry.get(m).signed
                    norm = clip_map(a.map, 2.0, signed=signed)
                    st.image(overlay(a.image, colorize(norm, "RdBu_r" if signed else "inferno", signed=signed), 0.6,
                                     weight=np.abs(norm)), width="stretch",
                             caption=f"{registry.get(m).title} for {a.target_label} · {a.seconds:.2f} s")
                    for w in a.warnings:
                        st.warning(w)

    with t_data:
        ds = state.current_dataset()
        n_use = st.number_input("Images", 10, len(ds), min(len(ds), 500), key="cmp_n")
        if st.button("Compare predictions", key="cmp_agree_run"):
            st.session_state["cmp_agree"] = int(n_use)
        if st.session_state.get("cmp_agree"):
            n = st.session_state["cmp_agree"]
            got = {}
            for tag, b, spec in (("A", bundle_a, state.model_spec()), ("B", bundle_b, spec_b)):
                got[tag] = run_job(("cmp_pred", b.model_id, ds.content_hash, n), f"Predictions of model {tag}",
                                   lambda prog, b=b, spec=spec: predict_dataset(b, spec, ds, n=n, progress=prog),
                                   record=False)
            ia, pa, la = got["A"]
            ib, pb, _ = got["B"]
            if not np.array_equal(ia, ib):
                st.error("The two models could not read the same images; compare on a data set both can read.")
                st.stop()
            r = compare_predictions(pa, pb, la, ds.class_names, bundle_a.categories, bundle_b.categories, index=ia)
            m1, m2, m3 = st.columns(3)
            m1.metric("Agreement", f"{r.agreement:.1%}", help="Share of images with the same predicted class name.")
            m2.metric("Accuracy A", "n/a" if np.isnan(r.accuracy_a) else f"{r.accuracy_a:.1%}")
            m3.metric("Accuracy B", "n/a" if np.isnan(r.accuracy_b) else f"{r.accuracy_b:.1%}")
            for w in r.warnings:
                st.info(w)
            st.dataframe(pd.DataFrame(r.per_class), hide_index=True, width="stretch")
            show = st.radio("Show", ["disagreements", "errors of A", "errors of B"], horizontal=True, key="cmp_show")
            sel = {"disagreements": r.disagree, "errors of A": r.errors_a, "errors of B": r.errors_b}[show]
            st.caption(f"{len(sel)} images; the first 24:")
            if len(sel):
                st.image([bundle_a.preprocess.geometry(ds.get(int(r.index[i]))) for i in sel[:24]], width=96,
                         caption=[f"{ds.class_names[r.labels[i]]}: A {bundle_a.categories[r.pred_a[i]]} / "
                                  f"B {bundle_b.categories[r.pred_b[i]]}" for i in sel[:24]])

    with t_cka:
        st.caption("Linear CKA (Kornblith et al. 2019) between layers of A (rows) and B (columns), from each "
                   "layer's channel means over the same images: 1 = the same representation up to rotation and "
                   "scale.")
        names_a, names_b = spatial_layers(infos_a), spatial_layers(infos_b)
        la = st.multiselect("Layers of A", names_a, default=default_layers(infos_a), key="cmp_cka_la")
        lb = st.multiselect("Layers of B", names_b, default=default_layers(infos_b), key="cmp_cka_lb")
        ds = state.current_dataset()
        n_cka = st.number_input("Images", 10, len(ds), min(len(ds), 500), key="cmp_cka_n")
        if st.button("Compute CKA", key="cmp_cka_run"):
            st.session_state["cmp_cka"] = {"la": la, "lb": lb, "n": int(n_cka)}
        req = st.session_state.get("cmp_cka")
        if req:
            imgs = ds.get_many(range(req["n"]))
            key = ("cka", bundle_a.model_id, bundle_b.model_id, ds.content_hash, tuple(req["la"]), tuple(req["lb"]), req["n"])
            res = run_job(key, "Layer features and CKA", lambda prog: compare_layers(
                bundle_a, bundle_b, imgs, req["la"], req["lb"], progress=prog))
            fig = go.Figure(go.Heatmap(z=res.matrix, x=res.layers_b, y=res.layers_a, zmin=0, zmax=1,
                                       colorscale="Viridis", hovertemplate="A %{y}<br>B %{x}<br>CKA %{z:.3f}"))
            fig.update_layout(height=max(320, 28 * len(res.layers_a) + 120), xaxis_title="model B",
                              yaxis_title="model A", yaxis_autorange="reversed", margin=dict(l=10, r=10, t=30, b=10))
            st.plotly_chart(fig, key="cmp_cka_fig", width="stretch")
            st.caption(f"{res.n_images} images · {res.seconds:.1f} s")
            for w in res.warnings:
                st.warning(w)
