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
