"""Optional login (off by default: a single user needs none).

* ``mode = "oidc"``: Streamlit's OpenID Connect login (``st.login``), configured in
  ``.streamlit/secrets.toml`` (``[auth]`` with ``redirect_uri``, ``cookie_secret``,
  ``client_id``, ``client_secret``, ``server_metadata_url``; or a named provider
  ``[auth.<provider>]`` chosen with ``provider`` in convlens.toml). Needs Authlib.
* ``mode = "password"``: user names with PBKDF2 password hashes in convlens.toml
  (``[auth.users]``); the login lasts for the browser session (a reload asks again).

The user's name (OIDC: e-mail, else name, else subject) goes into audit records.
"""
from __future__ import annotations

import logging
import math
import time

import streamlit as st

from analysis.audit.passwords import check_login
from analysis.core.config import get_config
from dashboard import gate, st_internals

log = logging.getLogger("convlens")

USER_KEY = "_auth_user"


def mode() -> str:
    return get_config().auth_mode


def _oidc_user() -> str:
    try:
        info = st.user.to_dict()
    except Exception:  # noqa: BLE001 - no OIDC configured or an old Streamlit: no OIDC user
        return ""
    if not info.get("is_logged_in"):
        return ""
    return str(info.get("email") or info.get("name") or info.get("sub") or "signed-in user")


def current_user() -> str:
    """The signed-in user's name; "" when login is off (or nobody is signed in)."""
    m = mode()
    if m == "password":
        return str(st.session_state.get(USER_KEY) or "")
    if m == "oidc":
        return _oidc_user()
    return ""


def signed_in() -> bool:
    return mode() == "none" or bool(current_user())


@st.cache_resource(show_spinner=False)
def apply_upload_limit() -> int:
    """Once per process: Streamlit's ``server.maxUploadSize`` follows convlens's limits (the
    larger of the upload and weights limits) instead of its 1 GB default. Returns MB."""
    lim = get_config().limits
    mb = max(1, math.ceil(max(lim.max_upload_bytes, lim.max_weights_bytes) / 2**20))
    st_internals.set_max_upload_mb(mb)
    log.info("uploads limited to %d MB (server.maxUploadSize)", mb)
    return mb


PASS_WAIT_S = 5.0


def ensure_media_pass() -> None:
    """With login on behind dashboard/server.py's gate: give this signed-in browser its pass
    cookie for media, component and upload requests (dashboard/gate.py), and wait until the
    browser has it before the page draws any media."""
    if mode() == "none" or not gate.active():
        return
    sid = st_internals.session_id()
    if gate.has_pass(sid):
        return
    ticket = gate.issue_ticket(current_user(), sid)
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    src = f"{'/' + base if base else ''}{gate.PASS_PATH}?t={ticket}"
    st.html(f'<img src="{src}" alt="" width="1" height="1" style="position:absolute;opacity:0">')
    deadline = time.time() + PASS_WAIT_S
    while time.time() < deadline and not gate.has_pass(sid):
        time.sleep(0.05)
    if not gate.has_pass(sid):
        log.warning("gate: the browser of a session of %s did not fetch its pass", current_user())


def login_screen() -> None:
    """The page shown instead of the app until the user signs in."""
    st.title("convlens")
    m = mode()
    if m == "oidc":
        st.write("Sign in with your organisation's account to use convlens.")
        provider = get_config().auth_provider
        if st.button("Sign in", type="primary", key="_auth_login"):
            try:
                st.login(provider) if provider else st.login()
            except Exception as exc:  # noqa: BLE001 - misconfiguration must be a message
                log.warning("OIDC login failed: %s", exc)
                st.error("Sign-in is not configured correctly on this server (see the server log; "
                         "the [auth] section of .streamlit/secrets.toml, and Authlib must be installed).")
        return
    with st.form("_auth_form"):
        st.write("Sign in to use convlens.")
        name = st.text_input("User name", key="_auth_name")
        password = st.text_input("Password", type="password", key="_auth_password")
        ok = st.form_submit_button("Sign in", type="primary")
    if ok:
        if check_login(get_config().users, name.strip(), password):
            st.session_state[USER_KEY] = name.strip()
            log.info("password login: %s", name.strip())
            st.rerun()
        else:
            time.sleep(1.0)                  # slows down guessing
            st.error("Wrong user name or password.")


def user_box() -> None:
    """Sidebar: who is signed in, and a sign-out button (nothing when login is off)."""
    m = mode()
    if m == "none":
        return
    user = current_user()
    c1, c2 = st.columns([3, 2])
    c1.caption(f"Signed in as **{user}**")
    if c2.button("Sign out", key="_auth_logout"):
        if gate.active():
            gate.revoke(st_internals.session_id())         # media access ends with the sign-out
        if m == "oidc":
            st.logout()
        else:
            st.session_state.pop(USER_KEY, None)
            st.rerun()
