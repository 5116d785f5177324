"""AppTest of the Embeddings page on the digits model: extraction, neighbours in feature
and pixel space, and maps (PCA with its scree plot, and the default t-SNE); impossible map
parameters on a 12-image folder give messages, not tracebacks."""
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
    # the map is the hover-thumbnail component; its sprite sheets (1,797 digits: 2) are on disk
    assert any("Hover a point for its image" in c.value for c in at.caption)
    from dashboard.embedding_map import component_root
    sheets = [p for p in (component_root() / "thumbs").glob("*/*") if p.suffix in (".webp", ".png")]
    assert any(p.name.startswith("1.") for p in sheets) and (component_root() / "index.html").is_file()
    at.selectbox(key="em_method").set_value("pca").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("PCA" in c.value for c in at.caption)


def _tiny_folder(root, classes=3, per_class=4):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            im = np.zeros((24, 24, 3), np.uint8)
            im[..., c] = 200
            im += rng.integers(0, 40, size=im.shape, dtype=np.uint8)
            Image.fromarray(im).save(root / f"class{c}" / f"{i}.png")
    return root


def tiny_embeddings_page(tmp_path, monkeypatch) -> AppTest:
    """The Embeddings page on the digits model and a 12-image folder, features extracted."""
    root = _tiny_folder(tmp_path / "tiny").resolve()
    monkeypatch.setenv("CONVLENS_DATASET_DIRS", str(root))
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.selectbox(key="sb_dataset").set_value(f"folder:{root}").run()
    at.switch_page("../pages/embeddings.py").run()
    assert not at.exception
    if any(b.key == "em_extract" for b in at.button):
        at.button(key="em_extract").click().run()
    return at


def test_embeddings_impossible_parameters_give_messages(tmp_path, monkeypatch):
    """12 images: the default t-SNE perplexity (30) and UMAP n_neighbors (15) are impossible.
    The page shows the ParameterError's message (no traceback, the rest of the page
    works), and a possible value draws the map."""
    at = tiny_embeddings_page(tmp_path, monkeypatch)
    assert not at.exception
    assert any("12 × 64 features" in c.value for c in at.caption)
    spaces = [m.value for m in at.markdown if "space" in m.value and "agreement" in m.value]
    assert len(spaces) == 2                                      # neighbours still work

    def errors():
        return [e.value for e in at.error]
    assert errors() == ["Map: perplexity must be less than N/3 = 4 for 12 points (got 30); "
                        "lower it or map more points."]
    at.number_input(key="em_perp").set_value(3.0).run()
    assert not at.exception and errors() == []
    assert any(c.value.startswith("t-SNE") and "12 points" in c.value for c in at.caption)

    at.selectbox(key="em_method").set_value("umap").run()
    assert not at.exception
    assert errors() == ["Map: n_neighbors must be less than the number of points (12), got 15."]

    at.selectbox(key="em_method").set_value("tsne").run()
    assert at.number_input(key="em_perp").value == 3.0          # kept while UMAP was shown
    assert not at.exception and errors() == []
    at.number_input(key="em_pca").set_value(1).run()
    assert not at.exception
    assert len(errors()) == 1 and errors()[0].startswith("Map: pca_dims must be None, 0 (no pre-reduction)")
    at.number_input(key="em_pca").set_value(0).run()
    assert not at.exception and errors() == []


def test_imagenet_model_on_other_classes_says_so_instead_of_accuracy(tmp_path, monkeypatch):
    """The ImageNet model on a data set of other classes: no "prediction accuracy 0.0%", a
    note that the classes differ, and thumbnails name the model's class as such."""
    root = _tiny_folder(tmp_path / "tiny").resolve()
    monkeypatch.setenv("CONVLENS_DATASET_DIRS", str(root))
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_dataset").set_value(f"folder:{root}").run()
    at.session_state["em_method"] = "pca"
    at.switch_page("../pages/embeddings.py").run()
    if any(b.key == "em_extract" for b in at.button):
        at.button(key="em_extract").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    head = next(c.value for c in at.caption if "features ·" in c.value)
    assert "accuracy" not in head.replace("no accuracy", "") and "differ" in head, head
    assert "%" not in head
    assert any("classes differ" in i.value for i in at.info)
    import re
    captions = [im.caption for e in at.get("image") for im in e.proto.imgs if re.match(r"class\d ", im.caption)]
    assert len(captions) == 16                                               # 2 x 8 neighbours
    assert all(" · model: " in c and " / " not in c for c in captions), captions[:3]
    assert "correct" not in at.selectbox(key="em_colour").options          # meaningless here


def test_digits_accuracy_and_the_active_tab_travel_in_the_link():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.session_state["em_method"] = "pca"
    at.switch_page("../pages/embeddings.py").run()
    if any(b.key == "em_extract" for b in at.button):
        at.button(key="em_extract").click().run()
    head = next(c.value for c in at.caption if "features ·" in c.value)
    assert "prediction accuracy on this data set 9" in head              # the digits CNN: > 90 %
    # "explain this image" under the neighbours makes one of them the subject of every page
    at.selectbox(key="em_x_feature").set_value(int(at.selectbox(key="em_x_feature").options[-1].split(" ")[0][1:])).run()
    chosen = at.selectbox(key="em_x_feature").value
    at.button(key="em_x_feature_go").click().run()
    assert not at.exception and not at.error
    assert at.session_state["image_ref"].label.startswith(f"digits:digits/{chosen:04d} ")
    assert at.radio(key="sb_img_src").value == "Data set"
    at.session_state["em_tab"] = "Map of the data set"
    at.run()
    q = dict(at.query_params)
    assert q.get("em_tab") == "Map of the data set", q
    b = AppTest.from_file(APP, default_timeout=300)
    b.query_params.update(q)
    b.query_params["page"] = "embeddings"
    b.run()
    assert not b.exception and not b.error
    assert b.session_state["em_tab"] == "Map of the data set"
    assert dict(b.query_params).get("em_tab") == "Map of the data set"
