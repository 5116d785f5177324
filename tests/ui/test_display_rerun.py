"""Display-only reruns of the Saliency page: nothing recomputed, nothing re-encoded that is
already encoded, and no full garbage collection after every run (the three costs that made
such a rerun take 0.2-0.9 s of server time; bench/saliency_rerun.py measures the seconds)."""
import tomllib

from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _urls(at) -> list[str]:
    return [img.url for e in at.get("image") for img in e.proto.imgs]


def test_display_change_back_encodes_and_computes_nothing(monkeypatch):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/saliency.py").run()
    at.multiselect(key="sal_methods").set_value(["gradient", "gradcam"])
    at.button(key="sal_compute").click().run()
    _ok(at)
    urls = _urls(at)
    assert sum(u.endswith(".png") for u in urls) == 2              # the maps go out as the PNGs we made
    assert sum(u.endswith(".jpg") for u in urls) == 1              # the sidebar's cached preview
    at.selectbox(key="sal_cmap").set_value("viridis").run()        # encodes the two maps once
    at.selectbox(key="sal_cmap").set_value("inferno").run()
    _ok(at)

    saves = []
    orig = Image.Image.save

    def counted(self, *a, **k):
        saves.append(a[1:2] or k.get("format"))
        return orig(self, *a, **k)
    monkeypatch.setattr(Image.Image, "save", counted)

    def refuse(*a, **k):
        raise AssertionError("a display-only change recomputed a map")
    import analysis.saliency.methods
    monkeypatch.setattr(analysis.saliency.methods, "attribute", refuse)
    at.selectbox(key="sal_cmap").set_value("viridis").run()        # seen before: all cached
    _ok(at)
    at.slider(key="sal_alpha").set_value(0.6).run()                # unchanged value: a plain rerun
    _ok(at)
    assert saves == [], f"a display-only change encoded pictures again: {saves}"
    assert _urls(at)[:2] != urls[:2]                                 # and it did show the viridis maps
    at.radio(key="sal_view").set_value("heatmap").run()            # new pictures: each encoded once
    _ok(at)
    assert len(saves) == 2


def test_no_full_gc_after_every_script_run():
    """Streamlit's runner.postScriptGC (a full gc.collect() after every run) is off: with
    torch and a model loaded it cost more than the rerun itself."""
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False
