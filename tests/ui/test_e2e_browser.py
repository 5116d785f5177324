"""Real browser: start the app on a free localhost port, drive Debian's Chromium
headless through Playwright, check each page's results in the DOM (never WebGL pixels),
take screenshots (test-output/)."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def _serve(log_path, env_overrides, script: str = "dashboard/app.py"):
    """Start ``streamlit run <script>`` (the app by default) on a free port; yield its URL once
    healthy (bounded: 90 s), stop it afterwards."""
    port = free_port()
    env = dict(os.environ, CONVLENS_DEVICE="cpu", **env_overrides)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / script),
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
                raise RuntimeError(f"streamlit exited: {log_path.read_text()[-2000:]}")
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
def app_url(session_dir):
    # CONVLENS_WARMUP=0: no page here draws a UMAP map; the background numba compile would
    # only compete with the pages for the CPU.
    yield from _serve(session_dir / "e2e-server.log",
                      dict(CONVLENS_DATA_DIR=str(session_dir / "e2e-data"),
                           CONVLENS_CACHE_DIR=str(session_dir / "cache"), CONVLENS_WARMUP="0"))


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


def wait_top5(page, names, timeout=240_000):
    """The home page's top-5 table (a canvas grid: its cells are in the DOM for screen
    readers, not visible as text) lists ``names``."""
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=timeout)
    for name in names:
        page.locator('[data-testid="stDataFrame"] [role="gridcell"]', has_text=name).first.wait_for(
            state="attached", timeout=30_000)


def test_home_shows_top5_for_default_image(browser, app_url, output_dir):
    page = open_page(browser, app_url)
    wait_top5(page, ("Egyptian cat", "tabby"))
    page.wait_for_timeout(1500)
    assert page.locator('[data-testid="stDataFrame"]').count() >= 1    # the top-5 table with its bars
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


# ------------------------------------------------------------------ Embeddings

@pytest.fixture(scope="module")
def embeddings_url(session_dir, digits):
    """A server of its own with an empty feature cache, so that the test always runs the
    extraction (whatever ran before in the session). The digits model is trained BEFORE
    the server starts (the session fixture ``digits``; free when other tests have used it)
    and copied over: its first-use training takes 15 s on 2 idle cores but minutes on a
    loaded machine, and inside the browser wait it made the test time out."""
    import tempfile
    cache = Path(tempfile.mkdtemp(prefix="e2e-embeddings-cache-", dir=session_dir))
    shutil.copytree(session_dir / "cache" / "models", cache / "models")
    yield from _serve(session_dir / "e2e-embeddings-server.log",
                      dict(CONVLENS_DATA_DIR=str(session_dir / "e2e-data"),
                           CONVLENS_CACHE_DIR=str(cache), CONVLENS_WARMUP="0"))


def _no_traceback(page) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body, body[body.find("Traceback") - 500:][:3000]
    assert page.locator('[data-testid="stException"]').count() == 0


def settled_tip(frame, timeout_ms: float) -> dict:
    """The map's hover box once it shows the same point on two polls 300 ms apart with its
    thumbnail loaded, read in one go (index, text, thumbnail URL): hover events arrive
    after the mouse has moved on, so a single read can pair one point's index with the
    next one's text."""
    handle = frame.wait_for_function("""() => {
        const t = document.getElementById('tip');
        const now = [t.style.display, t.dataset.index, t.dataset.thumbLoaded].join('|');
        const ok = window.__tipLast === now && t.style.display === 'block' && t.dataset.thumbLoaded === '1';
        window.__tipLast = now;
        return ok && {index: t.dataset.index, text: t.innerText,
                      bg: t.querySelector('.thumb').style.backgroundImage};
    }""", polling=300, timeout=timeout_ms)
    return handle.json_value()


