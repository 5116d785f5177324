"""AppTest of the Data-set audit page on digits with the digits model (≤ 200 images):
evaluation, a confusion cell and "explain this image", batch saliency, the data-set trust
verdict, the randomisation distribution, slices, the audit trail and the share link; and
the ImageNet model on digits: no accuracy until classes are mapped, then accuracy through
the mapping, which travels in the link and the audit record."""
import re
import time

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def _tab(at, name):
    at.session_state["da_tab"] = name
    at.run()
    _ok(at)


def _runs(since):
    from analysis.audit.trail import open_store
    return open_store().list_runs(pages=["dataset-audit"], since=since)


def _start(model="digits"):
    from dashboard.widgets import result_cache
    result_cache().clear()
    at = AppTest.from_file(APP, default_timeout=600).run()
    if model != "default":
        at.selectbox(key="sb_model_kind").set_value(model).run()
    at.switch_page("../pages/dataset_audit.py").run()
    _ok(at)
    return at


def test_audit_page_digits_end_to_end():
    t0 = time.time()
    at = _start()
    assert any("same as" in c.value or "are the data set's 10 classes" in c.value for c in at.caption)
    at.radio(key="da_scope").set_value("sample").run()
    at.number_input(key="da_n").set_value(200).run()
    at.button(key="da_eval").click().run()
    _ok(at)
    acc = float(_metric(at, "Accuracy").rstrip("%")) / 100
    assert acc > 0.9 and _metric(at, "Images scored") == "200 / 200"
    assert _metric(at, "Top-5 accuracy") == "100.0%"
    # the default cell is the largest confusion; its images each have an Explain button
    r, c = at.selectbox(key="da_cell_r").value, at.selectbox(key="da_cell_c").value
    assert r != c
    head = next(m.value for m in at.markdown if "image(s): true" in m.value)
    n_cell = int(re.match(r"\*\*(\d+) image", head).group(1))
    explain = [b for b in at.button if b.key.startswith("da_cell_x")]
    assert len(explain) == n_cell >= 1
    idx = int(explain[0].key.rsplit("_x", 1)[1])
    explain[0].click().run()
    _ok(at)
    ref = at.session_state["image_ref"]
    assert ref.kind == "upload" and f"digits/{idx:04d}" in ref.label
    assert at.radio(key="sb_img_src").value == "Data set" and at.number_input(key="sb_dsimg_index").value == idx
    from analysis.core.datasets import load_digits_dataset
    from analysis.core.images import load_image
    from analysis.core.store import read_upload
    data, _ = read_upload(ref.ref)
    assert np.array_equal(load_image(data), load_digits_dataset().get(idx))       # exactly the data-set pixels
    for view in ("Per class", "Calibration", "Errors"):
        at.radio(key="da_view").set_value(view).run()
        _ok(at)
    assert any(b.key.startswith("da_err_x") for b in at.button)

    # batch saliency on the confusion cell, each image with its own (predicted) target
    _tab(at, "Saliency over many images")
    at.radio(key="da_sal_subset").set_value("cell").run()
    at.button(key="da_sal_run").click().run()
    _ok(at)
    inside = _metric(at, "Saliency inside the central quarter")
    assert inside.endswith("%") and _metric(at, "A uniform map would give") == "25%"
    assert len([b for b in at.button if b.key.startswith("da_sal_x")]) == n_cell
    at.radio(key="da_sal_subset").set_value("random").run()
    at.number_input(key="da_sal_n").set_value(20).run()
    at.button(key="da_sal_run").click().run()
    _ok(at)
    assert len([b for b in at.button if b.key.startswith("da_sal_x")]) == 20

    # trust at data-set level: a verdict per method and curve
    _tab(at, "Trust over many images")
    at.number_input(key="da_tr_n").set_value(20).run()
    at.button(key="da_tr_run").click().run()
    _ok(at)
    lines = [x.value for x in list(at.success) + list(at.warning) if "beats random on" in x.value]
    assert len(lines) == 4                                           # Grad-CAM and gradient x deletion, insertion
    assert all(re.search(r"beats random on \d+% of 20 images", s) for s in lines)
    at.number_input(key="da_rn_n").set_value(3).run()
    at.multiselect(key="da_rn_methods").set_value(["gradcam"]).run()
    at.button(key="da_rn_run").click().run()
    _ok(at)
    assert any("median ρ" in c.value for c in at.caption)

    # slices of the feature space
    _tab(at, "Failure slices")
    at.number_input(key="da_sl_k").set_value(6).run()
    at.button(key="da_sl_run").click().run()
    _ok(at)
    assert any(c.value.startswith("Overall error rate") for c in at.caption)

    rec = _runs(t0)
    methods = {r.method for r in rec}
    assert {"evaluation", "trust", "randomisation", "slices"} <= methods, methods
    ev = next(r for r in rec if r.method == "evaluation")
    assert ev.dataset_hash and ev.metrics["accuracy"] == acc or abs(ev.metrics["accuracy"] - acc) < 1e-3
    assert ev.params["mapping_status"] == "identity"

    # the link restores the tab and recomputes the result (the shared cache is emptied)
    q = dict(at.query_params)
    assert q["da_tab"] == "Failure slices" and "da_eval_req" in q and "da_sl_req" in q
    from dashboard.widgets import result_cache
    result_cache().clear()
    b = AppTest.from_file(APP, default_timeout=600)
    b.query_params.update(q)
    b.query_params["page"] = "dataset-audit"
    b.run()
    _ok(b)
    assert b.session_state["da_tab"] == "Failure slices"
    assert any(c.value.startswith("Overall error rate") for c in b.caption)


