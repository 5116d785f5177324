"""With login on, media files, component files and uploads are served only to a signed-in
browser (dashboard/gate.py behind dashboard/server.py, Streamlit's public st.App with a
middleware), and Streamlit's upload size follows convlens's limits (issue 14)."""
import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from analysis.audit.passwords import hash_password
from analysis.core.config import set_config
from tests.paths import REPO
from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, free_port


def _call(gate_app, path, cookie=None, method="GET", query=b""):
    sent = []

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    headers = [(b"cookie", cookie.encode())] if cookie else []
    scope = {"type": "http", "path": path, "method": method, "query_string": query, "headers": headers,
             "scheme": "http", "root_path": ""}
    asyncio.run(gate_app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start.get("headers") or []), b"".join(m.get("body", b"") for m in sent[1:])


def test_gate_needs_a_pass_for_media_components_and_uploads(monkeypatch):
    from dashboard import gate
    monkeypatch.setenv("CONVLENS_AUTH_MODE", "password")
    monkeypatch.setenv("CONVLENS_AUTH_USERS", "alice:" + hash_password("pw-123456", iterations=1000))
    set_config(None)

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})
    g = gate.SessionGate(inner)
    sid = str(uuid.uuid4())
    for path in ("/media/abc.png", "/component/x/index.html", "/_stcore/bidi-components/x/a.js",
                 f"/_stcore/upload_file/{sid}/f1"):
        assert _call(g, path)[0] == 403 and _call(g, path, cookie=f"{gate.COOKIE}=forged")[0] == 403
    assert _call(g, "/")[2] == b"served" and _call(g, "/_stcore/health")[0] == 200     # the app itself
    assert _call(g, gate.PASS_PATH, query=b"t=nonsense")[0] == 403
    ticket = gate.issue_ticket("alice", sid)
    status, headers, body = _call(g, gate.PASS_PATH, query=f"t={ticket}".encode())
    assert status == 200 and body.startswith(b"GIF")
    cookie = headers[b"set-cookie"].decode()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    assert _call(g, gate.PASS_PATH, query=f"t={ticket}".encode())[0] == 403                # single use
    assert gate.has_pass(sid)
    for path in ("/media/abc.png", f"/_stcore/upload_file/{sid}/f1"):
        assert _call(g, path, cookie=value)[2] == b"served"
    gate.revoke(sid)                                                                       # sign-out
    assert _call(g, "/media/abc.png", cookie=value)[0] == 403 and not gate.has_pass(sid)
    import streamlit as st
    monkeypatch.setattr(st, "get_option", lambda k, _g=st.get_option: "convlens" if k == "server.baseUrlPath" else _g(k))
    assert _call(g, "/convlens/media/abc.png")[0] == 403                                   # behind a proxy path
    assert _call(g, "/convlens/media/abc.png", cookie=value)[0] == 403                     # (still revoked)
    monkeypatch.setenv("CONVLENS_AUTH_MODE", "none")
    set_config(None)
    assert _call(g, "/media/abc.png")[2] == b"served"                                      # login off
    set_config(None)


def test_max_upload_size_follows_the_configured_limits(monkeypatch):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from dashboard import auth
    monkeypatch.setenv("CONVLENS_MAX_WEIGHTS_BYTES", str(300 * 2**20))
    set_config(None)
    auth.apply_upload_limit.clear()
    AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=300).run()
    assert config.get_option("server.maxUploadSize") == 300
    auth.apply_upload_limit.clear()
    set_config(None)


def _get(url, cookie=None):
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:                                  # not listening yet
        return 0, b""


@pytest.mark.browser
def test_real_server_serves_media_and_uploads_only_to_a_signed_in_browser(session_dir):
    from playwright.sync_api import sync_playwright
    port = free_port()
    env = dict(os.environ, CONVLENS_DEVICE="cpu", CONVLENS_WARMUP="0", CONVLENS_AUTH_MODE="password",
               CONVLENS_AUTH_USERS="alice:" + hash_password("pw-123456", iterations=1000),
               CONVLENS_DATA_DIR=str(session_dir / "gate-data"), CONVLENS_CACHE_DIR=str(session_dir / "cache"))
    log = open(session_dir / "gate-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "server.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while _get(url + "/_stcore/health")[0] != 200:
            assert proc.poll() is None and time.time() < deadline, (session_dir / "gate-server.log").read_text()
            time.sleep(0.5)
        # no session, no pass: an upload into any session and any media id are refused by the gate
        req = urllib.request.Request(f"{url}/_stcore/upload_file/{uuid.uuid4()}/{uuid.uuid4()}",
                                     data=b"\0" * (1 << 20), method="PUT")
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("upload accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 403 and e.read() == b"sign in first"
        assert _get(f"{url}/media/{'0' * 56}.png") == (403, b"sign in first")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("textbox", name="User name").fill("alice")
            page.get_by_role("textbox", name="Password").fill("pw-123456")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text("Model card").first.wait_for(timeout=240_000)
            page.locator('img[src*="/media/"]').first.wait_for(timeout=120_000)
            src = page.locator('img[src*="/media/"]').first.get_attribute("src")
            media = src if src.startswith("http") else url + src
            assert page.request.get(media).status == 200                # the signed-in browser sees it
            status, body = _get(media)                                   # a client with no cookie does not
            assert status == 403 and body == b"sign in first"
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            assert _get(media, f"convlens_pass={cookies['convlens_pass']}")[0] == 200
            page.get_by_role("button", name="Sign out").click()
            page.get_by_role("textbox", name="User name").wait_for(timeout=60_000)
            assert _get(media, f"convlens_pass={cookies['convlens_pass']}")[0] == 403     # revoked
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
