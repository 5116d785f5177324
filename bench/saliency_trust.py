"""Which deletion / insertion setting separates real saliency maps from random ones on the
default model (EfficientNet-Lite0)? Measured, per gallery image, over a grid of settings:

* unit of deletion: square patches of 8, 16, 32 or 56 px, ranked by the map's mean
  (``analysis.saliency.trust.patch_ranks``), Most Relevant First (MoRF);
* substrate (what deleted pixels become, and where insertion starts): ``blur``, ``zero``
  (black) or ``mean`` (model-space zero = the data set's mean colour; grey 127 for Lite0);
* score: the target's softmax probability (the page's) or its logit;
* random maps: ``pixel`` (the page's: uniform noise per pixel, which the patch ranking turns
  into a uniformly random order of the patches, i.e. random at the patch grid's resolution)
  or ``smooth`` (noise on the model's last feature grid, 7 x 7 at 224 px, bilinearly
  upsampled: as smooth as a Grad-CAM map).

Methods: Grad-CAM, vanilla gradient, gradient x input (|x * grad| summed over channels,
the convention of IG's map), Integrated Gradients; ``--random`` random maps of each kind.
Each method's deletion and insertion AUCs get the page's verdict
(``analysis.saliency.trust.verdict``). One batched forward pass serves every score.

Records go to a JSON-lines file (``--out``) so that the grid can be measured in several short
runs; ``--report`` reads them and prints (``--write``: also into docs/benchmarks.md) how many
(image, method) pairs are "better than random" per setting, and every verdict on chelsea.

What docs/saliency.md reports was measured in runs of one image each (a few minutes apiece):

    # step 1: the whole grid, 3 images, 8 steps
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python bench/saliency_trust.py --images chelsea --out s1.jsonl
    # step 2: every gallery image, 32 and 56 px, the page's random maps, 16 steps
    ... --images rocket --patches 32 56 --randoms pixel --steps 16 --out s2.jsonl
    # the single-patch occlusion oracle on chelsea
    ... --images chelsea --methods gradcam --oracle --patches 32 56 --randoms pixel --steps 16 --out oracle.jsonl
    # tables (and, with --write, the saliency_trust section of docs/benchmarks.md)
    PYTHONPATH=$PWD .venv/bin/python bench/saliency_trust.py --report s2.jsonl oracle.jsonl --write
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F

from analysis.core.images import gallery_image, gallery_names
from analysis.core.models.loaders import default_bundle
from analysis.saliency.methods import attribute
from analysis.saliency.trust import (
    KINDS,
    Curve,
    deletion_insertion,
    patch_ranks,
    random_map,
    substrate_tensor,
    trapezoid_auc,
    verdict,
)

METHODS = ("gradcam", "gradient", "gradient_x_input", "integrated_gradients")
SHORT = {"gradcam": "Grad-CAM", "gradient": "gradient", "gradient_x_input": "grad × input",
         "integrated_gradients": "IG", "occlusion": "occlusion (oracle)"}
ORDER = ("gradcam", "integrated_gradients", "gradient", "gradient_x_input", "occlusion")   # report columns
SCORES = ("prob", "logit")
RANDOM_KINDS = ("pixel", "smooth")


def smooth_random_map(size: int, grid: int, seed: int) -> np.ndarray:
    """Uniform noise on a ``grid`` x ``grid`` lattice, bilinearly upsampled to ``size``."""
    g = torch.from_numpy(np.random.default_rng(seed).random((1, 1, grid, grid)).astype(np.float32))
    return F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def method_maps(bundle, image) -> tuple[dict[str, np.ndarray], object]:
    """The four methods' (H, W) maps on ``image`` for the predicted class, and the Grad-CAM
    attribution (crop, target, label)."""
    cam = attribute(bundle, image, None, "gradcam")
    grad = attribute(bundle, image, cam.target, "gradient")
    ig = attribute(bundle, image, cam.target, "integrated_gradients")
    x = bundle.preprocess.normalize(bundle.preprocess.to_unit(cam.image))[0].numpy()
    gxi = np.abs(grad.signed * x).sum(0)
    return {"gradcam": cam.map, "gradient": grad.map, "gradient_x_input": gxi.astype(np.float32),
            "integrated_gradients": ig.map}, cam


def curves_for(bundle, x, base, tgt, maps: dict[str, np.ndarray], patch: int, steps: int,
               batch: int) -> dict[str, dict[str, dict[str, Curve]]]:
    """curves[score][map name][kind] for every map, from one batched pass (the shared first
    and last images of every curve evaluated once)."""
    h, w = x.shape[-2:]
    n_pix = h * w
    counts = np.floor(np.arange(steps + 1) * n_pix / steps + 0.5).astype(np.int64)
    fractions = counts / n_pix
    jobs = []                                   # (name, kind, step) in batch order
    for name in maps:
        for kind in KINDS:
            jobs += [(name, kind, k) for k in range(1, steps)]
    ranks = {n: torch.from_numpy(patch_ranks(m, patch)).view(1, h, w) for n, m in maps.items()}
    logit = {}
    with torch.inference_mode():
        ends = torch.cat([x, base])             # deletion step 0 = insertion step S = x; the reverse = base
        out = bundle.model(ends).float()
        end_logit, end_prob = out[:, tgt], torch.softmax(out, 1)[:, tgt]
        prob = {}
        for i in range(0, len(jobs), batch):
            part = jobs[i:i + batch]
            chosen = torch.stack([ranks[n] < int(counts[k]) for n, _, k in part])       # (B, 1, H, W)
            is_del = torch.tensor([kind == "deletion" for _, kind, _ in part]).view(-1, 1, 1, 1)
            xs = torch.where(chosen == is_del, base, x)   # deletion: chosen -> base; insertion: unchosen -> base
            o = bundle.model(xs.contiguous(memory_format=torch.channels_last)).float()
            p = torch.softmax(o, 1)[:, tgt]
            for j, job in enumerate(part):
                logit[job], prob[job] = float(o[j, tgt]), float(p[j])
    out_curves: dict[str, dict[str, dict[str, Curve]]] = {s: {} for s in SCORES}
    for score, table, end in (("prob", prob, end_prob), ("logit", logit, end_logit)):
        for name in maps:
            out_curves[score][name] = {}
            for kind in KINDS:
                first, last = (end[0], end[1]) if kind == "deletion" else (end[1], end[0])
                ys = np.array([float(first)] + [table[(name, kind, k)] for k in range(1, steps)] + [float(last)])
                out_curves[score][name][kind] = Curve(method=name, kind=kind, fractions=fractions, scores=ys,
                                                      auc=trapezoid_auc(fractions, ys), target=tgt)
    return out_curves


def measure(args) -> None:
    """Measure every setting of ``args`` (the parsed command line) and append the records to ``args.out``."""
    torch.set_num_threads(1)
    bundle = default_bundle(torch.device("cpu"))
    bundle.model.to(memory_format=torch.channels_last)
    size = bundle.input_size
    grid = size // 32
    out = open(args.out, "a")
    for name in args.images:
        t0 = time.perf_counter()
        maps, cam = method_maps(bundle, gallery_image(name))
        maps = {m: maps[m] for m in args.methods}
        x = bundle.preprocess.normalize(bundle.preprocess.to_unit(cam.image))
        with torch.inference_mode():
            p0 = float(torch.softmax(bundle.model(x), 1)[0, cam.target])
        rnd = {}
        if "pixel" in args.randoms:
            rnd |= {f"pixel#{i}": random_map((size, size), i) for i in range(args.random)}
        if "smooth" in args.randoms:
            rnd |= {f"smooth#{i}": smooth_random_map(size, grid, 1000 + i) for i in range(args.random)}
        t_maps = time.perf_counter() - t0
        for sub in args.substrates:
            base = substrate_tensor(bundle, x, sub)
            for patch in args.patches:
                t1 = time.perf_counter()
                extra = {}
                if args.oracle:                 # single-patch occlusion on the same grid and substrate
                    extra["occlusion"] = attribute(bundle, cam.image, cam.target, "occlusion", window=patch,
                                                   stride=patch, baseline=sub).map
                cur = curves_for(bundle, x, base, cam.target, maps | extra | rnd, patch, args.steps, args.batch)
                if args.check:                  # parity with the page's function, once per run
                    ref = deletion_insertion(bundle, maps["gradcam"], cam.image, cam.target, kind="deletion",
                                             steps=args.steps, substrate=sub, patch=patch)
                    assert abs(ref.auc - cur["prob"]["gradcam"]["deletion"].auc) < 1e-4, (ref.auc, cur)
                    args.check = False
                for score in SCORES:
                    for rk in args.randoms:
                        rcurves = [c for k, c in cur[score].items() if k.startswith(rk + "#")]
                        for m in list(maps) + list(extra):
                            v = verdict(m, cur[score][m], rcurves)
                            rec = {"image": name, "target": cam.target_label, "p0": p0, "patch": patch,
                                   "substrate": sub, "score": score, "random": rk, "steps": args.steps,
                                   "n_random": args.random, "method": m, "label": v.label,
                                   "better": {k: bool(b) for k, b in v.better.items()}, "auc": v.auc, "random_mean": v.random_mean,
                                   "random_std": v.random_std, "z": v.z}
                            out.write(json.dumps(rec) + "\n")
                out.flush()
                print(f"{name} {sub} {patch}px: {time.perf_counter() - t1:.0f} s "
                      f"(maps {t_maps:.0f} s)", flush=True)
    out.close()


def _short(label: str) -> str:
    return (label.replace("better than random", "better").replace("not distinguishable from random", "n.d.")
            .replace("worse than random", "worse"))


def report(paths: list[str], write: bool, section: str = "saliency_trust", title: str = "") -> str:
    """Summarise the JSON-lines records in ``paths`` as Markdown tables (see the module
    docstring); ``write``: also put them into docs/benchmarks.md as ``section`` under ``title``."""
    recs = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    keyed = {(r["image"], r["patch"], r["substrate"], r["score"], r["random"], r["method"], r["steps"]): r for r in recs}
    recs = list(keyed.values())                 # a re-measured setting replaces the earlier record
    images = list(dict.fromkeys(r["image"] for r in recs))
    cols = [m for m in ORDER if any(r["method"] == m for r in recs)]
    settings = defaultdict(list)
    for r in recs:
        settings[(r["patch"], r["substrate"], r["score"], r["random"])].append(r)
    lines = [f"EfficientNet-Lite0 (embedded), predicted class, {recs[0]['steps']} steps, "
             f"{recs[0]['n_random']} random maps, {len(images)} gallery images; MoRF deletion and insertion; "
             "verdict of `analysis.saliency.trust.verdict`. Each method's cell counts the images on which it "
             "is better than random on **both** curves / on deletion / on insertion; the chelsea column "
             "gives Grad-CAM's and IG's verdicts there with their z (deletion, insertion).", "",
             "| unit | substrate | score | random maps | " + " | ".join(SHORT[m] for m in cols) +
             " | chelsea: Grad-CAM | chelsea: IG |",
             "|---|---|---|---|" + "---|" * (len(cols) + 2)]
    rows = []
    for (patch, sub, score, rk), rs in sorted(settings.items()):
        cells = []
        for m in cols:
            mm = [r for r in rs if r["method"] == m]
            both = sum(r["label"] == "better than random" for r in mm)
            dele = sum(bool(r["better"]["deletion"]) for r in mm)
            ins = sum(bool(r["better"]["insertion"]) for r in mm)
            cells.append(f"{both} / {dele} / {ins}" + (f" (of {len(mm)})" if len(mm) != len(images) else ""))
        ch = {r["method"]: r for r in rs if r["image"] == "chelsea"}
        for m in ("gradcam", "integrated_gradients"):
            cells.append(f"{_short(ch[m]['label'])} ({ch[m]['z']['deletion']:+.1f}, {ch[m]['z']['insertion']:+.1f})"
                         if m in ch else "–")
        rows.append(f"| {patch} px | {sub} | {score} | {rk} | " + " | ".join(cells) + " |")
    lines += rows
    lines += ["", "Chelsea, every verdict (deletion / insertion AUC, random mean ± sd):", "",
              "| unit | substrate | score | random | " + " | ".join(SHORT[m] for m in cols) + " |",
              "|---|---|---|---|" + "---|" * len(cols)]
    for (patch, sub, score, rk), rs in sorted(settings.items()):
        ch = {r["method"]: r for r in rs if r["image"] == "chelsea"}
        if not ch:
            continue
        cells = [f"{ch[m]['auc']['deletion']:.3f} / {ch[m]['auc']['insertion']:.3f} ({_short(ch[m]['label'])})"
                 if m in ch else "–" for m in cols]
        r0 = next(iter(ch.values()))
        lines.append(f"| {patch} px | {sub} | {score} | {rk} (del {r0['random_mean']['deletion']:.3f} ± "
                     f"{r0['random_std']['deletion']:.3f}, ins {r0['random_mean']['insertion']:.3f} ± "
                     f"{r0['random_std']['insertion']:.3f}) | " + " | ".join(cells) + " |")
    p0 = {r["image"]: (r["target"], r["p0"]) for r in recs}
    lines += ["", "Targets: " + "; ".join(f"{k} → {t} (p = {p:.2f})" for k, (t, p) in p0.items()) + "."]
    text = "\n".join(lines)
    if write:
        from bench._report import machine, write_section
        write_section(section, f"## {title or 'Deletion / insertion: which setting separates real maps from random'} "
                      "(bench/saliency_trust.py)\n\n" + f"Machine: {machine()}; measured under load (AUCs do "
                      "not depend on it).\n\n" + text)
    return text


def main() -> None:
    """Command line: measure (default) or ``--report``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=gallery_names())
    ap.add_argument("--patches", nargs="+", type=int, default=[8, 16, 32, 56])
    ap.add_argument("--substrates", nargs="+", default=["blur", "zero", "mean"])
    ap.add_argument("--random", type=int, default=8, help="random maps of each kind")
    ap.add_argument("--randoms", nargs="+", default=list(RANDOM_KINDS), choices=RANDOM_KINDS)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--oracle", action="store_true",
                    help="add single-patch occlusion on each setting's grid and substrate (an upper reference)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="/tmp/saliency_trust.jsonl")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip the parity check with analysis.saliency.trust.deletion_insertion")
    ap.add_argument("--report", nargs="*", default=None, help="JSON-lines files to summarise (no measuring)")
    ap.add_argument("--write", action="store_true", help="with --report: also write docs/benchmarks.md")
    ap.add_argument("--section", default="saliency_trust", help="with --write: the section's name")
    ap.add_argument("--title", default="", help="with --write: the section's title")
    args = ap.parse_args()
    if args.report is not None:
        print(report(args.report or [args.out], args.write, args.section, args.title))
    else:
        measure(args)


if __name__ == "__main__":
    main()
