"""Texture synthesis: a texture is the Gram matrices of a CNN's features; matching them
from noise makes a new sample of it (Gatys, Ecker & Bethge 2015; CS231n lecture 12)."""
import numpy as np
import streamlit as st
from PIL import Image

from analysis.core.layers import spatial_layers
from analysis.style.gatys import default_settings, synthesize_texture, texture_strip, texture_strip_sets
from dashboard.errors import guard
from dashboard.optimize_ui import live_run, show_result
from dashboard.render import png_bytes
from dashboard.style_ui import extractor_picker, image_choice, layer_weights
from dashboard.widgets import page

with page("Texture synthesis",
          "Describe a texture by the Gram matrices of its feature maps — which channels fire together, "
          "wherever they fire — and grow a new image from noise whose Gram matrices match. Shallow layers "
          "alone keep colour and grain; deeper ones bring back larger structures."):
    bundle, infos = extractor_picker("tx")
    d = default_settings(bundle, infos)
    src_col, set_col = st.columns([1, 2])
    with src_col:
        image, ref = image_choice("Source texture", "tx_source", "brick")
        if image is None:
            st.stop()
        st.image(image, caption="source", width=220)
    cpu = bundle.device.type == "cpu"
    with set_col:
        spatial = spatial_layers(infos)
        shapes = {i.name: i.output_shape for i in infos}
        lw = layer_weights("Layers whose Gram matrices are matched (shallow → deep)", spatial, d.texture_layers,
                           f"tx_layers_{bundle.short_id}", shapes)
        a, b, c, e = st.columns(4)
        size = int(a.number_input("output size (px)", 32, 1024, 192 if cpu else 256, 32, key="tx_size"))
        steps = int(b.number_input("steps", 1, 5000, 150 if cpu else 300, key="tx_steps"))
        optimizer = c.selectbox("optimiser", ["lbfgs", "adam"], key="tx_opt")
        lr = float(e.number_input("learning rate", 0.0001, 10.0, d.lr_lbfgs if optimizer == "lbfgs" else d.lr_adam,
                                  format="%g", key=f"tx_lr_{optimizer}"))
        scale = float(a.number_input("source scale", 0.1, 4.0, 1.0, 0.1, key="tx_scale",
                                     help="The source is resized so its longer side is scale × output size."))
        tv = float(b.number_input("TV weight", 0.0, 1.0, 0.0, format="%g", key="tx_tv",
                                  help="per-pixel total variation (0–255 units); larger = smoother"))
        seed = int(c.number_input("seed", 0, 2 ** 31 - 1, 0, key="tx_seed"))
        pv = int(e.number_input("preview every N steps", 1, 500, 10, key="tx_pv"))
        if cpu:
            st.caption("On the CPU a step at 192 px takes about 0.2–0.5 s; the live preview shows progress, "
                       "and Stop keeps the current image.")
    if not lw:
        st.info("Choose at least one layer with a positive weight.")
        st.stop()
    t_one, t_strip = st.tabs(["Synthesise", "Shallow → deep strip"], key="tx_tab", on_change="rerun")
    with t_one, guard("Texture synthesis"):
        key = ("texture", bundle.model_id, ref, tuple(lw.items()), size, steps, optimizer, lr, scale, tv, seed)
        result = live_run("tx", key, lambda: synthesize_texture(
            bundle, image, lw, size=size, steps=steps, optimizer=optimizer, lr=lr, source_scale=scale, tv_weight=tv,
            seed=seed, preview_every=pv), label="Synthesise", width=min(512, size))
        if result is not None:
            err = result.params["gram_error"]
            st.caption("Relative Gram error per layer (0 = identical statistics): "
                       + " · ".join(f"`{k}` {v:.3g}" for k, v in err.items()))
            show_result("tx_res", result, width=min(512, size), filename=f"texture_{ref.split(':')[-1][:20]}")
    with t_strip, guard("Texture strip"):
        sets = texture_strip_sets(list(lw))
        st.caption(f"{len(sets)} syntheses, each matching the layers up to one more: up to "
                   + ", ".join(f"`{s_[-1]}`" for s_ in sets) + " (Gatys et al. 2015, Fig. 1).")
        s1, s2 = st.columns(2)
        ssize = int(s1.number_input("size per image (px)", 32, 512, 128, 16, key="tx_strip_size"))
        ssteps = int(s2.number_input("steps per image", 1, 5000, 100 if cpu else 200, key="tx_strip_steps"))
        skey = ("texture-strip", bundle.model_id, ref, tuple(lw.items()), ssize, ssteps, optimizer, lr, scale, seed)
        strip = live_run("tx_strip", skey, lambda: texture_strip(
            bundle, image, lw, size=ssize, steps=ssteps, optimizer=optimizer, lr=lr, source_scale=scale, seed=seed,
            preview_every=pv), label="Synthesise the strip", width=ssize, title="Texture strip")
        if strip is not None:
            caps = [f"up to {s_[-1]}" for s_ in strip.sets]
            src = np.asarray(Image.fromarray(image).resize((ssize, ssize)))
            st.image([src] + list(strip.images), width=ssize, caption=["source"] + caps)
            st.download_button("Strip (PNG)", png_bytes(np.concatenate([src] + list(strip.images), 1)),
                               "texture_strip.png", key="tx_strip_png")
