"""A compact picker for a second model ("model B") for the Compare page.

The sidebar's model form writes the one current model (its widget keys and state are fixed),
so model B has its own small form: the embedded models, torchvision and timm architectures
(pretrained or seeded random weights), the operator's trusted folder, and any model this
session made active in the sidebar before (whatever its source: uploaded weights, Hugging
Face, timm with a weights file, edited preprocessing). It loads through the same cached
resource as the sidebar (``state.bundle_for``), so a model used as A and B is loaded once."""
from __future__ import annotations

import streamlit as st

from analysis.core.models.bundle import ModelBundle
from analysis.core.models.loaders import ModelSpec, torchvision_architectures, trusted_model_files
from dashboard import state
from dashboard.errors import report
from dashboard.text import plain

B_KEY = "cmp_model_b_spec"
_KINDS = {"same": "Same as model A", "earlier": "A model used earlier in this session (any source)",
          "default": "EfficientNet-Lite0 (embedded)", "digits": "Digits CNN (embedded)",
          "torchvision": "torchvision architecture", "timm": "timm architecture (seeded random weights)",
          "trusted": "Server model (operator's folder)"}


def model_b_picker() -> tuple[ModelSpec, ModelBundle] | None:
    """Draw the model-B form; return (spec, bundle) of model B, or None until one is loaded."""
    earlier = state.model_history()
    kinds = [k for k in _KINDS if (k != "trusted" or trusted_model_files()) and (k != "earlier" or earlier)]
    kind = st.selectbox("Model B", kinds, format_func=_KINDS.get, key="cmp_b_kind")
    spec = None
    if kind == "same":
        spec = state.model_spec()
    elif kind == "earlier":
        spec = st.selectbox("Model", earlier, format_func=lambda s: s.label(), key="cmp_b_earlier")
    elif kind in ("default", "digits"):
        spec = ModelSpec(kind=kind)
    elif kind == "timm":
        from analysis.core.models.timm_source import timm_architectures
        archs = list(timm_architectures())
        c1, c2 = st.columns(2)
        arch = c1.selectbox("timm architecture", archs, index=archs.index("resnet18") if "resnet18" in archs else 0,
                            key="cmp_b_timm_arch")
        seed = c2.number_input("Random-weights seed", 0, 2**31 - 1, 0, key="cmp_b_timm_seed")
        if st.button("Load model B", key="cmp_b_load_timm"):
            st.session_state[B_KEY] = ModelSpec(kind="timm", arch=arch, seed=int(seed))
        spec = st.session_state.get(B_KEY)
        if spec is not None and spec.kind != "timm":
            spec = None
    elif kind == "torchvision":
        archs = list(torchvision_architectures())
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", archs, index=archs.index("resnet18"), key="cmp_b_arch")
        pretrained = c2.toggle("Pretrained weights", value=False, key="cmp_b_pretrained",
                               help="Downloads torchvision's weights once; offline, use random weights.")
        seed = 0 if pretrained else c3.number_input("Random-weights seed", 0, 2**31 - 1, 0, key="cmp_b_seed")
        if st.button("Load model B", key="cmp_b_load"):
            st.session_state[B_KEY] = ModelSpec(kind="torchvision" if pretrained else "random", arch=arch, seed=int(seed))
        spec = st.session_state.get(B_KEY)
        if spec is not None and spec.kind not in ("torchvision", "random"):
            spec = None
    else:
        rel = st.selectbox("Model file", trusted_model_files(), key="cmp_b_trusted")
        if st.button("Load model B", key="cmp_b_load_trusted"):
            st.session_state[B_KEY] = ModelSpec(kind="trusted", weights=rel)
        spec = st.session_state.get(B_KEY)
        if spec is not None and spec.kind != "trusted":
            spec = None
    if spec is None:
        st.caption("Press **Load model B**.")
        return None
    try:
        bundle = state.bundle_for(spec)
    except Exception as exc:  # noqa: BLE001 - shown as a message, the page goes on without B
        report(exc, f"Could not load {spec.label()}")
        return None
    st.caption(f"Model B: **{plain(spec.label())}** · {bundle.short_id}")
    return spec, bundle
