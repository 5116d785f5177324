"""AppTests of the optimisation pages (class / channel visualisation, DeepDream, feature
inversion) with few steps: each runs, shows its result, records its parameters and comes
from the cache on an unchanged rerun."""
import json

from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _page(name):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page(f"../pages/{name}.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _ok(at):
    assert not at.exception and not at.error, ([e.value for e in at.error], at.exception)


def _params(at) -> dict:
    return at.json[-1].value if isinstance(at.json[-1].value, dict) else json.loads(at.json[-1].value)


def test_class_visualisation_page_runs_a_preset_with_few_steps():
    at = _page("classvis")
    (cls,) = at.multiselect[0].value
    assert cls in (281, 282, 285)                                # chelsea's predicted class (a cat) by default
    at.selectbox(key="cv_preset").set_value("CS231n").run()
    at.number_input(key="cv_CS231n_steps").set_value(4).run()
    at.number_input(key="cv_CS231n_size").set_value(64).run()
    at.number_input(key="cv_CS231n_pv").set_value(2).run()
    at.button(key="cv_go").click().run()
    _ok(at)
    p = _params(at)
    assert p["preset"] == "CS231n" and p["steps"] == 4 and p["seed"] == 0 and p["lr"] == 25.0
    assert p["objective"] == f"logit[{cls}] - 0.001·L2" and p["blur_every"] == 10
    assert any("4 steps in" in c.value for c in at.caption)
    assert any("top-5" in m.value for m in at.markdown)
    at.run()                                                     # unchanged: from the cache, no new run
    _ok(at)
    assert at.button(key="cv_go").disabled


def test_class_visualisation_default_is_maco_with_crops_and_a_contrast_stretch():
    at = _page("classvis")
    assert at.selectbox(key="cv_preset").value.startswith("MACO")
    from dashboard.optimize_ui import slug
    k = f"cv_{slug(at.selectbox(key='cv_preset').value)}"
    assert at.number_input(key=f"{k}_size").value == 384                 # a canvas larger than the 224 px input
    assert at.checkbox(key=f"{k}_stretch").value                         # pale pictures: stretched for display
    at.number_input(key=f"{k}_steps").set_value(3).run()
    at.number_input(key=f"{k}_size").set_value(96).run()
    at.number_input(key=f"{k}_crops").set_value(2).run()
    at.button(key="cv_go").click().run()
    _ok(at)
    p = _params(at)
    assert p["preset"].startswith("MACO") and p["param"]["kind"] == "maco" and p["param"]["size"] == [96, 96]
    assert any(t.startswith("RandomCrops(n=2") for t in p["transforms"]) and p["steps"] == 3


def test_channel_visualisation_page_diverse_batch():
    at = _page("channelvis")
    at.number_input(key="ch_steps").set_value(3).run()
    at.number_input(key="ch_size").set_value(48).run()
    at.number_input(key="ch_batch").set_value(2).run()
    at.button(key="ch_go").click().run()
    _ok(at)
    p = _params(at)
    assert "diversity" in p["objective"] and p["param"]["batch"] == 2 and p["param"]["kind"] == "fourier"
    assert any("No patch index" in c.value or "from " in c.value for c in at.caption)


def test_deepdream_page_runs():
    at = _page("deepdream")
    at.number_input(key="dd_p_oct").set_value(2).run()
    at.number_input(key="dd_p_steps").set_value(2).run()
    at.number_input(key="dd_p_side").set_value(96).run()
    at.button(key="dd_go").click().run()
    _ok(at)
    p = _params(at)
    assert p["kind"] == "deepdream" and p["octaves"] == 2 and p["steps_per_octave"] == 2 and p["jitter"] == 32
    assert any("4 steps in" in c.value for c in at.caption)


def test_inversion_page_one_layer_and_strip():
    at = _page("inversion")
    at.number_input(key="iv_steps").set_value(3).run()
    at.button(key="iv_go").click().run()
    _ok(at)
    assert any("relative feature error" in c.value for c in at.caption)
    at.multiselect(key="iv_strip_layers").set_value(["_blocks.1", "_blocks.6"]).run()
    at.button(key="iv_strip_go").click().run()
    _ok(at)
