"""Optimisation pages: steps per second of each page's default setting on the default model
(EfficientNet-Lite0), on CPU and, with --device cuda, on a GPU; plus the engine's overhead
against a bare forward+backward of the same batch in the same run.

    .venv/bin/python bench/optimize.py [--device cuda] [--steps 20] [--no-write]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import analysis.optimize.featurevis as V
from analysis.core.images import gallery_image
from analysis.core.models.loaders import default_bundle
from bench._report import machine, write_section


def rate(gen, steps: int) -> float:
    """Steps per second after one warm-up step, over ``steps`` steps."""
    s = next(gen)
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        try:
            s = gen.send(None)
        except StopIteration:
            break
        n += 1
    if s.step < s.total:
        try:
            gen.send("stop")
        except StopIteration:
            pass
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bare_rate(bundle, size: int, steps: int, batch: int = 1) -> float:
    """Plain forward+backward to the input on ``batch`` images of ``size`` (the floor of a full-network step)."""
    x = torch.rand(batch, 3, size, size, device=bundle.device, requires_grad=True)
    with torch.enable_grad():
        torch.autograd.grad(bundle.model(x)[:, 1].sum(), x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            torch.autograd.grad(bundle.model(x)[:, 1].sum(), x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    b = default_bundle(device)
    n = args.steps if device.type == "cpu" else max(args.steps, 100)
    img = gallery_image("chelsea")
    maco = V.PRESETS["MACO (Fel et al. 2023)"]
    cases = [
        (f"Class visualisation, MACO preset (default; 384 px canvas, {maco.crops} crops of 224 px per step)",
         lambda: V.class_visualization(b, 1, maco, steps=10 ** 3, preview_every=0), maco.crops),
        ("Class visualisation, lucent preset (Fourier, robustness, 224 px)",
         lambda: V.class_visualization(b, 1, "Fourier + robustness (lucent)", steps=10 ** 3, preview_every=0)),
        ("Class visualisation, CS231n preset (pixels, 224 px)",
         lambda: V.class_visualization(b, 1, "CS231n", steps=10 ** 3, preview_every=0)),
        ("Channel visualisation (_blocks.9, 128 px, truncated forward)",
         lambda: V.channel_visualization(b, "_blocks.9", 0, steps=10 ** 3, preview_every=0)),
        ("DeepDream (_blocks.8, chelsea 451×300, 4 octaves; mean over octaves)",
         lambda: V.deepdream(b, img, "_blocks.8", steps_per_octave=max(1, n // 4), preview_every=0)),
        ("Feature inversion (_blocks.5, 224 px)",
         lambda: V.invert(b, img, "_blocks.5", steps=10 ** 3, preview_every=0)),
    ]
    import os
    load0 = os.getloadavg()[0]
    bare = bare_rate(b, 224, n)
    bare4 = bare_rate(b, 224, max(2, n // 4), maco.crops)
    rows = []
    for name, make, *batch in cases:
        r = rate(make(), n)
        rows.append((name, r, batch[0] if batch else 1))
        print(f"{name}: {r:.2f} steps/s", flush=True)
    bare = (bare + bare_rate(b, 224, n)) / 2          # before and after the cases, averaged
    bare4 = (bare4 + bare_rate(b, 224, max(2, n // 4), maco.crops)) / 2
    load1 = os.getloadavg()[0]
    print(f"bare forward+backward 224 px: {bare:.2f} /s, batch {maco.crops}: {bare4:.2f} /s; "
          f"load {load0:.1f} -> {load1:.1f}")
    floors = {1: bare, maco.crops: bare4}
    if args.no_write:
        return
    dev = "cuda" if device.type == "cuda" else "cpu"
    body = "\n".join([
        f"## Optimisation pages on {dev.upper()} (bench/optimize.py --device {dev})", "",
        f"Machine: {machine()}", "",
        f"1-minute load average {load0:.1f} at the start, {load1:.1f} at the end "
        f"({os.cpu_count()} cores); the ratios are the figures to read.", "",
        "Steps per second of each page's default setting on EfficientNet-Lite0 (batch 1), timed over "
        f"{n} steps after a warm-up step. The floor is a bare forward+backward of one 224 px image "
        f"through the whole network (timed before and after the cases, averaged): **{bare:.2f}/s** in this run; "
        f"for MACO, whose step is a batch of {maco.crops} crops, the floor is a bare batch of {maco.crops}: "
        f"**{bare4:.2f}/s**.", "",
        "| page default | steps/s | vs its floor |", "|---|---|---|",
        *[f"| {name} | {r:.2f} | {r / floors[k]:.2f}× |" for name, r, k in rows], "",
        "Channel visualisation and inversion stop the forward after the layer they need, so they can beat "
        "the full-network floor. DeepDream runs whole images (451×300 at the last octave) and each octave is "
        "a new input shape: on a GPU every new shape costs about a second of convolution planning the first "
        "time it is seen, which dominates this short run (it is paid once per shape per process).",
    ])
    write_section(f"optimize-{dev}", body)


if __name__ == "__main__":
    main()