def test_imagenet_model_on_digits_needs_a_mapping():
    t0 = time.time()
    at = _start("default")
    assert any("differ" in w.value for w in at.warning)
    at.radio(key="da_scope").set_value("sample").run()
    at.number_input(key="da_n").set_value(20).run()
    at.button(key="da_eval").click().run()
    _ok(at)
    assert _metric(at, "Accuracy") == "—" and _metric(at, "Images scored") == "0 / 20"
    assert not any("0.0%" in m.value for m in at.metric)
    # map data-set class "0" to the model's most frequent prediction on the 0s: accuracy becomes measurable
    fp = [k for k in at.session_state if isinstance(k, str) and re.match(r"da_cm_[0-9a-f]{12}_0$", k)]
    assert len(fp) == 1
    at.multiselect(key=fp[0]).set_value([409, 530]).run()           # analog clock, digital clock
    _ok(at)
    scored = _metric(at, "Images scored")
    assert scored == "2 / 20", scored                                 # the two 0s of the stratified sample
    assert _metric(at, "Accuracy") != "—"
    q = dict(at.query_params)
    assert '"0":[409,530]' in q["da_classmap"]
    rec = [r for r in _runs(t0) if r.method == "evaluation"]
    assert any(r.params.get("mapping.map.0") == [409, 530] or "409" in str(r.params) for r in rec)


def test_sidebar_data_set_image_is_the_subject_of_every_page():
    """Sidebar → Image → Data set: by class, file name or index; the digits CNN then explains
    that digit on the Saliency page (the image is exactly the data set's)."""
    from analysis.core.datasets import load_digits_dataset
    ds = load_digits_dataset()
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.radio(key="sb_img_src").set_value("Data set").run()
    _ok(at)
    at.selectbox(key="sb_dsimg_class").set_value(7).run()
    at.number_input(key="sb_dsimg_pos").set_value(2).run()
    third_seven = int(np.flatnonzero(ds.labels == 7)[2])
    assert at.session_state["image_ref"].label == f"digits:digits/{third_seven:04d} (7)"
    at.radio(key="sb_dsimg_by").set_value("file name").run()
    at.text_input(key="sb_dsimg_q").set_value("0042").run()
    assert at.session_state["image_ref"].label == "digits:digits/0042 (1)"
    at.radio(key="sb_dsimg_by").set_value("index").run()
    at.number_input(key="sb_dsimg_index").set_value(1000).run()
    _ok(at)
    assert at.session_state["image_ref"].label == f"digits:digits/1000 ({ds.labels[1000]})"
    at.switch_page("../pages/saliency.py").run()
    _ok(at)
    assert any(c.value.startswith(f"Predicted: **{ds.labels[1000]}**") for c in at.caption)


def test_engine_choice_offers_both_ray_pipelines_and_prestarts_the_model(monkeypatch):
    # choosing Ray gets the model ready in the background for the chosen pipeline: Ray
    # Data builds it in Ray's worker processes, "Keep Ray workers warm" starts its actors
    # (prestart is replaced here: no Ray in this test)
    import analysis.dataset.ray_backend as ray_backend
    calls = []
    monkeypatch.setattr(ray_backend, "prestart", lambda model, **kw: calls.append((model.kind, kw["pipeline"])) or 2)

    def wait_for(n: int) -> None:
        deadline = time.time() + 30
        while len(calls) < n and time.time() < deadline:
            time.sleep(0.1)

    at = _start()
    assert at.radio(key="_ds_engine").value == "local"
    assert "_ds_ray_pipeline" not in [r.key for r in at.radio]
    assert calls == []
    at.radio(key="_ds_engine").set_value("ray").run()
    _ok(at)
    pipeline = at.radio(key="_ds_ray_pipeline")
    assert pipeline.value == "data" and pipeline.options == [
        "Ray Data: Ray's worker processes keep the model between jobs (default)",
        "Keep Ray workers warm between jobs (faster repeated jobs on one model)"]
    wait_for(1)
    assert calls == [("digits", "data")]
    pipeline.set_value("pool").run()
    _ok(at)
    wait_for(2)
    assert calls == [("digits", "data"), ("digits", "pool")]
    at.run()                                    # once per model, pipeline and session
    time.sleep(0.5)
    assert len(calls) == 2
