"""Selections shared by every page (model, image, data set) and the cached resources
behind them. Several browser sessions share one cached ModelBundle per model spec."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import streamlit as st

from analysis.core.config import get_config
from analysis.core.datasets import DEFAULT_DATASET, Dataset, load_digits_dataset, load_image_folder, load_zip_dataset
from analysis.core.images import DEFAULT_IMAGE, gallery_image, load_image
from analysis.core.layers import LayerInfo, layer_table
from analysis.core.models.bundle import ModelBundle
from analysis.core.models.loaders import ModelSpec, load_bundle, select_device
from analysis.core.store import read_upload

MODEL_KEY, IMAGE_KEY, DATASET_KEY = "model_spec", "image_ref", "dataset_ref"


@dataclass(frozen=True)
class ImageRef:
    kind: str = "gallery"      # "gallery" | "upload"
    ref: str = DEFAULT_IMAGE   # gallery name or upload sha256
    label: str = DEFAULT_IMAGE


@dataclass(frozen=True)
class DatasetRef:
    kind: str = DEFAULT_DATASET  # "digits" | "folder" | "zip" | "manifest"
    ref: str = ""                # folder path, zip sha256 or manifest file (.csv / .parquet)
    label: str = "scikit-learn digits"


def _key(obj) -> str:
    return json.dumps(dataclasses.asdict(obj), sort_keys=True)


# ---------------------------------------------------------------- cached resources

@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _bundle(spec_key: str) -> ModelBundle:
    return load_bundle(ModelSpec(**json.loads(spec_key)), device=select_device())


@st.cache_resource(show_spinner="Tracing layers…", max_entries=4)
def _layers(spec_key: str) -> list[LayerInfo]:
    return layer_table(_bundle(spec_key))


@st.cache_resource(show_spinner=False, max_entries=32)
def _image(ref_key: str) -> np.ndarray:
    ref = ImageRef(**json.loads(ref_key))
    if ref.kind == "gallery":
        return gallery_image(ref.ref)
    data, name = read_upload(ref.ref)
    arr = load_image(data, name=name)
    arr.setflags(write=False)
    return arr


@st.cache_resource(show_spinner=False, max_entries=4)
def _dataset(ref_key: str) -> Dataset:
    ref = DatasetRef(**json.loads(ref_key))
    if ref.kind == "digits":
        return load_digits_dataset()
    if ref.kind == "manifest":                  # images read lazily; up to limits.max_manifest_images rows
        from analysis.dataset.manifest import DatasetRef as ManifestRef
        from analysis.dataset.manifest import open_dataset
        with st.spinner(f"Indexing {ref.label}…"):
            return open_dataset(ManifestRef("manifest", path=ref.ref))
    bar = st.progress(0.0, text=f"Indexing {ref.label}…")

    def progress(done, total):
        bar.progress(done / max(total, 1), text=f"Indexing {ref.label}: {done}/{total} files")
    try:
        if ref.kind == "folder":
            return load_image_folder(ref.ref, allowed_roots=list(get_config().dataset_dirs), progress=progress)
        data, name = read_upload(ref.ref)
        return load_zip_dataset(data, name=name, progress=progress)
    finally:
        bar.empty()


def bundle_for(spec: ModelSpec) -> ModelBundle:
    """The shared (cached) bundle of a model spec."""
    return _bundle(_key(spec))


def layers_for(spec: ModelSpec) -> list[LayerInfo]:
    """The cached layer table of a model spec's bundle."""
    return _layers(_key(spec))


def image_for(ref: ImageRef) -> np.ndarray:
    """The cached (read-only) RGB array of an image reference."""
    return _image(_key(ref))


# ---------------------------------------------------------------- selections

def model_spec() -> ModelSpec:
    return st.session_state.get(MODEL_KEY, ModelSpec())


MODEL_HISTORY_KEY = "_model_history"


def set_model_spec(spec: ModelSpec) -> None:
    st.session_state[MODEL_KEY] = spec
    history = [s for s in st.session_state.get(MODEL_HISTORY_KEY, []) if s != spec]
    st.session_state[MODEL_HISTORY_KEY] = ([spec] + history)[:10]


def model_history() -> list[ModelSpec]:
    """The models this session made active, newest first (at most 10, any source): the
    Compare page offers them as model B."""
    return list(st.session_state.get(MODEL_HISTORY_KEY, []))


def image_ref() -> ImageRef:
    return st.session_state.get(IMAGE_KEY, ImageRef())


def set_image_ref(ref: ImageRef) -> None:
    st.session_state[IMAGE_KEY] = ref


def dataset_ref() -> DatasetRef:
    return st.session_state.get(DATASET_KEY, DatasetRef())


def set_dataset_ref(ref: DatasetRef) -> None:
    st.session_state[DATASET_KEY] = ref


def current_bundle() -> ModelBundle:
    """The selected model's shared bundle (raises ConvlensError if it cannot load)."""
    return bundle_for(model_spec())


def current_layers() -> list[LayerInfo]:
    return _layers(_key(model_spec()))


def current_image() -> np.ndarray:
    """The selected image as a read-only RGB uint8 array."""
    return _image(_key(image_ref()))


def current_dataset() -> Dataset:
    return _dataset(_key(dataset_ref()))


def dataset_for(ref: DatasetRef) -> Dataset:
    """The (cached) data set of ``ref``; raises ConvlensError if it cannot be read."""
    return _dataset(_key(ref))
