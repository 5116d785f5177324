"""AppTest of the Concepts page on the digits model: CRAFT concepts of one class."""
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def test_concepts_page_extracts_and_shows_concepts():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.switch_page("../pages/concepts.py").run()
    assert not at.exception and not at.error
    at.selectbox(key="con_class").set_value(3)
    at.selectbox(key="con_layer").set_value("features.relu2")
    at.slider(key="con_k").set_value(3)
    at.select_slider(key="con_grid").set_value(4)
    at.number_input(key="con_n").set_value(8)
    at.button(key="con_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert sum(m.value.startswith("**Concept ") for m in at.markdown) == 3
    assert any("32 crops" in c.value for c in at.caption)
