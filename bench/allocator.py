"""glibc allocator tuning (analysis/core/allocator.py) on vs off: batched forward throughput of the
default model at several batch sizes, forward+backward, and an exact occlusion map, each in a
fresh process (the settings apply at start), alternating on/off for several rounds; the
kernel (system) CPU time of each process shows the page faults the tuning avoids.

    .venv/bin/python bench/allocator.py [--rounds 3] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
import torch
import analysis
from analysis.core.images import gallery_image
from analysis.core.models.loaders import default_bundle
from analysis.saliency.methods import attribute
b = default_bundle(torch.device("cpu"))
m = b.model
out = {"tuned": analysis.core.allocator._done}
def rate(fn, n_img, seconds=3.0):
    fn(); fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(); n += 1
    return n * n_img / (time.perf_counter() - t0)
with torch.inference_mode():
    for bs in (4, 8, 32):
        x = torch.randn(bs, 3, 224, 224)
        out[f"forward_b{bs}"] = rate(lambda: m(x), bs)
x = torch.randn(5, 3, 224, 224, requires_grad=True)
out["fwd_bwd_b5"] = rate(lambda: torch.autograd.grad(m(x)[:, 0].sum(), x), 5)
img = gallery_image("chelsea")
t0 = time.perf_counter()
attribute(b, img, None, "occlusion", window=16, stride=8, batch_size=8)
out["occlusion_s"] = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
out["sys_s"], out["user_s"] = ru.ru_stime, ru.ru_utime
print(json.dumps(out))
"""

KEYS = [("forward_b4", "forward, batch 4 (images/s)"), ("forward_b8", "forward, batch 8 (images/s)"),
        ("forward_b32", "forward, batch 32 (images/s)"), ("fwd_bwd_b5", "forward+backward, batch 5 (images/s)"),
        ("occlusion_s", "exact occlusion, chelsea, batch 8 (s)"), ("sys_s", "kernel CPU time of the process (s)"),
        ("user_s", "user CPU time of the process (s)")]


VARIANTS = {"glibc defaults": {"CONVLENS_MALLOC_TUNING": "0"},
            "tuned, mmap above 32 MiB": {"CONVLENS_MALLOC_TUNING": "1", "CONVLENS_MALLOC_NOMMAP": "0"},
            "tuned, no mmap (default)": {"CONVLENS_MALLOC_TUNING": "1", "CONVLENS_MALLOC_NOMMAP": "1"}}


def child(variant: str) -> dict:
    tuned = variant != "glibc defaults"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **VARIANTS[variant])
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["tuned"] is tuned, d
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    runs = {v: [] for v in VARIANTS}
    for i in range(args.rounds):
        for v in VARIANTS:                           # alternate, so drift hits all alike
            runs[v].append(child(v))
            print(i, v, json.dumps({k: round(x, 2) for k, x in runs[v][-1].items() if k != "tuned"}), flush=True)
    load1 = os.getloadavg()[0]
    rows = []
    base = "glibc defaults"
    for k, label in KEYS:
        cells = []
        mo = statistics.median(r[k] for r in runs[base])
        for v in VARIANTS:
            xs = [r[k] for r in runs[v]]
            m = statistics.median(xs)
            cell = f"{m:.1f} ({min(xs):.1f}–{max(xs):.1f})"
            if v != base:
                cell += f", **{(mo / m if k.endswith('_s') else m / mo):.2f}×**"
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
        print(rows[-1])
    if args.no_write:
        return
    from bench._report import machine, write_section
    body = "\n".join([
        "## Allocator tuning (bench/allocator.py)", "",
        f"Machine: {machine()}; 1-minute load average {load0:.1f} at the start, {load1:.1f} at the end.", "",
        "glibc's default malloc hands the large activation buffers of a batched forward back to the kernel "
        "as soon as they are freed, so every forward faults their pages in again. `analysis/core/allocator.py` "
        "keeps them (`mallopt`: no mmapped allocations, trim threshold 1 GiB, top pad 64 MiB; the memory "
        "goes back with `malloc_trim` whenever the last heavy job on the device ends; "
        "`CONVLENS_MALLOC_TUNING=0` turns it off). Each column is the median (range) of "
        f"{args.rounds} fresh processes, run alternately; the ratio is how much better than glibc's defaults "
        "(throughput ratio, or time ratio for seconds). The middle column keeps glibc's mmap for buffers "
        "above 32 MiB (`CONVLENS_MALLOC_NOMMAP=0`): those are then still faulted in every time.", "",
        "| measure | " + " | ".join(VARIANTS) + " |", "|---|---|---|---|", *rows,
    ])
    write_section("allocator", body)


if __name__ == "__main__":
    main()
