"""AppTest of the Relevance page on the digits model: LRP map, top channels, CRP maps, and a
reference gallery through the data-set executor; and the LRP methods on the Saliency page."""
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _digits(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.switch_page(page).run()
    return at


def test_relevance_page_lrp_crp_and_gallery():
    at = _digits("../pages/relevance.py")
    _ok(at)
    assert any("Compute relevance" in i.value for i in at.info)
    at.selectbox(key="rel_layer").set_value("features.relu3")
    at.slider(key="rel_topk").set_value(3)
    at.button(key="rel_compute").click().run()
    _ok(at)
    assert any("LRP map" in m.value for m in at.markdown)
    assert any("top 3 channels" in s.value for s in at.subheader)
    at.number_input(key="rel_gal_n").set_value(16)
    at.button(key="rel_gal_run").click().run()
    _ok(at)
    assert any("most relevant" in m.value for m in at.markdown) and any("most active" in m.value for m in at.markdown)


def test_lrp_method_on_the_saliency_page():
    at = _digits("../pages/saliency.py")
    at.multiselect(key="sal_methods").set_value(["lrp_epsilon_plus_flat"])
    at.button(key="sal_compute").click().run()
    _ok(at)
    assert any("EpsilonPlusFlat" in m.value for m in at.markdown if m.value.startswith("**"))