@pytest.mark.timeout(900)     # the digits model's training in the fixture counts too (fresh session)
def test_embeddings_page_in_browser(browser, embeddings_url, output_dir):
    """Digits CNN on scikit-learn digits: extract features, see neighbours, open the map,
    hover a point (thumbnail fetched from the served sprite sheet), click it and lasso a
    cluster (their images appear below: the selection went back to Python).

    Reliability: every wait is bounded and waits for a definite state (never "sleep, then
    click if present"); the server has its own empty feature cache, so the extraction
    always runs; assertions on elements that arrive in later deltas of the same script run
    (captions, the image grid) poll with ``expect`` instead of counting once. ~2-4 min on
    2 busy cores (the digits model is trained first if the session has not yet)."""
    from playwright.sync_api import expect
    deadline = time.monotonic() + 540       # below pytest's 600 s: a stuck step fails by name

    def left(seconds: float) -> float:
        """Milliseconds for the next wait: ``seconds`` or what is left of the budget."""
        return max(1000.0, min(seconds, deadline - time.monotonic()) * 1000)

    page = open_page(browser, embeddings_url + "/embeddings")
    page.set_default_timeout(60_000)
    try:
        page.get_by_text("Embeddings — feature space vs pixel space").first.wait_for(timeout=left(120))
        # the digits CNN from the sidebar (the page's intended default pairing)
        page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model").click()
        page.get_by_role("option", name="Digits CNN (embedded, trained here)").click()
        # a fresh cache: the page offers the extraction of the digits model's avgpool layer
        page.get_by_text("Features of avgpool are not extracted").first.wait_for(timeout=left(240))
        _no_traceback(page)
        page.get_by_role("button", name="Extract features").click()
        page.get_by_text("1,797 × 64 features").first.wait_for(timeout=left(240))
        # neighbours in both spaces, with label agreement and thumbnails
        page.get_by_text("Feature space · label agreement").first.wait_for(timeout=left(240))
        page.get_by_text("Pixel space · label agreement").first.wait_for(timeout=left(120))
        expect(page.get_by_text("Under each thumbnail: label / prediction · distance.")).to_have_count(
            1, timeout=left(60))
        _no_traceback(page)
        # the map: its own component (plotly.js served offline from the app)
        page.get_by_role("tab", name="Map of the data set").click()
        page.get_by_text("5-NN accuracy of the map").first.wait_for(timeout=left(240))
        frame_el = page.locator('iframe[src*="embedding_map"]')
        frame_el.wait_for(timeout=left(60))
        frame = page.frame_locator('iframe[src*="embedding_map"]')
        inner = frame_el.element_handle().content_frame()
        frame.locator('#plot.js-plotly-plot[data-ready="1"]').wait_for(timeout=left(120))
        points = frame.locator(".scatterlayer path.point")           # 1,797 points: SVG, not WebGL
        points.first.wait_for(timeout=left(30))
        assert points.count() == 1797
        assert frame.locator(".legendtext").count() == 10               # one trace per digit
        # hover a point: the floating box shows its thumbnail (sprite sheet loaded) and text
        frame_el.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        box = points.nth(100).bounding_box()
        assert box is not None and box["y"] + box["height"] < 1000     # inside the viewport
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 30, y - 30)
        page.mouse.move(x, y, steps=5)
        snap = settled_tip(inner, left(30))           # plotly's hover events trail the mouse
        idx = int(snap["index"])
        assert 0 <= idx < 1797
        assert f"digits/{idx:04d}" in snap["text"] and "label" in snap["text"] and "prediction" in snap["text"]
        assert re.search(rf"thumbs/[0-9a-f]+/{idx // 1024}\.(webp|png)", snap["bg"]), snap   # its sheet
        # click it: the selection goes back to Python, which shows that image below the map
        page.mouse.click(x, y)
        page.get_by_text("1 selected", exact=True).wait_for(timeout=left(60))
        expect(page.get_by_test_id("stImageCaption").filter(
            has_text=re.compile(rf"^\d · digits/{idx:04d}$"))).to_have_count(1, timeout=left(30))
        # lasso around the points of digit 0 (trace 0): all of them, and whatever else lies
        # inside the drawn rectangle, are selected
        centres = frame.locator(".scatterlayer .trace").evaluate_all(
            """traces => traces.map(t => Array.from(t.querySelectorAll('path.point')).map(p => {
                   const r = p.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }))""")
        off = frame_el.bounding_box()                      # iframe -> page coordinates
        zero = centres[0]
        x0, x1 = min(c[0] for c in zero) - 6, max(c[0] for c in zero) + 6
        y0, y1 = min(c[1] for c in zero) - 6, max(c[1] for c in zero) + 6
        inside = sum(x0 < cx < x1 and y0 < cy < y1 for tr in centres for cx, cy in tr)
        page.mouse.move(off["x"] + x0, off["y"] + y0)
        page.mouse.down()
        for px, py in [(x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)]:
            page.mouse.move(off["x"] + px, off["y"] + py, steps=8)
        page.mouse.up()
        strong = page.locator("strong").filter(has_text=re.compile(r"^\d+ selected$"))
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('strong')).some(e => /^\\d+ selected$/.test(e.innerText)"
            " && e.innerText !== '1 selected')", timeout=left(60))
        n_sel = int(strong.first.inner_text().split()[0])
        assert len(zero) > 100 and len(zero) <= n_sel and abs(n_sel - inside) <= 2, \
            f"{len(zero)} zeros, {n_sel} selected, {inside} inside the rectangle"
        # the grid below the map (its images arrive just after the count: wait for them)
        grid = page.get_by_test_id("stImageCaption").filter(has_text=re.compile(r"^\d · digits/\d{4}$"))
        expect(grid).to_have_count(min(48, n_sel), timeout=left(60))
        expect(grid.first).to_have_text(re.compile(r"^0 · digits/\d{4}$"), timeout=left(30))   # trace 0 first
        # hover a point again for the picture
        page.mouse.move(x - 20, y - 20)
        page.mouse.move(x, y, steps=4)
        settled_tip(inner, left(30))
        _no_traceback(page)
        # the picture (docs/images/embeddings.png): tall enough for the title, the map with
        # its hover box and the selected images below it
        page.set_viewport_size({"width": 1400, "height": 2000})
        page.get_by_text("Embeddings — feature space vs pixel space").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(output_dir / "embeddings.png"), full_page=True)
    except BaseException:
        # what the page showed when a step failed (the server log is in the session dir)
        page.screenshot(path=str(output_dir / "embeddings-failure.png"), full_page=True)
        (output_dir / "embeddings-failure.txt").write_text(page.inner_text("body"))
        raise
    finally:
        page.close()


