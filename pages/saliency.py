"""Saliency: which pixels matter for a class — several methods side by side, each with
its trust checks (deletion/insertion curves, model-randomisation sanity check)."""
import json

import numpy as np
import pandas as pd
import streamlit as st

from analysis.core.predict import predict
from analysis.saliency.methods import METHODS, PERTURBATION_METHODS, attribute
from dashboard import state
from dashboard.errors import guard
from dashboard.render import (
    COLORMAPS,
    clip_map,
    colorize,
    correlation_figure,
    curves_figure,
    heatmap_figure,
    npy_bytes,
    overlay,
    png_bytes,
)
from dashboard.text import plain
from dashboard.widgets import layer_picker, run_job, target_picker

st.title("Saliency — which pixels matter?")
st.caption("Occlusion, gradients and guided backprop (CS231n lecture 12), with Integrated Gradients, "
           "SmoothGrad and Grad-CAM; every map one click away from its trust checks.")

DEFAULT_METHODS = ["gradient", "guided_backprop", "gradcam"]


def method_params(method: str, infos, cam_default: str) -> dict:
    """Parameter widgets of one method."""
    k = f"sal_{method}"
    if method in ("occlusion", "occlusion_fast"):
        c1, c2, c3 = st.columns(3)
        return {"window": c1.number_input("window", 2, 112, 16, key=f"{k}_w", help="side of the square patch"),
                "stride": c2.number_input("stride", 1, 112, 8, key=f"{k}_s"),
                "baseline": c3.selectbox("baseline", ["mean", "zero", "blur"], key=f"{k}_b",
                                         help="mean: data-set mean colour; zero: black; blur: blurred image")}
    if method == "integrated_gradients":
        c1, c2 = st.columns(2)
        return {"steps": c1.number_input("steps", 2, 300, 50, key=f"{k}_n"),
                "baseline": c2.selectbox("baseline", ["zero", "mean", "blur"], key=f"{k}_b")}
    if method == "smoothgrad":
        c1, c2 = st.columns(2)
        return {"samples": c1.number_input("samples", 1, 200, 25, key=f"{k}_n"),
                "noise": c2.slider("noise level (σ / range)", 0.0, 0.5, 0.15, 0.01, key=f"{k}_sigma")}
    if method in ("gradcam", "guided_gradcam"):
        return {"layer": layer_picker(infos, cam_default, key=f"{k}_layer", label="layer")}
    return {}


def draw_map(a, view: str, cmap: str, alpha: float, outlier: float, key: str) -> None:
    signed = a.method in ("occlusion", "occlusion_fast")
    norm = clip_map(a.map, outlier, signed=signed)
    heat = colorize(norm, "RdBu_r" if signed and cmap == "inferno" else cmap, signed=signed)
    st.markdown(f"**{a.title}** · {a.seconds:.2f} s")
    st.caption(METHODS[a.method][1])
    if view == "interactive":
        st.plotly_chart(heatmap_figure(a.map, colorscale="RdBu" if signed else "Inferno",
                                       zmid=0 if signed else None), key=f"fig_{key}", width="stretch")
    else:
        shown = heat if view == "heatmap" else overlay(a.image, heat, alpha, weight=np.abs(norm))
        st.image(shown, width="stretch")
    for w in a.warnings:
        st.warning(w)
    d1, d2 = st.columns(2)
    d1.download_button("PNG", png_bytes(heat), f"{a.method}_{a.target}.png", "image/png", key=f"png_{key}")
    d2.download_button(".npy", npy_bytes(a.map), f"{a.method}_{a.target}.npy", key=f"npy_{key}")


