"""2-D and 3-D maps of feature vectors: PCA, t-SNE and UMAP.

>>> p = project(features)                          # the default: fast 2-D t-SNE
>>> p = project(features, "umap", 3, n_neighbors=30, cache_parts=(features_key,))
>>> p.coords                                       # (N, dims) float32
>>> project(features, "pca").explained_variance_ratio   # scree plot, up to 50 values

Pipeline of the neighbour-based methods (t-SNE, UMAP):

1. optional ``standardize`` (z-score every feature), then for ``metric="cosine"`` every
   row is scaled to unit length (zero rows stay zero). "cosine" is therefore the
   euclidean ("chord") distance between unit vectors, ``sqrt(2 * cosine distance)``: the
   same neighbours in the same order as the cosine distance;
2. PCA pre-reduction to ``pca_dims`` (50) components (randomized SVD, seeded) when the
   features have more dimensions than that;
3. one k-nearest-neighbour graph, EXACT (brute force through BLAS, via scikit-learn) as
   long as ``N**2 * dims`` stays below ~6.4e11 (all of 100,000 x 50 — about 30 s on 2
   cores), approximate (pynndescent, recall ~99 %) beyond that. The graph is kept in
   memory (a small LRU keyed by a hash of the reduced data) and SHARED: a t-SNE map
   (3 * perplexity neighbours) followed by a UMAP map (n_neighbors) of the same features
   computes it once;
4. the layout:

   * t-SNE (openTSNE): perplexity-based affinities on that graph, PCA initialisation
     (rescaled to std 1e-4), early exaggeration 12 for ``n_iter // 2`` iterations
     (learning rate N/12, momentum 0.5), then ``n_iter`` = 250 normal iterations
     (learning rate N, momentum 0.8) — half of openTSNE's default 250 + 500 and 375 in
     all against scikit-learn's 1000. 2-D uses FFT-interpolated repulsion for N >= 5,000
     and Barnes-Hut below (faster on small sets); 3-D always Barnes-Hut (openTSNE's FFT
     is 1-D/2-D only) with the learning rate kept at N/12 after the exaggeration (the
     2-D rate of N made 3-D Barnes-Hut diverge on 10,000 points). The gradient descent
     runs on one thread below 20,000 points and on all cores above (openTSNE's spinning
     OpenMP joins make 2 threads slower than 1 on a busy 2-core machine; see
     ``_optimiser_threads``); kNN and affinities use all cores. bench/embeddings.py
     measures the 2-D default against scikit-learn's TSNE: >= 3x faster at equal 5-NN
     accuracy of the map;
   * UMAP (umap-learn) on the same graph, ``random_state=seed``: deterministic but the
     epochs run on one thread. On 2 shared cores the parallel, unseeded variant was not
     faster (11 s seeded against 16 s unseeded on 10,000 x 50), so the seed is kept.
     Numba compiles UMAP's kernels on the first call of a process (~20-40 s on 2 cores;
     partly cached on disk by numba): call ``warm_up_umap()`` at start-up in a background
     thread, as the app does (dashboard/warmup.py).

Determinism: the same features and parameters give bit-identical coordinates for PCA and
t-SNE, and for UMAP on the same machine and library versions (seeded, single-threaded
epochs); UMAP is not guaranteed identical across numba/CPU versions.

Expected time for 100,000 points on 2 cores (measured once on 100,000 x 256 blobs, not
in the tests): PCA ~1 s; 2-D t-SNE ~75 s (PCA + exact kNN ~35 s, then ~0.1 s per
iteration), peak memory ~1.3 GB; 2-D UMAP ~45 s when the kNN graph is shared with a t-SNE
map just made, roughly 80 s on its own (200 epochs; estimate). 3-D t-SNE (Barnes-Hut) is several times
slower than 2-D. No sampling cap is applied; the number of points is bounded by
``limits.max_dataset_images`` (LimitError above it).

Computed maps can be cached on disk (kind ``projections``): pass ``cache_parts``, e.g. the
features' cache key; the entry's key adds the method, dims, the number and width of the
vectors and every effective parameter.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import analysis.core.diskcache as diskcache
from analysis.core.batching import usable_cores
from analysis.core.config import get_config
from analysis.core.errors import LimitError, ParameterError
from analysis.core.lru import LockedLRU
from analysis.core.schema import is_int, is_real

METRICS = ("euclidean", "cosine")
CACHE_KIND = "projections"
DEFAULT_TSNE_ITER = 250            # normal-phase iterations; early exaggeration: half
EARLY_EXAGGERATION = 12.0
PCA_SCREE_MAX = 50                 # explained-variance ratios kept for the scree plot
FFT_MIN_POINTS = 5000              # 2-D t-SNE: Barnes-Hut below, FFT from here on
EXACT_KNN_BUDGET = 100_000 ** 2 * 64   # N**2 * dims of the largest brute-force kNN
PARALLEL_MIN_POINTS = 20_000       # t-SNE gradient descent: one thread below (see _optimiser_threads)
_VERSION = 1                       # bump when the computation changes (invalidates cache)


@dataclass
class Projection:
    """A computed map. ``params`` holds every effective parameter (incl. seed, pca_dims);
    ``seconds`` is the time the computation took (also for a result read from the cache,
    where ``from_cache`` is True)."""
    method: str
    dims: int
    coords: np.ndarray                      # (N, dims) float32
    params: dict
    seconds: float
    explained_variance_ratio: np.ndarray | None = None   # PCA only: up to 50 ratios
    quality: dict | None = None
    from_cache: bool = False

    @property
    def n_points(self) -> int:
        return int(self.coords.shape[0])


# --------------------------------------------------------------------------- helpers

def _threads() -> int:
    return max(1, usable_cores())


_PREPARED = LockedLRU(2)    # (features digest, prep params) -> (prepared data, its digest)
_KNN = LockedLRU(2)        # (prepared digest, mode, k) -> (indices int32, distances float32)


def clear_memory_caches() -> None:
    """Forget the in-memory reduced data and kNN graphs (the disk cache is untouched)."""
    _PREPARED.clear()
    _KNN.clear()


def _digest(x: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{x.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return h.hexdigest()


def _check_features(features) -> np.ndarray:
    try:
        x = np.asarray(features)
    except (TypeError, ValueError) as e:
        raise ParameterError(f"Features must be a numeric array: {e}") from None
    if x.ndim != 2:
        raise ParameterError(f"Features must be a 2-D array (points x dimensions), got shape {x.shape}.")
    if x.dtype.kind not in "biuf":
        raise ParameterError(f"Features must be numeric, got dtype {x.dtype}.")
    n, d = x.shape
    if n < 5:
        raise ParameterError(f"A map needs at least 5 points, got {n}.")
    if d < 1:
        raise ParameterError("Features have no dimensions.")
    limit = get_config().limits.max_dataset_images
    if n > limit:
        raise LimitError(f"{n:,} points exceed the limit of {limit:,} (max_dataset_images).")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ParameterError("Features contain NaN or infinite values.")
    if not (x.max(axis=0) > x.min(axis=0)).any():
        raise ParameterError(f"All {n:,} feature vectors are identical (the layer's output does not "
                             "vary over this data set): there is nothing to map. Pick another layer.")
    return x


def _resolve(n: int, d: int, method: str, dims: int, *, seed, pca_dims, perplexity,
             n_neighbors, min_dist, metric, standardize, n_iter) -> dict:
    """Validate everything and return the effective parameters (no computation)."""
    if method not in PROJECTIONS:
        raise ParameterError(f"Unknown method {method!r}; use one of {', '.join(PROJECTIONS)}.")
    if not is_int(dims) or dims not in (2, 3):
        raise ParameterError(f"dims must be 2 or 3, got {dims!r}.")
    if not is_int(seed) or not 0 <= seed < 2 ** 32:
        raise ParameterError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    if metric not in METRICS:
        raise ParameterError(f"Unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ParameterError(f"standardize must be True or False, got {standardize!r}.")
    params: dict[str, Any] = {"seed": int(seed), "metric": metric, "standardize": bool(standardize)}
    entry = PROJECTIONS[method]
    if entry.neighbours:
        _resolve_neighbours(n, d, pca_dims, n_iter, params)
    options = {"perplexity": perplexity, "n_neighbors": n_neighbors, "min_dist": min_dist, "n_iter": n_iter}
    entry.resolve(n, d, dims, options, params)
    return params


def _resolve_neighbours(n: int, d: int, pca_dims, n_iter, params: dict) -> None:
    """The PCA pre-reduction and the kNN graph's mode, shared by the neighbour-based methods."""
    if pca_dims is None or (is_int(pca_dims) and pca_dims == 0):
        eff_pca = None
    elif is_int(pca_dims) and pca_dims >= 2:
        eff_pca = int(min(pca_dims, n, d))
        if eff_pca >= d:                 # nothing to reduce
            eff_pca = None
    else:
        raise ParameterError(f"pca_dims must be None, 0 (no pre-reduction) or an integer >= 2, "
                             f"got {pca_dims!r}.")
    params["pca_dims"] = eff_pca
    width = eff_pca or d
    max_steps = get_config().limits.max_optimisation_steps
    if n_iter is not None and (not is_int(n_iter) or not 10 <= n_iter <= max_steps):
        raise ParameterError(f"n_iter must be None (default) or an integer in [10, {max_steps}], "
                             f"got {n_iter!r}.")
    exact = n * n * width <= EXACT_KNN_BUDGET
    params["neighbors"] = "exact" if exact else "nndescent"


