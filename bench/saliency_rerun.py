"""Server time of a display-only change on the Saliency page with results shown.

Default (``--mode server``): the real thing. ``streamlit run dashboard/server.py`` (what
``make run`` starts) under bench/_timed_server.py, which logs the wall and CPU time of every
script run on the server; Chromium opens the Saliency page, computes the default methods
(gradient, guided backprop, Grad-CAM) once, then changes one display control at a time
(colormap, opacity, view; and a plain rerun with nothing changed, Streamlit's "R" key) for
``--repeats`` rounds. Each change's server time is the script run it triggered, from the
start of the run to its end (everything the server computes and sends for that rerun).

``--mode apptest``: the same changes through Streamlit's AppTest in this process (no
browser, no server); AppTest builds a new script runner and recompiles the scripts on every
run, which a server does once, so its times lean high. Both modes report the script run's
wall time (median, p90) and the CPU time of the script thread.

    PYTHONPATH=$PWD .venv/bin/python bench/saliency_rerun.py [--repeats 20] [--mode server|apptest] [--repo PATH] [--write]

``--repo`` runs another checkout's app (e.g. the code before a change) with this script.
``--write`` puts the table into docs/benchmarks.md (section ``saliency-rerun``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CHANGES = ("nothing changed", "colormap", "opacity", "view")


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def run_server(repo: Path, repeats: int) -> dict[str, list[tuple[float, float]]]:
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(HERE))
    from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS

    tmp = Path(tempfile.mkdtemp(prefix="convlens-bench-"))
    log = tmp / "runs.log"
    log.write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, CONVLENS_DEVICE="cpu", CONVLENS_DATA_DIR=str(tmp / "data"),
               CONVLENS_CACHE_DIR=str(tmp / "cache"), PYTHONPATH=str(repo), CONVLENS_RUN_LOG=str(log),
               CONVLENS_WARMUP="0")            # no UMAP compile in the background of this page
    proc = subprocess.Popen([sys.executable, str(HERE / "bench" / "_timed_server.py"),
                             str(repo / "dashboard" / "server.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.err", "w"))
    url = f"http://127.0.0.1:{port}"

    def lines() -> list[list[str]]:
        return [ln.split() for ln in log.read_text().splitlines() if ln.startswith("run ")]

    def settle(n0: int, what: str, timeout: float = 60.0) -> list[str]:
        """Wait for the run(s) the action triggered; the last one's line."""
        t0 = time.perf_counter()
        while len(lines()) <= n0:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{what}: no rerun within {timeout:.0f} s")
            time.sleep(0.01)
        n = len(lines())
        while True:                             # a widget may send a second rerun: take the last
            time.sleep(0.3)
            if len(lines()) == n:
                return lines()[-1]
            n = len(lines())

    times: dict[str, list[tuple[float, float]]] = {k: [] for k in CHANGES}
    try:
        t0 = time.perf_counter()
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    raise RuntimeError((tmp / "server.err").read_text()[-2000:]) from None
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/saliency", wait_until="domcontentloaded")
            page.get_by_role("button", name="Compute maps").wait_for(timeout=240_000)
            page.get_by_role("button", name="Compute maps").click()
            page.locator(".st-key-sal_trust").wait_for(timeout=240_000)
            time.sleep(1.0)
            cmaps, views = ("viridis", "inferno"), ("heatmap", "interactive", "overlay")   # each step a change
            slider = page.locator('.st-key-sal_alpha input[type="range"]')

            def act(change: str, i: int) -> None:
                if change == "nothing changed":
                    page.locator("h1").first.click()        # focus the page, then Streamlit's rerun key
                    page.keyboard.press("r")
                elif change == "colormap":
                    page.locator('.st-key-sal_cmap [role="combobox"]').click()
                    page.get_by_role("option", name=cmaps[(i + 1) % 2], exact=True).click()
                elif change == "opacity":
                    slider.focus()
                    page.keyboard.press("ArrowRight" if (i + 1) % 2 == 0 else "ArrowLeft")
                else:
                    page.locator(".st-key-sal_view").get_by_text(views[(i + 1) % 3], exact=True).click()

            for i in range(-1, repeats):                  # round -1 warms every cache up, untimed
                for change in CHANGES:
                    n0 = len(lines())
                    act(change, i)
                    last = settle(n0, change, 60.0 if i >= 0 else 120.0)
                    if i >= 0:
                        times[change].append((float(last[2]), float(last[3])))
            assert "Traceback" not in page.inner_text("body")
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return times


def run_apptest(repo: Path, repeats: int) -> dict[str, list[tuple[float, float]]]:
    sys.path.insert(0, str(repo))
    tmp = tempfile.mkdtemp(prefix="convlens-bench-")
    os.environ.setdefault("CONVLENS_CACHE_DIR", str(Path(tmp) / "cache"))
    os.environ.setdefault("CONVLENS_DATA_DIR", str(Path(tmp) / "data"))
    os.environ.setdefault("CONVLENS_DEVICE", "cpu")
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.testing.v1 import AppTest

    rec: list[tuple[float, float]] = []          # (wall, CPU of the script thread) per run
    orig = script_runner.ScriptRunner._run_script

    def timed(self, *a, **kw):
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return orig(self, *a, **kw)
        finally:
            rec.append((time.perf_counter() - w0, time.thread_time() - c0))
    script_runner.ScriptRunner._run_script = timed

    at = AppTest.from_file(str(repo / "dashboard" / "app.py"), default_timeout=600).run()
    at.switch_page("../pages/saliency.py").run()
    at.button(key="sal_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    cmaps, alphas, views = ["viridis", "inferno"], [0.4, 0.6], ["heatmap", "interactive", "overlay"]
    acts = {"nothing changed": lambda i: None,
            "colormap": lambda i: at.selectbox(key="sal_cmap").set_value(cmaps[i % 2]),
            "opacity": lambda i: at.slider(key="sal_alpha").set_value(alphas[i % 2]),
            "view": lambda i: at.radio(key="sal_view").set_value(views[i % 3])}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in CHANGES}
    for i in range(-1, repeats):
        for change in CHANGES:
            acts[change](i)
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            if i >= 0:
                times[change].append(rec[-1])
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--mode", choices=("server", "apptest"), default="server")
    ap.add_argument("--repo", default=str(HERE))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    load0 = os.getloadavg()[0]
    times = (run_server if args.mode == "server" else run_apptest)(repo, args.repeats)
    load1 = os.getloadavg()[0]
    rows = ["| change | server time median s | p90 s | max s | script CPU median s |", "|---|---|---|---|---|"]
    for name, ts in times.items():
        wall, cpu = [w for w, _ in ts], [c for _, c in ts]
        rows.append(f"| {name} | {statistics.median(wall):.3f} | {p90(wall):.3f} | {max(wall):.3f} | "
                    f"{statistics.median(cpu):.3f} |")
    allw = [w for ts in times.values() for w, _ in ts if ts is not times["nothing changed"]]
    table = "\n".join(rows)
    summary = (f"display changes together ({len(allw)} reruns): median {statistics.median(allw):.3f} s, "
               f"p90 {p90(allw):.3f} s")
    print(f"repo {repo}; mode {args.mode}; {args.repeats} rounds; load {load0:.1f} → {load1:.1f}\n{table}\n{summary}")
    if args.write:
        sys.path.insert(0, str(HERE))
        from bench._report import machine, write_section
        write_section("saliency-rerun", f"## Saliency: display-only reruns (bench/saliency_rerun.py)\n\n"
                                        f"Machine: {machine()}; 1-minute load average {load0:.1f} at the start, "
                                        f"{load1:.1f} at the end. Mode `{args.mode}`, {args.repeats} rounds.\n\n"
                                        f"{table}\n\n{summary}.\n")


if __name__ == "__main__":
    main()
