"""Drive the point map in real Chromium (shared by tests/ui/test_e2e_pointmap.py and
bench/pointmap.py): start tests/ui/pointmap_app.py, wait for the first draw, hover, lasso."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

from tests.paths import REPO
from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _serve


@contextmanager
def serve(n: int, log_path, cache_dir):
    """The point-map test page with ``n`` points on a free port (tests/ui/test_e2e_browser._serve)."""
    yield from _serve(log_path, {"CONVLENS_POINTMAP_N": str(n), "CONVLENS_CACHE_DIR": str(cache_dir),
                                 "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")},
                      script="tests/ui/pointmap_app.py")


def drive(url: str, shot=None) -> dict:
    """Open the page, wait for the map, hover a point, lasso a region, wait for the count
    to reach Python. Returns timings (s) and what the page reported."""
    from playwright.sync_api import sync_playwright
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1100, "height": 900})
        t0 = time.perf_counter()
        page.goto(url)
        frame_el = page.wait_for_selector("iframe[title*='pointmap']", timeout=120_000)
        frame = frame_el.content_frame()
        frame.wait_for_selector("canvas[data-ready='1']", timeout=180_000)
        out["first_draw_s"] = time.perf_counter() - t0
        cv = frame.query_selector("canvas")
        out["n"] = int(cv.get_attribute("data-n"))
        out["timing_ms"] = json.loads(cv.get_attribute("data-timing"))
        k, ox, oy = json.loads(cv.get_attribute("data-view"))
        box = cv.bounding_box()
        # hover the screen position of data point (10, 0): the centre of cluster 0
        hx, hy = ox + k * 10.0, oy - k * 0.0
        t = time.perf_counter()
        page.mouse.move(box["x"] + hx - 3, box["y"] + hy - 3)
        page.mouse.move(box["x"] + hx, box["y"] + hy)
        frame.wait_for_selector("#tip[style*='block']", timeout=30_000)
        out["hover_s"] = time.perf_counter() - t
        out["hover_index"] = int(frame.eval_on_selector("#tip", "e => e.dataset.index"))
        # lasso a square around cluster 0 in screen pixels
        poly = [(hx - 60, hy - 60), (hx + 60, hy - 60), (hx + 60, hy + 60), (hx - 60, hy + 60)]
        t = time.perf_counter()
        page.mouse.move(box["x"] + poly[0][0], box["y"] + poly[0][1])
        page.mouse.down()
        for x, y in poly[1:] + [poly[0]]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
        page.mouse.up()
        frame.wait_for_function("() => document.querySelector('canvas').dataset.selected !== undefined",
                                timeout=120_000)
        out["lasso_s"] = time.perf_counter() - t
        out["selected_js"] = int(cv.get_attribute("data-selected"))
        out["select_ms"] = float(cv.get_attribute("data-select-ms"))
        page.wait_for_function(f"() => document.body.innerText.includes('selected {out['selected_js']} ')",
                               timeout=120_000)
        out["roundtrip_s"] = time.perf_counter() - t
        out["view"] = (k, ox, oy)
        out["polygon"] = poly
        if shot:
            page.screenshot(path=str(shot))
        b.close()
    return out