def _resolve_pca(n: int, d: int, dims: int, options: dict, params: dict) -> None:
    if dims > min(n, d):
        raise ParameterError(f"A {dims}-D PCA map needs at least {dims} dimensions and "
                             f"points; the features are {n} x {d}.")
    params["n_components_fitted"] = max(dims, min(PCA_SCREE_MAX, n, d))


def _resolve_tsne(n: int, d: int, dims: int, options: dict, params: dict) -> None:
    perplexity, n_iter = options["perplexity"], options["n_iter"]
    if not is_real(perplexity) or not math.isfinite(perplexity) or perplexity < 1:
        raise ParameterError(f"perplexity must be a number >= 1, got {perplexity!r}.")
    if 3 * perplexity >= n:
        raise ParameterError(f"perplexity must be less than N/3 = {n / 3:.4g} for {n} points "
                             f"(got {perplexity:g}); lower it or map more points.")
    it = DEFAULT_TSNE_ITER if n_iter is None else int(n_iter)
    params.update(
        perplexity=float(perplexity),
        k_neighbors=int(min(n - 1, math.ceil(3 * perplexity))),
        n_iter=it,
        early_exaggeration_iter=it // 2,
        early_exaggeration=EARLY_EXAGGERATION,
        gradient="fft" if dims == 2 and n >= FFT_MIN_POINTS else "bh",
        learning_rate="N/12, then N" if dims == 2 else "N/12",
    )


