"""2-D maps of 10,000 feature vectors: the app's default t-SNE against scikit-learn's.

In ONE run on Gaussian blobs (sklearn.datasets.make_blobs, 10,000 x 50, 10 centres,
cluster_std 11: overlapping enough that a 5-NN classifier is clearly below 100 % even in
the original space): seconds and the 5-fold cross-validated 5-NN accuracy of the 2-D map
(labels = blob ids) for

* scikit-learn's TSNE (max_iter 1000, init "pca", learning_rate "auto", perplexity 30,
  Barnes-Hut, n_jobs=2),
* openTSNE with its defaults (Annoy neighbours, FFT gradients, 250 + 500 iterations),
* the app's default (analysis.embeddings.projection.project: exact BLAS kNN, PCA init, 125 + 250
  iterations), twice — before and after scikit-learn, the slower run counts — plus the
  same pipeline with openTSNE's full 250 + 500 iterations,
* UMAP through the app: first call in a fresh process with numba's disk cache empty
  (full compile) and warm (after ``warm_up_umap()`` in this process); umap-learn's own
  defaults, first and second call in this process,
* PCA,

and a quality check on scikit-learn's digits (1,797 x 64): scikit-learn's TSNE, the
default t-SNE and UMAP.

OMP_WAIT_POLICY=PASSIVE is set for the whole run (see below). Goal: the default >= 3x faster than scikit-learn's TSNE with a 5-NN accuracy within 2
points of it.

    .venv/bin/python bench/embeddings.py [--n 10000] [--std 11] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Before any OpenMP runtime loads: waiting threads sleep instead of spinning. On a shared
# machine spinning makes per-iteration parallel loops (scikit-learn's Barnes-Hut,
# openTSNE with 2 threads) much slower; this gives the baselines their best conditions.
# The app's default t-SNE of 10,000 points runs its iterations on one thread either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

import analysis.embeddings.projection as projection  # noqa: E402
from analysis.embeddings.projection import project, warm_up_umap  # noqa: E402
from bench._report import machine, write_section  # noqa: E402

CENTERS, DIMS, SEED = 10, 50, 0


def data(n: int, std: float) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n, DIMS, centers=CENTERS, cluster_std=std, random_state=SEED)
    return x.astype(np.float32), y


def acc5(coords, labels) -> float:
    return float(cross_val_score(KNeighborsClassifier(5), coords, labels, cv=5).mean())


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def umap_child(n: int, std: float) -> None:
    """Run in a fresh process: the first UMAP map of the process, numba compile included."""
    x, y = data(n, std)
    t0 = time.perf_counter()
    import umap  # noqa: F401
    t_import = time.perf_counter() - t0          # numba compiles at import too
    p, wall, cpu = timed(lambda: project(x, "umap"))
    print(json.dumps({"import": t_import, "wall": wall, "cpu": cpu, "acc": acc5(p.coords, y)}))


def fresh_umap(n: int, std: float, numba_cache: str | None) -> dict:
    env = dict(os.environ)
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache
    out = subprocess.run([sys.executable, __file__, "--umap-child", "--n", str(n), "--std", str(std)],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--std", type=float, default=11.0)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--umap-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.umap_child:
        umap_child(args.n, args.std)
        return
    warnings.filterwarnings("ignore")
    jobs = projection._threads()
    x, y = data(args.n, args.std)
    n = len(x)
    print(f"{n} x {DIMS} blobs, {CENTERS} centres, cluster_std {args.std}; {jobs} threads", flush=True)
    hd = acc5(x, y)
    print(f"5-NN accuracy in the original {DIMS}-D space: {hd:.4f}", flush=True)
    rows: list[tuple[str, str, float, float, float]] = []

    def add(name, settings, wall, cpu, acc):
        rows.append((name, settings, wall, cpu, acc))
        print(f"{name:<34} {wall:7.1f} s  cpu {cpu:7.1f} s  5-NN {acc:.4f}", flush=True)

    # --- the app's default, first run (memory caches empty: kNN included)
    projection.clear_memory_caches()
    p1, w1, c1 = timed(lambda: project(x))
    a1 = acc5(p1.coords, y)
    print(f"app default t-SNE (run 1)           {w1:7.1f} s  cpu {c1:7.1f} s  5-NN {a1:.4f}", flush=True)

    # --- scikit-learn
    from sklearn.manifold import TSNE
    sk, w_sk, c_sk = timed(lambda: TSNE(2, perplexity=30, init="pca", learning_rate="auto",
                                        max_iter=1000, method="barnes_hut", n_jobs=jobs,
                                        random_state=SEED).fit_transform(x))
    a_sk = acc5(sk, y)
    add("scikit-learn TSNE", "Barnes-Hut, 1000 iterations, exact kNN", w_sk, c_sk, a_sk)

    # --- the app's default, second run
    projection.clear_memory_caches()
    p2, w2, c2 = timed(lambda: project(x))
    a2 = acc5(p2.coords, y)
    print(f"app default t-SNE (run 2)           {w2:7.1f} s  cpu {c2:7.1f} s  5-NN {a2:.4f}", flush=True)
    worst = 0 if w1 >= w2 else 1
    w_app, c_app, a_app = ((w1, c1, a1), (w2, c2, a2))[worst]
    add("**app default t-SNE**", f"exact kNN, PCA init, {p1.params['gradient'].upper()}, "
        f"{p1.params['early_exaggeration_iter']} + {p1.params['n_iter']} iterations on "
        f"{projection._optimiser_threads(n)} thread(s) "
        f"(slower of 2 runs: {w1:.1f} s / {w2:.1f} s)", w_app, c_app, a_app)

    # --- openTSNE defaults
    import openTSNE
    ot, w, c = timed(lambda: np.asarray(openTSNE.TSNE(n_jobs=jobs, random_state=SEED).fit(x)))
    add("openTSNE defaults", "Annoy kNN, PCA init, FFT, 250 + 500 iterations", w, c, acc5(ot, y))

    # --- the app's pipeline with openTSNE's iteration budget
    projection.clear_memory_caches()
    pf, w, c = timed(lambda: project(x, n_iter=500))
    add("app pipeline, 250 + 500 iterations", "exact kNN, PCA init, FFT", w, c, acc5(pf.coords, y))

    # --- UMAP
    with tempfile.TemporaryDirectory(prefix="numba-cold-") as cold:
        r = fresh_umap(n, args.std, cold)
    add("UMAP (app), first call", f"fresh process, empty numba cache: `import umap` "
        f"({r['import']:.1f} s) + first map ({r['wall']:.1f} s), compile included",
        r["import"] + r["wall"], r["import"] + r["cpu"], r["acc"])
    warm_s = warm_up_umap()
    print(f"warm_up_umap() in this process: {warm_s:.1f} s", flush=True)
    projection.clear_memory_caches()
    pu, w, c = timed(lambda: project(x, "umap"))
    add("UMAP (app), warm", f"after warm_up_umap() ({warm_s:.1f} s); exact kNN, "
        f"{pu.params['n_epochs']} epochs, seeded", w, c, acc5(pu.coords, y))
    import umap
    for label in ("first call", "second call"):
        uu, w, c = timed(lambda: umap.UMAP(random_state=SEED).fit_transform(x))
        add(f"umap-learn defaults, {label}", "NN-descent, seeded (one thread)"
            + (": pynndescent's compile included" if label == "first call" else ""),
            w, c, acc5(uu, y))

    # --- PCA
    pp, w, c = timed(lambda: project(x, "pca"))
    add("PCA (app)", "scikit-learn PCA, 50 components for the scree plot", w, c, acc5(pp.coords, y))

    # --- scikit-learn's digits (1,797 x 64): quality check on real data
    from sklearn.datasets import load_digits
    dx, dy = load_digits(return_X_y=True)
    drows = []
    sk_d, w, c = timed(lambda: TSNE(2, perplexity=30, init="pca", learning_rate="auto",
                                    max_iter=1000, method="barnes_hut", n_jobs=jobs,
                                    random_state=SEED).fit_transform(dx))
    drows.append(("scikit-learn TSNE", w, acc5(sk_d, dy)))
    for name, method in (("app default t-SNE", "tsne"), ("UMAP (app)", "umap")):
        projection.clear_memory_caches()
        pd_, w, c = timed(lambda: project(dx, method))
        drows.append((name, w, acc5(pd_.coords, dy)))
    for name, w, a in drows:
        print(f"digits: {name:<24} {w:6.1f} s  5-NN {a:.4f}", flush=True)

    speedup = w_sk / w_app
    diff = (a_app - a_sk) * 100
    ok = speedup >= 3 and abs(diff) <= 2
    print(f"\nspeed-up of the default vs scikit-learn: {speedup:.2f}x; 5-NN accuracy "
          f"difference {diff:+.2f} points -> {'goal met' if ok else 'GOAL MISSED'}", flush=True)

    def sec(v: float) -> str:
        return f"{v:.2f}" if v < 1 else f"{v:.1f}"
    table = "\n".join(f"| {name} | {settings} | {sec(wall)} | {sec(cpu)} | {acc * 100:.2f} % | "
                      + (f"{w_sk / wall:.1f}× |" if not name.startswith("PCA") else "— |")
                      for name, settings, wall, cpu, acc in rows)
    dtable = "\n".join(f"| {name} | {sec(w)} | {a * 100:.2f} % |" for name, w, a in drows)
    body = f"""## 2-D maps of 10,000 vectors (bench/embeddings.py)

