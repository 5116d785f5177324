"""AppTests of the texture, style-transfer and fast-style pages with tiny sizes and few
steps: each runs, shows its result with recorded parameters, and bad input becomes a
message, never a traceback."""
import json

from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _page(name):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page(f"../pages/{name}.py").run()
    _ok(at)
    return at


def _ok(at):
    assert not at.exception and not at.error, ([e.value for e in at.error], at.exception)


def _params(at) -> dict:
    v = at.json[-1].value
    return v if isinstance(v, dict) else json.loads(v)


def test_texture_page_synthesises_and_runs_the_strip():
    at = _page("texture")
    assert at.selectbox(key="tx_source").value == "brick"
    at.number_input(key="tx_size").set_value(32).run()
    at.number_input(key="tx_steps").set_value(3).run()
    at.button(key="tx_go").click().run()
    _ok(at)
    p = _params(at)
    assert p["kind"] == "texture" and p["size"] == [32, 32] and p["steps"] == 3 and p["pad"] == 8
    assert set(p["layers"]) == {"_blocks.0._relu1", "_blocks.1._relu1", "_blocks.3._relu1", "_blocks.5._relu1",
                                "_blocks.11._relu1"}
    assert any("Relative Gram error" in c.value for c in at.caption)
    # the shallow -> deep strip with two layers
    at.multiselect(key=[k for k in _keys(at) if k.startswith("tx_layers_")][0]).set_value(
        ["_blocks.0._relu1", "_blocks.3._relu1"]).run()
    at.number_input(key="tx_strip_size").set_value(32).run()
    at.number_input(key="tx_strip_steps").set_value(2).run()
    at.button(key="tx_strip_go").click().run()
    _ok(at)
    assert "up to _blocks.3._relu1" in _captions(at) and "Strip (PNG)" in _downloads(at)


def _captions(at) -> list[str]:
    return [im.caption for e in at.get("image") for im in e.proto.imgs]


def _downloads(at) -> list[str]:
    return [e.proto.label for e in at.get("download_button")]


def _keys(at):
    return [w.key for w in at.multiselect] + [w.key for w in at.selectbox]


def test_style_transfer_page_with_two_styles_and_colour_preservation():
    at = _page("style_transfer")
    at.multiselect(key="sx_styles_gallery").set_value(["immunohistochemistry", "brick"]).run()
    at.number_input(key="sx_size").set_value(48).run()
    at.number_input(key="sx_steps").set_value(3).run()
    at.checkbox(key="sx_colour").check().run()
    at.button(key="sx_go").click().run()
    _ok(at)
    p = _params(at)
    assert p["kind"] == "style_transfer" and p["preserve_colour"] and p["style_mix"] == [1.0, 1.0]
    assert p["content_layer"] == "_blocks.5._relu0" and p["style_weight"] == 10.0 and p["optimizer"] == "lbfgs"
    assert max(p["size"]) == 48
    assert any("content error" in c.value for c in at.caption)
    assert {"before", "after"} <= set(_captions(at))
    at.run()                                                        # unchanged: from the cache
    _ok(at)
    assert at.button(key="sx_go").disabled


def test_style_transfer_page_refuses_no_style_and_offers_vgg_without_downloading():
    at = _page("style_transfer")
    at.multiselect(key="sx_styles_gallery").set_value([]).run()
    _ok(at)
    assert any("at least one style image" in i.value for i in at.info)
    at.selectbox(key="sx_extractor").set_value("vgg19").run()      # only a button: nothing is downloaded
    _ok(at)
    assert any("VGG19 needs torchvision's pretrained weights" in i.value for i in at.info)


def test_fast_style_page_trains_lists_and_applies(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLENS_DATA_DIR", str(tmp_path))          # no networks from other tests
    at = _page("fast_style")
    assert any("No trained network yet" in i.value for i in at.info)
    at.text_input(key="fs_name").set_value("apptest-net").run()
    for k, v in dict(fs_steps=2, fs_size=32, fs_batch=1, fs_width=4, fs_pv=1, fs_ck=1).items():
        at.number_input(key=k).set_value(v).run()
    at.button(key="fs_go").click().run()
    _ok(at)
    assert any("Trained 'apptest-net' to step 2" in s.value for s in at.success)
    # shown once (the live chart and preview go away with the run), no Stop left behind
    assert len(at.get("plotly_chart")) == 1
    assert len([c for c in _captions(at) if c.startswith("preview after")]) == 1
    assert "fs_run_stop" not in {b.key for b in at.button}
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    y = spec["layout"]["yaxis"]
    assert y["type"] == "log" and [float(t) for t in y["ticktext"]] == y["tickvals"]   # full labels
    # listed, applied to the sidebar image in one forward, and offered for resuming
    assert any("**apptest-net** · 2 / 2 steps" in m.value for m in at.markdown)
    assert at.selectbox(key="fs_apply_net").value == "apptest-net"
    assert any("'apptest-net' · one forward pass" in c for c in _captions(at))
    assert {"Network (.safetensors)", "Stylised image (PNG)"} <= set(_downloads(at))
    at.run()
    _ok(at)
    assert at.button(key="fs_go").disabled                        # the name exists: resume instead
    at.number_input(key="fs_steps").set_value(3).run()
    at.button(key="fs_resume").click().run()
    _ok(at)
    assert any("Trained 'apptest-net' to step 3" in s.value for s in at.success)


def test_fast_style_page_refuses_a_bad_name_with_a_message():
    at = _page("fast_style")
    at.text_input(key="fs_name").set_value("../evil").run()
    at.number_input(key="fs_steps").set_value(1).run()
    at.button(key="fs_go").click().run()
    assert not at.exception
    assert any("not allowed" in e.value for e in at.error)
