"""Audit visibility "own" is enforced on the server for every read, note, verdict, export and
delete, whatever the URL or the session state says (issue 14)."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from analysis.audit.passwords import hash_password
from analysis.audit.trail import AuditError, RunInput, open_store
from analysis.core.config import set_config
from tests.audit.test_audit import _summary
from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture()
def alice_run(monkeypatch):
    monkeypatch.setenv("CONVLENS_AUTH_MODE", "password")
    h = hash_password("pw-123456", iterations=1000)
    monkeypatch.setenv("CONVLENS_AUTH_USERS", f"alice:{h},bob:{h}")
    monkeypatch.setenv("CONVLENS_AUDIT_VISIBILITY", "own")
    set_config(None)
    store = open_store()
    uid = store.record(RunInput(user="alice", page="home", image_label="alice-private.png"), _summary(3))
    store.add_note(uid, "alice", "alice's finding", "finding")
    yield store, uid
    set_config(None)


def _as(monkeypatch, user):
    from dashboard import auth
    monkeypatch.setattr(auth, "current_user", lambda: user)


def test_every_action_on_another_users_run_is_refused(alice_run, monkeypatch):
    from dashboard import audit_ui
    store, uid = alice_run
    _as(monkeypatch, "bob")
    with pytest.raises(AuditError):
        audit_ui.get_visible(uid)
    assert audit_ui.visible_uids([uid, "nonsense", 7]) == []
    with pytest.raises(AuditError):
        audit_ui.add_note(uid, "bob was here")
    with pytest.raises(AuditError):
        audit_ui.set_verdict(uid, "confirmed")
    with pytest.raises(AuditError):
        audit_ui.export_zip([uid])
    with pytest.raises(AuditError):
        audit_ui.report_html([uid])
    with pytest.raises(AuditError):
        audit_ui.delete([uid])
    r = store.get(uid)                                   # nothing changed
    assert r.verdict == "" and [n.text for n in r.notes] == ["alice's finding"]
    assert store.run_dir(uid).exists()
    _as(monkeypatch, "alice")                            # the owner may do all of it
    audit_ui.add_note(uid, "second")
    audit_ui.set_verdict(uid, "confirmed")
    assert audit_ui.export_zip([uid])[:2] == b"PK" and "alice-private" in audit_ui.report_html([uid])
    r = store.get(uid)
    assert r.verdict == "confirmed" and r.notes[-1].user == "alice"
    assert audit_ui.delete([uid]) == 1 and not store.run_dir(uid).exists()


def test_a_link_to_another_users_run_shows_nothing(alice_run):
    store, uid = alice_run
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state["_auth_user"] = "bob"
    at.query_params["page"] = "audit"
    at.query_params["au_sel"] = json.dumps([uid])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    sel = at.multiselect(key="au_sel")
    assert uid not in sel.options and uid not in (sel.value or [])
    assert not any("alice" in s.value for s in at.subheader)
    assert not any("alice's finding" in m.value for m in at.markdown)
    assert not [b for b in at.button if b.key in ("_au_delete", "_au_verdict_save")]
    assert store.get(uid).uid == uid
