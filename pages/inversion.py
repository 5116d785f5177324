"""Feature inversion: reconstruct the sidebar image from its features at a layer
(Mahendran & Vedaldi 2015), alone or as a strip from shallow to deep layers."""
import numpy as np
import streamlit as st

from analysis.core.layers import block_layers, default_layer
from analysis.optimize.featurevis import flag_strip_outliers, invert
from dashboard import state
from dashboard.errors import guard
from dashboard.optimize_ui import live_run, show_result, show_warnings, spatial_model
from dashboard.render import png_bytes
from dashboard.widgets import in_sequence, layer_picker, page, result_cache, run_job

with page("Feature inversion",
          "Which image has these features? Start from noise and match the image's activations at one "
          "layer, with a total-variation prior: shallow layers keep the picture, deep ones keep what matters "
          "for the class (CS231n lecture 12)."):
    bundle, infos, spatial = spatial_model()
    image = state.current_image()
    a, b, c, d = st.columns(4)
    steps = int(a.number_input("steps", 1, 5000, 200, key="iv_steps"))
    tv = float(b.number_input("TV weight", 0.0, 1.0, 1e-8, format="%g", key="iv_tv",
                              help="total variation in 0–255 units; larger = smoother"))
    lr = float(c.number_input("Adam learning rate", 0.001, 1.0, 0.02, key="iv_lr"))
    seed = int(d.number_input("seed", 0, 2 ** 31 - 1, 0, key="iv_seed"))
    t_one, t_strip = st.tabs(["One layer", "Shallow → deep strip"], key="iv_tab", on_change="rerun")
    with t_one, guard("Inversion"):
        layer = layer_picker(infos, default_layer(infos, 0.3), key=f"iv_layer_{bundle.short_id}")
        key = ("invert", bundle.model_id, state.image_ref(), layer, steps, tv, lr, seed)
        left, right = st.columns(2)
        left.image(bundle.preprocess.geometry(image), caption="original (as the model sees it)", width="stretch")
        with right:
            result = live_run("iv", key, lambda: invert(bundle, image, layer, steps=steps, tv_weight=tv, lr=lr,
                                                        seed=seed), label="Invert", width=300)
        if result is not None:
            st.caption(f"relative feature error {result.params['feature_error']:.3f} · "
                       f"pixel RMSE {result.params['pixel_rmse']:.3f} (0–1 units)")
            show_result("iv_res", result, width=300, filename=f"inversion_{layer}")
    with t_strip, guard("Inversion strip"):
        blocks = block_layers(infos)
        names = [i.name for i in spatial]
        pick = [n for n in blocks if n in names] or names
        idx = np.unique(np.linspace(0, len(pick) - 1, 5).round().astype(int))
        chosen = st.multiselect("Layers (shallow → deep)", names, default=[pick[i] for i in idx], key="iv_strip_layers")
        strip_key = ("invert-strip", bundle.model_id, state.image_ref(), tuple(chosen), steps, tv, lr, seed)
        cached = result_cache().get(strip_key)
        go = cached is None and st.button("Invert every layer", type="primary", key="iv_strip_go")

        results = run_job(strip_key, "Inverting every layer", lambda _p: in_sequence(
            [(ly, lambda ly=ly: invert(bundle, image, ly, steps=steps, tv_weight=tv, lr=lr, seed=seed, preview_every=0))
             for ly in chosen]), start=go, stop="iv_strip_stop", share_name="iv_strip", title="Inversion strip",
            step_text=lambda p: f"{p.name} ({p.index + 1} of {p.count}): step {p.step.step}/{p.step.total}")
        if results:
            imgs = [bundle.preprocess.geometry(image)] + [r.images[0] for r in results]
            flag_strip_outliers(results, chosen)          # an inversion far worse than the others
            show_warnings(results)
            caps = ["original"] + [f"{ly} · err {r.params['feature_error']:.2f}" for ly, r in zip(chosen, results)]
            st.image(imgs, width=180, caption=caps)
            st.download_button("Strip (PNG)", png_bytes(np.concatenate(imgs, 1)), "inversion_strip.png",
                               key="iv_strip_png")
