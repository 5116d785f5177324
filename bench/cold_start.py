"""Cold start: from ``streamlit run dashboard/app.py`` to the home page's top-5 in a browser.

Measures (1) the whole cold start in a real server with Chromium: process start -> health
-> first page -> top-5 table visible, (2) where it goes: the import time of the modules the
first run imports (``python -X importtime``, summed by top-level package), and the default
model's load and first forward in a fresh process. Writes docs/benchmarks.md (section
"cold-start"). Run: ``PYTHONPATH=$PWD .venv/bin/python bench/cold_start.py [--runs N]``.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._report import machine, write_section  # noqa: E402

PROBE = r"""
import time, sys
t0 = time.perf_counter()
import torch
t_torch = time.perf_counter()
import streamlit
t_st = time.perf_counter()
from analysis.core.models.loaders import default_bundle
from analysis.core.predict import predict
from analysis.core.images import gallery_image
t_an = time.perf_counter()
import dashboard.sidebar, dashboard.share, dashboard.audit_ui, dashboard.widgets, dashboard.render
t_dash = time.perf_counter()
b = default_bundle(torch.device("cpu"))
t_model = time.perf_counter()
predict(b, gallery_image("chelsea"), k=5)
t_pred = time.perf_counter()
print(f"torch={t_torch-t0:.2f} streamlit={t_st-t_torch:.2f} analysis={t_an-t_st:.2f} dashboard={t_dash-t_an:.2f} "
      f"model={t_model-t_dash:.2f} forward={t_pred-t_model:.2f}")
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_cold_start(data: Path, cache: Path) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS
    port = free_port()
    env = dict(os.environ, CONVLENS_DEVICE="cpu", CONVLENS_DATA_DIR=str(data), CONVLENS_CACHE_DIR=str(cache),
               PYTHONPATH=str(REPO), **({"CONVLENS_WARMUP": "0"} if os.environ.get("BENCH_NO_WARMUP") else {}))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
        t_health = time.perf_counter()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            t_open = time.perf_counter()
            page.goto(url, wait_until="domcontentloaded")
            page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=120_000)   # the top-5 table
            t_top5 = time.perf_counter()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    return {"health": t_health - t0, "top5_after_open": t_top5 - t_open, "total": t_top5 - t0 - (t_open - t_health)}


def import_profile() -> list[tuple[str, float]]:
    """Cumulative import time (s) by top-level package of the first run's imports."""
    code = ("import dashboard.sidebar, dashboard.share, dashboard.audit_ui, dashboard.widgets, dashboard.render,"
            " dashboard.lifecycle, dashboard.warmup, analysis.core.predict")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO))).stderr
    tops: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m:                                                       # self time, by top-level package
            name = m.group(3).split(".")[0]
            tops[name] = tops.get(name, 0.0) + int(m.group(1)) / 1e6
    return sorted(tops.items(), key=lambda kv: -kv[1])[:10]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO), CONVLENS_DEVICE="cpu")).stdout.strip()
    print("fresh process:", probe)
    imports = import_profile()
    print("imports:", ", ".join(f"{k} {v:.2f} s" for k, v in imports))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"                                 # shared: the digits model etc. stay trained
        for i in range(args.runs):
            r = browser_cold_start(Path(tmp) / f"data{i}", cache)
            print(f"run {i}: health {r['health']:.1f} s, top-5 {r['top5_after_open']:.1f} s after opening, "
                  f"total {r['total']:.1f} s")
            runs.append(r)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    body = f"""### Cold start to the home page's top-5 (bench/cold_start.py)

Machine: {machine()}. Server start (`streamlit run dashboard/app.py`) to the health check, then
a fresh Chromium opens `/` and waits for the top-5 table; median of {len(runs)} runs (browser
start excluded).

| | seconds |
|---|---|
| process start → server healthy | {med['health']:.1f} |
| page opened → top-5 shown | {med['top5_after_open']:.1f} |
| **cold start total** | **{med['total']:.1f}** |

Where a fresh process spends it (same machine): {probe.replace('=', ' ').replace(' ', ' ')} (s).
Largest imports of the first run: {', '.join(f'{k} {v:.2f} s' for k, v in imports)}.

Status: measurement only. These figures come from a 2-core machine shared with other jobs
(its load changed the same run by ±50 %); the issue's 13.2 s was taken on a quieter one.
Importing torch and the analysis modules and the first forward account for about half of
the page's time; the rest of the first run (layer table, audit record, rendering) and the
UMAP warm-up thread competing for 2 cores are still to be profiled. The ≤ 6 s goal is not
reached yet.
"""
    print(body)
    if not args.no_write:
        write_section("cold-start", body)


if __name__ == "__main__":
    main()
