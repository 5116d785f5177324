"""Real browser: a timm vision transformer loaded through the sidebar's model form (random
weights, offline), then its saliency maps computed on the Saliency page."""
import os

import pytest

from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _serve, open_page

pytestmark = pytest.mark.browser
ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit_url(session_dir):
    yield from _serve(session_dir / "e2e-vit-server.log",
                      dict(CONVLENS_DATA_DIR=str(session_dir / "e2e-vit-data"),
                           CONVLENS_CACHE_DIR=str(session_dir / "cache"), CONVLENS_WARMUP="0"))


def test_timm_vit_through_the_sidebar_and_its_saliency(vit_url, output_dir):
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = open_page(browser, vit_url + "/saliency")
        page.set_default_timeout(120_000)
        sidebar = page.get_by_test_id("stSidebar")
        page.get_by_text("Compute maps").first.wait_for(timeout=240_000)
        sidebar.get_by_role("combobox", name="Model").click()
        page.get_by_role("option", name="timm architecture (any of timm.list_models())").click()
        arch = sidebar.get_by_role("combobox", name="timm architecture")
        arch.click()
        arch.fill(ARCH)
        page.get_by_role("option", name=ARCH, exact=True).click()
        sidebar.get_by_role("button", name="Load model").click()
        sidebar.get_by_text(f"{ARCH} (timm, random, seed 0)").first.wait_for(timeout=240_000)   # Active: …
        assert "Traceback" not in page.inner_text("body")
        page.get_by_role("button", name="Compute maps").click()
        page.get_by_text("Trust checks").first.wait_for(timeout=300_000)
        page.wait_for_function("document.querySelectorAll('img').length >= 4", timeout=300_000)
        page.wait_for_timeout(1500)
        body = page.inner_text("body")
        assert "Traceback" not in body and "Grad-CAM" in body
        assert ARCH in body
        page.screenshot(path=str(output_dir / "saliency_vit.png"), full_page=True)
        browser.close()
