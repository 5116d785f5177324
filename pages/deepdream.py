"""DeepDream: amplify what a layer already sees in the sidebar image (google/deepdream)."""
import streamlit as st

from analysis.core.layers import default_layer
from analysis.optimize.featurevis import DEEPDREAM_DEFAULTS, deepdream
from dashboard import state
from dashboard.optimize_ui import live_run, show_result, spatial_model
from dashboard.text import plain
from dashboard.widgets import layer_picker, page

with page("DeepDream",
          "Gradient ascent on the L2 norm of a layer's activations, starting from your image, over an "
          "octave pyramid with jitter: whatever the layer sees, it sees more of (Mordvintsev et al. 2015)."):
    bundle, infos, spatial = spatial_model()
    image = state.current_image()
    if st.button("Reset to google/deepdream defaults", key="dd_reset"):
        for k in [k for k in st.session_state if str(k).startswith("dd_p_")]:
            del st.session_state[k]
    c1, c2 = st.columns([3, 1])
    with c1:
        layer = layer_picker(infos, default_layer(infos, 0.5), key=f"dd_p_layer_{bundle.short_id}")
    n_ch = next(i.channels for i in infos if i.name == layer)      # by the layer's layout
    ch = int(c2.number_input("channel (-1 = whole layer)", -1, n_ch - 1, -1, key="dd_p_ch"))
    D = DEEPDREAM_DEFAULTS
    a, b, c, d = st.columns(4)
    octaves = int(a.number_input("octaves", 1, 8, D["octaves"], key="dd_p_oct"))
    scale = float(b.number_input("octave scale", 1.05, 4.0, D["octave_scale"], key="dd_p_scale"))
    steps = int(c.number_input("steps per octave", 1, 200, D["steps_per_octave"], key="dd_p_steps"))
    step_size = float(d.number_input("step size (0–255 units, ÷ mean|g|)", 0.01, 100.0, D["step_size"], key="dd_p_lr"))
    jitter = int(a.number_input("jitter (px)", 0, 128, D["jitter"], key="dd_p_jit"))
    clip = b.checkbox("clip to valid pixels", D["clip"], key="dd_p_clip")
    max_side = int(c.number_input("max side (px)", 64, 1024, 512, key="dd_p_side",
                                  help="the image is scaled down to this longest side first"))
    seed = int(d.number_input("seed", 0, 2 ** 31 - 1, 0, key="dd_p_seed"))
    key = ("deepdream", bundle.model_id, state.image_ref(), layer, ch, octaves, scale, steps, step_size, jitter,
           clip, max_side, seed)
    left, right = st.columns(2)
    left.image(image, caption=f"input: {plain(state.image_ref().label)}", width="stretch")
    with right:
        result = live_run("dd", key, lambda: deepdream(
            bundle, image, layer, channel=None if ch < 0 else ch, octaves=octaves, octave_scale=scale,
            steps_per_octave=steps, step_size=step_size, jitter=jitter, clip=clip, max_side=max_side, seed=seed),
            label="Dream", width=480)
        if result is not None:
            show_result("dd_res", result, width=480, filename=f"deepdream_{layer}")
