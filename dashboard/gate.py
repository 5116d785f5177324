"""The HTTP side of login: media files, component files and uploads only for a signed-in
browser (issue 14). Used by the ASGI entry ``dashboard/server.py`` (``streamlit run
dashboard/server.py``), which wraps the app in Streamlit's public ``st.App`` with
``SessionGate`` as middleware; nothing in Streamlit is patched.

Streamlit signs users in over its websocket; the browser's plain HTTP requests for
``/media/<id>`` (images, downloads), ``/component/...`` and ``/_stcore/upload_file/...``
carry no proof of it. So after a sign-in the app issues a one-time *ticket* (random, 2
minutes, single use) and renders an invisible image pointing at ``/_convlens/pass?t=<ticket>``;
that request redeems it for a *pass* cookie (random, HttpOnly, SameSite=Strict, 12 hours;
revoked at sign-out), and the app waits (a few seconds at most) until the browser has it
before drawing anything that makes media. With login on, ``SessionGate`` answers 403 to
those three routes without a valid pass, before Streamlit stores or serves anything.

Passes live in this process's memory: one server process (a restart signs browsers out of
media, and the next run issues a new ticket). Login off: the gate lets everything through.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from http.cookies import SimpleCookie

log = logging.getLogger("convlens")

COOKIE = "convlens_pass"
PASS_PATH = "/_convlens/pass"
TICKET_SECONDS = 120
PASS_SECONDS = 12 * 3600
GATED_PREFIXES = ("/media/", "/component/", "/_stcore/bidi-components/", "/_stcore/upload_file/")
_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

_lock = threading.Lock()
_tickets: dict[str, tuple[str, str, float]] = {}     # ticket -> (user, session id, expiry)
_passes: dict[str, tuple[str, str, float]] = {}      # pass -> (user, session id, expiry)
_session_pass: dict[str, str] = {}                   # session id -> its redeemed pass
_active = False


def activate() -> None:
    """Called by dashboard/server.py: the gate is in front of this process's app."""
    global _active
    _active = True


def active() -> bool:
    """Whether this process serves the app through SessionGate (dashboard/server.py)."""
    return _active


def _purge(now: float) -> None:
    for d in (_tickets, _passes):
        for k in [k for k, (_, _, exp) in d.items() if exp < now]:
            del d[k]


def issue_ticket(user: str, session_id: str) -> str:
    """A one-time ticket for a signed-in ``user`` in Streamlit session ``session_id``."""
    now = time.time()
    t = secrets.token_urlsafe(32)
    with _lock:
        _purge(now)
        _tickets[t] = (user, session_id, now + TICKET_SECONDS)
    return t


def redeem(ticket: str) -> str | None:
    """Exchange a ticket (once) for a pass; None if unknown, used or expired."""
    now = time.time()
    with _lock:
        entry = _tickets.pop(ticket or "", None)
        if entry is None or entry[2] < now:
            return None
        user, sid, _ = entry
        p = secrets.token_urlsafe(32)
        _passes[p] = (user, sid, now + PASS_SECONDS)
        _session_pass[sid] = p
    log.info("gate: pass issued to %s", user)
    return p


def has_pass(session_id: str) -> bool:
    """Whether the browser of this Streamlit session redeemed its ticket (and the pass holds)."""
    with _lock:
        p = _session_pass.get(session_id)
        entry = _passes.get(p) if p else None
    return entry is not None and entry[2] >= time.time()


def valid_pass(value: str | None) -> bool:
    """Whether ``value`` (the cookie) is a current pass."""
    with _lock:
        entry = _passes.get(value or "")
    return entry is not None and entry[2] >= time.time()


def revoke(session_id: str) -> None:
    """Sign-out: the session's pass (and so its browser's media access) ends now."""
    with _lock:
        p = _session_pass.pop(session_id, None)
        if p:
            _passes.pop(p, None)


def _cookie(scope) -> str | None:
    for k, v in scope.get("headers") or []:
        if k == b"cookie":
            c = SimpleCookie()
            try:
                c.load(v.decode("latin-1"))
            except Exception:  # noqa: BLE001 - a malformed cookie header is no pass
                return None
            if COOKIE in c:
                return c[COOKIE].value
    return None


async def _respond(send, status: int, body: bytes = b"", headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _base_path() -> str:
    """``/<server.baseUrlPath>`` (behind a proxy under a path), "" without one."""
    try:
        import streamlit as st
        base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    except Exception:  # noqa: BLE001 - outside a Streamlit server: no base path
        base = ""
    return f"/{base}" if base else ""


def _login_on() -> bool:
    from analysis.core.config import get_config
    return get_config().auth_mode != "none"


class SessionGate:
    """ASGI middleware: ``/_convlens/pass`` redeems tickets; with login on, media, component
    and upload routes need a valid pass cookie (403 otherwise, nothing stored or served)."""

    def __init__(self, app):
        self.app = app
        activate()

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            path = scope.get("path", "")
            for root in (scope.get("root_path", "") or "", _base_path()):
                if root and path.startswith(root + "/"):
                    path = path[len(root):]
            if path == PASS_PATH:
                from urllib.parse import parse_qs
                ticket = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("t") or [""])[0]
                p = redeem(ticket)
                if p is None:
                    return await _respond(send, 403, b"invalid ticket")
                cookie = (f"{COOKIE}={p}; Path=/; HttpOnly; SameSite=Strict; Max-Age={PASS_SECONDS}"
                          + ("; Secure" if scope.get("scheme") == "https" else ""))
                return await _respond(send, 200, _GIF, [(b"content-type", b"image/gif"),
                                                        (b"set-cookie", cookie.encode("latin-1"))])
            if path.startswith(GATED_PREFIXES) and _login_on() and not valid_pass(_cookie(scope)):
                log.info("gate: refused %s %s without a pass", scope.get("method"), path[:80])
                return await _respond(send, 403, b"sign in first")
        await self.app(scope, receive, send)