with guard("Saliency"):
    bundle = state.current_bundle()
    infos = state.current_layers()
    image = state.current_image()
    pred = predict(bundle, image, k=5)
    from analysis.core.layers import last_conv_block
    cam_default = last_conv_block(infos)

    left, right = st.columns([1, 1])
    with left:
        methods = st.multiselect("Methods", list(METHODS), default=DEFAULT_METHODS,
                                 format_func=lambda m: METHODS[m][0], key="sal_methods")
        target = target_picker(bundle, pred, key="sal_target")
    with right:
        params = {}
        for m in methods:
            with st.expander(f"{METHODS[m][0]} settings", expanded=m in PERTURBATION_METHODS):
                params[m] = method_params(m, infos, cam_default)
    if st.button("Compute maps", type="primary", key="sal_compute"):
        st.session_state["sal_active"] = {"methods": methods, "target": target, "params": params}

    c1, c2, c3, c4 = st.columns(4)
    view = c1.radio("View", ["overlay", "heatmap", "interactive"], horizontal=True, key="sal_view")
    cmap = c2.selectbox("Colormap", COLORMAPS, key="sal_cmap")
    alpha = c3.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="sal_alpha")
    outlier = c4.slider("Clip top % (outliers)", 0.0, 10.0, 2.0, 0.5, key="sal_outlier",
                        help="Like Captum's outlier_perc: the top % of |values| saturate the colour scale.")

    req = st.session_state.get("sal_active")
    if not req:
        st.info("Choose methods and press **Compute maps**.")
        st.stop()

    img_key = json.dumps(state.image_ref().__dict__, sort_keys=True)
    results, keys = [], []
    for m in req["methods"]:
        p = dict(req["params"].get(m, {}))
        key = ("saliency", bundle.model_id, img_key, req["target"], m, json.dumps(p, sort_keys=True))
        with guard(METHODS[m][0]):
            results.append(run_job(key, f"{METHODS[m][0]}", lambda prog, m=m, p=p: attribute(
                bundle, image, req["target"], m, progress=prog, **p)))
            keys.append(key)
    if not results:
        st.stop()
    st.subheader(f"Target: {plain(results[0].target_label)} ({results[0].target})")
    cols = st.columns(min(len(results), 4))
    for i, a in enumerate(results):
        with cols[i % len(cols)]:
            draw_map(a, view, cmap, alpha, outlier, key=f"{a.method}_{i}")

    st.divider()
    st.subheader("Trust checks")
    t1, t2 = st.tabs(["Deletion / insertion", "Model randomisation"])
    with t1:
        st.caption("Petsiuk et al. 2018: delete the most salient pixels first (a good map makes the "
                   "score fall fast: low AUC) or insert them into a blurred image (rises fast: high AUC). "
                   "The dotted line is a random map.")
        a1, a2, a3 = st.columns(3)
        steps = a1.number_input("steps", 4, 100, 24, key="sal_di_steps")
        substrate = a2.selectbox("deleted pixels become", ["blur", "zero", "mean"], key="sal_di_sub")
        patch = a3.selectbox("delete in", [1, 4, 8, 16], key="sal_di_patch",
                             format_func=lambda p: "single pixels" if p == 1 else f"{p}×{p} patches",
                             help="Patches ranked by mean saliency (Samek et al. 2017) avoid the speckled "
                                  "images that single-pixel deletion creates.")
        if st.button("Run deletion / insertion", key="sal_di_run"):
            st.session_state["sal_di"] = True
        if st.session_state.get("sal_di"):
            from analysis.saliency.trust import compare_curves
            with guard("Deletion / insertion"):
                key = ("di", tuple(keys), steps, substrate, patch)
                curves = run_job(key, "Deletion / insertion curves", lambda prog: compare_curves(
                    bundle, results, steps=int(steps), substrate=substrate, patch=int(patch), progress=prog))
                f1, f2 = st.columns(2)
                f1.plotly_chart(curves_figure(curves, "deletion"), key="del_fig", width="stretch")
                f2.plotly_chart(curves_figure(curves, "insertion"), key="ins_fig", width="stretch")
                st.dataframe(pd.DataFrame([{"method": n, "deletion AUC (lower is better)": c["deletion"].auc,
                                            "insertion AUC (higher is better)": c["insertion"].auc}
                                           for n, c in curves.items()]), hide_index=True)
    with t2:
        st.caption("Adebayo et al. 2018: re-initialise the layers from the top down (on a copy) and "
                   "recompute. A map that stays the same does not depend on what the model learned.")
        max_steps = st.slider("randomisation steps", 2, 12, 6, key="sal_rand_steps")
        if st.button("Run randomisation check", key="sal_rand_run"):
            st.session_state["sal_rand"] = True
        if st.session_state.get("sal_rand"):
            from analysis.saliency.trust import cascading_randomisation
            with guard("Randomisation check"):
                ms = [r.method for r in results]
                mp = {r.method: {k: v for k, v in req["params"].get(r.method, {}).items()} for r in results}
                key = ("rand", bundle.model_id, img_key, results[0].target, tuple(ms), json.dumps(mp, sort_keys=True), max_steps)
                res = run_job(key, "Model randomisation", lambda prog: cascading_randomisation(
                    bundle, image, results[0].target, ms, max_steps=int(max_steps), method_params=mp, progress=prog))
                st.plotly_chart(correlation_figure(res.layers, res.correlations), key="rand_fig", width="stretch")
                for m in ms:
                    st.markdown(f"**{METHODS[m][0]}**: original, then randomised down to each layer")
                    strip = [colorize(clip_map(x, outlier)) for x in res.maps[m]]
                    st.image(strip, width=110, caption=["original"] + list(res.layers[:len(strip) - 1]))