Machine: {machine()}; {jobs} threads for every library
(`n_jobs`), `OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY")}` for the whole run (waiting OpenMP
threads sleep: the baselines' per-iteration parallel loops are not slowed by spinning on a
shared machine; the app's default runs the t-SNE iterations of 10,000 points on one
thread, so it gains nothing from it).

{n:,} × {DIMS} Gaussian blobs (`make_blobs`, {CENTERS} centres, cluster_std {args.std:g},
seed {SEED}); 5-NN accuracy = 5-fold cross-validated k=5 classifier on the 2-D map,
labels = blob ids (in the original {DIMS}-D space: {hd * 100:.2f} %). One run, in this
order: app default, scikit-learn, app default again, then the rest.

| map | settings | seconds | CPU seconds | 5-NN accuracy | speed vs scikit-learn |
|---|---|---|---|---|---|
{table}

Scikit-learn's digits (1,797 × 64, real data), same 5-NN measure:

| map | seconds | 5-NN accuracy |
|---|---|---|
{dtable}

**Default t-SNE: {speedup:.1f}× faster than scikit-learn's TSNE, 5-NN accuracy
{diff:+.2f} points** (goal: ≥ 3×, within 2 points — {'met' if ok else 'MISSED'}).
Where the time goes: scikit-learn spends 1000 Barnes-Hut iterations; openTSNE's
defaults find 90 neighbours approximately with Annoy (slower than exact brute force at
this size) and run 750 FFT iterations. The default computes the exact kNN graph by one
BLAS pass (≈1 s here, shared with a later UMAP map of the same features), starts from the
PCA layout and stops after 125 exaggerated + 250 normal iterations (learning rate N/12,
then N), which on these blobs and on scikit-learn's digits leaves the 5-NN accuracy of
the map where the full schedules put it. Features wider than 50 dimensions are first
reduced to 50 by randomized PCA (not exercised here: the blobs are 50-D). UMAP's first call in a
process pays for numba's compilation unless `warm_up_umap()` ran before (the app runs it
at start-up in a background thread, dashboard/warmup.py); umap-learn's own defaults also compile
pynndescent's NN-descent on their first call, which the app avoids by handing UMAP its
exact kNN graph (up to 100,000 × 50). Figures come from a shared 2-core machine: run-to-run
variation is large, the ratios within the run are what counts.
"""
    if not args.no_write:
        write_section("embeddings", body)


if __name__ == "__main__":
    main()
