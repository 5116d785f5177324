"""Gatys style transfer: keep the content image's features at one layer while matching the
style images' Gram matrices at several (Gatys, Ecker & Bethge 2016; CS231n lecture 12)."""
import numpy as np
import streamlit as st

from analysis.core.layers import spatial_layers
from analysis.style.gatys import default_settings, fit_size, style_losses, style_transfer
from dashboard import state
from dashboard.optimize_ui import live_run, show_result
from dashboard.style_ui import extractor_picker, layer_weights, losses_figure, style_images
from dashboard.text import plain
from dashboard.widgets import page

with page("Style transfer (Gatys et al.)",
          "Optimise the pixels so that the content image's features survive at one layer while the "
          "Gram matrices — the style — match those of one or more style images at several layers. The "
          "content image is the sidebar's.",
          what="Style transfer"):
    bundle, infos = extractor_picker("sx")
    d = default_settings(bundle, infos)
    content = state.current_image()
    c1, c2 = st.columns([1, 3])
    c1.image(content, caption=f"content: {plain(state.image_ref().label)}", width=220)
    with c2:
        styles = style_images("sx_styles", ["immunohistochemistry"])
    if not styles:
        st.info("Choose at least one style image (gallery or upload).")
        st.stop()
    spatial = spatial_layers(infos)
    shapes = {i.name: i.output_shape for i in infos}
    k = f"sx_{bundle.short_id}"
    l1, l2 = st.columns([1, 2])
    content_layer = l1.selectbox("Content layer", spatial, index=spatial.index(d.content_layer)
                                 if d.content_layer in spatial else len(spatial) // 2, key=f"{k}_content",
                                 format_func=lambda n: f"{n}  {'x'.join(map(str, shapes[n]))}")
    with l2:
        lw = layer_weights("Style layers", spatial, d.style_layers, f"{k}_style", shapes)
    cpu = bundle.device.type == "cpu"
    a, b, c, e, f = st.columns(5)
    cw = float(a.number_input("content weight", 0.0, 1e6, d.content_weight, format="%g", key=f"{k}_cw"))
    sw = float(b.number_input("style weight", 0.0, 1e6, d.style_weight, format="%g", key=f"{k}_sw",
                              help="Both losses are relative errors (0 = perfect), so this is the style:content ratio."))
    tv = float(c.number_input("TV weight", 0.0, 1.0, d.tv_weight, format="%g", key=f"{k}_tv",
                              help="per-pixel total variation (0–255 units); larger = smoother"))
    size = int(e.number_input("output size (px, longer side)", 32, 2048, 256, 32, key="sx_size"))
    steps = int(f.number_input("steps", 1, 5000, 150 if cpu else 300, key="sx_steps"))
    optimizer = a.selectbox("optimiser", ["lbfgs", "adam"], key="sx_opt",
                            help="L-BFGS (Gatys et al.) converges in fewer steps; Adam is steadier on odd settings.")
    lr = float(b.number_input("learning rate", 0.0001, 10.0, d.lr_lbfgs if optimizer == "lbfgs" else d.lr_adam,
                              format="%g", key=f"sx_lr_{optimizer}"))
    init = c.selectbox("start from", ["content", "noise"], key="sx_init")
    scale = float(e.number_input("style scale", 0.1, 4.0, 1.0, 0.1, key="sx_scale",
                                 help="Style images are resized so their longer side is scale × output size: "
                                      "larger = bigger brush strokes."))
    seed = int(f.number_input("seed", 0, 2 ** 31 - 1, 0, key="sx_seed"))
    preserve = a.checkbox("keep content colours", False, key="sx_colour",
                          help="Luminance-only transfer, then the content's chroma (Gatys et al. 2017).")
    pv = int(b.number_input("preview every N steps", 1, 500, 10, key="sx_pv"))
    if not lw:
        st.info("Choose at least one style layer with a positive weight.")
        st.stop()
    st.caption(f"Defaults: {d.source}.")
    h, w = fit_size(*content.shape[:2], size)
    key = ("style", bundle.model_id, state.image_ref(), tuple((r, wt) for _, wt, r, _ in styles), content_layer,
           tuple(lw.items()), cw, sw, tv, size, steps, optimizer, lr, init, scale, preserve, seed)
    result = live_run("sx", key, lambda: style_transfer(
        bundle, content, [(img, wt) for img, wt, _, _ in styles], content_layer=content_layer, style_layers=lw,
        content_weight=cw, style_weight=sw, tv_weight=tv, optimizer=optimizer, lr=lr, init=init, size=size,
        style_scale=scale, preserve_colour=preserve, steps=steps, seed=seed, preview_every=pv),
        label="Transfer", width=min(640, w))
    if result is not None:
        p = result.params
        left, right = st.columns([3, 2])
        with left:
            show_result("sx_res", result, width=min(640, w), filename="style_transfer")
        with right:
            from PIL import Image
            before = np.asarray(Image.fromarray(content).resize((w, h), Image.LANCZOS))
            st.image([before, result.images[0]], caption=["before", "after"], width=min(300, w))
            errs = []
            if p.get("content_error") is not None:
                errs.append(f"content error {p['content_error']:.3g}")
            if p.get("style_error"):
                tot = sum(p["style_layers"].values())
                errs.append("style error " + f"{sum(v * p['style_layers'][k_] / tot for k_, v in p['style_error'].items()):.3g}")
            st.caption(" · ".join(errs) + " (relative errors of the last step; 0 = perfect match)")
            st.plotly_chart(losses_figure(style_losses(result), "Content and style losses"), key="sx_losses")
