"""The real server killed with SIGKILL in the middle of work, then restarted on the same
data directory: every run recorded before the kill is intact, the audit store opens
cleanly (integrity check), and the app serves the Audit page with those runs.
(tests/audit/test_audit.py does the same at the store level, many times, with a writer loop.)"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.paths import REPO
from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, free_port, wait_top5

pytestmark = pytest.mark.browser


def _start(data, cache, log_path):
    port = free_port()
    env = dict(os.environ, CONVLENS_DEVICE="cpu", CONVLENS_DATA_DIR=str(data), CONVLENS_CACHE_DIR=str(cache),
               CONVLENS_WARMUP="0")
    log = open(log_path, "a")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                return proc, url, log
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, "streamlit exited"
    raise RuntimeError("streamlit did not become healthy in 90 s")


def test_server_sigkill_mid_work_and_restart(session_dir, output_dir):
    from playwright.sync_api import sync_playwright

    from analysis.audit.trail import AuditStore
    data, cache = session_dir / "crash-data", session_dir / "cache"
    log_path = session_dir / "crash-server.log"
    gradcam = {"methods": ["gradcam"], "target": 281, "params": {"gradcam": {}}}
    slow = {"methods": ["occlusion"], "target": 281, "params": {"occlusion": {"window": 8, "stride": 2,
                                                                            "baseline": "mean"}}}

    def link(active):
        return urllib.parse.urlencode({"sal_methods": json.dumps(active["methods"]), "sal_active": json.dumps(active)})

    proc, url, log = _start(data, cache, log_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            wait_top5(page, ["Egyptian cat"])
            page.get_by_role("button", name="Record in the audit trail").click()          # prediction recorded
            page.get_by_text("Recorded in the audit trail.").first.wait_for(timeout=60_000)
            page.goto(f"{url}/saliency?{link(gradcam)}", wait_until="domcontentloaded")
            page.get_by_text("Target: tabby").first.wait_for(timeout=240_000)             # Grad-CAM recorded
            page.wait_for_timeout(500)
            store = AuditStore(f"sqlite:///{data / 'audit.sqlite'}", data / "audit")
            before = {r.uid: r for r in store.list_runs()}
            store.close()
            assert {r.page for r in before.values()} >= {"home", "saliency"}
            page.goto(f"{url}/saliency?{link(slow)}", wait_until="domcontentloaded")
            page.get_by_text("Occlusion").first.wait_for(timeout=120_000)
            page.locator('[data-testid="stProgress"]').first.wait_for(timeout=120_000)  # mid-computation
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    store = AuditStore(f"sqlite:///{data / 'audit.sqlite'}", data / "audit")
    health = store.integrity()
    assert health["ok"], health
    for uid, r in before.items():
        again = store.get(uid)
        assert (again.page, again.method, again.params, again.files) == (r.page, r.method, r.params, r.files)
        for f in again.files:
            assert store.read_file(uid, f["name"])
    store.close()

    # A kill between a run's files and its commit leaves a folder no row points to (the store
    # level test makes them for real); the restarted server sweeps it at start-up.
    orphan = data / "audit" / "ee" / ("ee" + "0" * 30)
    orphan.mkdir(parents=True)
    (orphan / "map.npy").write_bytes(b"partial")
    os.utime(orphan, (time.time() - 600, time.time() - 600))
    proc, url, log = _start(data, cache, log_path)                     # restart on the same data
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(f"{url}/audit", wait_until="domcontentloaded")
            page.get_by_text(f"{len(before)} runs shown").first.wait_for(timeout=120_000)
            page.get_by_text("Select one or more runs above.").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            body = page.inner_text("body")
            assert "Traceback" not in body
            assert not orphan.exists()                                  # swept at start-up
            page.screenshot(path=str(output_dir / "audit_after_sigkill.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
