"""AppTest of the Inside-the-network page: every tab renders, and a patch scan on the
digits model indexes the sidebar's digits and shows crops."""
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def test_inside_page_default_model_tabs():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/inside.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = " ".join(c.value for c in at.caption)
    assert "32 × 3 × 3 × 3" in captions                     # first-layer filters of Lite0
    assert any(m.label == "zeros" for m in at.metric)         # activation statistics
    assert any(r.value == "gallery" for r in at.radio)        # ImageNet model: gallery crops by default


def test_inside_page_digits_scan_shows_patches():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/inside.py").run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    assert any(r.value == "sidebar" for r in at.radio)
    at.button(key="in_p_scan").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("1,797 images scanned" in c.value for c in at.caption)
    rows = [m.value for m in at.markdown if m.value.startswith("**channel")]
    assert len(rows) == 4
    at.run()                                                   # the index is reused: no scan button
    assert not any(b.key == "in_p_scan" for b in at.button)
