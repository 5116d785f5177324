"""Login: off by default; password mode (PBKDF2 hashes in the config); Streamlit OIDC
(``st.login``; AppTest seeds ``st.user``). The signed-in user's name goes into the audit
records. Plus the configuration of auth, audit and database."""
import time

import pytest
from streamlit.testing.v1 import AppTest

from analysis.audit.passwords import check_login, hash_password, verify_password
from analysis.core.config import load_config, set_config
from analysis.core.errors import ParameterError
from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _records_since(t0, page="home"):
    from analysis.audit.trail import open_store
    return open_store().list_runs(pages=[page], since=t0)


@pytest.fixture(autouse=True)
def _empty_result_cache():
    """Results cached by earlier tests would not be recorded again."""
    from dashboard.widgets import result_cache
    result_cache().clear()


def _app_shown(at) -> bool:
    return any("Model card" in s.value for s in at.subheader)


# ------------------------------------------------------------------ configuration

def test_auth_and_audit_config(tmp_path):
    cfg = load_config(tmp_path / "missing.toml", env={})
    assert cfg.auth_mode == "none" and cfg.audit_enabled and cfg.audit_visibility == "own"
    assert cfg.audit_url == f"sqlite:///{cfg.data_dir / 'audit.sqlite'}"
    assert cfg.limits.max_concurrent_jobs == 2
    h = hash_password("pw", iterations=1000)
    f = tmp_path / "c.toml"
    f.write_text(f'database_url = "postgresql+psycopg://u:p@db/convlens"\n[auth]\nmode = "password"\n'
                 f'[auth.users]\nalice = "{h}"\n[audit]\nvisibility = "all"\nenabled = false\n'
                 f'[limits]\nmax_concurrent_jobs = 3\n')
    cfg = load_config(f, env={})
    assert cfg.auth_mode == "password" and dict(cfg.users) == {"alice": h}
    assert cfg.audit_visibility == "all" and not cfg.audit_enabled and cfg.limits.max_concurrent_jobs == 3
    assert cfg.audit_url == "postgresql+psycopg://u:p@db/convlens"
    cfg = load_config(f, env={"DATABASE_URL": "sqlite:////x.db", "CONVLENS_AUTH_MODE": "oidc",
                              "CONVLENS_AUTH_PROVIDER": "okta", "CONVLENS_AUDIT_ENABLED": "1"})
    assert cfg.audit_url == "sqlite:////x.db" and cfg.auth_mode == "oidc" and cfg.auth_provider == "okta"
    assert cfg.audit_enabled
    cfg = load_config(tmp_path / "missing.toml", env={"CONVLENS_AUTH_MODE": "password",
                                                      "CONVLENS_AUTH_USERS": f"a:{h},b:{h}"})
    assert [u for u, _ in cfg.users] == ["a", "b"]


@pytest.mark.parametrize("env", [{"CONVLENS_AUTH_MODE": "ldap"}, {"CONVLENS_AUTH_MODE": "password"},
                                 {"CONVLENS_AUDIT_VISIBILITY": "some"}, {"CONVLENS_AUDIT_ENABLED": "maybe"},
                                 {"CONVLENS_AUTH_MODE": "password", "CONVLENS_AUTH_USERS": "nocolon"}])
def test_bad_auth_config_is_a_clear_error(tmp_path, env):
    with pytest.raises(ParameterError):
        load_config(tmp_path / "missing.toml", env=env)


def test_passwords():
    h = hash_password("correct horse", iterations=2000)
    assert h.startswith("pbkdf2_sha256$2000$") and verify_password("correct horse", h)
    assert not verify_password("wrong", h) and not verify_password("x", "garbage") and not verify_password("x", "")
    assert hash_password("a", iterations=1000) != hash_password("a", iterations=1000)     # salted
    assert check_login({"ann": h}, "ann", "correct horse") and not check_login({"ann": h}, "bob", "correct horse")


# ------------------------------------------------------------------ off (default)

def test_login_off_by_default():
    t0 = time.time()
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception and _app_shown(at)
    at.button(key="home_record").click().run()                  # an explicit computation is recorded
    assert not any(b.key == "_auth_logout" for b in at.button)
    assert not any("Signed in" in c.value for c in at.caption)
    recs = _records_since(t0)
    assert recs and all(r.user == "" for r in recs)


# ------------------------------------------------------------------ password mode

@pytest.fixture()
def password_mode(monkeypatch):
    monkeypatch.setenv("CONVLENS_AUTH_MODE", "password")
    monkeypatch.setenv("CONVLENS_AUTH_USERS", "alice:" + hash_password("s3cret-pw", iterations=1000))
    set_config(None)
    yield
    set_config(None)


def test_password_login(password_mode):
    t0 = time.time()
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"sb_gallery": "coffee"})             # a link opened before signing in
    at.run()
    assert not at.exception and not _app_shown(at)
    assert at.text_input(key="_auth_name") is not None
    at.text_input(key="_auth_name").set_value("alice")
    at.text_input(key="_auth_password").set_value("wrong")
    at.button(key="FormSubmitter:_auth_form-Sign in").click().run()
    assert not at.exception and not _app_shown(at)
    assert any("Wrong user name or password" in e.value for e in at.error)
    at.text_input(key="_auth_password").set_value("s3cret-pw")
    at.button(key="FormSubmitter:_auth_form-Sign in").click().run()
    assert not at.exception and _app_shown(at), [e.value for e in at.error]
    assert any("Signed in as **alice**" in c.value for c in at.caption)
    assert at.selectbox(key="sb_gallery").value == "coffee"          # the link survived the login
    at.button(key="home_record").click().run()
    recs = _records_since(t0)
    assert recs and all(r.user == "alice" for r in recs)
    at.button(key="_auth_logout").click().run()
    assert not at.exception and not _app_shown(at)


# ------------------------------------------------------------------ OIDC mode

@pytest.fixture()
def oidc_mode(monkeypatch):
    monkeypatch.setenv("CONVLENS_AUTH_MODE", "oidc")
    set_config(None)
    yield
    set_config(None)


def test_oidc_logged_out_sees_only_sign_in(oidc_mode):
    at = AppTest.from_file(APP, default_timeout=300)
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception and not _app_shown(at)
    at.button(key="_auth_login").click().run()                      # no [auth] in secrets here
    assert not at.exception
    assert any("not configured" in e.value for e in at.error)


def test_oidc_logged_in_user_goes_into_records(oidc_mode):
    t0 = time.time()
    at = AppTest.from_file(APP, default_timeout=300)
    at.user = {"is_logged_in": True, "name": "Ada Lovelace", "email": "ada@example.org"}
    at.run()
    assert not at.exception and _app_shown(at)
    assert any("ada@example.org" in c.value for c in at.caption)
    at.button(key="home_record").click().run()
    recs = _records_since(t0)
    assert recs and all(r.user == "ada@example.org" for r in recs)
