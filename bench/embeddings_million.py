"""Maps and neighbour search of up to a million points (issue 18) on real CNN features.

Features: the embedded digits CNN's penultimate layer (64-d, global average pooling) on
seeded augmentations of scikit-learn's 1,797 real handwritten digits (shift ±4 px,
rotation ±15°, scale 0.9-1.1, pixel noise): 100,000 real CNN feature vectors with labels.
The million-point set repeats them with small Gaussian jitter (5 % of each feature's
standard deviation) so that its first 100,000 rows are the real ones.

Sections, side by side in one run (python bench/embeddings_million.py [--quick] [--write]):
(--only-sklearn-full runs only scikit-learn's TSNE on the 100k real vectors and merges its row
into the existing docs/benchmarks.md section in place of the "not run" row, with --write.)

1. maps of 10k and 100k real vectors: the app's default t-SNE (projection.project),
   openTSNE's default TSNE and scikit-learn's TSNE (10k; 100k with --full: ~30 min here),
   time and 5-NN accuracy of the map (5-fold cross-validated);
2. the 1,000,000 x 64 map (embeddings.large.large_map): time by stage and the 5-NN
   accuracy of its first 100,000 points (the real ones) against the full t-SNE of those;
3. neighbours on the 100k real vectors: exact query time, faiss HNSW and pynndescent
   build time, query time and recall@10 against exact search.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.core.models.digits import digits_bundle, digits_tensors
from analysis.embeddings.large import NeighbourIndex, large_map, recall_at_k
from analysis.embeddings.neighbors import knn
from analysis.embeddings.projection import knn_accuracy, project
from bench._report import DOC, machine, write_section


def real_features(n: int, seed: int = 0, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64) penultimate features of augmented real digits, and their labels."""
    bundle = digits_bundle(torch.device("cpu"))
    model = bundle.model
    x0, y0, _ = digits_tensors()
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, 64), np.float32)
    labels = np.empty(n, np.int64)
    with torch.inference_mode():
        for s in range(0, n, batch):
            e = min(n, s + batch)
            idx = torch.randint(0, len(x0), (e - s,), generator=g)
            x = x0[idx]
            ang = (torch.rand(e - s, generator=g) - 0.5) * (math.pi / 6)
            sc = 0.9 + 0.2 * torch.rand(e - s, generator=g)
            sh = (torch.rand(e - s, 2, generator=g) - 0.5) * (8 / 16)   # ±4 px of 32 in [-1, 1] units
            cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
            theta = torch.stack([torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            bg = float(x0.min())
            x = F.grid_sample(x - bg, grid, align_corners=False) + bg
            x = x + 0.05 * torch.randn(x.shape, generator=g)
            f = model.avgpool(model.features(x)).flatten(1)
            out[s:e] = f.numpy()
            labels[s:e] = y0[idx].numpy()
    return out, labels


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def sklearn_row(x: np.ndarray, y: np.ndarray) -> str:
    """One table row: scikit-learn's TSNE of x (its default 1000 iterations), time and 5-NN accuracy by y."""
    from sklearn.manifold import TSNE as SKTSNE
    t, emb = timed(lambda: SKTSNE(2, random_state=0, n_jobs=os.cpu_count()).fit_transform(x))
    return f"| {len(x):,} | scikit-learn TSNE (1000 iterations) | {t:.1f} | {knn_accuracy(emb, y):.4f} |"


def sklearn_only(real_n: int, write: bool) -> None:
    """Run only scikit-learn's TSNE on the real_n real vectors; with write, put its row in place of
    the section's "not run" row (the rest of the section, from an earlier full run, is kept)."""
    _, (feats, labels) = timed(lambda: real_features(real_n))
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    row = sklearn_row(feats, labels)
    row = row.replace("(1000 iterations)", f"(1000 iterations; run later with --only-sklearn-full, {threads} OpenMP thread(s))")
    print(row, flush=True)
    if not write:
        return
    text = DOC.read_text()
    start, end = "<!-- bench:embeddings_million -->", "<!-- /bench:embeddings_million -->"
    a, b = text.index(start), text.index(end)
    section = text[a:b]
    marker = f"| {real_n:,} | scikit-learn TSNE |"
    lines = [row if ln.startswith(marker) else ln for ln in section.split("\n")]
    if row not in lines:
        raise SystemExit(f"no '{marker}' row in the section: run the full benchmark first")
    DOC.write_text(text[:a] + "\n".join(lines) + text[b:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="20k / 200k instead of 100k / 1M")
    ap.add_argument("--full", action="store_true", help="also scikit-learn's TSNE at 100k (~30 min)")
    ap.add_argument("--only-sklearn-full", action="store_true",
                    help="only scikit-learn's TSNE at 100k, merged into the existing section")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = ap.parse_args()
    big_n, real_n = (200_000, 20_000) if args.quick else (1_000_000, 100_000)
    if args.only_sklearn_full:
        sklearn_only(real_n, args.write)
        return
    lines = [f"Machine: {machine()}.", ""]

    t, (feats, labels) = timed(lambda: real_features(real_n))
    print(f"features: {real_n:,} x 64 real digits-CNN vectors in {t:.1f} s", flush=True)
    lines.append(f"Features: {real_n:,} × 64 penultimate vectors of the digits CNN on augmented real digits "
                 f"({t:.0f} s to compute).")
    lines += ["", "| points | map | time (s) | 5-NN accuracy |", "|---:|---|---:|---:|"]

    full_100k = None
    for n in (10_000, real_n):
        x, y = feats[:n], labels[:n]
        t, p = timed(lambda: project(x, "tsne", 2, seed=0))
        acc = knn_accuracy(p.coords, y)
        lines.append(f"| {n:,} | app default t-SNE | {t:.1f} | {acc:.4f} |")
        print(lines[-1], flush=True)
        if n == real_n:
            full_100k = acc
        from openTSNE import TSNE as OTSNE
        t, emb = timed(lambda: np.asarray(OTSNE(n_jobs=os.cpu_count(), random_state=0).fit(x)))
        lines.append(f"| {n:,} | openTSNE default (750 iterations) | {t:.1f} | {knn_accuracy(emb, y):.4f} |")
        print(lines[-1], flush=True)
        if n == 10_000 or args.full:
            lines.append(sklearn_row(x, y))
            print(lines[-1], flush=True)
        else:
            lines.append(f"| {n:,} | scikit-learn TSNE | not run (--full; ~30 min here) | |")

    # the million-point map: the real vectors first, then jittered copies
    rng = np.random.default_rng(1)
    reps = big_n // real_n
    std = feats.std(0, keepdims=True) * 0.05
    big = np.empty((big_n, 64), np.float32)
    big_labels = np.tile(labels, reps)
    big[:real_n] = feats
    for r in range(1, reps):
        big[r * real_n:(r + 1) * real_n] = feats + rng.normal(size=feats.shape).astype(np.float32) * std
    t, m = timed(lambda: large_map(big, labels=big_labels, progress=None))
    acc_big = knn_accuracy(m.coords[:real_n], labels)
    s = m.seconds
    lines += ["", f"**{big_n:,} × 64 map** (large_map: t-SNE of a {len(m.sample_index):,}-point stratified sample, "
              f"then median placement of the rest among its {m.params['k']} nearest reference points): "
              f"**{t:.0f} s** in all — sample fit {s['sample_fit']:.0f} s, PCA reduction {s['reduce']:.0f} s, "
              f"kNN + placement {s['knn_place']:.0f} s. 5-NN accuracy of its first {real_n:,} points (the real "
              f"vectors) **{acc_big:.4f}** against {full_100k:.4f} for the full t-SNE of those {real_n:,} "
              f"({100 * (acc_big - full_100k):+.1f} points)."]
    print(lines[-1], flush=True)

    # neighbours on the real vectors
    q = feats[:1000]
    t_ex, (ei, _) = timed(lambda: knn(q, feats, 10, metric="cosine"))
    lines += ["", f"Neighbours among {real_n:,} real vectors (cosine, 1,000 queries):", "",
              "| search | build (s) | query (ms each) | recall@10 |", "|---|---:|---:|---:|",
              f"| exact (BLAS) | – | {1000 * t_ex / 1000:.2f} | 1.000 |"]
    tb, idx = timed(lambda: NeighbourIndex(feats, "cosine", exact_max=0))
    tq, (ai, _) = timed(lambda: idx.query(q, 10))
    lines.append(f"| faiss HNSW (M 32, efSearch 64) | {tb:.1f} | {tq:.2f} | {recall_at_k(ai, ei):.3f} |")
    print(lines[-1], flush=True)
    import pynndescent
    tb, nd = timed(lambda: pynndescent.NNDescent(feats, metric="cosine", n_neighbors=30, random_state=0,
                                                 low_memory=True))
    tp, _ = timed(nd.prepare)
    tq, (pi, _) = timed(lambda: nd.query(q, k=10))
    lines.append(f"| pynndescent (first call in the process: numba compiles) | {tb + tp:.1f} | {tq:.2f} | "
                 f"{recall_at_k(pi, ei):.3f} |")
    print(lines[-1], flush=True)
    big_q = big[:20]
    t_big, _ = timed(lambda: knn(big_q, big, 10, metric="cosine"))
    lines += ["", f"Exact search over all {big_n:,} vectors: {1000 * t_big / 20:.0f} ms per query "
              "(the page's single-image neighbour search stays exact up to 2,000,000 vectors)."]
    print(lines[-1], flush=True)
    if args.write:
        write_section("embeddings_million", "## Maps and neighbours of a million points (bench/embeddings_million.py)\n\n"
                      + "\n".join(lines))


if __name__ == "__main__":
    main()
