"""Time to first draw and per interaction of the Embeddings page past max_dataset_images
(issue 18), in real Chromium: python bench/embeddings_page_flow.py [--n 200000] [--write].

Set-up (untimed, printed): a manifest of ``n`` 8 x 8 PNG files (hard links to the 1,797
scikit-learn digits, image i showing digit i % 1,797) in a temporary folder; its features
stored as the page stores them (``store_features``: the digits CNN's features of image i are
those of digit i % 1,797, as the executor's features job computes them — checked equal in
tests/ui/test_app_embeddings_large.py) and its default map (``large_map``, 50,000-point
sample) kept beside them, timed. Then a fresh ``streamlit run`` of the app and a browser
opening the page's link (digits model, the manifest, the map tab):

* first draw, cold: the server's first visit (manifest indexing, features opened
  memory-mapped, the map read, the point map's binary files written) until the canvas drew;
* first draw, warm: a second browser on the same server;
* hover: until the hover box shows; lasso: until the browser counted the selection, and
  until the page showed the count and the grid of the first 48 images (read from their files).

The figures go into the embeddings_million section of docs/benchmarks.md (--write).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prepare(n: int, tmp: Path) -> dict:
    """Files, manifest, stored features and kept map; returns timings and the link's parts."""
    from PIL import Image

    from analysis.core.datasets import load_digits_dataset
    from analysis.core.models.loaders import ModelSpec, load_bundle
    from analysis.dataset.manifest import DatasetRef, open_dataset
    from analysis.embeddings.features import penultimate_layer, run_extract
    from analysis.embeddings.large import large_map, save_map, store_features
    from dashboard.embeddings_large_ui import features_folder
    d = load_digits_dataset()
    root = tmp / "ds"
    (root / "src").mkdir(parents=True)
    (root / "img").mkdir()
    for j in range(len(d)):
        Image.fromarray(np.asarray(d.get(j))).save(root / "src" / f"{j}.png")
    rows = ["path,label"]
    for i in range(n):
        j = i % len(d)
        os.link(root / "src" / f"{j}.png", root / "img" / f"{i:07d}.png")
        rows.append(f"img/{i:07d}.png,{int(d.labels[j])}")
    manifest = root / "data.csv"
    manifest.write_text("\n".join(rows) + "\n")
    t = time.perf_counter()
    ds = open_dataset(DatasetRef("manifest", path=str(manifest)))
    t_index = time.perf_counter() - t
    spec = ModelSpec("digits")
    bundle = load_bundle(spec)
    layer = penultimate_layer(bundle)
    fs = run_extract(bundle, d, layer)
    folder = features_folder(bundle, ds, layer)

    def tables():
        for s in range(0, n, 65_536):
            idx = np.arange(s, min(n, s + 65_536))
            j = idx % len(d)
            yield {"index": idx, "label": d.labels[j], "pred": fs.predictions[j], "confidence": fs.confidences[j],
                   "features": fs.features[j]}
    sf = store_features(tables(), n, fs.features.shape[1], folder, meta={"layer": layer, "engine": "local"})
    t = time.perf_counter()
    m = large_map(sf.features, labels=sf.labels)
    t_map = time.perf_counter() - t
    save_map(folder, m)
    return {"manifest": str(manifest), "index_s": t_index, "map_s": t_map, "seconds": m.seconds,
            "p0": [float(v) for v in m.coords[0]]}


