"""The one job runner (``dashboard.widgets.run_job``, issue 15) as a new user meets it
(issue 13): no cache notice before there is a result, no Stop button left after a run,
only explicit computations in the audit trail, with the right metadata."""
import time

from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _fresh(page: str | None = None) -> AppTest:
    from dashboard.widgets import result_cache
    result_cache().clear()
    at = AppTest.from_file(APP, default_timeout=600).run()
    _ok(at)
    if page:
        at.switch_page(f"../pages/{page}.py").run()
        _ok(at)
    return at


def _runs(since: float, page: str | None = None):
    from analysis.audit.trail import open_store
    return open_store().list_runs(pages=[page] if page else None, since=since)


def _keys(at) -> set:
    return {b.key for b in at.button}


def test_optimisation_run_leaves_no_stop_button_and_no_premature_cache_notice():
    t0 = time.time()
    at = _fresh("classvis")
    at.selectbox(key="cv_preset").set_value("CS231n").run()
    at.number_input(key="cv_CS231n_steps").set_value(2).run()
    at.number_input(key="cv_CS231n_size").set_value(40).run()
    go = at.button(key="cv_go")
    assert "cache" not in (go.help or "") and not go.disabled          # no result yet: nothing from a cache
    go.click().run()
    _ok(at)
    assert any("2 steps in" in c.value for c in at.caption)
    assert "cv_stop" not in _keys(at)                                   # the run is over: no Stop button
    assert "cache" not in (at.button(key="cv_go").help or "")           # drawn before the first result
    assert not [p for p in at.get("progress")]                          # and no progress bar
    at.run()
    _ok(at)
    go = at.button(key="cv_go")
    assert go.disabled and "comes from the cache" in go.help            # now there is a cached result
    rec = _runs(t0, "classvis")
    assert len(rec) == 1                                                # one run, recorded once
    (cls,) = at.multiselect[0].value
    assert rec[0].target == cls and rec[0].title == "Class visualisation"


def test_visiting_pages_records_nothing_and_the_record_button_does():
    t0 = time.time()
    at = _fresh()                                                        # home: top-5 of the sidebar image
    at.switch_page("../pages/inside.py").run()                           # activations and a channel gradient
    _ok(at)
    assert any(m.label == "zeros" for m in at.metric)
    at.switch_page("../pages/home.py").run()
    _ok(at)
    assert _runs(t0) == []                                               # visits are no requests
    at.button(key="home_record").click().run()
    _ok(at)
    rec = _runs(t0)
    assert [r.title for r in rec] == ["Prediction"] and rec[0].image_label == "chelsea"
    assert any("Recorded in the audit trail" in c.value for c in at.caption)
    at.switch_page("../pages/inside.py").run()
    at.button(key="in_g_record").click().run()
    _ok(at)
    g = [r for r in _runs(t0, "inside") if r.title == "Gradient"]
    assert len(g) == 1 and g[0].layer


def test_patch_scan_is_recorded_as_a_scan_of_the_data_set_not_of_the_sidebar_image():
    t0 = time.time()
    at = _fresh("inside")
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.session_state["in_tab"] = "Maximally activating patches"
    at.run()
    layer = at.selectbox(key="in_p_layer").value
    at.number_input(key="in_p_k").set_value(3).run()                     # an index no other test stored
    if "in_p_scan" in _keys(at):
        at.button(key="in_p_scan").click().run()
    _ok(at)
    assert "in_p_stop" not in _keys(at)
    scans = [r for r in _runs(t0, "inside")]
    assert len(scans) == 1, [r.title for r in scans]
    r = scans[0]
    assert r.title == "Patch scan" and r.layer == layer                  # not the progress label "Scanning …"
    assert r.image_label == "" and r.image_hash == ""                    # the sidebar image is no input
    at.run()
    shown = [im.caption for e in at.get("image") for im in e.proto.imgs]
    values = [c for c in shown if c.replace(".", "").replace("-", "").isdigit()]
    assert len(values) >= 4 * 3                                          # 4 channels × top-3, value captions
    assert not [c for c in shown if "/" in c]                            # ids (long) are not squeezed into tiles
    assert any(c.value.startswith("Left to right: ") for c in at.caption)


def test_in_sequence_runs_jobs_one_after_the_other_and_closes_them():
    from dashboard.widgets import SequenceStep, in_sequence

    closed = []

    def job(n, tag):
        try:
            for i in range(1, n + 1):
                yield type("S", (), {"step": i, "total": n})()
            return tag * n
        finally:
            closed.append(tag)

    gen = in_sequence([("a", lambda: job(2, "a")), ("b", lambda: job(3, "b"))])
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as fin:
        out = fin.value
    assert out == ["aa", "bbb"] and closed == ["a", "b"]
    assert [(s.index, s.name, s.step.step) for s in steps] == [(0, "a", 1), (0, "a", 2), (1, "b", 1), (1, "b", 2),
                                                                (1, "b", 3)]
    assert isinstance(steps[0], SequenceStep) and steps[-1].done == 2.0 and steps[-1].total == 2
    gen = in_sequence([("a", lambda: job(5, "x"))])
    next(gen)
    gen.close()                                                          # Stop: the running job is closed too
    assert closed[-1] == "x"


def test_no_page_runs_a_job_by_itself():
    """One runner: outside dashboard/widgets.py nothing takes a device slot, drives a
    generator, or writes an audit record on its own (the record button and the runner do)."""
    import re

    from tests.paths import REPO
    own = re.compile(r"\bjob_slot\(|\bheavy_job\(|audit_ui\.record\(|import record\b|record as \w+"
                     r"|from analysis\.optimize import (?:.*\b)?run\b|\.send\(|next\(gen")
    offenders = []
    for path in sorted((REPO / "pages").glob("*.py")) + sorted((REPO / "dashboard").glob("*.py")):
        if path.name in ("widgets.py", "audit_ui.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if own.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders
