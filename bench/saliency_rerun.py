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

    PYTHONPATH=$PWD .venv/bin/python bench/saliency_rerun.py [--repeats 20] [--mode server|apptest] [--compare PATH] [--write]

``--compare`` measures another checkout's app too (e.g. the code before a change, ``git
archive`` into a folder), right after this one; ``--repo`` measures another checkout instead.
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

    def settle(n0: int, what: str, timeout: float = 60.0, again=None) -> list[str]:
        """Wait for the run(s) the action triggered; the last one's line. ``again`` repeats
        an action that may be lost (a key press before the page has focus) every 5 s."""
        t0 = t_again = time.perf_counter()
        while len(lines()) <= n0:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{what}: no rerun within {timeout:.0f} s")
            if again is not None and time.perf_counter() - t_again > 5:
                again()
                t_again = time.perf_counter()
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
                    last = settle(n0, change, 60.0 if i >= 0 else 120.0,
                                  again=(lambda: act(change, i)) if change == "nothing changed" else None)
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


NOTE = """Where the time went before (cProfile of the server's script thread, display-only reruns):
Streamlit's `runner.postScriptGC` runs a full `gc.collect()` after every script run; with
torch, a model and pandas loaded that alone took 0.28 s of each rerun on this loaded machine,
more than the script itself. It is off now (.streamlit/config.toml): Python's generational GC
still collects cycles, and the start-up preload freezes the objects alive at start-up
(`gc.freeze`) so that its full collections skip them. Next: `st.image` re-encoded the maps'
cached PNG bytes as JPEG on every rerun (its `auto` format picks JPEG for pictures without
alpha) and encoded the sidebar picture from its array on every rerun of every page; the maps
now go out as `output_format="PNG"`, the sidebar picture and the randomisation strip's
thumbnails are encoded once (at their display size) and cached. The maps themselves were
already cached per result and display setting, and the top-5 per model and image."""


def _summary(times: dict[str, list[tuple[float, float]]]) -> tuple[float, float, int]:
    allw = [w for name, ts in times.items() if name != "nothing changed" for w, _ in ts]
    return statistics.median(allw), p90(allw), len(allw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--mode", choices=("server", "apptest"), default="server")
    ap.add_argument("--repo", default=str(HERE))
    ap.add_argument("--compare", default=None, help="server mode: another checkout, measured after this one")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.compare and args.mode == "apptest":
        ap.error("--compare needs --mode server (AppTest runs one app per process)")
    repos = [Path(args.repo).resolve()] + ([Path(args.compare).resolve()] if args.compare else [])
    load0 = os.getloadavg()[0]
    results = {}
    for repo in repos:
        results[repo] = (run_server if args.mode == "server" else run_apptest)(repo, args.repeats)
    load1 = os.getloadavg()[0]

    def name(repo: Path) -> str:
        return "this checkout" if repo == HERE else repo.name
    rows = ["| change | " + " | ".join(f"{name(r)}: median / p90 s (script CPU median s)" for r in repos) + " |",
            "|---|" + "---|" * len(repos)]
    for change in CHANGES:
        cells = []
        for r in repos:
            ts = results[r][change]
            wall, cpu = [w for w, _ in ts], [c for _, c in ts]
            cells.append(f"{statistics.median(wall):.3f} / {p90(wall):.3f} ({statistics.median(cpu):.3f})")
        rows.append(f"| {change} | " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    summary = "; ".join(f"{name(r)}: median {m:.3f} s, p90 {q:.3f} s over {n} display-only reruns"
                        for r in repos for m, q, n in [_summary(results[r])])
    print(f"mode {args.mode}; {args.repeats} rounds; load {load0:.1f} → {load1:.1f}\n{table}\n{summary}")
    if args.write:
        sys.path.insert(0, str(HERE))
        from bench._report import machine, write_section
        how = ("the real server (`streamlit run dashboard/server.py`) driven by Chromium; server time = "
               "the script run each change triggered, start to end (timed inside Streamlit's ScriptRunner)"
               if args.mode == "server" else "AppTest (the script run's wall time inside Streamlit's ScriptRunner)")
        write_section("saliency-rerun", f"""## Saliency: display-only reruns (bench/saliency_rerun.py)

Machine: {machine()}; 1-minute load average {load0:.1f} at the start and {load1:.1f} at the
end (2 cores shared with other engineers' jobs: the wall times include waiting for a core;
the script thread's CPU time much less). Saliency page with gradient, guided backprop and
Grad-CAM shown; {args.repeats} rounds of: a rerun with nothing changed (Streamlit's R key),
a colormap change, an opacity step, a view change (heatmap → interactive → overlay); mode:
{how}.

{table}

**{summary}** (goal ≤ 0.3 s server time).

{NOTE}
""")


if __name__ == "__main__":
    main()
