"""The audit store (SQLAlchemy Core), on SQLite and on a throwaway PostgreSQL server
(tests/pg_server.py) through the same code and a database URL, summaries of every result type, the HTML report and
the ZIP export, crash safety under SIGKILL, and the Audit page (AppTest)."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.audit.report import html_report
from analysis.audit.trail import AuditStore, RunInput, Summary, is_result, summarise
from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    s = AuditStore(url, tmp_path / "files")
    assert s.engine.dialect.name == request.param
    yield s
    s.close()


def _summary(i: int = 0) -> Summary:
    rng = np.random.default_rng(i)
    return summarise_map(rng.random((32, 32)).astype(np.float32), i)


def summarise_map(m, i=0):
    from analysis.saliency.methods import Attribution
    img = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    return summarise(Attribution("gradient", 281 + i, "tabby", m, img, params={"seed": i}, seconds=0.5),
                     "Vanilla gradient")


# ------------------------------------------------------------------ summaries

def test_summaries_of_every_result_type(lite0, chelsea):
    from analysis.core.predict import predict
    from analysis.inside.activations import activations, neuron_gradient
    from analysis.optimize import OptResult
    from analysis.saliency.methods import attribute
    from analysis.saliency.trust import Curve

    a = attribute(lite0, chelsea, None, "gradcam")
    s = summarise(a, "Grad-CAM")
    assert (s.method, s.target, s.layer) == ("gradcam", a.target, a.layer) and s.seconds > 0
    assert s.arrays["map"].shape == a.map.shape and "map" in s.images and s.images["map"].dtype == np.uint8

    s = summarise(activations(lite0, chelsea, "_blocks.3"), "Activations")
    assert s.layer == "_blocks.3" and s.metrics["channels"] == 40 and s.arrays["maps"].shape[0] == 40

    s = summarise(neuron_gradient(lite0, chelsea, "_blocks.3", 2, None, True), "Gradient")
    assert s.metrics["channel"] == 2 and "as_image" in s.images and s.params["guided"] is True

    s = summarise(predict(lite0, chelsea, k=5), "Prediction")
    assert s.params["labels"][:1] == ["tiger cat"] and s.arrays["probs"].shape == (5,)

    opt = OptResult(images=np.zeros((2, 16, 16, 3), np.uint8), unit=np.zeros((2, 3, 16, 16), np.float32),
                    history=[1.0, 2.0], terms={"a": [1.0, 2.0]}, steps=2, stopped=False, seconds=0.1,
                    params={"kind": "deepdream", "layer": "_blocks.4", "seed": 7, "steps": 2})
    s = summarise(opt, "x")
    assert (s.method, s.layer, s.seed) == ("deepdream", "_blocks.4", 7) and {"images.0", "images.1"} <= set(s.images)
    assert s.params["terms.a"] == [1.0, 2.0] and s.metrics["steps"] == 2

    curves = {"gradient": {"deletion": Curve("gradient", "deletion", np.linspace(0, 1, 5), np.ones(5), 0.4)}}
    assert is_result(curves) and not is_result({"thumbs": "x"}) and not is_result(None)
    s = summarise(curves, "Deletion / insertion")
    assert s.metrics["gradient.deletion.auc"] == 0.4 and "gradient.deletion.scores" in s.arrays

    s = summarise(opt, "x", max_bytes=10)                       # too large: summarised, not stored
    assert not s.arrays and s.skipped


# ------------------------------------------------------------------ the store

def test_record_read_filter_notes_verdict_delete(store):
    ctx = {"model_card": {"name": "Tiny", "model_id": "abc"}, "request": "('k',)"}
    u1 = store.record(RunInput(user="ada", page="saliency", model_id="abc", model_name="Tiny", image_hash="f" * 64,
                               image_label="cat.png", context=ctx,
                               view={"page": "saliency", "params": {"sal_methods": '["gradient"]'}}), _summary(1))
    u2 = store.record(RunInput(user="bob", page="inside", model_id="abc", model_name="Tiny"), _summary(2))
    r = store.get(u1)
    assert (r.user, r.page, r.method, r.target, r.seed, r.image_label) == ("ada", "saliency", "gradient", 282, 1,
                                                                          "cat.png")
    assert r.view["params"]["sal_methods"] == '["gradient"]' and r.context["model_card"]["name"] == "Tiny"
    np.testing.assert_array_equal(store.load_array(u1, "map.npy"), _summary(1).arrays["map"])
    assert store.read_file(u1, "map.png").startswith(b"\x89PNG")
    assert [x.uid for x in store.list_runs()] == [u2, u1]                    # newest first
    assert [x.uid for x in store.list_runs(user="ada")] == [u1]
    assert [x.uid for x in store.list_runs(pages=["inside"])] == [u2]
    assert [x.uid for x in store.list_runs(text="CAT.PNG")] == [u1]
    store.add_note(u1, "bob", "The map highlights the ears.", "finding")
    assert [x.uid for x in store.list_runs(text="ears")] == [u1]             # notes are searched too
    store.set_verdict(u1, "confirmed")
    assert [x.uid for x in store.list_runs(verdicts=["confirmed"])] == [u1]
    r = store.get(u1)
    assert r.verdict == "confirmed" and r.notes[0].text == "The map highlights the ears." and r.notes[0].user == "bob"
    from analysis.core.errors import ParameterError
    with pytest.raises(ParameterError):
        store.set_verdict(u1, "great")
    with pytest.raises(ParameterError):
        store.add_note(u1, "bob", "   ")
    store.update_view([u2], {"page": "inside", "params": {"in_a_sort": "max"}})
    assert store.get(u2).view["params"]["in_a_sort"] == "max"
    assert store.delete([u1]) == 1
    assert [x.uid for x in store.list_runs()] == [u2] and not store.run_dir(u1).exists()
    from analysis.audit.trail import AuditError
    with pytest.raises(AuditError):
        store.get(u1)
    assert store.integrity()["ok"]


def test_report_and_zip(store, output_dir):
    card = {"name": "Tiny <net>", "model_id": "abc123", "parameters": 1234, "description": "a test model"}
    uids = [store.record(RunInput(user="ada", page="saliency", model_id="abc123", model_name="Tiny <net>",
                                  context={"model_card": card}), _summary(i)) for i in range(2)]
    store.add_note(uids[0], "ada", "Looks <b>right</b>", "note")
    store.set_verdict(uids[1], "needs review")
    html = html_report(store, uids, links={uids[0]: "http://localhost:8501/saliency?sal_view=overlay"})
    assert html.startswith("<!DOCTYPE html>") and html.count('<section class="run"') == 2
    assert html.count("data:image/png;base64,") == 4                  # map + input per run, embedded
    assert "src=\"http" not in html and "<link" not in html            # self-contained
    assert "Looks &lt;b&gt;right&lt;/b&gt;" in html and "Tiny &lt;net&gt;" in html     # escaped
    assert "needs review" in html and "abc123" in html and "Model card" in html and "282" in html
    assert "http://localhost:8501/saliency?sal_view=overlay" in html
    (output_dir / "audit-report-unit.html").write_text(html)
    z = zipfile.ZipFile(io.BytesIO(store.export_zip(uids)))
    names = z.namelist()
    assert sum(n.endswith("/map.npy") for n in names) == 2 and sum(n.endswith("/run.json") for n in names) == 2
    first = [n for n in names if n.endswith("map.npy")][0]
    np.testing.assert_array_equal(np.load(io.BytesIO(z.read(first))).shape, (32, 32))
    meta = json.loads(z.read([n for n in names if n.endswith("run.json")][0]))
    assert meta["page"] == "saliency" and "params" in meta


def test_threads_write_concurrently(store):
    errors = []

    def work(i):
        try:
            for j in range(5):
                store.record(RunInput(user=f"u{i}", page="saliency"), _summary(i * 10 + j))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and store.count() == 40 and store.integrity()["ok"]


def test_orphan_folders_are_swept(store):
    uid = store.record(RunInput(page="home"), _summary())
    orphan = store.run_dir("0" * 32)
    orphan.mkdir(parents=True)
    (orphan / "map.npy").write_bytes(b"partial")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    assert store.sweep_orphans() == 1 and not orphan.exists() and store.run_dir(uid).exists()


def test_orphan_folders_are_swept_when_the_server_opens_the_store(tmp_path, monkeypatch):
    """open_store (the app opens it at start-up: audit_ui.open_at_startup) sweeps folders a
    crash left before this process started, and leaves younger ones (another process's run)."""
    from analysis.audit import trail
    from analysis.core.config import set_config
    monkeypatch.setenv("CONVLENS_DATA_DIR", str(tmp_path / "data"))
    set_config(None)
    files = tmp_path / "data" / "audit"
    old, young = files / "ab" / ("ab" + "1" * 30), files / "cd" / ("cd" + "2" * 30)
    for d in (old, young):
        d.mkdir(parents=True)
        (d / "map.npy").write_bytes(b"partial")
    os.utime(old, (trail.PROCESS_START - 3600, trail.PROCESS_START - 3600))
    monkeypatch.setattr(trail, "_stores", {})
    store = trail.open_store()
    assert not old.exists() and young.exists()
    store.close()
    set_config(None)


def test_bad_database_url_is_a_clear_error(tmp_path):
    from analysis.audit.trail import AuditError
    with pytest.raises(AuditError, match="Cannot open the audit database"):
        AuditStore("sqlite:////proc/no/such/dir/audit.sqlite", tmp_path / "files")


# ------------------------------------------------------------------ crash safety

WRITER = """
import sys, numpy as np
from analysis.audit.trail import AuditStore, RunInput, summarise
from analysis.saliency.methods import Attribution
store = AuditStore(sys.argv[1], sys.argv[2])
img = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
i = 0
while True:
    m = np.random.default_rng(i).random((64, 64)).astype(np.float32)
    s = summarise(Attribution("gradient", i, "x", m, img, params={"seed": i}), "w")
    uid = store.record(RunInput(user="w", page="saliency", model_id=str(i)), s)
    if i % 3 == 0:
        store.add_note(uid, "w", f"note {i}")
    print(uid, i, flush=True)
    i += 1
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_work_loses_nothing_recorded(request, tmp_path, backend):
    """A process writing runs in a loop is killed with SIGKILL mid-work, twice (the second
    one on the reopened store): the store opens cleanly, passes integrity checks, and every
    run it reported as recorded is intact with its files and notes."""
    url = (f"sqlite:///{tmp_path / 'audit.sqlite'}" if backend == "sqlite"
           else request.getfixturevalue("postgres").new_database())
    files = tmp_path / "files"
    recorded = {}
    for round_ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(files)], cwd=REPO, stdout=subprocess.PIPE,
                                text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            deadline = time.time() + 120
            n0 = len(recorded)
            while len(recorded) < n0 + 25 and time.time() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                uid, i = line.split()
                recorded[uid] = int(i)
            time.sleep(0.05 * (round_ + 1))                  # kill while the next runs are being written
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        for line in proc.stdout:                             # lines already flushed before the kill
            uid, i = line.split()
            recorded[uid] = int(i)
        assert len(recorded) >= n0 + 25, proc.returncode
    store = AuditStore(url, files)
    health = store.integrity()
    assert health["database"] == "ok" and not health["missing_files"], health
    for uid, i in recorded.items():
        r = store.get(uid)
        assert r.model_id == str(i) and r.target == i
        np.testing.assert_array_equal(store.load_array(uid, "map.npy"),
                                      np.random.default_rng(i).random((64, 64)).astype(np.float32))
        if i % 3 == 0:
            assert [n.text for n in r.notes] == [f"note {i}"]
    from analysis.audit.trail import SWEEP_GRACE_S
    store.sweep_at_startup(started=time.time() + SWEEP_GRACE_S)   # a server started now (after the kills)
    folders = {d.name for shard in files.iterdir() if shard.is_dir() for d in shard.iterdir()}
    assert folders == {r.uid for r in store.list_runs(limit=10_000)}   # a run cut before its commit leaves nothing
    assert store.integrity()["ok"] and store.count() >= len(recorded)
    store.record(RunInput(page="home"), _summary())           # and the store keeps working
    store.close()


# ------------------------------------------------------------------ the Audit page

def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture()
def empty_cache():
    """Results cached by earlier tests in this process would not be recorded again."""
    from dashboard.widgets import result_cache
    result_cache().clear()


def test_audit_page_notes_verdict_compare_export_delete(empty_cache):
    t0 = time.time()
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.button(key="home_record").click().run()                           # home: a prediction is recorded
    at.selectbox(key="sb_gallery").set_value("coffee").run()
    at.button(key="home_record").click().run()                           # and a second one
    _ok(at)
    from analysis.audit.trail import open_store
    store = open_store()
    mine = store.list_runs(since=t0)
    assert len(mine) >= 2 and all(r.page == "home" for r in mine)
    at.switch_page("../pages/audit.py").run()
    _ok(at)
    assert at.dataframe[0].value.shape[0] >= 2
    a, b = mine[0].uid, mine[1].uid
    at.multiselect(key="au_sel").set_value([a]).run()
    _ok(at)
    assert any("Prediction" in s.value for s in at.subheader)
    at.text_area(key="_au_note_text").set_value("espresso, as expected")
    at.radio(key="_au_note_kind").set_value("finding")
    at.button(key="FormSubmitter:_au_note_form-Add").click().run()
    _ok(at)
    at.selectbox(key=f"_au_verdict_{a}").set_value("confirmed")
    at.button(key="_au_verdict_save").click().run()
    _ok(at)
    r = store.get(a)
    assert r.verdict == "confirmed" and r.notes[-1].text == "espresso, as expected" and r.notes[-1].kind == "finding"
    assert any("espresso, as expected" in m.value.replace("\\", "") for m in at.markdown)
    at.multiselect(key="au_sel").set_value([a, b]).run()                 # side by side
    _ok(at)
    assert any(s.value == "Side by side" for s in at.subheader)
    table = at.dataframe[-1].value
    assert "same" in table.columns and "≠" in set(table["same"])        # the images differ
    at.button(key="_au_delete").click().run()                            # asks first
    _ok(at)
    assert any("cannot be undone" in w.value for w in at.warning) and store.get(a)
    at.button(key="_au_delete_no").click().run()
    assert store.get(a).uid == a
    at.button(key="_au_delete").click().run()
    at.button(key="_au_delete_yes").click().run()
    _ok(at)
    from analysis.audit.trail import AuditError
    for u in (a, b):
        with pytest.raises(AuditError):
            store.get(u)


def test_audit_page_open_here_restores_the_view(empty_cache):
    t0 = time.time()
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_gallery").set_value("astronaut").run()
    at.button(key="home_record").click().run()
    _ok(at)
    from analysis.audit.trail import open_store
    run = [r for r in open_store().list_runs(since=t0) if r.image_label == "astronaut"][0]
    at.selectbox(key="sb_gallery").set_value("chelsea").run()
    at.switch_page("../pages/audit.py").run()
    at.multiselect(key="au_sel").set_value([run.uid]).run()
    at.button(key="au_open_here").click().run()
    _ok(at)
    assert at.selectbox(key="sb_gallery").value == "astronaut"          # back on home with that image
    assert any("Model card" in s.value for s in at.subheader)


def test_app_records_into_postgresql_through_database_url(postgres, monkeypatch, empty_cache):
    """The dashboard itself on PostgreSQL: DATABASE_URL is all it takes; a page's run lands
    in that database (not in the SQLite file) and the Audit page lists and opens it."""
    from analysis.audit.trail import open_store
    from analysis.core.config import get_config, set_config
    url = postgres.new_database()
    monkeypatch.setenv("DATABASE_URL", url)
    set_config(None)
    assert get_config().audit_url == url
    t0 = time.time()
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.button(key="home_record").click().run()
    at.selectbox(key="sb_gallery").set_value("coffee").run()
    at.button(key="home_record").click().run()
    _ok(at)
    store = open_store()
    assert store.engine.dialect.name == "postgresql"
    runs = store.list_runs(since=t0)
    assert {r.image_label for r in runs} >= {"coffee"} and all(r.page == "home" for r in runs)
    run = [r for r in runs if r.image_label == "coffee"][0]
    assert run.model_name and "probs.npy" in run.array_files()
    probs = store.load_array(run.uid, "probs.npy")
    assert probs.shape == (5,) and abs(probs.sum() - 1) < 0.1 and probs[0] > 0.9          # espresso
    at.switch_page("../pages/audit.py").run()
    _ok(at)
    assert at.dataframe[0].value.shape[0] == len(store.list_runs()) >= 2     # this database's runs only
    assert f"#{run.id} · " in " ".join(at.multiselect(key="au_sel").options)
    at.multiselect(key="au_sel").set_value([run.uid]).run()
    at.text_area(key="_au_note_text").set_value("recorded in PostgreSQL")
    at.button(key="FormSubmitter:_au_note_form-Add").click().run()
    _ok(at)
    assert store.get(run.uid).notes[-1].text == "recorded in PostgreSQL"
    store.close()


def test_audit_visibility_own_hides_other_users(monkeypatch):
    from analysis.audit.passwords import hash_password
    from analysis.audit.trail import open_store
    from analysis.core.config import set_config
    set_config(None)
    store = open_store()
    other = store.record(RunInput(user="mallory", page="home", image_label="secret-upload.png"), _summary())
    monkeypatch.setenv("CONVLENS_AUTH_MODE", "password")
    monkeypatch.setenv("CONVLENS_AUTH_USERS", "ada:" + hash_password("pw-ada-123", iterations=1000))
    set_config(None)
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state["_auth_user"] = "ada"
    at.query_params["page"] = "audit"
    at.run()
    _ok(at)
    listed = at.dataframe[0].value
    assert "mallory" not in set(listed["user"]) and other not in set(listed.get("uid", []))