def _resolve_umap(n: int, d: int, dims: int, options: dict, params: dict) -> None:
    n_neighbors, min_dist, n_iter = options["n_neighbors"], options["min_dist"], options["n_iter"]
    if not is_int(n_neighbors) or n_neighbors < 2:
        raise ParameterError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}.")
    if n_neighbors >= n:
        raise ParameterError(f"n_neighbors must be less than the number of points "
                             f"({n}), got {n_neighbors}.")
    if not is_real(min_dist) or not 0.0 <= min_dist <= 1.0:
        raise ParameterError(f"min_dist must be a number in [0, 1], got {min_dist!r}.")
    params.update(
        n_neighbors=int(n_neighbors),
        min_dist=float(min_dist),
        n_epochs=(500 if n <= 10_000 else 200) if n_iter is None else int(n_iter),
    )


def _scaled(x: np.ndarray, params: dict) -> np.ndarray:
    """``x`` standardised per dimension (``standardize``) and/or row-normalised (cosine metric)."""
    y = x
    if params["standardize"]:
        mu = y.mean(axis=0, dtype=np.float64)
        sd = y.std(axis=0, dtype=np.float64)
        sd[sd == 0] = 1.0
        y = ((y - mu) / sd).astype(np.float32)
    if params["metric"] == "cosine":
        norm = np.linalg.norm(y, axis=1, keepdims=True)
        y = (y / np.maximum(norm, 1e-12)).astype(np.float32)
    return y