# ------------------------------------------------------------------ share links, audit report

def test_share_link_audit_report_in_browser(browser, app_url, session_dir, output_dir):
    """A hand-written share link computes its result on load and the address bar then holds
    the full link; the Audit page (opened by a link with two runs selected) exports the HTML
    report, which opens on its own (file://) with its images."""
    import json
    import urllib.parse

    from analysis.audit.trail import AuditStore
    active = {"methods": ["gradcam"], "target": 281, "params": {"gradcam": {}}}
    q = urllib.parse.urlencode({"sal_methods": '["gradcam"]', "sal_active": json.dumps(active)})
    page = open_page(browser, app_url)                     # home: a prediction, recorded on request
    page.set_default_timeout(60_000)
    try:
        wait_top5(page, ("Egyptian cat",))
        page.get_by_role("button", name="Record in the audit trail").click()
        page.get_by_text("Recorded in the audit trail.").first.wait_for(timeout=60_000)
        page.goto(f"{app_url}/saliency?{q}")
        page.get_by_text("Target: tabby").first.wait_for(timeout=240_000)       # computed without a click
        page.wait_for_function("location.search.includes('sb_gallery=chelsea')", timeout=60_000)
        assert "sal_active=" in page.url and "sal_view=overlay" in page.url
        page.get_by_test_id("stSidebar").get_by_text("Share this view").click()
        page.get_by_test_id("stSidebar").get_by_text(f"{app_url}/saliency?").first.wait_for(timeout=30_000)
        _no_traceback(page)
        data = session_dir / "e2e-data"
        store = AuditStore(f"sqlite:///{data / 'audit.sqlite'}", data / "audit")
        uids = [r.uid for r in store.list_runs(limit=2)]
        assert any(r.method == "gradcam" for r in store.list_runs(pages=["saliency"]))
        store.close()
        page.goto(f"{app_url}/audit?" + urllib.parse.urlencode({"au_sel": json.dumps(uids)}))
        page.get_by_role("heading", name="Side by side").wait_for(timeout=120_000)
        page.get_by_role("button", name="HTML report").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        _no_traceback(page)
        page.screenshot(path=str(output_dir / "audit.png"), full_page=True)
        with page.expect_download(timeout=120_000) as dl:
            page.get_by_role("button", name="HTML report").click()
        report = output_dir / "audit-report.html"
        dl.value.save_as(report)
        html = report.read_text()
        assert html.count('<section class="run"') == 2 and "data:image/png;base64," in html
        view = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            view.goto(report.as_uri())
            view.get_by_text("convlens audit report").first.wait_for(timeout=30_000)
            assert view.locator("section.run").count() == 2
            view.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=30_000)
            assert view.locator("img").count() >= 2
            view.screenshot(path=str(output_dir / "audit_report.png"), full_page=True)
        finally:
            view.close()
    finally:
        page.close()


# ------------------------------------------------------- optimisation pages (issue 6)

def _set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(800)


def _run_and_wait(page, button: str, timeout=240_000) -> str:
    page.get_by_role("button", name=button, exact=True).first.click()
    page.get_by_text(re.compile(r"\d+ steps in [\d.]+ s")).first.wait_for(timeout=timeout)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    assert "Traceback" not in body
    return body


