"""The sidebar: model, image and data set picked once for all pages."""
from __future__ import annotations

import streamlit as st

from analysis.core.config import get_config
from analysis.core.images import gallery_names, load_image
from analysis.core.models.loaders import ModelSpec, select_device
from analysis.core.store import save_upload
from dashboard import auth, model_forms, share, state
from dashboard.errors import guard, report


def _try_select(spec: ModelSpec) -> bool:
    """Load ``spec`` first; switch to it only if it loads, so a failure keeps the old model."""
    try:
        state._bundle(state._key(spec))
    except Exception as exc:  # noqa: BLE001
        report(exc, f"Could not load {spec.label()}")
        return False
    state.set_model_spec(spec)
    return True


def model_picker() -> None:
    model_forms.model_picker(_try_select)


def image_picker() -> None:
    src = st.radio("Image", ["Gallery", "Upload"], horizontal=True, key="sb_img_src")
    if src == "Gallery":
        names = gallery_names()
        cur = state.image_ref()
        name = st.selectbox("Sample image", names, key="sb_gallery",
                            index=names.index(cur.ref) if cur.kind == "gallery" and cur.ref in names else 0)
        if cur.kind != "gallery" or cur.ref != name:
            state.set_image_ref(state.ImageRef("gallery", name, name))
    else:
        up = st.file_uploader("Your image", type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"],
                              key="sb_img_upload")
        if up is not None:
            data = up.getvalue()
            with guard(f"'{up.name}'"):
                load_image(data, name=up.name)                      # refuse bad files before storing
                digest = save_upload(data, up.name)
                if state.image_ref().ref != digest:
                    state.set_image_ref(state.ImageRef("upload", digest, up.name))
    with guard("Image"):
        st.image(state.current_image(), caption=state.image_ref().label, width="stretch")


def dataset_picker() -> None:
    folders = [str(p) for p in get_config().dataset_dirs]
    options = ["digits"] + [f"folder:{p}" for p in folders] + ["zip"]
    labels = {"digits": "scikit-learn digits (1,797 images)", "zip": "Upload a zip (ImageFolder layout)"}
    choice = st.selectbox("Data set", options, key="sb_dataset",
                          format_func=lambda o: labels.get(o, o.removeprefix("folder:")))
    if choice == "digits":
        if state.dataset_ref().kind != "digits":
            state.set_dataset_ref(state.DatasetRef())
    elif choice.startswith("folder:"):
        path = choice.removeprefix("folder:")
        if state.dataset_ref().ref != path:
            state.set_dataset_ref(state.DatasetRef("folder", path, path))
    else:
        up = st.file_uploader("Zip: class folders of images", type=["zip"], key="sb_zip")
        if up is not None:
            with guard(f"'{up.name}'"):
                digest = save_upload(up.getvalue(), up.name)
                if state.dataset_ref().ref != digest:
                    state.set_dataset_ref(state.DatasetRef("zip", digest, up.name))
    with guard("Data set"):
        s = state.current_dataset().summary()
        st.caption(f"{s['n_images']:,} images · {s['n_classes']} classes"
                   + (f" · {s['n_skipped']} unreadable skipped" if s["n_skipped"] else ""))


def render_sidebar() -> None:
    with st.sidebar:
        st.markdown("### convlens")
        auth.user_box()
        with guard("Model"):
            model_picker()
        image_picker()
        dataset_picker()
        with guard("Device"):
            st.caption(f"Device: `{select_device()}`")
        share.link_box()
