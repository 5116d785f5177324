"""AppTest of the saliency page with the default model and two methods."""
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def test_saliency_page_two_methods_and_trust_checks():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/saliency.py").run()
    assert not at.exception
    assert any("Compute maps" in i.value for i in at.info)
    at.multiselect(key="sal_methods").set_value(["gradient", "gradcam"])
    at.button(key="sal_compute").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    titles = [m.value for m in at.markdown if m.value.startswith("**")]
    assert any("Vanilla gradient" in t for t in titles) and any("Grad-CAM" in t for t in titles)
    assert any("tiger cat" in s.value for s in at.subheader)      # predicted class by default
    at.button(key="sal_di_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[-1].value
    assert set(table["method"]) == {"gradient", "gradcam", "random"}


def test_saliency_page_target_by_search():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/saliency.py").run()
    at.multiselect(key="sal_methods").set_value(["gradcam"])
    at.radio(key="sal_target_mode").set_value("Search").run()
    at.text_input(key="sal_target_query").set_value("goldfish").run()
    at.button(key="sal_compute").click().run()
    assert not at.exception and not at.error
    assert any("goldfish (1)" in s.value for s in at.subheader)
