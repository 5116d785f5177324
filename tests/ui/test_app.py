"""AppTest of the app shell and home page (same process, no browser)."""
import urllib.error

import torchvision
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")
CATS = {"tabby", "tiger cat", "Egyptian cat"}


def run_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    return at


def top5(at: AppTest) -> list[str]:
    return list(at.dataframe[0].value["class"])


def assert_clean(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]


def test_home_default_model_shows_cats():
    at = run_app()
    assert_clean(at)
    assert not at.error
    assert set(top5(at)[:3]) == CATS
    text = " ".join(m.value for m in at.markdown)
    assert "EfficientNet-Lite0" in text
    card = at.table[0].value
    assert "model_id (sha256 of weights)" in card.index
    assert any("Device" in c.value for c in at.caption)


def test_switch_image_and_model():
    at = run_app()
    at.selectbox(key="sb_gallery").set_value("coffee").run()
    assert_clean(at)
    assert top5(at)[0] == "espresso"
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    assert_clean(at)
    assert not at.error
    assert all(c in [str(i) for i in range(10)] for c in top5(at))


def test_random_torchvision_model_loads():
    at = run_app()
    at.selectbox(key="sb_model_kind").set_value("torchvision").run()
    at.selectbox(key="sb_arch").set_value("resnet18").run()
    at.toggle(key="sb_pretrained").set_value(False).run()
    at.button(key="sb_load_tv").click().run()
    assert_clean(at)
    assert not at.error
    assert "resnet18" in " ".join(m.value for m in at.markdown)


def test_offline_download_is_a_message_and_keeps_old_model(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    at = run_app()
    at.selectbox(key="sb_model_kind").set_value("torchvision").run()
    at.selectbox(key="sb_arch").set_value("alexnet").run()
    at.button(key="sb_load_tv").click().run()
    assert_clean(at)
    msg = " ".join(e.value for e in at.error)
    assert "offline" in msg and "random weights" in msg
    assert set(top5(at)[:3]) == CATS          # the previous model is still active


def test_corrupt_upload_is_a_message_not_a_traceback():
    from analysis.core.store import save_upload
    from dashboard.state import IMAGE_KEY, ImageRef
    digest = save_upload(b"\xff\xd8\xff\xe0 definitely not a whole jpeg", "broken.jpg")
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["sb_img_src"] = "Upload"
    at.session_state[IMAGE_KEY] = ImageRef("upload", digest, "broken.jpg")
    at.run()
    assert_clean(at)
    msgs = " ".join(e.value for e in at.error)
    assert "broken.jpg" in msgs and ("truncated" in msgs or "corrupt" in msgs or "not a recognised" in msgs)
    assert any("Model card" in s.value for s in at.subheader)      # the rest of the page still works
