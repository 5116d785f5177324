"""Server time of a display-only change on the Saliency page with results shown.

An AppTest session opens the Saliency page, computes the default methods (gradient, guided
backprop, Grad-CAM) once, then changes only display controls (colormap, opacity, view)
``--repeats`` times each and times every rerun (``AppTest.run``: the script's run on the
server plus AppTest's small message handling; no browser), as wall time and as CPU time of
the script thread (which a loaded machine inflates much less). The figures that matter are
the medians per control, and their ratio to a rerun that changes nothing. AppTest compiles
the page script on every run (a server caches it), so its figures lean high.

    PYTHONPATH=$PWD .venv/bin/python bench/saliency_rerun.py [--repeats 10] [--repo PATH] [--write]

``--repo`` runs another checkout's app (e.g. the code before a change) with this script.
``--write`` puts the table into docs/benchmarks.md (section ``saliency-rerun``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--repo", default=str(HERE))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    tmp = tempfile.mkdtemp(prefix="convlens-bench-")
    os.environ.setdefault("CONVLENS_CACHE_DIR", str(Path(tmp) / "cache"))
    os.environ.setdefault("CONVLENS_DATA_DIR", str(Path(tmp) / "data"))
    os.environ.setdefault("CONVLENS_DEVICE", "cpu")
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.testing.v1 import AppTest

    cpu: list[float] = []                      # CPU seconds of the script thread, per rerun
    run_script = script_runner.ScriptRunner._run_script

    def counted(self, *a, **kw):
        t0 = time.thread_time()
        try:
            return run_script(self, *a, **kw)
        finally:
            cpu.append(time.thread_time() - t0)
    script_runner.ScriptRunner._run_script = counted

    at = AppTest.from_file(str(repo / "dashboard" / "app.py"), default_timeout=600).run()
    at.switch_page("../pages/saliency.py").run()
    at.button(key="sal_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]

    def timed(change) -> tuple[float, float]:
        change()
        t0 = time.perf_counter()
        at.run()
        dt = time.perf_counter() - t0
        assert not at.exception, [e.value for e in at.exception]
        return dt, cpu[-1]

    cmaps, alphas, views = ["viridis", "inferno"], [0.4, 0.6], ["heatmap", "interactive", "overlay"]
    timed(lambda: None)                                    # warm-up: first reruns fill caches
    times: dict[str, list[tuple[float, float]]] = {"nothing changed": [], "colormap": [], "opacity": [], "view": []}
    for i in range(args.repeats):
        times["nothing changed"].append(timed(lambda: None))
        times["colormap"].append(timed(lambda i=i: at.selectbox(key="sal_cmap").set_value(cmaps[i % 2])))
        times["opacity"].append(timed(lambda i=i: at.slider(key="sal_alpha").set_value(alphas[i % 2])))
        times["view"].append(timed(lambda i=i: at.radio(key="sal_view").set_value(views[i % 3])))
    rows = ["| change | wall median s | wall min s | script CPU median s | CPU × unchanged rerun |",
            "|---|---|---|---|---|"]
    base = statistics.median(c for _, c in times["nothing changed"])
    for name, ts in times.items():
        wall, cpu_s = [w for w, _ in ts], [c for _, c in ts]
        med = statistics.median(cpu_s)
        rows.append(f"| {name} | {statistics.median(wall):.3f} | {min(wall):.3f} | {med:.3f} | {med / base:.2f} |")
    load = os.getloadavg()[0]
    table = "\n".join(rows)
    print(f"repo {repo}; {args.repeats} repeats; load average {load:.1f}\n{table}")
    if args.write:
        sys.path.insert(0, str(HERE))
        from bench._report import machine, write_section
        write_section("saliency-rerun", f"## Saliency: display-only reruns (bench/saliency_rerun.py)\n\n"
                                        f"Machine: {machine()}; 1-minute load average {load:.1f}.\n\n{table}\n")


if __name__ == "__main__":
    main()
