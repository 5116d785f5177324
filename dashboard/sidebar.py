"""The sidebar: model, image and data set picked once for all pages."""
from __future__ import annotations

import streamlit as st

from analysis.core.config import get_config
from analysis.core.errors import ConvlensError
from analysis.core.images import gallery_names, load_image
from analysis.core.models.loaders import (
    ModelSpec,
    select_device,
)
from analysis.core.store import discard_upload, save_upload, upload_digest
from dashboard import auth, model_forms, share, state
from dashboard.errors import guard, report
from dashboard.model_forms import store_upload
from dashboard.render import preview_jpeg
from dashboard.text import plain


def _try_select(spec: ModelSpec) -> bool:
    """Load ``spec`` first; switch to it only if it loads, so a failure keeps the old model."""
    try:
        state.bundle_for(spec)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported and the old model kept
        report(exc, f"Could not load {spec.label()}")
        return False
    state.set_model_spec(spec)
    return True


_ZIP_REFUSED = "_sb_zip_refused"


def _select_zip(data: bytes, name: str) -> None:
    """Store a zip data set, index it, and make it the data set; a refused zip is removed
    again (and not retried on every rerun while it stays in the uploader)."""
    digest = upload_digest(data)
    if state.dataset_ref().ref == digest:
        return
    refused = st.session_state.get(_ZIP_REFUSED)
    if refused and refused[0] == digest:
        st.error(refused[1])
        return
    new: list[str] = []
    try:
        ref = state.DatasetRef("zip", store_upload(data, name, new), name)
        state.dataset_for(ref)                                      # index it (cached) before switching
    except Exception as exc:
        for d in new:
            discard_upload(d)
        if isinstance(exc, ConvlensError):
            st.session_state[_ZIP_REFUSED] = (digest, f"{plain(name)}: {plain(exc)}")
        raise
    state.set_dataset_ref(ref)


def model_picker() -> None:
    model_forms.model_picker(_try_select)


def image_picker() -> None:
    src = st.radio("Image", ["Gallery", "Upload", "Data set"], horizontal=True, key="sb_img_src")
    if src == "Data set":
        with guard("Data-set image"):
            dataset_image_picker()
    elif src == "Gallery":
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
        st.image(preview_jpeg(str(state.image_ref()), state.current_image()),     # encoded once per image
                 caption=plain(state.image_ref().label), width="stretch", output_format="JPEG")


def dataset_image_picker() -> None:
    """The subject from the sidebar's data set: by class, by file name or by index."""
    from dashboard.subject import BY_KEY, INDEX_KEY, set_subject
    ds = state.current_dataset()
    n = len(ds)
    by = st.radio("Pick by", ["class", "file name", "index"], horizontal=True, key=BY_KEY)
    ss = st.session_state
    if by == "class":
        k = st.selectbox("Class", list(range(len(ds.class_names))), key="sb_dsimg_class",
                         format_func=lambda c: ds.class_names[c])
        members = [int(i) for i in (ds.labels == k).nonzero()[0]]
        if not isinstance(ss.get("sb_dsimg_pos"), int) or not 0 <= ss["sb_dsimg_pos"] < len(members):
            ss["sb_dsimg_pos"] = 0
        pos = st.number_input(f"Image of the class (0 … {len(members) - 1})", 0, max(len(members) - 1, 0),
                              key="sb_dsimg_pos")
        i = members[int(pos)]
    elif by == "file name":
        q = st.text_input("File name contains", key="sb_dsimg_q", placeholder="e.g. 0042")
        hits = [j for j, name in enumerate(ds.ids) if q.strip().lower() in name.lower()][:500]
        if not hits:
            st.caption("No file name matches.")
            return
        if ss.get("sb_dsimg_file") not in hits:
            ss.pop("sb_dsimg_file", None)
        i = st.selectbox("File", hits, key="sb_dsimg_file", format_func=lambda j: ds.ids[j])
    else:
        if not isinstance(ss.get(INDEX_KEY), int) or not 0 <= ss[INDEX_KEY] < n:
            ss[INDEX_KEY] = 0
        i = int(st.number_input(f"Index (0 … {n - 1:,})", 0, n - 1, key=INDEX_KEY))
    set_subject(ds, int(i), follow_sidebar=False)


def dataset_picker() -> None:
    dirs = get_config().dataset_dirs
    folders = [str(p) for p in dirs if p.is_dir()]
    manifests = [str(p) for d in dirs for p in ([d] if d.is_file() else sorted(d.glob("*.csv")) + sorted(d.glob(
        "*.parquet"))) if p.suffix in (".csv", ".parquet")]          # manifest data sets (images read lazily)
    options = ["digits"] + [f"folder:{p}" for p in folders] + [f"manifest:{p}" for p in manifests] + ["zip"]
    labels = {"digits": "scikit-learn digits (1,797 images)", "zip": "Upload a zip (ImageFolder layout)"}
    choice = st.selectbox("Data set", options, key="sb_dataset",
                          format_func=lambda o: labels.get(o, o.removeprefix("folder:").replace("manifest:", "manifest: ")))
    if choice == "digits":
        if state.dataset_ref().kind != "digits":
            state.set_dataset_ref(state.DatasetRef())
    elif choice.startswith("folder:"):
        path = choice.removeprefix("folder:")
        if state.dataset_ref().ref != path:
            state.set_dataset_ref(state.DatasetRef("folder", path, path))
    elif choice.startswith("manifest:"):
        path = choice.removeprefix("manifest:")
        if state.dataset_ref().ref != path:
            state.set_dataset_ref(state.DatasetRef("manifest", path, path))
    else:
        up = st.file_uploader("Zip: class folders of images", type=["zip"], key="sb_zip")
        if up is not None:
            with guard(f"'{up.name}'"):
                _select_zip(up.getvalue(), up.name)
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
