"""Share links, page by page (AppTest): session A sets widgets and computes; its URL query
(written by dashboard/share.py) opened in a fresh session B restores the same view and
result — recomputed, since the shared result cache is emptied in between — and writes
the same link back. Each page's run is also found in the audit trail with what produced it.

AppTest always starts on the default page, so session B carries ``page=<url_path>``
(which the app honours like the URL's path)."""
import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def session(page: str | None = None) -> AppTest:
    from dashboard.widgets import result_cache
    result_cache().clear()              # results cached by earlier tests would not be recorded
    at = AppTest.from_file(APP, default_timeout=600).run()
    _ok(at)
    if page:
        at.switch_page(f"../pages/{page}.py").run()
        _ok(at)
    return at


def link(at) -> dict:
    q = dict(at.query_params)
    assert all(isinstance(v, str) for v in q.values())
    return q


def open_link(page: str, params: dict, *, clear_cache: bool = True) -> AppTest:
    """A fresh session opening the link (the cross-session result cache emptied first, so
    the result is computed again rather than served)."""
    if clear_cache:
        from dashboard.widgets import result_cache
        result_cache().clear()
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update(params)
    at.query_params["page"] = page
    at.run()
    _ok(at)
    return at


def runs(page: str, since: float):
    from analysis.audit.trail import open_store
    return open_store().list_runs(pages=[page], since=since)


def top5(at) -> list[str]:
    return list(at.dataframe[0].value["class"])


# ------------------------------------------------------------------ the mechanism

def test_value_encoding_round_trips():
    from dashboard.share import decode_value, encode_value
    for v in ["overlay", "1", "true", "null", '"quoted"', "[1]", "", "ünï ✓", 3, 2.5, 1e-07, True, False,
              None, ["gradient", "gradcam"], [1, 2], {"methods": ["a"], "target": 3, "params": {"a": {"w": 16}}}]:
        enc = encode_value(v)
        assert isinstance(enc, str) and decode_value(enc) == v, (v, enc)
    assert encode_value("overlay") == "overlay"                 # plain strings stay readable
    assert encode_value(object()) is None and encode_value(float("nan")) is None


def test_refs_are_validated():
    from analysis.core.models.loaders import ModelSpec
    from dashboard.share import _parse_ref, _ref_param
    spec = ModelSpec(kind="random", arch="resnet18", seed=3)
    assert _parse_ref(ModelSpec, _ref_param(spec)) == spec
    for bad in ['{"kind":"default","evil":1}', '{"seed":"3"}', '{"seed":true}', "[1]", "nope"]:
        with pytest.raises((ValueError, TypeError)):
            _parse_ref(ModelSpec, bad)


def test_bad_link_is_no_traceback():
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"model": '{"kind":"nonsense"}', "image": "not json", "_auth_user": "mallory",
                            "sal_methods": '["no_such_method"]', "page": "saliency"})
    at.run()
    assert not at.exception
    assert "_auth_user" not in at.session_state                 # internal keys never come from a URL
    at2 = AppTest.from_file(APP, default_timeout=300)
    at2.query_params.update({"image": '{"kind":"upload","ref":"' + "0" * 64 + '","label":"x.png"}'})
    at2.run()
    assert not at2.exception
    assert "not stored on this server" in _link_warnings(at2) and not at2.error   # the default image stays


def _link_warnings(at) -> str:
    return " ".join(w.value for w in at.warning if "link were not used" in w.value).replace("\\", "")


