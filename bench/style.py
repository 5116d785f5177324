"""Style transfer: Gatys et al. (optimise every image, a fixed number of L-BFGS iterations)
vs Johnson et al.'s feed-forward network (one forward pass), per image at 256 and 512 px,
in one run on one device. Johnson et al. report about three orders of magnitude on a GPU.

Both use the shipped defaults of the embedded EfficientNet-Lite0 (analysis/style/gatys.py). The
feed-forward time does not depend on the weights: a saved network is used when
``--network`` names one, otherwise an untrained Johnson network of the default width.

    .venv/bin/python bench/style.py                 # CPU (or CONVLENS_DEVICE)
    .venv/bin/python bench/style.py --device cuda   # section "style-cuda" with the GPU's name
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

import analysis.optimize as O
import analysis.style.fast as FS
import analysis.style.gatys as S
from analysis.core.images import gallery_image
from analysis.core.models.loaders import default_bundle, select_device
from bench._report import machine, write_section


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gatys_seconds(bundle, content, style, size: int, iters: int) -> tuple[float, dict]:
    _sync(bundle.device)
    t0 = time.perf_counter()
    r = O.run(S.style_transfer(bundle, content, [(style, 1.0)], size=size, steps=iters, preview_every=0))
    _sync(bundle.device)
    return time.perf_counter() - t0, S.style_losses(r)


def forward_seconds(net, content, size: int, dev, repeats: int) -> tuple[float, tuple]:
    FS.stylize(net, content, max_side=size)                     # warm-up (allocations, cudnn choice)
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        out = FS.stylize(net, content, max_side=size)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out.shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CONVLENS_DEVICE or auto)")
    ap.add_argument("--iters", type=int, default=100, help="Gatys L-BFGS iterations (fixed)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--images", nargs="+", default=["chelsea", "astronaut"])
    ap.add_argument("--style", default="immunohistochemistry")
    ap.add_argument("--network", default=None, help="a saved network's name (default: untrained, width 32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    dev = select_device(args.device)
    bundle = default_bundle(dev)
    if args.network:
        net, _ = FS.load_network(args.network, dev)
        net_desc = f"saved network '{args.network}'"
    else:
        torch.manual_seed(0)
        net = FS.TransformerNet().to(dev).eval()
        net_desc = "Johnson network, width 32, 5 residual blocks (untrained: the time does not depend on the weights)"
    style = gallery_image(args.style)
    rows = []
    for name in args.images:
        for size in args.sizes:
            # both methods get the same pixels: the image scaled so its longer side is `size`
            raw = gallery_image(name)
            h, w = S.fit_size(*raw.shape[:2], size)
            content = np.asarray(Image.fromarray(raw).resize((w, h), Image.LANCZOS))
            g, losses = gatys_seconds(bundle, content, style, size, args.iters)
            f, shape = forward_seconds(net, content, size, dev, args.repeats)
            rows.append((name, f"{shape[1]}×{shape[0]}", g, g / args.iters, f, g / f, losses))
            print(f"{name} {shape[1]}x{shape[0]}: Gatys {args.iters} it {g:.2f} s ({g / args.iters * 1000:.0f} ms/it), "
                  f"feed-forward {f * 1000:.1f} ms, ratio {g / f:,.0f}x", flush=True)

    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    lines = [f"## Style transfer: Gatys vs feed-forward, {dev_name} (bench/style.py)", "",
             f"Machine: {machine()}; device `{dev}` ({dev_name}); load average {load0:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine).", "",
             f"Extractor EfficientNet-Lite0 with the shipped defaults (content `{S.LITE0.content_layer}`, "
             f"{len(S.LITE0.style_layers)} style layers, style weight {S.LITE0.style_weight:g}, "
             f"{S.LITE0.pad} px reflection padding); style image `{args.style}`. Gatys: {args.iters} L-BFGS "
             f"iterations from the content image, wall time including the style and content targets. Feed-forward: "
             f"{net_desc}; median of {args.repeats} single-image forwards after a warm-up, with the uint8 "
             "conversion. Both get the image scaled so that its longer side is the size.", "",
             "| image | output | Gatys (s) | ms / iteration | feed-forward (ms) | ratio |",
             "|---|---|---|---|---|---|"]
    for name, shape, g, per, f, ratio, _ in rows:
        lines.append(f"| {name} | {shape} | {g:.1f} | {per * 1000:.0f} | {f * 1000:.1f} | {ratio:,.0f}× |")
    lo, hi = min(r[5] for r in rows), max(r[5] for r in rows)
    per = [r[3] / r[4] for r in rows]
    lines += ["", f"The network is **{lo:,.0f}–{hi:,.0f}×** faster than {args.iters} Gatys iterations here "
              "(Johnson et al. report about 1000× on a GPU for their settings). One Gatys iteration costs "
              f"{min(per):.2f}–{max(per):.2f} network forwards (EfficientNet-Lite0 stops after `_blocks.8`, while "
              "the network runs 9×9 convolutions at full resolution), so the ratio grows linearly with "
              "the iteration count (the page's defaults: 150 steps on the CPU, 300 on a GPU)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(f"style-{dev.type}", body)


if __name__ == "__main__":
    main()
