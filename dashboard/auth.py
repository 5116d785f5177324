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
import time

import streamlit as st

from analysis.audit.passwords import check_login
from analysis.core.config import get_config

log = logging.getLogger("convlens")

USER_KEY = "_auth_user"


def mode() -> str:
    return get_config().auth_mode


def _oidc_user() -> str:
    try:
        info = st.user.to_dict()
    except Exception:  # noqa: BLE001
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
        if m == "oidc":
            st.logout()
        else:
            st.session_state.pop(USER_KEY, None)
            st.rerun()