def test_bad_link_values_are_checked_against_their_widgets():
    """A value its control would refuse (out of range, not an option, wrong type) gets a
    message naming the parameter, and the page renders with the control's default."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"page": "saliency", "sal_alpha": "7.5", "sal_outlier": '"abc"',
                            "sal_cmap": "no_such_map", "sal_methods": '["gradient","no_such_method"]',
                            "sb_gallery": "../../etc/passwd", "sal_view": "heatmap"})
    at.run()
    _ok(at)
    text = _link_warnings(at)
    for key in ("sal_alpha", "sal_outlier", "sal_cmap", "sal_methods", "sb_gallery"):
        assert key in text, (key, text)
    assert at.slider(key="sal_alpha").value == 0.6 and at.slider(key="sal_outlier").value == 2.0
    assert at.selectbox(key="sb_gallery").value == "chelsea"
    assert "no_such_method" not in at.multiselect(key="sal_methods").value
    assert at.radio(key="sal_view").value == "heatmap"                  # the good values are used
    assert "sal_view" not in text
    at.run()                                                          # the next action: message gone
    assert not _link_warnings(at)


def test_a_model_from_a_link_that_fails_to_load_is_not_active():
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"model": '{"kind":"trusted","weights":"../outside/evil.pt"}'})
    at.run()
    assert not at.exception
    text = _link_warnings(at)
    assert "model: could not load" in text and "previous model stays active" in text
    assert not any("evil.pt" in c.value for c in at.sidebar.caption)
    assert at.selectbox(key="sb_model_kind").value == "default"
    assert top5(at)[:1] == ["tiger cat"]


def test_link_to_an_upload_works_in_another_session():
    """Uploads are stored by sha256 on the server: a link naming one restores it for a
    teammate (another session), while the store itself lists nothing."""
    import io

    from PIL import Image

    from analysis.core.images import gallery_image
    from analysis.core.store import save_upload, uploads_dir
    buf = io.BytesIO()
    Image.fromarray(gallery_image("coffee")).save(buf, format="PNG")
    digest = save_upload(buf.getvalue(), "my-coffee.png")            # what the uploader's session did
    a = AppTest.from_file(APP, default_timeout=300)
    a.session_state["sb_img_src"] = "Upload"
    from dashboard.state import IMAGE_KEY, ImageRef
    a.session_state[IMAGE_KEY] = ImageRef("upload", digest, "my-coffee.png")
    a.run()
    _ok(a)
    q = link(a)
    assert digest in q["image"] and q["sb_img_src"] == "Upload"
    b = open_link("home", q, clear_cache=False)                        # the teammate
    assert top5(b)[0] == "espresso"
    assert any("my-coffee.png" in c for im in b.image for c in im.captions)
    assert link(b) == q
    import analysis.core.store as store_mod
    assert not [n for n in dir(store_mod) if n.startswith("list")]      # no listing API
    assert (uploads_dir() / digest).is_file()


def test_internal_state_cannot_come_from_a_link():
    from dashboard.share import RESERVED
    assert {"model_spec", "image_ref", "dataset_ref", "page", "embed"} <= RESERVED
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"image_ref": "garbage", "model_spec": "[]"})
    at.run()
    _ok(at)
    assert top5(at)[:1] == ["tiger cat"]


# ------------------------------------------------------------------ page by page

def test_home_link():
    t0 = time.time()
    a = session()
    a.selectbox(key="sb_gallery").set_value("coffee").run()
    _ok(a)
    assert top5(a)[0] == "espresso"
    q = link(a)
    assert '"ref":"coffee"' in q["image"] and q["sb_gallery"] == "coffee"
    b = open_link("home", q)
    assert top5(b)[0] == "espresso"
    assert link(b) == q
    assert runs("home", t0) == []                                      # visits record nothing (issue 13)
    a.button(key="home_record").click().run()                          # asking does
    rec = [r for r in runs("home", t0) if r.image_label == "coffee"]
    assert rec and rec[0].title == "Prediction" and rec[0].params["labels"][0] == "espresso"
    assert rec[0].view["page"] == "home" and rec[0].view["params"]["sb_gallery"] == "coffee"


def test_saliency_link():
    t0 = time.time()
    a = session("saliency")
    a.multiselect(key="sal_methods").set_value(["gradcam"])
    a.radio(key="sal_target_mode").set_value("Search").run()
    a.text_input(key="sal_target_query").set_value("goldfish").run()
    a.button(key="sal_compute").click().run()
    _ok(a)
    assert any("goldfish (1)" in s.value for s in a.subheader)
    q = link(a)
    assert q["sal_methods"] == '["gradcam"]' and q["sal_target_query"] == "goldfish" and "sal_active" in q
    b = open_link("saliency", q)
    assert any("goldfish (1)" in s.value for s in b.subheader)        # computed without pressing the button
    assert any(m.value.startswith("**Grad-CAM") for m in b.markdown)
    assert link(b) == q
    rec = [r for r in runs("saliency", t0) if r.method == "gradcam"]
    assert len(rec) == 2                                               # session A's run and B's recomputation
    r = rec[-1]
    assert r.target == 1 and r.layer and r.model_id and r.image_hash and r.image_label == "chelsea"
    assert "map.png" in r.image_files() and "map.npy" in r.array_files()
    assert r.view["params"]["sal_methods"] == '["gradcam"]'


def test_inside_link():
    t0 = time.time()
    a = session("inside")
    a.radio(key="in_a_sort").set_value("max").run()
    a.number_input(key="in_g_ch").set_value(5).run()
    a.toggle(key="in_g_guided").set_value(False).run()
    _ok(a)
    q = link(a)
    assert q["in_a_sort"] == "max" and q["in_g_ch"] == "5" and q["in_g_guided"] == "false"
    b = open_link("inside", q)
    assert b.radio(key="in_a_sort").value == "max" and b.number_input(key="in_g_ch").value == 5
    assert link(b) == q
    assert runs("inside", t0) == []                                    # visits record nothing (issue 13)
    b.button(key="in_a_record").click().run()
    b.button(key="in_g_record").click().run()
    rec = runs("inside", t0)
    assert {"Activations", "Gradient"} <= {r.title for r in rec}
    g = [r for r in rec if r.title == "Gradient"][0]
    assert g.metrics["channel"] == 5 and g.params["guided"] is False and g.layer


def test_embeddings_link():
    t0 = time.time()
    from dashboard.widgets import result_cache
    result_cache().clear()
    a = AppTest.from_file(APP, default_timeout=600).run()
    a.selectbox(key="sb_model_kind").set_value("digits").run()
    a.session_state["em_method"] = "pca"                         # skip the default t-SNE: faster
    a.switch_page("../pages/embeddings.py").run()
    _ok(a)
    if any(b.key == "em_extract" for b in a.button):
        a.button(key="em_extract").click().run()
    a.number_input(key="em_k").set_value(4).run()
    a.radio(key="em_metric").set_value("l2").run()
    _ok(a)
    captions = sorted(c.value for c in a.caption if "PCA" in c.value)
    q = link(a)
    assert '"kind":"digits"' in q["model"] and q["em_k"] == "4" and q["em_method"] == "pca"
    b = open_link("embeddings", q)
    assert [m.value for m in b.markdown if "space" in m.value] == [m.value for m in a.markdown if "space" in m.value]
    assert any("PCA" in c.value for c in b.caption) and captions
    assert link(b) == q
    rec = runs("embeddings", t0)
    # what the page shows on a visit is not recorded until asked (issue 13: no audit noise)
    assert not [r for r in rec if r.method == "pca" or r.params.get("space") == "feature"]
    a.button(key="em_map_record").click().run()
    a.button(key="em_nn_feature_record").click().run()
    _ok(a)
    rec = runs("embeddings", t0)
    assert any(r.method == "pca" for r in rec)
    nn = [r for r in rec if r.params.get("space") == "feature" and r.params.get("metric") == "l2"]
    assert nn and nn[0].dataset_hash and nn[0].model_name.startswith("Digits")
    assert nn[0].image_label == "" and nn[0].image_hash == ""          # a data-set query: not the sidebar image
    assert not [r for r in rec if r.title.startswith("Extracting")]    # titles are no progress labels


def _optimisation_round_trip(page, setup, go_key, expect_caption):
    t0 = time.time()
    a = session(page)
    setup(a)
    a.button(key=go_key).click().run()
    _ok(a)
    assert any(expect_caption in c.value for c in a.caption)
    params_a = a.json[-1].value
    q = link(a)
    assert q.get(f"{go_key[:-3]}_result")                       # the link says a result was shown
    b = open_link(page, q)                                       # recomputed: the cache was emptied
    assert any(expect_caption in c.value for c in b.caption)
    assert b.json[-1].value == params_a
    assert link(b) == q
    rec = runs(page, t0)
    assert len(rec) >= 2 and all(r.files for r in rec)
    return rec


def test_classvis_link():
    def setup(a):
        a.selectbox(key="cv_preset").set_value("CS231n").run()
        a.number_input(key="cv_CS231n_steps").set_value(3).run()
        a.number_input(key="cv_CS231n_size").set_value(48).run()
    rec = _optimisation_round_trip("classvis", setup, "cv_go", "3 steps in")
    assert rec[0].seed == 0 and rec[0].params["steps"] == 3 and rec[0].image_files()


def test_channelvis_link():
    def setup(a):
        a.number_input(key="ch_steps").set_value(2).run()
        a.number_input(key="ch_size").set_value(40).run()
    rec = _optimisation_round_trip("channelvis", setup, "ch_go", "2 steps in")
    assert rec[0].layer                                           # found in the request


def test_deepdream_link():
    def setup(a):
        a.number_input(key="dd_p_oct").set_value(1).run()
        a.number_input(key="dd_p_steps").set_value(2).run()
        a.number_input(key="dd_p_side").set_value(80).run()
    rec = _optimisation_round_trip("deepdream", setup, "dd_go", "2 steps in")
    assert rec[0].method == "deepdream" and rec[0].layer


def test_inversion_link_with_strip():
    t0 = time.time()

    def setup(a):
        a.number_input(key="iv_steps").set_value(2).run()
    _optimisation_round_trip("inversion", setup, "iv_go", "relative feature error")
    a = session("inversion")
    a.number_input(key="iv_steps").set_value(2).run()
    a.multiselect(key="iv_strip_layers").set_value(["_blocks.1", "_blocks.6"]).run()
    a.button(key="iv_strip_go").click().run()
    _ok(a)
    q = link(a)
    assert "iv_strip_result" in q
    b = open_link("inversion", q)
    strips = [im.captions for im in b.image if len(im.captions) == 3 and im.captions[0] == "original"]
    assert strips and strips[0][1].startswith("_blocks.1 · err")          # original + 2 layers, recomputed
    assert any(r.title == "Inversion strip" for r in runs("inversion", t0))


def test_audit_page_link():
    t0 = time.time()
    a = session()
    a.button(key="home_record").click().run()                    # records a prediction
    from analysis.audit.trail import open_store
    uid = open_store().list_runs(since=t0)[0].uid
    a.switch_page("../pages/audit.py").run()
    _ok(a)
    a.multiselect(key="au_sel").set_value([uid]).run()
    _ok(a)
    q = link(a)
    assert uid in q["au_sel"]
    b = open_link("audit", q, clear_cache=False)
    assert b.multiselect(key="au_sel").value == [uid]
    assert any(s.value.startswith("#") for s in b.subheader)


def test_every_other_page_round_trips():
    """Pages without a test above (added later) still restore their defaults from a link."""
    from dashboard.share import page_names
    session()
    covered = {"home", "saliency", "inside", "embeddings", "classvis", "channelvis", "deepdream", "inversion",
               "audit"}
    for page in [p for p in page_names() if p not in covered]:
        a = AppTest.from_file(APP, default_timeout=600)
        a.query_params["page"] = page
        a.run()
        assert not a.exception, (page, [e.value for e in a.exception])
        q = link(a)
        b = open_link(page, q, clear_cache=False)
        assert link(b) == q, page