def _pca(k: int, y: np.ndarray, seed: int):
    """scikit-learn's PCA with ``k`` components: randomised SVD unless ``k`` is close to full rank."""
    from sklearn.decomposition import PCA
    solver = "randomized" if k < 0.8 * min(y.shape) else "full"
    return PCA(n_components=k, svd_solver=solver, random_state=seed)


def _prepare(x: np.ndarray, params: dict) -> tuple[np.ndarray, str]:
    """Standardise / normalise / PCA-reduce; memoised on a hash of the input."""
    dx = _digest(x)
    if not (params["standardize"] or params["metric"] == "cosine" or params.get("pca_dims")):
        return x, dx                         # used as is (and not held in memory)
    key = (dx, params["standardize"], params["metric"], params.get("pca_dims"), params["seed"])
    hit = _PREPARED.get(key)
    if hit is not None:
        return hit
    y = _scaled(x, params)
    k = params.get("pca_dims")
    if k:
        y = _pca(k, y, params["seed"]).fit_transform(y)
    y = np.ascontiguousarray(y, dtype=np.float32)
    out = (y, _digest(y))
    _PREPARED.put(key, out)
    return out


def _knn(y: np.ndarray, digest: str, k: int, mode: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances float32) of the k nearest OTHER points, nearest first;
    euclidean on the prepared data. Shared through an in-memory LRU: an exact graph with
    at least k neighbours is sliced (its first k columns are the exact k-NN); an
    approximate one is reused only for the same k, so that results never depend on what
    was computed before."""
    hit = _KNN.find(lambda key, v: key[0] == digest and key[1] == mode
                    and (key[2] == k or (mode == "exact" and key[2] >= k)))
    if hit is not None:
        ind, dist = hit[1]
        return ind[:, :k], dist[:, :k]
    n = y.shape[0]
    if mode == "exact":
        from sklearn.neighbors import NearestNeighbors
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean",
                              n_jobs=_threads()).fit(y)
        dist, ind = nn.kneighbors()          # no X: each point is not its own neighbour
    else:
        import pynndescent
        index = pynndescent.NNDescent(y, n_neighbors=k + 1, metric="euclidean",
                                      random_state=seed, n_jobs=_threads(),
                                      low_memory=True, compressed=True)
        ind, dist = _drop_self(*index.neighbor_graph, k)
        del index
    ind = np.ascontiguousarray(ind, dtype=np.int32)
    dist = np.ascontiguousarray(dist, dtype=np.float32)
    if ind.shape != (n, k) or dist.shape != (n, k):
        raise RuntimeError(f"kNN graph has shape {ind.shape}, expected {(n, k)}")
    ind.setflags(write=False)
    dist.setflags(write=False)
    _KNN.put((digest, mode, k), (ind, dist))
    return ind, dist


def _drop_self(ind: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each point from its own (k+1)-neighbour list (or the farthest entry when the
    point is absent, e.g. among exact duplicates)."""
    n = ind.shape[0]
    is_self = ind == np.arange(n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    first = is_self.cumsum(axis=1) == 1
    keep = ~(is_self & first)
    return ind[keep].reshape(n, k), dist[keep].reshape(n, k)


# --------------------------------------------------------------------------- methods

def _run_pca(x: np.ndarray, dims: int, params: dict, progress):
    _report(progress, 0, 1)
    y = _scaled(x, params)
    pca = _pca(params["n_components_fitted"], y, params["seed"])
    z = pca.fit_transform(y)
    _report(progress, 1, 1)
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    return z[:, :dims], ratio, {}


def _optimiser_threads(n: int) -> int:
    """Threads for openTSNE's gradient descent. openTSNE joins its OpenMP threads several
    times per iteration, and its bundled libgomp (shared with scikit-learn's, same
    soname, so OMP_WAIT_POLICY cannot be set for it alone) spins while waiting: on a
    shared 2-core machine a 2-thread run was up to 30x slower than 1 thread for small
    maps (300 points: 0.3 s -> 9-12 s) and 1.7x slower at 10,000 points (10 s -> 16-19 s).
    One thread below PARALLEL_MIN_POINTS, where an iteration is too short to amortise the
    joins; all cores above, where an iteration takes ~0.05-0.1 s."""
    return 1 if n < PARALLEL_MIN_POINTS else _threads()


def _run_tsne(x: np.ndarray, dims: int, params: dict, progress):
    from openTSNE import TSNEEmbedding, affinity, initialization
    from openTSNE.nearest_neighbors import PrecomputedNeighbors
    ee, it = params["early_exaggeration_iter"], params["n_iter"]
    total = ee + it
    _report(progress, 0, total)
    y, dg = _prepare(x, params)
    ind, dist = _knn(y, dg, params["k_neighbors"], params["neighbors"], params["seed"])
    n = y.shape[0]
    jobs = _threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aff = affinity.PerplexityBasedNN(
            knn_index=PrecomputedNeighbors(ind.astype(np.int64), dist.astype(np.float64)),
            perplexity=params["perplexity"], n_jobs=jobs)
    init = initialization.pca(y, n_components=dims, random_state=params["seed"])
    emb = TSNEEmbedding(init, aff, n_jobs=_optimiser_threads(n), random_state=params["seed"],
                        negative_gradient_method=params["gradient"])
    exag = params["early_exaggeration"]
    lr_ee = max(n / exag, 50.0)
    lr = max(n / exag, 50.0) if dims == 3 else max(float(n), 50.0)
    every = 25
    emb.optimize(ee, exaggeration=exag, momentum=0.5, learning_rate=lr_ee, inplace=True,
                 callbacks=_tsne_callback(progress, 0, total), callbacks_every_iters=every)
    emb.optimize(it, momentum=0.8, learning_rate=lr, inplace=True,
                 callbacks=_tsne_callback(progress, ee, total), callbacks_every_iters=every)
    _report(progress, total, total)
    kl = emb.kl_divergence
    quality = {"kl_divergence": float(kl)} if kl is not None and math.isfinite(kl) else {}
    return np.asarray(emb), None, quality


def _tsne_callback(progress, offset: int, total: int):
    if progress is None:
        return None

    def cb(iteration, error, embedding):
        progress(offset + int(iteration), total)
        return False
    return [cb]


def _run_umap(x: np.ndarray, dims: int, params: dict, progress):
    epochs = params["n_epochs"]
    _report(progress, 0, epochs)
    y, dg = _prepare(x, params)
    k = params["n_neighbors"] - 1
    ind, dist = _knn(y, dg, k, params["neighbors"], params["seed"])
    n = y.shape[0]
    # UMAP's graph includes each point as its own nearest neighbour (distance 0).
    knn_i = np.empty((n, k + 1), dtype=np.int32)
    knn_d = np.empty((n, k + 1), dtype=np.float32)
    knn_i[:, 0] = np.arange(n)
    knn_d[:, 0] = 0.0
    knn_i[:, 1:] = ind
    knn_d[:, 1:] = dist
    import umap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = umap.UMAP(n_components=dims, n_neighbors=params["n_neighbors"],
                          min_dist=params["min_dist"], metric="euclidean",
                          n_epochs=epochs, random_state=params["seed"],
                          precomputed_knn=(knn_i, knn_d, None), verbose=False)
        z = model.fit_transform(y)
    _report(progress, epochs, epochs)
    return np.asarray(z), None, {}


# --------------------------------------------------------------------------- the methods' table

@dataclass(frozen=True)
class ProjectionMethod:
    """One map-making method: its name in calls and links, its display name, what runs it,
    how its options are checked, and which of ``project``'s options it reads.

    run: ``run(x, dims, params, progress) -> (coords (N, dims), explained-variance ratios or
        None, quality dict)``; ``params`` are the effective parameters ``resolve`` made.
    resolve: ``resolve(n, d, dims, options, params)``: raises ParameterError for impossible
        ``options`` (perplexity, n_neighbors, min_dist, n_iter) and adds the method's
        effective parameters to ``params`` (they go into the cache key and the record).
    options: the options the method reads; the Embeddings page enables their widgets.
    neighbours: the method works on the PCA pre-reduced data and its kNN graph (pca_dims,
        metric and n_iter apply).
    """
    name: str
    title: str
    run: Callable
    resolve: Callable
    options: tuple[str, ...] = ()
    neighbours: bool = False


PROJECTIONS: dict[str, ProjectionMethod] = {}     # in the order the page offers them


def register_projection(method: ProjectionMethod) -> ProjectionMethod:
    """Add ``method`` to the table (replacing one of the same name): ``project`` accepts its
    name and the Embeddings page offers it.

    Args:
        method: the method's entry.
    """
    PROJECTIONS[method.name] = method
    return method


_NEIGHBOUR_OPTIONS = ("pca_dims", "metric", "n_iter")
register_projection(ProjectionMethod("tsne", "t-SNE", _run_tsne, _resolve_tsne,
                                     _NEIGHBOUR_OPTIONS + ("perplexity",), neighbours=True))
register_projection(ProjectionMethod("umap", "UMAP", _run_umap, _resolve_umap,
                                     _NEIGHBOUR_OPTIONS + ("n_neighbors", "min_dist"), neighbours=True))
register_projection(ProjectionMethod("pca", "PCA", _run_pca, _resolve_pca))


def _report(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(int(done), int(total))


# --------------------------------------------------------------------------- public API

def project(features, method: str = "tsne", dims: int = 2, *, seed: int = 0,
            pca_dims: int | None = 50, perplexity: float = 30.0, n_neighbors: int = 15,
            min_dist: float = 0.1, metric: str = "euclidean", standardize: bool = False,
            n_iter: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            cache_parts: tuple | None = None, labels=None,
            cache_dir: str | os.PathLike | None = None) -> Projection:
    """Map ``features`` (N, D) to ``dims`` (2 or 3) dimensions with ``method``.

    Args:
        features: (N, D) float array (finite; not all rows equal).
        method: "tsne", "umap" or "pca".
        dims: 2 or 3.
        seed: integer in [0, 2**32): seeds PCA's randomised SVD, the neighbour search, t-SNE and
            UMAP (the same seed gives the same map).
        pca_dims: PCA pre-reduction for t-SNE / UMAP (None or 0: none; capped at min(N, D)).
        perplexity: t-SNE perplexity, < N/3.
        n_neighbors: UMAP neighbours, < N.
        min_dist: UMAP minimum distance, 0..1.
        metric: "euclidean" or "cosine".
        standardize: z-score every feature first.
        n_iter: t-SNE normal-phase iterations (default 250, early exaggeration half of that) or
            UMAP epochs (default: UMAP's own, 500 up to 10,000 points, 200 above).
        progress: ``progress(done, total)``, called at the start, every 25 t-SNE iterations and
            at the end; or None.
        cache_parts: e.g. ``(features_cache_key,)``: look the map up in / store it into the disk
            cache; None for no caching.
        labels: (N,) class labels, optional: adds the 5-NN cross-validated accuracy of the map
            to ``quality`` (``knn_accuracy``), computed also on a cache hit.
        cache_dir: disk-cache root; None for the configured one.

    Raises:
        ParameterError: impossible parameters, or features whose vectors are all identical
            (nothing to map).
        LimitError: more points than ``max_dataset_images``.
        All of them before any computation.
    """
    x = _check_features(features)
    n, d = x.shape
    params = _resolve(n, d, method, dims, seed=seed, pca_dims=pca_dims, perplexity=perplexity,
                      n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                      standardize=standardize, n_iter=n_iter)
    y_labels = None
    if labels is not None:
        y_labels = np.asarray(labels)
        if y_labels.shape != (n,):
            raise ParameterError(f"labels must have shape ({n},), got {y_labels.shape}.")

    key = None
    if cache_parts is not None:
        if not isinstance(cache_parts, (tuple, list)):
            raise ParameterError("cache_parts must be a tuple (e.g. the features' cache key).")
        key = projection_key(cache_parts, method, dims, n, d, params)
        hit = diskcache.load_arrays(CACHE_KIND, key, cache_dir)
        if hit is not None:
            result = _from_cache(hit, method, dims, n, params)
            if result is not None:
                _report(progress, 1, 1)
                _add_label_quality(result, y_labels)
                return result

    t0 = time.perf_counter()
    coords, ratio, quality = PROJECTIONS[method].run(x, dims, params, progress)
    seconds = time.perf_counter() - t0
    coords = np.ascontiguousarray(coords, dtype=np.float32)
    if coords.shape != (n, dims) or not np.isfinite(coords).all():
        raise RuntimeError(f"{method} produced an invalid map (shape {coords.shape}).")
    result = Projection(method=method, dims=dims, coords=coords, params=dict(params),
                        seconds=seconds, explained_variance_ratio=ratio,
                        quality=dict(quality) if quality else None)
    if key is not None:
        arrays = {"coords": coords}
        if ratio is not None:
            arrays["explained_variance_ratio"] = ratio
        diskcache.save_arrays(CACHE_KIND, key, arrays,
                              {"method": method, "dims": dims, "params": params,
                               "seconds": seconds, "quality": quality or None}, cache_dir)
    _add_label_quality(result, y_labels)
    return result


def projection_key(cache_parts, method: str, dims: int, n: int, d: int, params: dict) -> str:
    """Disk-cache key of a map: the caller's parts (the features' key), the method, dims,
    the shape of the features and every effective parameter.

    Args:
        cache_parts: the caller's key parts (e.g. the features' cache key).
        method: projection method name.
        dims: 2 or 3.
        n: number of points.
        d: feature dimension.
        params: the effective parameters after defaults and caps.
    """
    return diskcache.cache_key("projection", _VERSION, *cache_parts, method, dims, n, d, params)


def _from_cache(hit, method: str, dims: int, n: int, params: dict) -> Projection | None:
    arrays, meta = hit
    coords = arrays.get("coords")
    if coords is None or coords.shape != (n, dims) or meta.get("method") != method:
        return None
    ratio = arrays.get("explained_variance_ratio")
    return Projection(method=method, dims=dims, coords=coords.astype(np.float32, copy=False),
                      params=dict(params), seconds=float(meta.get("seconds", 0.0)),
                      explained_variance_ratio=None if ratio is None else ratio.astype(np.float64),
                      quality=dict(meta["quality"]) if meta.get("quality") else None,
                      from_cache=True)


def _add_label_quality(result: Projection, labels) -> None:
    if labels is None:
        return
    acc = knn_accuracy(result.coords, labels)
    if acc is not None:
        result.quality = {**(result.quality or {}), "knn_accuracy": acc, "knn_k": 5}


def knn_accuracy(coords, labels, k: int = 5, folds: int = 5, seed: int = 0) -> float | None:
    """Cross-validated accuracy of a k-NN classifier on the map (stratified folds when
    every class has at least ``folds`` members). None when it cannot be estimated (fewer
    than 2 classes or too few points).

    Args:
        coords: (N, dims) map coordinates.
        labels: (N,) class labels.
        k: neighbours of the classifier.
        folds: cross-validation folds.
        seed: seed of the fold shuffling.
    """
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    coords = np.asarray(coords)
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or len(labels) < folds * (k + 1):
        return None
    cv = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.min() >= folds
          else KFold(folds, shuffle=True, random_state=seed))
    scores = cross_val_score(KNeighborsClassifier(k), coords, labels, cv=cv)
    return float(scores.mean())


_WARM_LOCK = threading.Lock()
_WARM_DONE = False


def warm_up_umap(nndescent: bool = False) -> float:
    """Compile UMAP's numba kernels on a tiny input so that the first real map does not
    pay for it (and, with ``nndescent=True``, pynndescent's, only used beyond the
    exact-kNN size: never with the default pca_dims=50 up to 100,000 points). Safe to call
    from a background thread, and more than once (later calls return at once). Returns
    the seconds it took."""
    global _WARM_DONE
    t0 = time.perf_counter()
    with _WARM_LOCK:
        if _WARM_DONE:
            return 0.0
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 8)).astype(np.float32)
        _run_umap(x, 2, _resolve(200, 8, "umap", 2, seed=0, pca_dims=None, perplexity=30,
                                 n_neighbors=15, min_dist=0.1, metric="euclidean",
                                 standardize=False, n_iter=20), None)
        if nndescent:
            import pynndescent
            index = pynndescent.NNDescent(x, n_neighbors=10, metric="euclidean", random_state=0,
                                          n_jobs=_threads(), low_memory=True, compressed=True)
            _ = index.neighbor_graph            # the property builds the graph: this is the warm-up
        _WARM_DONE = True
    return time.perf_counter() - t0
