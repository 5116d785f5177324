"""A compact picker for a second model ("model B") for the Compare page.

The sidebar's model form writes the one current model (its widget keys and state are fixed),
so model B has its own small form with the same sources: the embedded models, torchvision
architectures (pretrained or random weights), and the operator's trusted folder. It loads
through the same cached resource as the sidebar (``state._bundle``), so a model used as A and
B is loaded once."""
from __future__ import annotations

import streamlit as st

from analysis.core.models.bundle import ModelBundle
from analysis.core.models.loaders import ModelSpec, torchvision_architectures, trusted_model_files
from dashboard import state
from dashboard.errors import report

B_KEY = "cmp_model_b_spec"
_KINDS = {"same": "Same as model A", "default": "EfficientNet-Lite0 (embedded)", "digits": "Digits CNN (embedded)",
          "torchvision": "torchvision architecture", "trusted": "Server model (operator's folder)"}


def model_b_picker() -> tuple[ModelSpec, ModelBundle] | None:
    """Draw the model-B form; return (spec, bundle) of model B, or None until one is loaded."""
    kinds = [k for k in _KINDS if k != "trusted" or trusted_model_files()]
    kind = st.selectbox("Model B", kinds, format_func=_KINDS.get, key="cmp_b_kind")
    spec = None
    if kind == "same":
        spec = state.model_spec()
    elif kind in ("default", "digits"):
        spec = ModelSpec(kind=kind)
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
        bundle = state._bundle(state._key(spec))
    except Exception as exc:  # noqa: BLE001 - shown as a message, the page goes on without B
        report(exc, f"Could not load {spec.label()}")
        return None
    st.caption(f"Model B: **{spec.label()}** · {bundle.short_id}")
    return spec, bundle
