"""Any data-set image as the subject of every page.

The subject (the image every page explains) is ``state.image_ref()``. A data-set image
becomes the subject as a content-addressed upload of its exact pixels (lossless PNG of
the decoded RGB array), so every page, cache key, audit record and share link treats it
like any other image, and the data set need not be loaded to show it again.

* :func:`set_subject` — make image ``i`` of a data set the subject (and, for the sidebar's
  data set, point the sidebar's "from the data set" picker at it);
* :func:`explain_button` / :func:`explain_picker` — the "explain this image" action of a
  grid of thumbnails (neighbours, map selections, patch crops, the audit page's cells and
  error lists). They work through ``on_click`` callbacks, which run before the next run
  draws the sidebar, so the sidebar's widgets can follow.
"""
from __future__ import annotations

from typing import Callable, Sequence

import streamlit as st

from analysis.core.datasets import Dataset
from analysis.core.images import to_png_bytes
from analysis.core.store import save_upload
from dashboard import state

# sidebar widget keys of the "from the data set" picker (dashboard/sidebar.py)
SRC_KEY, BY_KEY, INDEX_KEY = "sb_img_src", "sb_dsimg_by", "sb_dsimg_index"
SRC_DATASET = "Data set"
_LAST = "_subject_last"          # (data-set hash, index, upload digest) of the last data-set subject


def subject_label(ds: Dataset, i: int) -> str:
    """How a data-set image is named in captions and records: ``digits:digits/0042 (4)``."""
    return f"{ds.name}:{ds.ids[i]} ({ds.class_names[int(ds.labels[i])]})"


def _digest(ds: Dataset, i: int) -> str:
    last = st.session_state.get(_LAST)
    if isinstance(last, tuple) and last[:2] == (ds.content_hash, i):
        return last[2]
    digest = save_upload(to_png_bytes(ds.get(i)), f"{ds.ids[i].replace('/', '_')}.png")
    st.session_state[_LAST] = (ds.content_hash, i, digest)
    return digest


def set_subject(ds: Dataset, i: int, *, follow_sidebar: bool = True) -> state.ImageRef:
    """Make image ``i`` of ``ds`` the subject of every page; returns its ref.

    With ``follow_sidebar`` (only from callbacks or before the sidebar is drawn) the
    sidebar's image choice switches to "from the data set" at this index when ``ds`` is
    the sidebar's data set, else to "Upload" (which keeps the image)."""
    i = int(i)
    ref = state.ImageRef("upload", _digest(ds, i), subject_label(ds, i))
    if state.image_ref() != ref:
        state.set_image_ref(ref)
    if follow_sidebar:
        ss = st.session_state
        try:
            same = state.current_dataset().content_hash == ds.content_hash
        except Exception:  # noqa: BLE001 - the sidebar's data set may not load
            same = False
        if same:
            ss[SRC_KEY], ss[BY_KEY], ss[INDEX_KEY] = SRC_DATASET, "index", i
        else:
            ss[SRC_KEY] = "Upload"
    return ref


def _explain(ds_getter: Callable[[], Dataset], i: int) -> None:
    try:
        ds = ds_getter()
        ref = set_subject(ds, i)
        st.toast(f"{ref.label} is now the image of every page.", icon=":material/image_search:")
    except Exception as exc:  # noqa: BLE001 - a callback must not raise into Streamlit
        st.toast(f"Could not use this image: {exc}", icon=":material/error:")


def explain_button(i: int, key: str, ds_getter: Callable[[], Dataset] = state.current_dataset,
                   label: str = "Explain", container=None) -> None:
    """A small button that makes data-set image ``i`` the subject of every page."""
    where = container if container is not None else st
    where.button(label, key=key, icon=":material/image_search:",
                 help="Make this image the subject of every page (Saliency, Inside, …).",
                 on_click=_explain, args=(ds_getter, int(i)))


def explain_picker(ds: Dataset, indices: Sequence[int], key: str,
                   ds_getter: Callable[[], Dataset] = state.current_dataset) -> None:
    """Under a grid of thumbnails: choose one of its images and make it the subject."""
    idx = [int(i) for i in indices]
    if not idx:
        return
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    choice = c1.selectbox("Explain one of these images", idx, key=key,
                          format_func=lambda i: f"#{i} · {ds.ids[i]} · {ds.class_names[int(ds.labels[i])]}")
    explain_button(choice, f"{key}_go", ds_getter, "Explain this image", container=c2)
