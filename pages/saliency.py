"""Saliency: which pixels matter for a class — several methods side by side, each with
its trust checks (deletion/insertion curves against random maps, model randomisation).
Methods, their descriptions and their settings come from the method table
(analysis/saliency/registry.py); the parts live in dashboard/saliency_ui.py."""
import json

import pandas as pd
import streamlit as st

from analysis.core.layers import last_conv_block
from analysis.core.schema import Param
from analysis.saliency import registry
from analysis.saliency.methods import attribute
from analysis.saliency.trust import (
    DEFAULT_RANDOM,
    DEFAULT_STEPS,
    DEFAULT_SUBSTRATE,
    PATCH_FRACTION,
    SUBSTRATES,
    default_patch,
)
from dashboard import saliency_ui as ui
from dashboard import schema_ui, state
from dashboard.errors import guard
from dashboard.render import correlation_figure, curves_figure
from dashboard.text import plain
from dashboard.widgets import run_job, target_picker

st.title("Saliency — which pixels matter?")
st.caption("Occlusion, gradients and guided backprop (CS231n lecture 12), with Integrated Gradients, "
           "SmoothGrad and Grad-CAM; every map one click away from its trust checks.")

DEFAULT_METHODS = ["gradient", "guided_backprop", "gradcam"]
DI_PARAMS = (Param("steps", "int", DEFAULT_STEPS, 4, 100, label="steps"),
             Param("sub", "choice", DEFAULT_SUBSTRATE, choices=SUBSTRATES, label="deleted pixels become"),
             Param("patch", "choice", 0, choices=(0, 1, 4, 8, 16, 32, 56), label="delete in"),
             Param("random", "int", DEFAULT_RANDOM, 3, 20, label="random maps"))
TARGET_PARAMS = (Param("mode", "choice", "Predicted", choices=("Predicted", "Top-5", "Search")),
                 Param("top5", "int", 0, 0, 4))
RAND_STEPS = Param("rand_steps", "int", 6, 2, 12, widget="slider", label="randomisation steps")

