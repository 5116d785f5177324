"""Maximally-activating-patch scan throughput against a plain batched forward.

Over one data set of augmented gallery crops (analysis.inside.patches.gallery_dataset, 256x256),
in ONE run, interleaved batch by batch: the plain forward (crop + preprocess + full forward, inference mode, same
batch size) and the scan (crop + preprocess + forward truncated after the layer + per
channel spatial max + running top-k) for a middle layer and the last spatial layer.
Goal: scan / forward >= 0.8. Crop generation and preprocessing are part of both.

    .venv/bin/python bench/patches.py [--n 1000] [--batch 32] [--device cpu] [--no-write]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from analysis.core.images import gallery_names
from analysis.core.models.loaders import default_bundle, select_device
from analysis.inside.patches import gallery_dataset, run_scan, scan
from bench._report import machine, write_section

LAYERS = ("_blocks.10", "_relu_head")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_pass(bundle, ds, batch: int, limit: int | None = None) -> float:
    """Seconds for crop + preprocess + full forward over the data set (or its first ``limit``)."""
    n = len(ds) if limit is None else min(limit, len(ds))
    return sum(_forward_batch(bundle, ds, s, min(n, s + batch)) for s in range(0, n, batch))


def _forward_batch(bundle, ds, start: int, stop: int) -> float:
    t0 = time.perf_counter()
    x = bundle.inputs(ds.get_many(range(start, stop)))
    with bundle.lock, torch.inference_mode():
        bundle.model(x)
    _sync(bundle.device)
    return time.perf_counter() - t0


def load_pass(bundle, ds, batch: int) -> float:
    """Seconds for crop generation + preprocessing alone (no model)."""
    t0 = time.perf_counter()
    for _, images in ds.iter_batches(batch):
        bundle.inputs(images)
    _sync(bundle.device)
    return time.perf_counter() - t0


def interleaved(bundle, ds, batch: int) -> dict[str, float]:
    """Seconds of the plain forward and of each layer's scan over the whole data set,
    interleaved batch by batch (forward, scan A, scan B on batch 1, then batch 2...), so
    that load from other processes on a shared machine hits all of them alike."""
    gens = {layer: scan(bundle, ds, layer, k=9, batch_size=batch, save=False) for layer in LAYERS}
    for g in gens.values():
        next(g)                                  # the done=0 report: validation only
    t = dict.fromkeys(("forward",) + LAYERS, 0.0)
    n = len(ds)
    for s in range(0, n, batch):
        t["forward"] += _forward_batch(bundle, ds, s, min(n, s + batch))
        for layer, g in gens.items():
            t0 = time.perf_counter()
            step = next(g)                       # one batch of the scan
            if step.done == n:                   # the last batch: also build the index
                try:
                    next(g)
                except StopIteration as stop:
                    assert stop.value is not None and stop.value.n_images == n
            _sync(bundle.device)
            t[layer] += time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="at least this many images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = select_device(args.device)
    bundle = default_bundle(device)
    photos = len(gallery_names("photo"))
    crops = max(1, math.ceil(args.n / photos))
    ds = gallery_dataset(crops_per_image=crops, size=256)
    n = len(ds)
    print(f"{n} images ({photos} photos x {crops} crops, 256x256), batch {args.batch}, device {device}")

    # Warm-up: oneDNN picks kernels per shape (full and last partial batch).
    forward_pass(bundle, ds, args.batch, limit=args.batch)
    small = gallery_dataset(crops_per_image=max(1, math.ceil(args.batch / photos)), size=256)
    for layer in LAYERS:
        run_scan(bundle, small, layer, k=9, batch_size=args.batch, save=False)

    t_load = load_pass(bundle, ds, args.batch)
    print(f"crop + preprocess only : {n / t_load:7.1f} images/s")
    t = interleaved(bundle, ds, args.batch)
    fwd_ips = n / t["forward"]
    print(f"forward                : {fwd_ips:7.1f} images/s")
    rows = []
    for layer in LAYERS:
        ips = n / t[layer]
        rows.append(f"| scan `{layer}` | {ips:.1f} | {t[layer]:.1f} | {ips / fwd_ips:.2f}× |")
        print(f"scan {layer:<18}: {ips:7.1f} images/s, ratio scan / forward {ips / fwd_ips:.2f}")

    body = f"""## Maximally activating patches (bench/patches.py)

Machine: {machine()}; device `{device}`.

EfficientNet-Lite0, {n} augmented gallery crops ({photos} photos × {crops}, 256×256 → 224×224
model input), batch {args.batch}, `torch.inference_mode()`, top-9 for every channel. Crop
generation and preprocessing are part of every row (alone: {n / t_load:.1f} images/s).

| pass | images/s | seconds | × forward |
|---|---|---|---|
| plain forward | {fwd_ips:.1f} | {t['forward']:.1f} | 1.00× |
{chr(10).join(rows)}

The passes run interleaved batch by batch (forward, scan of each layer, next batch), so
load from other processes hits all rows alike. The scan registers one hook on the layer
for all channels, stops the forward right after it (`truncate_after`), keeps each image's
spatial maximum per channel and merges it into a running top-k; goal ≥ 0.8× the forward.
"""
    if not args.no_write:
        write_section("patches", body)


if __name__ == "__main__":
    main()
