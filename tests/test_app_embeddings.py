"""AppTest of the Embeddings page on the digits model: extraction, neighbours in feature
and pixel space, and maps (PCA with its scree plot, and the default t-SNE)."""
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def test_embeddings_page_digits():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.switch_page("../pages/embeddings.py").run()
    assert not at.exception
    if any(b.key == "em_extract" for b in at.button):
        at.button(key="em_extract").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("1,797 × 64 features" in c.value for c in at.caption)
    spaces = [m.value for m in at.markdown if "space" in m.value and "agreement" in m.value]
    assert len(spaces) == 2                                      # feature and pixel columns
    assert any("t-SNE" in c.value or "TSNE" in c.value for c in at.caption)   # the default map drew
    at.selectbox(key="em_method").set_value("pca").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("PCA" in c.value for c in at.caption)