with guard("Saliency"):
    bundle = state.current_bundle()
    infos = state.current_layers()
    image = state.current_image()
    img_key = json.dumps(state.image_ref().__dict__, sort_keys=True)
    pred = ui.cached_prediction(bundle, image, img_key)
    cam_default = last_conv_block(infos)
    layer_names = ui.spatial_layer_names(infos)
    notes: list[str] = []

    names = registry.names()
    chosen = st.session_state.get("sal_methods")
    if chosen is not None:                       # from a link: keep only known methods
        ok = [m for m in chosen if isinstance(m, str) and m in names] if isinstance(chosen, list) else []
        if ok != chosen:
            notes.append(f"sal_methods: {chosen!r} lists unknown methods; showing only {ok}.")
            st.session_state["sal_methods"] = ok
    left, right = st.columns([1, 1])
    with left:
        methods = st.multiselect("Methods", names, default=[m for m in DEFAULT_METHODS if m in names],
                                 format_func=lambda m: registry.get(m).title, key="sal_methods")
        for p in TARGET_PARAMS:                 # the shared target picker's keys, checked like ours
            notes += [m for m in [schema_ui.sanitize(f"sal_target_{p.name}", p)] if m]
        target = target_picker(bundle, pred, key="sal_target")
    with right:
        params = {}
        for m in methods:
            spec = registry.get(m)
            with st.expander(f"{spec.title} settings", expanded=spec.perturbation):
                params[m], more = schema_ui.draw_params(spec.params, f"sal_{m}", layers=infos,
                                                        default_layer=cam_default)
                notes += more
    if st.button("Compute maps", type="primary", key="sal_compute"):
        st.session_state[ui.ACTIVE] = {"methods": methods, "target": target, "params": params}

    req, more = ui.parse_request(st.session_state.get(ui.ACTIVE), bundle.num_classes, layer_names)
    notes += more
    if req is None:
        st.session_state.pop(ui.ACTIVE, None)
    else:
        st.session_state[ui.ACTIVE] = req          # the link records the validated request

    display, more = ui.display_controls()
    notes += more
    for n in notes:
        st.warning(n)
    if not req:
        st.info("Choose methods and press **Compute maps**.")
        st.stop()

    results, keys = [], []
    for m in req["methods"]:
        p = req["params"][m]
        spec = registry.get(m)
        key = ("saliency", bundle.model_id, img_key, req["target"], m, json.dumps(p, sort_keys=True))
        with guard(spec.title):
            results.append(run_job(key, spec.title, lambda prog, m=m, p=p: attribute(
                bundle, image, req["target"], m, progress=prog, **p)))
            keys.append(key)
    if not results:
        st.stop()
    st.subheader(f"Target: {plain(results[0].target_label)} ({results[0].target})")
    cols = st.columns(min(len(results), 4))
    for i, (a, k) in enumerate(zip(results, keys)):
        with cols[i % len(cols)]:
            ui.draw_map(a, k, display, key=f"{a.method}_{i}")

    st.divider()
    st.subheader("Trust checks")
    tab = ui.trust_tab()
    if tab == ui.TRUST_TABS[0]:
        st.caption("Petsiuk et al. 2018: delete the most salient pixels first (a good map makes the "
                   "score fall fast: low AUC) or insert them into an image with nothing of the original (black by "
                   "default; rises fast: high AUC). "
                   "Each map is compared with several random maps (grey band: their mean ± 1 sd): it is "
                   "better than random only if it beats every random map by at least 2 sd on both curves.")
        notes = [m for p in DI_PARAMS if (m := schema_ui.sanitize(f"sal_di_{p.name}", p))]
        a1, a2, a3, a4 = st.columns(4)
        steps = schema_ui.draw_param(DI_PARAMS[0], "sal_di_steps", container=a1)
        substrate = schema_ui.draw_param(DI_PARAMS[1], "sal_di_sub", container=a2)
        auto = default_patch(bundle.input_size)
        patch = a3.selectbox("delete in", list(DI_PARAMS[2].choices), key="sal_di_patch", index=0,
                             format_func=lambda p: f"{auto}×{auto} patches (1/{PATCH_FRACTION} of the side)" if p == 0 else
                             "single pixels" if p == 1 else f"{p}×{p} patches",
                             help="Patches ranked by mean saliency (Samek et al. 2017). Single pixels make "
                                  "speckled images that rank random maps first on the default model "
                                  "(docs/saliency.md).") or auto
        n_random = schema_ui.draw_param(DI_PARAMS[3], "sal_di_random", container=a4)
        for n in notes:
            st.warning(n)
        if st.button("Run deletion / insertion", key="sal_di_run"):
            st.session_state["sal_di"] = True
        if st.session_state.get("sal_di") is True:
            from analysis.saliency.trust import compare_curves
            with guard("Deletion / insertion"):
                key = ("di", tuple(keys), steps, substrate, patch, n_random)
                cmp = run_job(key, "Deletion / insertion curves", lambda prog: compare_curves(
                    bundle, results, steps=int(steps), substrate=substrate, patch=int(patch),
                    n_random=int(n_random), progress=prog))
                f1, f2 = st.columns(2)
                f1.plotly_chart(curves_figure(cmp, "deletion"), key="del_fig", width="stretch")
                f2.plotly_chart(curves_figure(cmp, "insertion"), key="ins_fig", width="stretch")
                rows = []
                for name, v in cmp.verdicts.items():
                    rows.append({"method": name, "verdict": v.label,
                                 "deletion AUC (lower is better)": v.auc["deletion"],
                                 "random deletion AUC (mean ± sd)":
                                     f"{v.random_mean['deletion']:.3f} ± {v.random_std['deletion']:.3f}",
                                 "insertion AUC (higher is better)": v.auc["insertion"],
                                 "random insertion AUC (mean ± sd)":
                                     f"{v.random_mean['insertion']:.3f} ± {v.random_std['insertion']:.3f}"})
                st.dataframe(pd.DataFrame(rows), hide_index=True)
    else:
        st.caption("Adebayo et al. 2018: re-initialise the layers from the top down (on a copy) and "
                   "recompute. A map that stays the same does not depend on what the model learned.")
        msg = schema_ui.sanitize("sal_rand_steps", RAND_STEPS)
        if msg:
            st.warning(msg)
        max_steps = schema_ui.draw_param(RAND_STEPS, "sal_rand_steps")
        if st.button("Run randomisation check", key="sal_rand_run"):
            st.session_state["sal_rand"] = True
        if st.session_state.get("sal_rand") is True:
            from analysis.saliency.trust import cascading_randomisation
            with guard("Randomisation check"):
                ms = [r.method for r in results]
                mp = {m: req["params"][m] for m in ms}
                key = ("rand", bundle.model_id, img_key, results[0].target, tuple(ms),
                       json.dumps(mp, sort_keys=True), max_steps)
                res = run_job(key, "Model randomisation", lambda prog: cascading_randomisation(
                    bundle, image, results[0].target, ms, max_steps=int(max_steps), method_params=mp,
                    progress=prog))
                st.plotly_chart(correlation_figure(res.layers, res.correlations), key="rand_fig", width="stretch")
                for m in ms:
                    st.markdown(f"**{registry.get(m).title}**: original, then randomised down to each layer")
                    strip = ui.strip_pngs((key, m), res.maps[m], display["outlier"], display["cmap"])
                    st.image(strip, width=ui.STRIP_WIDTH, caption=["original"] + list(res.layers[:len(strip) - 1]),
                             output_format="PNG")
