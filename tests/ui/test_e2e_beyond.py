"""Real browser (Debian's Chromium): one computation on each of the Relevance, Concepts and
Compare pages, on the digits CNN (opened by a share link's ``model`` ref), with bounded
waits for definite states."""
import json
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.ui.test_e2e_browser import _no_traceback, _serve, browser, open_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
DIGITS = "model=" + urllib.parse.quote(json.dumps({"kind": "digits"}, separators=(",", ":")))


@pytest.fixture(scope="module")
def beyond_url(session_dir, digits):
    """A server whose cache already holds the trained digits CNN (trained by the session
    fixture before the server starts, so no browser wait includes its training)."""
    cache = Path(tempfile.mkdtemp(prefix="e2e-beyond-cache-", dir=session_dir))
    shutil.copytree(session_dir / "cache" / "models", cache / "models")
    yield from _serve(session_dir / "e2e-beyond-server.log",
                      dict(CONVLENS_DATA_DIR=str(session_dir / "e2e-beyond-data"),
                           CONVLENS_CACHE_DIR=str(cache), CONVLENS_WARMUP="0"))


@pytest.mark.timeout(900)
def test_relevance_concepts_compare_in_browser(browser, beyond_url, output_dir):  # noqa: F811
    deadline = time.monotonic() + 780

    def left(seconds: float) -> float:
        return max(1000.0, min(seconds, deadline - time.monotonic()) * 1000)

    page = open_page(browser, f"{beyond_url}/relevance?{DIGITS}")
    try:
        page.get_by_role("button", name="Compute relevance").wait_for(timeout=left(240))
        page.get_by_role("button", name="Compute relevance").click()
        page.get_by_text("Where each of the top").first.wait_for(timeout=left(240))
        page.get_by_text("LRP map").first.wait_for(timeout=left(60))
        _no_traceback(page)
        page.screenshot(path=str(output_dir / "relevance.png"), full_page=True)

        page.goto(f"{beyond_url}/concepts?{DIGITS}", wait_until="domcontentloaded")
        page.get_by_role("button", name="Extract concepts").wait_for(timeout=left(120))
        page.get_by_role("button", name="Extract concepts").click()
        page.get_by_text("the concepts reconstruct").first.wait_for(timeout=left(300))
        _no_traceback(page)
        page.screenshot(path=str(output_dir / "concepts.png"), full_page=True)

        page.goto(f"{beyond_url}/compare?{DIGITS}", wait_until="domcontentloaded")
        page.get_by_role("button", name="Compute both maps").wait_for(timeout=left(120))
        page.get_by_role("button", name="Compute both maps").click()
        page.get_by_text("Vanilla gradient for").nth(1).wait_for(timeout=left(240))   # one map per model
        _no_traceback(page)
        page.screenshot(path=str(output_dir / "compare.png"), full_page=True)
    finally:
        page.close()
