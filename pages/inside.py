"""Inside the network: first-layer filters, activation maps, the guided gradient of one
channel or neuron, and the data set's maximally activating patches."""
import numpy as np
import pandas as pd
import streamlit as st

from analysis.core.layers import default_layer, spatial_layers
from analysis.inside.activations import activations, conv_layers, filters, neuron_gradient
from dashboard import state
from dashboard.errors import guard
from dashboard.patches_ui import patches_tab
from dashboard.render import clip_map, colorize, image_grid, kernel_grid, overlay, png_bytes
from dashboard.widgets import layer_picker, record_button, run_job

st.title("Inside the network")
st.caption("What the first-layer filters look like, what each layer responds to, and which "
           "image patches excite a channel most (CS231n lecture 12).")

PAGE = 64   # activation channels per page

with guard("Inside the network"):
    bundle = state.current_bundle()
    infos = state.current_layers()
    image = state.current_image()
    spatial = spatial_layers(infos)
    mid = default_layer(infos, 0.5) if spatial else ""
    t_f, t_a, t_g, t_p = st.tabs(["Filters", "Activations", "Channel gradient", "Maximally activating patches"],
                                  key="in_tab", on_change="rerun")      # the active tab goes into share links

    with t_f, guard("Filters"):
        convs = conv_layers(bundle)
        c1, c2 = st.columns([2, 1])
        layer = c1.selectbox("Conv layer", convs, key="in_f_layer")
        order_by = c2.radio("Order", ["index", "norm"], horizontal=True, key="in_f_order")
        f = filters(bundle, layer)
        st.caption(f"`{layer}` weights: {' × '.join(map(str, f.shape))} (filters × input channels × height × width)")
        order = f.order(order_by)
        if f.is_rgb:
            tiles = f.rgb_images()[order]
            grid = image_grid(list(tiles), cols=min(16, len(tiles)), pad=3, cell=max(32, 8 * f.shape[-1]))
            st.image(grid, caption="each filter scaled to its own range; grey = 0", width="stretch")
            st.download_button("PNG", png_bytes(grid), f"filters_{layer}.png", key="in_f_png")
        else:
            n_out, n_in = f.shape[:2]
            if n_out * n_in <= 4096:                   # every filter at once: one row each, one column per input
                kernels = [kern for i in order for kern in f.slices(int(i))]
                grid = kernel_grid(kernels, cols=n_in if n_in > 1 else 16, pad=1 if n_in > 16 else 2 if n_in > 1 else 6)
                what = (f"all {n_out} filters, in {order_by} order" + (": one row per filter, one column per input "
                        "channel" if n_in > 1 else "") + " (each filter scaled to its own range; grey = 0)")
            else:                                      # too many kernels for one picture: one filter at a time
                k = st.number_input("Filter", 0, n_out - 1, int(order[0]), key="in_f_idx")
                grid = kernel_grid(list(f.slices(int(k))), cols=32)
                what = f"filter {k}: its {n_in} input-channel kernels (grey = 0)"
            st.image(grid, caption=what, width=grid.shape[1])      # own size: one square per weight, no blur
            st.download_button("PNG", png_bytes(grid), f"filters_{layer}.png", key="in_f_png")
        st.bar_chart(pd.DataFrame({"L2 norm": f.norms[order]}), height=160)

    with t_a, guard("Activations"):
        c1, c2, c3 = st.columns([2, 1, 1])
        with c1:                                       # the picker beside its sort and page controls
            layer = layer_picker(infos, mid, key="in_a_layer") if spatial else None
        if layer:
            akey = ("acts", bundle.model_id, str(state.image_ref()), layer)
            acts = run_job(akey, "Activations", lambda p: activations(bundle, image, layer), with_progress=False,
                           record=False)                      # shown on a visit: recorded on demand
            for w in getattr(acts, "warnings", []):
                st.warning(w)
            s = acts.summary()
            m1, m2, m3, m4 = st.columns(4)
            m1.metric("channels", s["channels"])
            m2.metric("zeros", f"{s['zero_fraction']:.1%}")
            m3.metric("mean", f"{s['mean']:.3g}")
            m4.metric("max", f"{s['max']:.3g}")
            by = c2.radio("Sort by", ["mean", "max", "index"], horizontal=True, key="in_a_sort")
            order = acts.order(by)
            pages = max(1, -(-len(order) // PAGE))
            page = c3.number_input(f"Page (of {pages})", 1, pages, 1, key="in_a_page") - 1
            shown = order[page * PAGE:(page + 1) * PAGE]
            vmax = max(float(acts.maps[shown].max()), 1e-12)
            tiles = [colorize(np.clip(acts.maps[c] / vmax, 0, 1), "viridis") for c in shown]
            st.image(image_grid(tiles, cols=16, pad=2, cell=48), width="stretch",
                     caption=f"channels {', '.join(map(str, shown[:6]))}… (shared colour scale; page {page + 1})")
            ch = st.selectbox("Enlarge channel", list(order), key="in_a_ch",
                              format_func=lambda c: f"{c} (mean {acts.channel_stats()['mean'][c]:.3g})")
            up = acts.upsampled(int(ch))
            e1, e2 = st.columns(2)
            e1.image(colorize(clip_map(up, 0.5)), caption=f"channel {ch} ({acts.maps.shape[1]}×{acts.maps.shape[2]}, "
                     "upsampled)", width="stretch")
            e2.image(overlay(acts.image, colorize(clip_map(up, 0.5)), 0.6, weight=clip_map(up, 0.5)),
                     caption="over the input crop", width="stretch")
            record_button("in_a", acts, akey, "Activations", meta={"layer": layer})

    with t_g, guard("Channel gradient"):
        st.caption("The image gradient of one channel (or one neuron) of an intermediate layer: "
                   "which pixels would raise it. Guided backprop keeps only positive signals.")
        c1, c2, c3 = st.columns([2, 1, 1])
        with c1:
            layer = layer_picker(infos, mid, key="in_g_layer") if spatial else None
        if layer:
            li = next(i for i in infos if i.name == layer)
            shape = (li.channels, *li.map_hw)         # by the layer's layout (channels-last, tokens)
            ch = c2.number_input("Channel", 0, shape[0] - 1, 0, key="in_g_ch")
            guided = c3.toggle("Guided", True, key="in_g_guided")
            neuron = st.checkbox("Single neuron instead of the whole channel", key="in_g_neuron")
            pos = None
            if neuron:
                p1, p2 = st.columns(2)
                pos = (int(p1.number_input("row", 0, shape[1] - 1, shape[1] // 2, key="in_g_y")),
                       int(p2.number_input("column", 0, shape[2] - 1, shape[2] // 2, key="in_g_x")))
            gkey = ("ngrad", bundle.model_id, str(state.image_ref()), layer, int(ch), pos, guided)
            ng = run_job(gkey, "Gradient", lambda p: neuron_gradient(bundle, image, layer, int(ch), pos, guided),
                         with_progress=False, record=False)   # shown on a visit: recorded on demand
            for w in ng.warnings:
                st.warning(w)
            g1, g2 = st.columns(2)
            g1.image(ng.as_image(), caption=f"{'guided ' if guided else ''}gradient of {layer}[{ch}]"
                     + (f" at {pos}" if pos else " (mean)"), width="stretch")
            act = ng.activation
            act_up = np.asarray(colorize(np.clip(act / max(float(act.max()), 1e-12), 0, 1), "viridis"))
            g2.image(image_grid([act_up], cols=1, pad=0, cell=ng.image.shape[0]),
                     caption=f"activation of channel {ch} (value {ng.value:.3g})", width="stretch")
            record_button("in_g", ng, gkey, "Gradient", meta={"layer": layer})

    with t_p:
        patches_tab(bundle, infos, spatial)
