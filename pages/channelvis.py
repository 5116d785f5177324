"""Channel and neuron visualisation: the image a channel (or its centre neuron) of any layer
wants, optionally a diverse batch, beside that channel's maximally activating patches."""
import streamlit as st

from analysis.core.layers import default_layer
from analysis.optimize.featurevis import channel_visualization
from dashboard.optimize_ui import live_run, show_result, spatial_model
from dashboard.text import plain
from dashboard.widgets import layer_picker, page

with page("Channel & neuron visualisation",
          "What excites one channel of a layer: optimise a decorrelated Fourier image under random "
          "pad/jitter/scale/rotate (Olah et al. 2017), shown beside the data set's strongest patches.",
          what="Channel visualisation"):
    bundle, infos, spatial = spatial_model()
    c1, c2, c3 = st.columns([3, 1, 1])
    with c1:
        layer = layer_picker(infos, default_layer(infos, 0.6), key=f"ch_layer_{bundle.short_id}")
    n_ch = next(i.channels for i in infos if i.name == layer)      # by the layer's layout
    channel = int(c2.number_input(f"channel (0–{n_ch - 1})", 0, n_ch - 1, 0, key=f"ch_c_{layer}"))
    what = c3.radio("Objective", ["channel", "neuron"], key="ch_what",
                    help="channel: mean over all positions; neuron: the centre position only")
    a, b, c, d, e = st.columns(5)
    steps = int(a.number_input("steps", 1, 5000, 256, key="ch_steps"))
    size = int(b.number_input("size (px)", 32, 512, 128, key="ch_size"))
    batch = int(c.number_input("images", 1, 8, 1, key="ch_batch", help="several images of the same channel"))
    div = float(d.number_input("diversity weight", 0.0, 100.0, 0.0 if batch == 1 else 1.0, key=f"ch_div_{batch > 1}",
                               disabled=batch == 1, help="penalises similar Gram matrices across the batch (lucent)"))
    seed = int(e.number_input("seed", 0, 2 ** 31 - 1, 0, key="ch_seed"))
    lr = float(a.number_input("Adam learning rate", 0.001, 1.0, 0.05, key="ch_lr"))
    key = ("channelvis", bundle.model_id, layer, channel, what, steps, size, batch, div, seed, lr)
    left, right = st.columns([3, 2])
    with left:
        result = live_run("ch", key, lambda: channel_visualization(
            bundle, layer, channel, neuron=what == "neuron", batch=batch, diversity=div, steps=steps, lr=lr,
            size=size, seed=seed), label="Visualise", width=min(256, size * 2))
        if result is not None:
            show_result("ch_res", result, width=min(256, size * 2), filename=f"channel_{layer}_{channel}")
    with right:
        st.markdown(f"**Maximally activating patches of `{layer}` channel {channel}**")
        from analysis.inside.patches import load_index, patch_crops
        from dashboard.patches_ui import patch_dataset
        shown = False
        for choice in ("gallery", "sidebar"):
            ds = patch_dataset(bundle, choice)
            index = load_index(bundle, ds, layer, 8)
            if index is not None:
                crops = patch_crops(bundle, ds, index, channel, display_size=64)
                st.image([cr.image for cr in crops], width=64, caption=[f"{cr.value:.2f}" for cr in crops])
                st.caption(f"from {plain(ds.name)} ({index.n_images:,} images)")
                shown = True
                break
        if not shown:
            st.caption("No patch index for this layer yet: scan it on *Inside the network → Maximally "
                       "activating patches* (top-k 8) and the patches appear here.")
