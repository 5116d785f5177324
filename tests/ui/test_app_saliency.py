"""AppTest of the saliency page: methods and widgets from the method table, trust checks
with verdicts, and share links whose values go through the same schemas as the widgets."""
import json

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_link(params: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})
    at.query_params["page"] = "saliency"
    return at.run()


def test_saliency_page_two_methods_and_trust_checks():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/saliency.py").run()
    assert not at.exception
    assert any("Compute maps" in i.value for i in at.info)
    at.multiselect(key="sal_methods").set_value(["gradient", "gradcam"])
    at.button(key="sal_compute").click().run()
    _ok(at)
    titles = [m.value for m in at.markdown if m.value.startswith("**")]
    assert any("Vanilla gradient" in t for t in titles) and any("Grad-CAM" in t for t in titles)
    assert any("tiger cat" in s.value for s in at.subheader)      # predicted class by default
    at.number_input(key="sal_di_steps").set_value(4)
    at.number_input(key="sal_di_random").set_value(3)
    at.button(key="sal_di_run").click().run()
    _ok(at)
    table = at.dataframe[-1].value
    assert list(table["method"]) == ["gradient", "gradcam"]
    assert all(v in ("better than random", "not distinguishable from random", "worse than random")
               or "random on" in v for v in table["verdict"])
    at.radio(key="sal_view").set_value("interactive").run()         # the interactive view draws
    _ok(at)
    assert len(at.get("plotly_chart")) >= 2


def test_saliency_page_target_by_search():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/saliency.py").run()
    at.multiselect(key="sal_methods").set_value(["gradcam"])
    at.radio(key="sal_target_mode").set_value("Search").run()
    at.text_input(key="sal_target_query").set_value("goldfish").run()
    at.button(key="sal_compute").click().run()
    _ok(at)
    assert any("goldfish (1)" in s.value for s in at.subheader)


def test_a_registered_method_appears_on_the_page():
    """Adding a method is one entry: a toy method registered here gets its place in the
    method list, a widget per schema parameter, and a map."""
    from analysis.core.schema import Param
    from analysis.saliency import registry
    from analysis.saliency.registry import MapOutput, register

    @register("toy_stripes", "Toy stripes", "Vertical stripes of a chosen width, for tests.",
              params=(Param("width", "int", 4, 1, 32, help="stripe width"),
                      Param("phase", "choice", "even", choices=("even", "odd"))))
    def stripes(bundle, x, target, *, progress=None, width=4, phase="even"):
        cols = (np.arange(x.shape[-1]) // width) % 2 == (phase == "odd")
        return MapOutput(map=np.tile(cols.astype(np.float32), (x.shape[-2], 1)))
    try:
        at = AppTest.from_file(APP, default_timeout=300).run()
        at.switch_page("../pages/saliency.py").run()
        assert "Toy stripes" in at.multiselect(key="sal_methods").options
        at.multiselect(key="sal_methods").set_value(["toy_stripes"]).run()
        assert at.number_input(key="sal_toy_stripes_width").value == 4
        assert at.selectbox(key="sal_toy_stripes_phase").options == ["even", "odd"]
        at.number_input(key="sal_toy_stripes_width").set_value(8)
        at.button(key="sal_compute").click().run()
        _ok(at)
        assert any(m.value.startswith("**Toy stripes") for m in at.markdown)
        assert at.session_state["sal_active"]["params"] == {"toy_stripes": {"width": 8, "phase": "even"}}
        assert json.loads(at.query_params["sal_active"][0] if isinstance(at.query_params["sal_active"], list)
                          else at.query_params["sal_active"])["params"]["toy_stripes"]["width"] == 8
    finally:
        registry.unregister("toy_stripes")


def test_link_parameters_go_through_the_schema(monkeypatch):
    """Values from a link reach the engines only through the schema: a parameter without a
    widget (batch_size) is dropped, out-of-range values are clamped, each with a message
    naming it; the link then records the validated request."""
    import analysis.saliency.methods as methods
    seen = []
    real = methods.occlusion
    monkeypatch.setattr(methods, "occlusion", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    active = {"methods": ["occlusion", "no_such_method"], "target": 281,
              "params": {"occlusion": {"window": 500, "stride": 112, "baseline": "zero", "batch_size": 729}}}
    at = open_link({"sal_active": active, "sal_methods": ["occlusion"], "sal_trust": "Model randomisation"})
    _ok(at)
    assert seen and seen[-1]["batch_size"] == 32 and seen[-1]["window"] == 112     # default, clamped
    warnings = " ".join(w.value for w in at.warning)
    assert "batch_size" in warnings and "window" in warnings and "no_such_method" in warnings
    assert any(m.value.startswith("**Occlusion") for m in at.markdown)
    req = at.session_state["sal_active"]
    assert req["methods"] == ["occlusion"] and "batch_size" not in req["params"]["occlusion"]
    assert "729" not in at.query_params["sal_active"][0] if isinstance(at.query_params["sal_active"], list) \
        else "729" not in at.query_params["sal_active"]
    # a link opens the trust check it was made on (a keyed control, not st.tabs)
    assert at.session_state["sal_trust"] == "Model randomisation"
    assert at.slider(key="sal_rand_steps").value == 6
    assert not any(b.key == "sal_di_run" for b in at.button)


def test_bad_link_values_give_messages_and_the_page_renders():
    at = open_link({"sal_active": [1, 2, 3], "sal_alpha": "7.5", "sal_cmap": "rainbow", "sal_view": "3d",
                    "sal_methods": ["occlusion"], "sal_occlusion_window": "true", "sal_occlusion_stride": "1e9"})
    _ok(at)
    warnings = " ".join(w.value for w in at.warning)
    for name in ("sal_active", "sal_alpha", "sal_cmap", "sal_view", "sal_occlusion_window",
                 "sal_occlusion_stride"):
        assert name in warnings, name
    assert any("Compute maps" in i.value for i in at.info)            # rendered, with the defaults
    # a refused value falls back to the widget's default (the link check of dashboard/share.py)
    assert at.slider(key="sal_alpha").value == 0.6 and at.selectbox(key="sal_cmap").value == "inferno"
    assert at.number_input(key="sal_occlusion_window").value == 16
    assert at.number_input(key="sal_occlusion_stride").value == 8                 # refused: the default
    at2 = open_link({"sal_active": {"methods": ["nope"], "target": "x", "params": 5}})
    _ok(at2)
    assert any("nope" in w.value for w in at2.warning)
    assert any("Compute maps" in i.value for i in at2.info)
