"""Real browser on the Data-set audit page (digits model, 200 digits): evaluate, click a
cell of the confusion matrix, explain one of its images, run batch saliency and the
data-set trust verdict. Results are read from the DOM; a screenshot goes to test-output/."""
import json
import os
import re
from urllib.parse import urlencode

import pytest

from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def audit_url(session_dir):
    yield from _serve(session_dir / "e2e-audit-server.log",
                      dict(CONVLENS_DATA_DIR=str(session_dir / "e2e-audit-data"),
                           CONVLENS_CACHE_DIR=str(session_dir / "cache"), CONVLENS_WARMUP="0"))


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: make test installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


_CELL_XY = """([row, col]) => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data[0].type === 'heatmap');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  const x = gd.data[0].x[col], y = gd.data[0].y[row];
  return [r.left + xa._offset + xa.d2p(x), r.top + ya._offset + ya.d2p(y)];
}"""


def test_dataset_audit_in_browser(chromium, audit_url, output_dir):
    query = urlencode({"model": json.dumps({"kind": "digits"}, separators=(",", ":")), "da_scope": "sample",
                       "da_n": "200"})
    page = chromium.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{audit_url}/dataset-audit?{query}", wait_until="domcontentloaded")
    page.get_by_role("button", name="Evaluate").wait_for(timeout=240_000)
    page.get_by_role("button", name="Evaluate").click()
    page.get_by_text("Images scored").first.wait_for(timeout=240_000)
    page.get_by_text("200 / 200").first.wait_for(timeout=60_000)

    # click the diagonal cell "true 0 -> predicted 0" of the confusion matrix
    page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot')].some("
                           "g => g.data && g.data[0].type === 'heatmap')", timeout=60_000)
    page.wait_for_timeout(1500)
    x, y = page.evaluate(_CELL_XY, [0, 0])
    page.mouse.click(x, y)
    page.get_by_text(re.compile(r"image\(s\): true 0 → predicted 0")).first.wait_for(timeout=120_000)
    heading = page.get_by_text(re.compile(r"image\(s\): true 0 → predicted 0")).first.inner_text()
    n_cell = int(re.match(r"(\d+) image", heading).group(1))
    assert n_cell >= 15                                          # ~20 zeros in a stratified 200, almost all right

    # explain one of its images: it becomes the sidebar's subject
    page.get_by_role("button", name="Explain").first.click()
    page.get_by_text("is now the image of every page").first.wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"Index \(0 … 1,796\)")).first.wait_for(timeout=60_000)

    # batch saliency on a random sample
    page.get_by_role("tab", name="Saliency over many images").click()
    page.get_by_role("button", name="Run batch saliency").wait_for(timeout=60_000)
    page.get_by_role("button", name="Run batch saliency").click()
    page.get_by_text("Saliency inside the central quarter").first.wait_for(timeout=240_000)
    page.get_by_text("Class-mean maps").first.wait_for(timeout=60_000)

    # the data-set trust verdict
    page.get_by_role("tab", name="Trust over many images").click()
    page.get_by_role("button", name="Run the trust check").wait_for(timeout=60_000)
    n_box = page.get_by_label("N images", exact=True).first
    n_box.fill("20")
    n_box.press("Enter")
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Run the trust check").click()
    page.get_by_text(re.compile(r"beats random on \d+% of 20 images")).first.wait_for(timeout=300_000)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    assert "Traceback" not in body and "unexpected error" not in body
    assert len(re.findall(r"beats random on \d+% of 20 images", body)) == 4
    assert "da_tab=Trust" in page.url                           # the link names the tab
    page.screenshot(path=str(output_dir / "dataset_audit.png"), full_page=True)
    page.close()