def visit(url: str, n: int, lasso: bool, shot=None, p0=(0.0, 0.0)) -> dict:
    """Open ``url``, wait for the map; hover and lasso when asked. Timings in seconds."""
    from playwright.sync_api import sync_playwright

    from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1200, "height": 1400})
        t0 = time.perf_counter()
        page.goto(url)
        frame_el = page.wait_for_selector("iframe[title*='pointmap']", timeout=600_000)
        frame = frame_el.content_frame()
        frame.wait_for_selector("canvas[data-ready='1']", timeout=600_000)
        out["first_draw_s"] = time.perf_counter() - t0
        cv = frame.query_selector("canvas")
        out["n"] = int(cv.get_attribute("data-n"))
        if lasso:
            # let the run finish (captions, the grid below) so that the canvas no longer moves
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                   timeout=300_000)
            page.wait_for_timeout(1000)
            out["settled_s"] = time.perf_counter() - t0
            frame_el.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            box = cv.bounding_box()
            k, ox, oy = json.loads(cv.get_attribute("data-view"))
            cx, cy = ox + k * p0[0], oy - k * p0[1]          # the screen position of point 0
            t = time.perf_counter()
            page.mouse.move(box["x"] + cx - 3, box["y"] + cy - 3)
            page.mouse.move(box["x"] + cx, box["y"] + cy)
            frame.wait_for_selector("#tip[style*='block']", timeout=60_000)
            out["hover_s"] = time.perf_counter() - t
            poly = [(cx - 80, cy - 80), (cx + 80, cy - 80), (cx + 80, cy + 80), (cx - 80, cy + 80)]
            t = time.perf_counter()
            page.mouse.move(box["x"] + poly[0][0], box["y"] + poly[0][1])
            page.mouse.down()
            for x, y in poly[1:] + [poly[0]]:
                page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
            page.mouse.up()
            if shot:
                page.screenshot(path=str(shot))
            frame.wait_for_function("() => document.querySelector('canvas').dataset.selected !== undefined",
                                    timeout=120_000)
            out["lasso_s"] = time.perf_counter() - t
            out["selected"] = int(cv.get_attribute("data-selected"))
            page.wait_for_function(f"() => document.body.innerText.includes('{out['selected']:,} selected')",
                                   timeout=300_000)
            want = min(48, out["selected"])
            page.wait_for_function(f"() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= {want}",
                                   timeout=300_000)
            out["grid_s"] = time.perf_counter() - t
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--limit", type=int, default=0, help="max_dataset_images for the server (smoke runs)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="convlens-pageflow-"))
    env = {"CONVLENS_DATA_DIR": str(tmp / "data"), "CONVLENS_CACHE_DIR": str(tmp / "cache"),
           "CONVLENS_DATASET_DIRS": str(tmp / "ds"), "CONVLENS_DEVICE": "cpu"}
    if args.limit:
        env["CONVLENS_MAX_DATASET_IMAGES"] = str(args.limit)
    os.environ.update(env)
    from analysis.core.config import set_config
    set_config(None)
    t = time.perf_counter()
    info = prepare(args.n, tmp)
    print(f"prepared in {time.perf_counter() - t:.0f} s: {info}", flush=True)
    from tests.ui.test_e2e_browser import _serve
    ds = json.dumps({"kind": "manifest", "ref": info["manifest"], "label": info["manifest"]}, separators=(",", ":"))
    query = urlencode({"model": json.dumps({"kind": "digits"}, separators=(",", ":")), "dataset": ds,
                       "em_tab": "Map of the data set"}, quote_via=quote)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    gen = _serve(tmp / "server.log", {k: v for k, v in env.items() if k != "CONVLENS_DEVICE"})
    url = next(gen)
    try:
        cold = visit(f"{url}/embeddings?{query}", args.n, lasso=False)
        print("cold", cold, flush=True)
        warm = visit(f"{url}/embeddings?{query}", args.n, lasso=True, shot=tmp / "lasso.png",
                     p0=info["p0"])
        print("warm", warm, flush=True)
    finally:
        gen.close()
    if cold["n"] != args.n or warm["n"] != args.n:
        raise SystemExit(f"the map drew {cold['n']} / {warm['n']} points, not {args.n}")
    text = (f"**The page flow past max_dataset_images** (bench/embeddings_page_flow.py, {args.n:,} images of a "
            f"manifest, real Chromium, same machine and load): manifest indexed in {info['index_s']:.0f} s; "
            f"the default map of the stored features {info['map_s']:.0f} s (kept on disk); opening the page's link "
            f"on a fresh server until the {args.n:,}-point map drew **{cold['first_draw_s']:.1f} s** (indexing the "
            f"manifest, opening the features memory-mapped, reading the kept map, writing the point map's files), "
            f"from a second browser **{warm['first_draw_s']:.1f} s**; hover {warm['hover_s']:.2f} s; a lasso of "
            f"{warm['selected']:,} points counted in the browser in {warm['lasso_s']:.2f} s, the count and the grid "
            f"of the first 48 images (read from their files) on the page {warm['grid_s']:.1f} s after the lasso.")
    print(text, flush=True)
    if args.write:
        from bench._report import DOC
        doc = DOC.read_text()
        end = "<!-- /bench:embeddings_million -->"
        doc = re.sub(r"\n\*\*The page flow past max_dataset_images\*\*[^\n]*\n", "\n", doc)
        doc = doc.replace(end, text + "\n" + end)
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