@pytest.mark.timeout(900)
def test_optimisation_pages_in_browser(browser, app_url, output_dir):
    page = open_page(browser, app_url + "/classvis")
    page.get_by_text("Free controls").first.wait_for(timeout=240_000)
    page.get_by_text("Free controls").first.click()
    _set_number(page, "steps", 6)
    _set_number(page, "size (px)", 96)
    _run_and_wait(page, "Visualise")
    # the page reruns once to show the cached result; wait for its last part, not a fixed delay
    page.get_by_text("What the model sees in the result").first.wait_for(timeout=120_000)
    body = page.inner_text("body")
    assert "Recorded parameters" in body and "Traceback" not in body
    page.screenshot(path=str(output_dir / "classvis_page.png"), full_page=True)
    page.close()

    page = open_page(browser, app_url + "/channelvis")
    page.get_by_text("Maximally activating patches of").first.wait_for(timeout=240_000)
    _set_number(page, "steps", 4)
    _set_number(page, "size (px)", 64)
    _run_and_wait(page, "Visualise")
    page.screenshot(path=str(output_dir / "channelvis_page.png"), full_page=True)
    page.close()

    page = open_page(browser, app_url + "/deepdream")
    page.get_by_text("Reset to google/deepdream defaults").first.wait_for(timeout=240_000)
    _set_number(page, "octaves", 2)
    _set_number(page, "steps per octave", 2)
    _set_number(page, "max side (px)", 128)
    _run_and_wait(page, "Dream")
    page.screenshot(path=str(output_dir / "deepdream_page.png"), full_page=True)
    page.close()

    page = open_page(browser, app_url + "/inversion")
    page.get_by_text("Shallow → deep strip").first.wait_for(timeout=240_000)
    _set_number(page, "steps", 5)
    body = _run_and_wait(page, "Invert")
    assert "relative feature error" in body
    page.screenshot(path=str(output_dir / "inversion_page.png"), full_page=True)
    page.close()


# ------------------------------------------- texture, style transfer, fast style (issue 7)

def _style_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(800)


def _style_ok(page) -> str:
    body = page.inner_text("body")
    assert "Traceback" not in body, body[body.find("Traceback") - 500:][:3000]
    assert page.locator('[data-testid="stException"]').count() == 0
    return body


@pytest.mark.timeout(900)
def test_style_pages_in_browser(browser, app_url, output_dir):
    """Texture synthesis, Gatys style transfer and fast style transfer with tiny settings:
    each runs to its result in a real browser; screenshots for README (test-output/)."""
    page = open_page(browser, app_url + "/texture")
    try:
        page.get_by_text("Texture synthesis").first.wait_for(timeout=240_000)
        _style_number(page, "output size (px)", 64)
        _style_number(page, "steps", 6)
        page.get_by_role("button", name="Synthesise", exact=True).first.click()
        page.get_by_text("Relative Gram error per layer").first.wait_for(timeout=240_000)
        page.wait_for_timeout(1500)
        _style_ok(page)
        page.screenshot(path=str(output_dir / "texture_page.png"), full_page=True)
    finally:
        page.close()

    page = open_page(browser, app_url + "/style")
    try:
        page.get_by_text("Style transfer (Gatys et al.)").first.wait_for(timeout=240_000)
        _style_number(page, "output size (px, longer side)", 96)
        _style_number(page, "steps", 6)
        page.get_by_role("button", name="Transfer", exact=True).first.click()
        page.get_by_text(re.compile(r"content error [\d.e-]+ · style error")).first.wait_for(timeout=240_000)
        page.wait_for_timeout(1500)
        body = _style_ok(page)
        assert "before" in body and "after" in body
        page.screenshot(path=str(output_dir / "style_page.png"), full_page=True)
    finally:
        page.close()

    page = open_page(browser, app_url + "/fast-style")
    try:
        page.get_by_text("Fast style transfer").first.wait_for(timeout=240_000)
        name = f"e2e-{int(time.time())}"
        box = page.get_by_label("Network name", exact=True)
        box.fill(name)
        box.press("Enter")
        page.wait_for_timeout(800)
        for label, value in [("steps (total)", 3), ("crop size (px)", 32), ("batch", 1), ("network width", 4),
                             ("preview every", 1)]:
            _style_number(page, label, value)
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text(f"Trained '{name}' to step 3").first.wait_for(timeout=300_000)
        _style_ok(page)
        page.get_by_role("tab", name="Apply").click()
        page.get_by_text(re.compile(r"one forward pass · \d+×\d+ px in \d+ ms")).first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        _style_ok(page)
        page.screenshot(path=str(output_dir / "fast_style_page.png"), full_page=True)
    finally:
        page.close()
