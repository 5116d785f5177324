"""Which deletion / insertion setting separates real saliency maps from random ones on the
default model? For each gallery image and candidate setting (unit of deletion, substrate)
this computes the page's default maps (gradient, guided backprop, Grad-CAM), their curves
and those of ``--random`` random maps, and prints each method's AUCs with its verdict
(analysis.saliency.trust.verdict). The result is written up in docs/saliency.md.

    PYTHONPATH=$PWD .venv/bin/python bench/saliency_trust.py --images chelsea coffee [--random 6]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from analysis.core.images import gallery_image
from analysis.core.models.loaders import default_bundle
from analysis.saliency.methods import attribute
from analysis.saliency.trust import compare_curves

SETTINGS = [(1, "blur"), (8, "blur"), (16, "blur"), (16, "mean"), (32, "blur")]
METHODS = ["gradient", "guided_backprop", "gradcam"]
SHORT = {"better than random": "better", "not distinguishable from random": "n.d.", "worse than random": "worse"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", nargs="+", default=["chelsea", "coffee"])
    ap.add_argument("--random", type=int, default=6)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--settings", nargs="*", default=None, help="e.g. 16:blur 1:blur")
    args = ap.parse_args()
    settings = [(int(s.split(":")[0]), s.split(":")[1]) for s in args.settings] if args.settings else SETTINGS
    bundle = default_bundle(torch.device("cpu"))
    print("| image | unit | substrate | " + " | ".join(METHODS) + " | random (mean ± sd) |")
    print("|---|---|---|" + "---|" * (len(METHODS) + 1))
    for name in args.images:
        img = gallery_image(name)
        maps = [attribute(bundle, img, None, m) for m in METHODS]
        for patch, sub in settings:
            t0 = time.perf_counter()
            cmp = compare_curves(bundle, maps, steps=args.steps, substrate=sub, patch=patch,
                                 n_random=args.random, batch_size=32)
            cells = []
            for m in METHODS:
                v = cmp.verdicts[m]
                cells.append(f"{v.auc['deletion']:.3f} / {v.auc['insertion']:.3f} "
                             f"({SHORT.get(v.label, v.label)})")
            v0 = cmp.verdicts[METHODS[0]]
            rnd = (f"{v0.random_mean['deletion']:.3f} ± {v0.random_std['deletion']:.3f} / "
                   f"{v0.random_mean['insertion']:.3f} ± {v0.random_std['insertion']:.3f}")
            unit = "pixels" if patch == 1 else f"{patch}-px patches"
            print(f"| {name} ({maps[0].target_label}) | {unit} | {sub} | " + " | ".join(cells) + f" | {rnd} |"
                  f"  <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
