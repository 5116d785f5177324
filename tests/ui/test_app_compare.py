"""AppTest of the Compare page: digits as A and B (same model): agreement 100 %, CKA of a
model with itself is 1 on the diagonal; side-by-side maps."""
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_compare_page_same_model():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.switch_page("../pages/compare.py").run()
    _ok(at)
    at.selectbox(key="cmp_b_kind").set_value("same").run()
    _ok(at)
    at.button(key="cmp_maps").click().run()
    _ok(at)
    at.number_input(key="cmp_n").set_value(40)
    at.button(key="cmp_agree_run").click().run()
    _ok(at)
    assert [m.value for m in at.metric][0] == "100.0%"
    at.multiselect(key="cmp_cka_la").set_value(["features.relu1", "features.relu3"])
    at.multiselect(key="cmp_cka_lb").set_value(["features.relu1", "features.relu3"])
    at.number_input(key="cmp_cka_n").set_value(30)
    at.button(key="cmp_cka_run").click().run()
    _ok(at)
    fig = at.get("plotly_chart")[-1].proto.spec
    import json
    z = json.loads(fig)["data"][0]["z"]
    if isinstance(z, dict):                      # plotly's typed-array encoding
        import base64

        import numpy as np
        shape = [int(v) for v in str(z["shape"]).split(",")]
        z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape).tolist()
    assert abs(z[0][0] - 1) < 1e-6 and abs(z[1][1] - 1) < 1e-6 and z[0][1] < 1


def test_model_b_from_any_source():
    """Model B can be a timm architecture, or any model the session made active before, of
    any source (here the digits CNN)."""
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()       # the session's model history: digits
    at.switch_page("../pages/compare.py").run()
    _ok(at)
    kinds = at.selectbox(key="cmp_b_kind").options
    assert "A model used earlier in this session (any source)" in kinds and \
        "timm architecture (seeded random weights)" in kinds
    at.selectbox(key="cmp_b_kind").set_value("earlier").run()
    _ok(at)
    labels = at.selectbox(key="cmp_b_earlier").options
    assert any("Digits" in o for o in labels)
    at.selectbox(key="cmp_b_kind").set_value("timm").run()
    at.selectbox(key="cmp_b_timm_arch").set_value("resnet18").run()
    at.button(key="cmp_b_load_timm").click().run()
    _ok(at)
    assert any("Model B" in c.value and "resnet18 (timm" in c.value for c in at.caption)
