"""The point map in real Chromium (headless, software rendering) at 100k and 1M points,
against plotly's WebGL scatter (scattergl, what the Embeddings page drew before) on the same
points: time to first draw, hover, lasso selection and the count's round trip to Python.

    python bench/pointmap.py [--write] [--sizes 100000 1000000] [--no-plotly]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import machine, write_section
from tests.ui.pointmap_browser import drive, serve
from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS

PLOTLY_PAGE = """<html><body><div id="g" style="width:700px;height:500px"></div><script src="plotly.min.js"></script>
<script>
window.draw = function(n) {
  const x = new Float32Array(n), y = new Float32Array(n), c = new Uint8Array(n);
  let s = 1; const r = () => { s = (s * 16807) % 2147483647; return s / 2147483647; };
  for (let i = 0; i < n; i++) { const k = i % 10; x[i] = Math.cos(k) * 10 + (r() - 0.5) * 6;
                                y[i] = Math.sin(k) * 10 + (r() - 0.5) * 6; c[i] = k; }
  const t = performance.now();
  return Plotly.newPlot('g', [{type: 'scattergl', mode: 'markers', x: x, y: y,
                               marker: {size: 2, color: c}, hoverinfo: 'none'}],
                        {dragmode: 'lasso', margin: {l: 20, r: 20, t: 20, b: 20}})
    .then(() => performance.now() - t);
};
</script></body></html>"""


def plotly_scattergl(n: int) -> dict:
    import plotly
    from playwright.sync_api import sync_playwright
    d = Path(tempfile.mkdtemp())
    (d / "plotly.min.js").write_bytes((Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes())
    (d / "index.html").write_text(PLOTLY_PAGE)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 800, "height": 600})
        page.goto((d / "index.html").as_uri())
        draw_ms = page.evaluate(f"draw({n})")
        t = time.perf_counter()
        page.mouse.move(250, 150)
        page.mouse.down()
        for x, y in [(450, 150), (450, 350), (250, 350), (250, 155)]:
            page.mouse.move(x, y, steps=4)
        page.mouse.up()
        page.wait_for_timeout(50)
        lasso = time.perf_counter() - t
        b.close()
    return {"draw_s": draw_ms / 1000, "lasso_s": lasso}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--no-plotly", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        tmp = Path(tempfile.mkdtemp())
        with serve(n, tmp / "log", tmp / "cache") as url:
            drive(url)                                   # first load writes the files; not timed
            r = drive(url)
        t = r["timing_ms"]
        rows.append(f"| {n:,} | convlens point map (canvas) | {r['first_draw_s']:.1f} "
                    f"(fetch {t['fetch'] / 1000:.2f}, decode {t['decode'] / 1000:.2f}, index {t['index'] / 1000:.2f}, "
                    f"draw {t['draw'] / 1000:.2f}) | {r['hover_s']:.2f} | {r['select_ms'] / 1000:.2f} "
                    f"({r['roundtrip_s']:.1f} to Python) |")
        print(rows[-1], flush=True)
        if not args.no_plotly:
            pr = plotly_scattergl(n)
            rows.append(f"| {n:,} | plotly scattergl | {pr['draw_s']:.1f} (draw only) | – | {pr['lasso_s']:.1f} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        "## Drawing a million points in the browser (bench/pointmap.py)", "",
        f"Machine: {machine()}; headless Chromium (software rendering, no GPU).", "",
        "| points | map | first draw (s) | hover (s) | lasso select (s) |", "|---:|---|---|---:|---|", *rows, "",
        "First draw counts from opening the page in a fresh browser until the map is drawn (the server "
        "wrote the map's binary files on an earlier, untimed visit; it writes them once per map). Hover: "
        "the box shows after the mouse reaches a point. Lasso: the selection computed in the browser, "
        "and in brackets until the exact count has reached Python. The canvas map needs no WebGL; "
        "plotly's scattergl runs on SwiftShader here, which is why its lasso takes minutes at a million "
        "points."])
    if args.write:
        write_section("pointmap", body)
    print(body)


if __name__ == "__main__":
    main()
