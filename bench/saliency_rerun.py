"""Server time of a display-only change on the Saliency page with results shown.

An AppTest session opens the Saliency page, computes the default methods (gradient, guided
backprop, Grad-CAM) once, then changes only display controls (colormap, opacity, view)
``--repeats`` times each and times every rerun (``AppTest.run``: the script's run on the
server plus AppTest's small message handling; no browser). The figure that matters is the
median per control, and its ratio to a rerun that changes nothing.

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
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(repo / "dashboard" / "app.py"), default_timeout=600).run()
    at.switch_page("../pages/saliency.py").run()
    at.button(key="sal_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]

    def timed(change) -> float:
        change()
        t0 = time.perf_counter()
        at.run()
        dt = time.perf_counter() - t0
        assert not at.exception, [e.value for e in at.exception]
        return dt

    cmaps, alphas, views = ["viridis", "inferno"], [0.4, 0.6], ["heatmap", "interactive", "overlay"]
    timed(lambda: None)                                    # warm-up: first reruns fill caches
    times: dict[str, list[float]] = {"nothing changed": [], "colormap": [], "opacity": [], "view": []}
    for i in range(args.repeats):
        times["nothing changed"].append(timed(lambda: None))
        times["colormap"].append(timed(lambda i=i: at.selectbox(key="sal_cmap").set_value(cmaps[i % 2])))
        times["opacity"].append(timed(lambda i=i: at.slider(key="sal_alpha").set_value(alphas[i % 2])))
        times["view"].append(timed(lambda i=i: at.radio(key="sal_view").set_value(views[i % 3])))
    base = statistics.median(times["nothing changed"])
    rows = ["| change | median s | min s | max s | × unchanged rerun |", "|---|---|---|---|---|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(f"| {name} | {med:.3f} | {min(ts):.3f} | {max(ts):.3f} | {med / base:.2f} |")
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
