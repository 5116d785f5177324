"""Class visualisation: the image a class wants, I* = argmax_I S_c(I) + R(I), by gradient
ascent on the pixels (CS231n lecture 12; Simonyan et al. 2014, Yosinski et al. 2015,
Olah et al. 2017)."""
import streamlit as st

from analysis.core.predict import predict
from analysis.optimize import STEP_RULES
from analysis.optimize.featurevis import PARAMETERISATIONS, PRESETS, Preset, class_visualization, default_size
from analysis.optimize.params import PIXEL_SPACES
from dashboard import state
from dashboard.optimize_ui import live_run, show_result, slug
from dashboard.widgets import page

with page("Class visualisation",
          "Change the pixels, not the weights: start from noise and climb the class score, with "
          "regularisers that keep the image natural. Presets reproduce published settings."):
    bundle = state.current_bundle()
    pred = predict(bundle, state.current_image(), k=1)
    n = bundle.num_classes
    c1, c2 = st.columns([3, 2])
    classes = c1.multiselect("Classes (type to search; several = their mean score)", list(range(n)),
                             default=[int(pred.indices[0])], key=f"cv_classes_{bundle.short_id}",
                             format_func=lambda i: f"{bundle.categories[i]} ({i})",
                             help="Default: the sidebar image's predicted class.")
    names = list(PRESETS)
    preset_name = c2.selectbox("Preset", names, key="cv_preset",
                               help="Published settings; adjust any of them under 'Free controls'.")
    base = PRESETS[preset_name]
    c2.caption(base.source)
    k = f"cv_{slug(preset_name)}"          # "cv_MACO_Fel_et_al_2023": a key share links carry
    with st.expander("Free controls", expanded=False):
        a, b, c, d = st.columns(4)
        steps = a.number_input("steps", 1, 5000, base.steps, key=f"{k}_steps")
        seed = b.number_input("seed", 0, 2 ** 31 - 1, 0, key=f"{k}_seed")
        size = c.number_input("size (px)", 32, 768, max(32, default_size(base, bundle)), key=f"{k}_size",
                              help="The image's side; MACO draws crops from a canvas larger than the model's input.")
        probability = d.checkbox("log-probability objective", False, key=f"{k}_prob",
                                 help="Off: the class logit (score before the softmax), as in the papers.")
        kinds = list(PARAMETERISATIONS)
        param = a.selectbox("parameterisation", kinds, index=kinds.index(base.parameterisation), key=f"{k}_param",
                            help="fourier: decorrelated colour, 1/f spectrum (Olah et al. 2017); maco: only the "
                                 "phase is optimised, the amplitude spectrum is that of natural photographs "
                                 "(Fel et al. 2023)")
        rule = b.selectbox("step rule", STEP_RULES, index=STEP_RULES.index(base.step_rule), key=f"{k}_rule")
        lr = c.number_input("learning rate", 0.0, 1e9, float(base.lr), format="%g", key=f"{k}_lr")
        space = d.selectbox("pixel space", list(PIXEL_SPACES), index=list(PIXEL_SPACES).index(base.space),
                            key=f"{k}_space",
                            help="standard: ImageNet-standardised (CS231n); caffe: 0–255 minus mean (Yosinski)")
        l2 = a.number_input("L2 weight", 0.0, 10.0, float(base.l2), format="%g", key=f"{k}_l2")
        decay = b.number_input("decay per step", 0.0, 1.0, float(base.decay), format="%g", key=f"{k}_decay")
        roll = c.number_input("jitter (roll, px)", 0, 64, base.roll, key=f"{k}_roll")
        robust = d.checkbox("pad/jitter/scale/rotate (lucent)", base.robust, key=f"{k}_robust")
        blur_every = a.number_input("blur every N steps", 0, 100, base.blur_every, key=f"{k}_be")
        blur_sigma = b.number_input("blur σ (px)", 0.0, 10.0, float(base.blur_sigma), key=f"{k}_bs")
        small_norm = c.number_input("zero small-norm pixels (%)", 0.0, 99.0, float(base.small_norm_pct), key=f"{k}_sn")
        small_contrib = d.number_input("zero small-contribution pixels (%)", 0.0, 99.0,
                                       float(base.small_contrib_pct), key=f"{k}_sc")
        max_lr = a.number_input("progress: max lr", 0.0, 1e9, float(base.max_lr or 100.0), format="%g", key=f"{k}_mlr")
        prog = b.number_input("progress: Δ objective per step", 0.0, 100.0, float(base.desired_progress or 2.0),
                              key=f"{k}_dp")
        preview_every = c.number_input("preview every N steps", 1, 500, 10, key=f"{k}_pv")
        crops = d.number_input("random crops per step (MACO; 0 = off)", 0, 64, base.crops, key=f"{k}_crops")
        crop_min, crop_max = a.slider("crop side (fraction of the image)", 0.1, 1.0,
                                      (float(base.crop_min), float(base.crop_max)), 0.05, key=f"{k}_cropside")
        crop_noise = b.number_input("crop noise", 0.0, 1.0, float(base.crop_noise), format="%g", key=f"{k}_cropnoise")
    maco = param == "maco"
    stretch = st.checkbox("Stretch contrast for display" + (" (1-99 % percentiles: MACO's pictures are pale)" if maco
                          else " (as Yosinski's toolbox saves its images)"),
                          value=base.space == "caffe" or maco, key=f"{k}_stretch")
    pct = 1.0 if maco else 0.0
    preset = Preset(name=preset_name, source=base.source, parameterisation=param, space=space,
                    init_std=base.init_std, steps=int(steps), step_rule=rule, lr=float(lr), l2=float(l2),
                    decay=float(decay), roll=int(roll), robust=robust, blur_every=int(blur_every),
                    blur_sigma=float(blur_sigma), small_norm_pct=float(small_norm),
                    small_contrib_pct=float(small_contrib), max_lr=float(max_lr) if rule == "progress" else None,
                    desired_progress=float(prog) if rule == "progress" else None, canvas=base.canvas,
                    crops=int(crops), crop_min=float(crop_min), crop_max=float(crop_max), crop_noise=float(crop_noise))
    if not classes:
        st.info("Choose at least one class.")
        st.stop()
    label = " + ".join(bundle.categories[c] for c in classes)
    key = ("classvis", bundle.model_id, tuple(classes), preset, int(size), int(seed), probability)
    result = live_run("cv", key, lambda: class_visualization(
        bundle, classes, preset, steps=int(steps), seed=int(seed), size=int(size),
        preview_every=int(preview_every), probability=probability), label="Visualise", stretch=stretch, stretch_pct=pct,
        captions=[label], meta={"target": classes[0]} if len(classes) == 1 else None)
    if result is not None:
        left, right = st.columns([3, 2])
        with left:
            show_result("cv_res", result, stretch=stretch, stretch_pct=pct, captions=[label], filename=f"classvis_{'_'.join(map(str, classes))}")
        with right:
            check = predict(bundle, result.images[0], k=5)
            st.markdown("**What the model sees in the result** (top-5)")
            st.dataframe({"class": check.labels, "probability": [f"{p:.1%}" for p in check.probs]}, hide_index=True)
            hit = [c for c in classes if c in list(check.indices)]
            st.caption("The target class is in the result's top-5." if hit else
                       "The target class is not in the result's top-5 (too few steps, or regularisers too strong).")
