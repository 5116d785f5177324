"""Real browser: start the app on a free localhost port, drive Debian's Chromium
headless through Playwright, check the top-5 for the default image, take a screenshot."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(session_dir):
    port = free_port()
    env = dict(os.environ, CONVLENS_DATA_DIR=str(session_dir / "e2e-data"),
               CONVLENS_CACHE_DIR=str(session_dir / "cache"), CONVLENS_DEVICE="cpu")
    log = open(session_dir / "e2e-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {(session_dir / 'e2e-server.log').read_text()[-2000:]}")
        else:
            raise RuntimeError("streamlit did not become healthy in 90 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: make test installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    return page


def test_home_shows_top5_for_default_image(browser, app_url, output_dir):
    page = open_page(browser, app_url)
    page.get_by_text("Egyptian cat").first.wait_for(timeout=240_000)
    page.get_by_text("tabby").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)                          # let plotly finish drawing
    assert page.locator(".js-plotly-plot").count() >= 1
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert "model_id" in body
    page.screenshot(path=str(output_dir / "home.png"), full_page=True)
    page.close()


def test_saliency_page_in_browser(browser, app_url, output_dir):
    page = open_page(browser, app_url + "/saliency")
    page.get_by_text("Compute maps").first.wait_for(timeout=120_000)
    page.get_by_role("button", name="Compute maps").click()
    page.get_by_text("Target: tiger cat").first.wait_for(timeout=240_000)   # appears with the results
    page.get_by_text("Trust checks").first.wait_for(timeout=240_000)
    # the three maps are images in the DOM (plus the sidebar image)
    page.wait_for_function("document.querySelectorAll('img').length >= 4", timeout=240_000)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    assert "Traceback" not in body and "Grad-CAM" in body and "Guided backprop" in body
    assert page.locator("img").count() >= 4                      # sidebar image + three maps
    page.screenshot(path=str(output_dir / "saliency.png"), full_page=True)
    page.close()


def test_inside_page_in_browser(browser, app_url, output_dir):
    page = open_page(browser, app_url + "/inside")
    page.get_by_text("weights: 32 × 3 × 3 × 3").first.wait_for(timeout=240_000)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    assert "Traceback" not in body and "Maximally activating patches" in body
    page.screenshot(path=str(output_dir / "inside.png"), full_page=True)
    page.get_by_role("tab", name="Maximally activating patches").click()
    page.get_by_role("button", name="Scan").click()
    page.get_by_text("images scanned").first.wait_for(timeout=480_000)
    page.wait_for_timeout(1500)
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=str(output_dir / "inside_patches.png"), full_page=True)
    page.close()

