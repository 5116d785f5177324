"""Relevance benchmarks, each in ONE run so the figures compare:

1. LRP time per image against the plain gradient (one forward + one backward), on the
   default EfficientNet-Lite0 (224 px), alternating the two per image.
2. CRP gallery throughput (the ``crp`` executor job: one batched LRP pass per batch,
   recording every channel's relevance) against the plain patch scan
   (analysis.inside.patches.scan, forward + per-channel max), same images, layer, batch.
3. CKA for two models (digits CNN vs a second, seeded copy) over 1,000 images: features of
   4 layers each + the CKA matrix.

    .venv/bin/python bench/relevance.py [--images 4] [--gallery 256] [--cka 1000] [--no-write]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench._report import machine, write_section

NOTE = ("Measured on a shared machine (load average ~20 on 2 cores during the run): absolute times are several times what an idle machine gives; the ratios, measured in the same run, are what to read. LRP costs several forwards per layer (zennit's z⁺ / flat rules re-run each layer with modified weights) plus the model copy; the CRP gallery job runs one batched LRP pass per batch, the patch scan a forward truncated after the layer.")


def lrp_vs_gradient(n: int) -> str:
    from analysis.core.images import gallery_image, gallery_names
    from analysis.core.models.loaders import default_bundle
    from analysis.relevance.lrp import lrp
    b = default_bundle()
    t_lrp, t_grad = [], []
    for name in gallery_names()[:n]:
        x = b.inputs(gallery_image(name))
        t0 = time.perf_counter()
        xi = x.clone().requires_grad_(True)
        with b.lock, torch.enable_grad():
            out = b.model(xi)
            torch.autograd.grad(out[0, int(out.argmax())], xi)
        t_grad.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lrp(b, x, int(out.argmax()), "epsilon_plus_flat")
        t_lrp.append(time.perf_counter() - t0)
    g, r = np.median(t_grad), np.median(t_lrp)
    return (f"| EfficientNet-Lite0, 224 px, {n} images (median) | gradient {g * 1000:.0f} ms | "
            f"LRP EpsilonPlusFlat (copy + canonize + hooks) {r * 1000:.0f} ms | {r / g:.1f}× |")


def gallery_vs_scan(n: int) -> str:
    import analysis.relevance.workers  # noqa: F401  (registers the crp kind)
    from analysis.core.datasets import load_digits_dataset
    from analysis.core.models.loaders import ModelSpec, load_bundle
    from analysis.dataset.executor import JobSpec, run
    from analysis.inside.patches import scan
    b = load_bundle(ModelSpec(kind="digits"))
    ds = load_digits_dataset()
    layer = "features.relu3"
    t0 = time.perf_counter()
    gen = scan(b, ds, layer, batch_size=64, save=False, should_stop=None)
    done = 0
    try:
        while True:
            p = next(gen)
            done = p.done
            if done >= n:
                break
    except StopIteration:
        pass
    gen.close()
    t_scan = time.perf_counter() - t0
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run(JobSpec("crp", "digits", "digits", params={"layer": layer}, batch_size=64, indices=tuple(range(n))),
            engine="local", dataset=ds, bundle=b, data_dir=d)
        t_crp = time.perf_counter() - t0
    return (f"| digits CNN, {layer}, {n} images, batch 64 | patch scan {done / t_scan:.0f} img/s | "
            f"CRP gallery job {n / t_crp:.0f} img/s | {t_crp / (n / max(done, 1) * t_scan):.1f}× slower |")


def cka_two_models(n: int) -> str:
    from analysis.compare.cka import compare_layers
    from analysis.core.datasets import load_digits_dataset
    from analysis.core.models.loaders import ModelSpec, load_bundle
    a = load_bundle(ModelSpec(kind="digits"))
    b = load_bundle(ModelSpec(kind="random", arch="resnet18", seed=1))
    ds = load_digits_dataset()
    imgs = ds.get_many(range(min(n, len(ds))))
    la = ["features.relu1", "features.relu2", "features.relu3", "features.relu4"]
    lb = ["layer1", "layer2", "layer3", "layer4"]
    t0 = time.perf_counter()
    res = compare_layers(a, b, imgs, la, lb, batch_size=64)
    t = time.perf_counter() - t0
    return (f"| digits CNN (32 px) vs random ResNet-18 (224 px), {res.n_images} images, 4×4 layers | "
            f"features + CKA {t:.1f} s | | |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--gallery", type=int, default=256)
    ap.add_argument("--cka", type=int, default=1000)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    rows = [lrp_vs_gradient(a.images), gallery_vs_scan(a.gallery), cka_two_models(a.cka)]
    body = "\n".join(["## Relevance, CRP galleries, CKA (bench/relevance.py)", "", f"Machine: {machine()}.", "", NOTE, "",
                      "| case | baseline | new | ratio |", "|---|---|---|---|", *rows])
    print(body)
    if not a.no_write:
        write_section("relevance", body)


if __name__ == "__main__":
    main()
