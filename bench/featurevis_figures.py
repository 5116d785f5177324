"""Pictures of the optimisation pages for docs/ and README.md, on the default model
(EfficientNet-Lite0): class visualisations with the default preset and with every preset,
channel visualisations, DeepDream and a feature-inversion strip. Every picture's settings
are the pages' defaults unless stated; the device is printed and goes into the docs.

    .venv/bin/python bench/featurevis_figures.py [--device cuda] [--out docs/images]
                                                 [--sections classvis,presets,channels,deepdream,inversion]

Class visualisations with the MACO preset are shown contrast-stretched between their 1st and
99th percentiles, as the page shows them (the raw pictures are pale); Yosinski's presets are
min-max stretched, as his toolbox saves them. featurevis_figures.json records, per section,
the device, settings, seconds, and the model's top-1 on each picture.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image, ImageDraw

import analysis.optimize.featurevis as V
from analysis.core.images import gallery_image
from analysis.core.models.loaders import default_bundle
from analysis.core.predict import predict
from analysis.optimize import run

CLASSES = [1, 980, 985, 145, 949, 281]      # goldfish, volcano, daisy, king penguin, strawberry, tabby
SECTIONS = ("classvis", "presets", "channels", "deepdream", "inversion")


def labelled(images, labels, size=224):
    tiles = []
    for im, lab in zip(images, labels):
        t = Image.fromarray(im).resize((size, size), Image.LANCZOS)
        canvas = Image.new("RGB", (size, size + 18), "white")
        canvas.paste(t, (0, 0))
        ImageDraw.Draw(canvas).text((4, size + 3), lab, fill="black")
        tiles.append(np.asarray(canvas))
    return np.concatenate(tiles, 1)


def stretch(im, pct=0.0):
    f = im.astype(np.float32)
    lo, hi = (f.min(), f.max()) if pct <= 0 else np.percentile(f, [pct, 100 - pct])
    return (np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8)


def shown(im, preset):
    """The picture as the page shows it by default."""
    if preset.parameterisation == "maco":
        return stretch(im, 1.0)
    return stretch(im) if preset.space == "caffe" else im


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--steps", type=int, default=None, help="class visualisation steps (default: the preset's)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    args = ap.parse_args()
    sections = [x for x in args.sections.split(",") if x]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    b = default_bundle(torch.device(args.device))
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    log_path = out / "featurevis_figures.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    log.pop("device", None)

    if "classvis" in sections:
        default = V.PRESETS[next(iter(V.PRESETS))]
        imgs, labs, checks = [], [], {}
        for c in CLASSES:
            t0 = time.time()
            r = run(V.class_visualization(b, c, default, steps=args.steps, preview_every=0))
            p = predict(b, r.images[0], k=5)
            checks[b.categories[c]] = {"p_target": float(p.probs[list(p.indices).index(c)]) if c in p.indices else 0.0,
                                       "top1": p.labels[0], "seconds": round(time.time() - t0, 1)}
            imgs.append(shown(r.images[0], default))
            labs.append(b.categories[c])
            print(c, checks[b.categories[c]], flush=True)
        Image.fromarray(labelled(imgs, labs, 256)).save(out / "classvis.png")
        log["classvis"] = {"device": device, "preset": default.name, "steps": r.steps, "seed": 0,
                           "size": list(r.images.shape[1:3]), "display": "1-99 % percentile stretch",
                           "checks": checks}

    if "presets" in sections:
        imgs, labs, presets = [], [], {}
        for name, preset in V.PRESETS.items():
            t0 = time.time()
            r = run(V.class_visualization(b, 1, name, preview_every=0))
            p = predict(b, r.images[0], k=5)
            presets[name] = {"steps": r.steps, "top1": p.labels[0],
                             "p_goldfish": float(p.probs[list(p.indices).index(1)]) if 1 in p.indices else 0.0,
                             "seconds": round(time.time() - t0, 1), "size": list(r.images.shape[1:3])}
            imgs.append(shown(r.images[0], preset))
            labs.append(name)
            print(name, presets[name], flush=True)
        Image.fromarray(labelled(imgs, labs)).save(out / "classvis_presets.png")
        log["presets_goldfish"] = {"device": device, "runs": presets}

    if "channels" in sections:
        imgs, labs = [], []
        for layer, ch in [("_blocks.4", 7), ("_blocks.7", 11), ("_blocks.9", 0), ("_blocks.11", 5), ("_blocks.13", 20)]:
            r = run(V.channel_visualization(b, layer, ch, size=128, preview_every=0))
            imgs.append(r.images[0])
            labs.append(f"{layer}:{ch}")
        Image.fromarray(labelled(imgs, labs, 160)).save(out / "channelvis.png")
        log["channels"] = {"device": device}

    if "deepdream" in sections:
        astro = gallery_image("astronaut")
        r = run(V.deepdream(b, astro, "_blocks.8", max_side=512, preview_every=0))
        Image.fromarray(np.concatenate([np.asarray(Image.fromarray(astro).resize(r.images[0].shape[1::-1])),
                                        r.images[0]], 1)).save(out / "deepdream.png")
        log["deepdream"] = {"device": device}

    if "inversion" in sections:
        cat = gallery_image("chelsea")
        imgs, labs, inv = [b.preprocess.geometry(cat)], ["original"], {}
        for layer in ["_blocks.1", "_blocks.3", "_blocks.6", "_blocks.10", "_blocks.15"]:
            r = run(V.invert(b, cat, layer, preview_every=0))
            inv[layer] = {"feature_error": round(r.params["feature_error"], 4), "pixel_rmse": round(r.params["pixel_rmse"], 4)}
            imgs.append(r.images[0])
            labs.append(f"{layer} err {r.params['feature_error']:.2f}")
            print(layer, inv[layer], flush=True)
        Image.fromarray(labelled(imgs, labs, 180)).save(out / "inversion_strip.png")
        log["inversion"] = {"device": device, "layers": inv}
    log_path.write_text(json.dumps(log, indent=2))
    print(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
