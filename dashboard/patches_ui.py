"""The maximally-activating-patches tab (shared by the Inside page and, later, the
feature-visualisation page to show a channel's patches beside its visualisation)."""
from __future__ import annotations

import streamlit as st

from analysis.core.layers import default_layer
from analysis.core.models.bundle import ModelBundle
from dashboard import state
from dashboard.errors import guard
from dashboard.render import png_bytes
from dashboard.subject import explain_picker
from dashboard.text import plain
from dashboard.widgets import layer_picker, run_job


@st.cache_resource(show_spinner="Building the gallery crops…")
def _gallery_crops():
    from analysis.inside.patches import gallery_dataset
    return gallery_dataset()


def patch_dataset(bundle: ModelBundle, choice: str):
    if choice == "gallery":
        return _gallery_crops()
    return state.current_dataset()


def patches_tab(bundle: ModelBundle, infos, spatial: list[str]) -> None:
    from analysis.inside.patches import load_index, patch_crops, patch_grid, scan, token_field
    st.caption("Scan a data set, keep for every channel the images whose strongest response is "
               "highest, and show the receptive-field crop around that position.")
    if not spatial:
        st.info("This model has no spatial layers.")
        return
    with guard("Maximally activating patches"):
        imagenet = bundle.num_classes == 1000 and bundle.preprocess.channels == 3
        options = (["gallery", "sidebar"] if imagenet else ["sidebar", "gallery"])
        c1, c2, c3 = st.columns([2, 2, 1])
        choice = c1.radio("Data set", options, horizontal=True, key=f"in_p_data_{bundle.short_id}", format_func=lambda o: {
            "gallery": "gallery photos, augmented crops", "sidebar": f"sidebar: {plain(state.dataset_ref().label)}"}[o])
        with c2:
            layer = layer_picker(infos, default_layer(infos, 0.6), key="in_p_layer")
        k = c3.number_input("top-k", 1, 32, 8, key="in_p_k")
        ds = patch_dataset(bundle, choice)
        index = load_index(bundle, ds, layer, int(k))
        if index is None:
            st.info(f"No index yet for `{layer}` on {plain(ds.name)} ({len(ds):,} images). The scan indexes "
                    "every channel of the layer in one pass and is stored on disk.")
            go = st.button("Scan", type="primary", key="in_p_scan")
            index = run_job(None, f"Scanning {layer}", lambda _p: scan(bundle, ds, layer, k=int(k)), start=go,
                            stop="in_p_stop", cache=False, title="Patch scan", meta={"image": False, "layer": layer})
            if index is None:
                return
            st.rerun()                               # redraw from the stored index
        st.caption(f"`{layer}`: {index.channels} channels, {index.n_images:,} images scanned in "
                   f"{index.seconds:.1f} s; one patch per image per channel.")
        tf = token_field(bundle, layer)
        if tf is not None:                           # a token layer: say what its "receptive field" is
            st.info(tf.note)
        best = list(index.values[:, 0].argsort()[::-1])
        chosen = st.multiselect("Channels", list(range(index.channels)), default=[int(c) for c in best[:4]],
                                key=f"in_p_ch_{layer}", help="Default: the channels with the strongest top patch.")
        size = st.slider("Patch display size", 32, 128, 64, 16, key="in_p_size")
        for ch in chosen:
            crops = patch_crops(bundle, ds, index, int(ch), display_size=size)
            st.markdown(f"**channel {ch}**")
            st.image([c.image for c in crops], width=size, caption=[f"{c.value:.2f}" for c in crops])
            st.caption(plain("Left to right: " + " · ".join(str(c.image_id) for c in crops)))   # ids too long for a tile
            explain_picker(ds, [c.image_idx for c in crops], key=f"in_p_x_{layer}_{ch}",
                           ds_getter=lambda choice=choice: patch_dataset(bundle, choice))
        if chosen:
            grid = patch_grid(bundle, ds, index, [int(c) for c in chosen], display_size=size)
            st.download_button("Download grid (PNG)", png_bytes(grid), f"patches_{layer}.png", key="in_p_png")
