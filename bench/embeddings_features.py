"""Feature-extraction throughput against a plain batched forward.

Over one data set of augmented gallery crops (analysis.inside.patches.gallery_dataset, 256x256),
in ONE run, interleaved batch by batch: the plain forward (crop + preprocess + full
forward, inference mode, same batch size) and the extraction (crop + preprocess + full
forward with the penultimate layer captured + global average pooling + softmax
predictions, copied into the (N, D) result). Goal: extraction / forward >= 0.9. Crop
generation and preprocessing are part of both.

    .venv/bin/python bench/embeddings_features.py [--n 1000] [--batch 32] [--device cpu] [--no-write]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from analysis.core.images import gallery_names
from analysis.core.models.loaders import default_bundle, select_device
from analysis.embeddings.features import extract, penultimate_layer, run_extract
from analysis.inside.patches import gallery_dataset
from bench._report import machine, write_section

GOAL = 0.9


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _forward_batch(bundle, ds, start: int, stop: int) -> float:
    """Seconds for crop + preprocess + full forward of images [start, stop)."""
    t0 = time.perf_counter()
    x = bundle.inputs(ds.get_many(range(start, stop)))
    with bundle.lock, torch.inference_mode():
        bundle.model(x)
    _sync(bundle.device)
    return time.perf_counter() - t0


def interleaved(bundle, ds, layer: str, batch: int) -> dict[str, float]:
    """Seconds of the plain forward and of the extraction over the whole data set,
    interleaved batch by batch, so load from other processes hits both alike. The
    order within a pair alternates (forward first on even batches, extraction first on
    odd ones) so neither always runs on a cache warmed by the other."""
    gen = extract(bundle, ds, layer, batch_size=batch, save=False)
    next(gen)                                     # the done=0 report: validation only
    t = {"forward": 0.0, "extract": 0.0}
    n = len(ds)

    def one_extract_batch() -> None:
        t0 = time.perf_counter()
        step = next(gen)
        if step.done == n:                        # the last batch: also build the FeatureSet
            try:
                next(gen)
            except StopIteration as stop:
                assert stop.value is not None and stop.value.n == n
        _sync(bundle.device)
        t["extract"] += time.perf_counter() - t0

    for j, s in enumerate(range(0, n, batch)):
        if j % 2 == 0:
            t["forward"] += _forward_batch(bundle, ds, s, min(n, s + batch))
            one_extract_batch()
        else:
            one_extract_batch()
            t["forward"] += _forward_batch(bundle, ds, s, min(n, s + batch))
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
    layer = penultimate_layer(bundle)
    photos = len(gallery_names("photo"))
    crops = max(1, math.ceil(args.n / photos))
    ds = gallery_dataset(crops_per_image=crops, size=256)
    n = len(ds)
    print(f"{n} images ({photos} photos x {crops} crops, 256x256), batch {args.batch}, "
          f"layer {layer}, device {device}")

    # Warm-up: oneDNN picks kernels per shape (full and last partial batch).
    small = gallery_dataset(crops_per_image=max(1, math.ceil(args.batch / photos)), size=256)
    _forward_batch(bundle, small, 0, min(len(small), args.batch))
    run_extract(bundle, small, layer, batch_size=args.batch, save=False)
    if n % args.batch:
        _forward_batch(bundle, ds, 0, n % args.batch)

    load0 = os.getloadavg()[0]
    t_wall = time.perf_counter()
    t = interleaved(bundle, ds, layer, args.batch)
    t_wall = time.perf_counter() - t_wall
    load1 = os.getloadavg()[0]
    fwd_ips, ext_ips = n / t["forward"], n / t["extract"]
    ratio = ext_ips / fwd_ips
    print(f"forward            : {fwd_ips:7.1f} images/s ({t['forward']:.1f} s)")
    print(f"extract {layer:<11}: {ext_ips:7.1f} images/s ({t['extract']:.1f} s), "
          f"ratio extract / forward {ratio:.2f} (goal >= {GOAL}) {'ok' if ratio >= GOAL else 'BELOW GOAL'}")
    print(f"wall {t_wall:.1f} s, 1-min load average {load0:.1f} at the start, {load1:.1f} at the end")

    body = f"""## Feature extraction for embeddings (bench/embeddings_features.py)

Machine: {machine()}; device `{device}`.

EfficientNet-Lite0, {n} augmented gallery crops ({photos} photos × {crops}, 256×256 → 224×224
model input), batch {args.batch}, `torch.inference_mode()`, layer `{layer}` (the
penultimate layer, 1280-d). Crop generation and preprocessing are part of both rows.

| pass | images/s | seconds | × forward |
|---|---|---|---|
| plain forward | {fwd_ips:.1f} | {t['forward']:.1f} | 1.00× |
| extraction (`features.extract`) | {ext_ips:.1f} | {t['extract']:.1f} | {ratio:.2f}× |

The passes run interleaved batch by batch (the order within a pair alternating), so load
from other processes hits both alike: the 1-minute load average was {load0:.1f} at the start
and {load1:.1f} at the end of the {t_wall:.0f} s run on {os.cpu_count()} cores, which sets the
absolute images/s; the ratio is the figure to read. The extraction is the same single full forward with
one thread-scoped hook on the layer (registered and removed per batch under the model's
lock), plus the global average pool, the softmax for predictions and the copy into the
(N, D) array; goal ≥ {GOAL}× the forward.
"""
    if not args.no_write:
        write_section("embeddings-features", body)


if __name__ == "__main__":
    main()
