"""Maps and neighbour search past 100,000 points: up to millions of feature vectors.

A full t-SNE or UMAP of every point stops being interactive near 100,000 points on a small
machine (the kNN graph alone grows with N², the layout with N log N per iteration).
``large_map`` keeps the map of a million points within minutes on 2 cores:

1. **reference sample**: a seeded, label-stratified (when labels are given) random sample
   of ``sample`` points (default 50,000) is mapped with the app's default t-SNE or UMAP
   (:func:`analysis.embeddings.projection.project`, the exact same pipeline as for small
   sets: PCA to 50 dimensions, exact kNN graph, openTSNE / umap-learn);
2. **reduction**: the PCA fitted on the sample projects every other point, in chunks, so
   features can be a memory-mapped ``.npy`` larger than memory;
3. **placement**: every other point is placed at the coordinate-wise median of the map
   positions of its ``k`` nearest reference points (exact kNN through BLAS, chunked;
   openTSNE's ``transform`` uses the same median placement as its start). The median keeps
   a point inside the cluster of most of its neighbours instead of between two clusters.

Progress is reported as ``progress(done, total)`` and ``should_stop()`` is checked between
chunks (raises :class:`Stopped`). ``LargeMap.seconds`` holds the breakdown (sample fit,
reduction, kNN + placement) that bench/embeddings_million.py records.

``NeighbourIndex`` answers "the k nearest images of this one" on the page: exact (one
BLAS pass over the base per query) up to ``EXACT_QUERY_MAX`` vectors, where one query
stays under ~0.3 s here; an approximate faiss HNSW index beyond, whose recall@10 against
the exact search is measured in bench/embeddings_million.py (faiss was chosen over
pynndescent by measurement: same recall, no numba compile of ~2 minutes on first use).
``index.kind`` says which ran.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from analysis.core.errors import ConvlensError, ParameterError
from analysis.core.schema import is_int
from analysis.embeddings.neighbors import knn
from analysis.embeddings.projection import project

DEFAULT_SAMPLE = 50_000
DEFAULT_K = 10
CHUNK = 50_000                     # rows reduced and placed per step (progress, Stop)
EXACT_QUERY_MAX = 2_000_000        # vectors; one exact query over 1M x 64 takes ~0.05 s here
MAX_POINTS = 5_000_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64   # recall@10 0.998 on 100k x 64 clusters

Progress = Callable[[int, int], None]


class Stopped(ConvlensError):
    """The user stopped a long computation; nothing partial is returned."""


@dataclass
class LargeMap:
    """A map of many points. ``coords`` (N, 2) float32; ``sample_index`` the indices of the
    reference points mapped by t-SNE/UMAP itself (the rest were placed); ``seconds`` the
    time of each stage."""
    method: str
    coords: np.ndarray
    sample_index: np.ndarray
    params: dict
    seconds: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(self.coords.shape[0])


def _check(features) -> tuple[int, int]:
    if not hasattr(features, "shape") or len(features.shape) != 2:
        raise ParameterError("features must be a 2-D array (points x dimensions), e.g. a memory-mapped .npy.")
    n, d = (int(s) for s in features.shape)
    if n < 5 or d < 1:
        raise ParameterError(f"A map needs at least 5 points with at least 1 dimension, got {n} x {d}.")
    if n > MAX_POINTS:
        raise ParameterError(f"{n:,} points exceed the {MAX_POINTS:,} this map supports.")
    if np.dtype(features.dtype).kind not in "biuf":
        raise ParameterError(f"features must be numeric, got {features.dtype}.")
    return n, d


def sample_indices(n: int, size: int, labels=None, seed: int = 0) -> np.ndarray:
    """``size`` distinct indices of ``range(n)``, sorted; stratified by ``labels`` (every
    label keeps its share, at least one point each) when given. Seeded."""
    rng = np.random.default_rng(seed)
    size = int(min(size, n))
    if labels is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ParameterError(f"labels must have shape ({n},), got {labels.shape}.")
    out = []
    values, counts = np.unique(labels, return_counts=True)
    for v, c in zip(values, counts):
        take = max(1, int(round(size * c / n)))
        idx = np.flatnonzero(labels == v)
        out.append(rng.choice(idx, size=min(take, c), replace=False))
    return np.sort(np.concatenate(out))[: max(size, len(values))]


def _pca(sample: np.ndarray, dims: int, seed: int):
    """Mean and components of a PCA fitted on the sample (randomized SVD)."""
    from sklearn.decomposition import PCA
    dims = int(min(dims, sample.shape[0], sample.shape[1]))
    p = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(sample)
    return p.mean_.astype(np.float32), p.components_.astype(np.float32)


def _reduce(x: np.ndarray, mean, comps) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x - mean) @ comps.T if comps is not None else x


def large_map(features, method: str = "tsne", *, sample: int = DEFAULT_SAMPLE, k: int = DEFAULT_K,
              pca_dims: int = 50, seed: int = 0, labels=None, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, chunk: int = CHUNK) -> LargeMap:
    """A 2-D map of ``features`` (N, D): ``method`` ("tsne" or "umap") on a reference sample
    of ``sample`` points, every other point placed at the median position of its ``k``
    nearest reference points (in the sample's PCA space of ``pca_dims``).

    Args:
        features: (N, D) array or memory-mapped .npy; read in chunks of ``chunk`` rows.
        method: "tsne" (the app's default t-SNE) or "umap".
        sample: size of the reference sample (capped at N; N <= sample maps every point).
        k: neighbours used to place a point (1..100).
        pca_dims: PCA dimensions for the kNN and the reference map (0: none).
        seed: seeds the sample, the PCA and the reference map.
        labels: optional (N,) labels; the sample is then stratified by label.
        progress: ``progress(done, total)`` over the points placed (sample fit counts 1/3).
        should_stop: checked between chunks; raises Stopped when it returns True.
    Raises ParameterError for impossible parameters, Stopped on Stop.
    """
    n, d = _check(features)
    if method not in ("tsne", "umap"):
        raise ParameterError(f"method must be 'tsne' or 'umap', got {method!r}.")
    for name, v, lo, hi in (("sample", sample, 100, MAX_POINTS), ("k", k, 1, 100),
                            ("pca_dims", pca_dims, 0, 512), ("chunk", chunk, 100, 10_000_000)):
        if not is_int(v) or not lo <= v <= hi:
            raise ParameterError(f"{name} must be an integer from {lo} to {hi}, got {v!r}.")
    stop = should_stop or (lambda: False)
    seconds: dict[str, float] = {}
    total = n

    def report(done):
        if progress is not None:
            progress(int(done), int(total))

    report(0)
    t0 = time.perf_counter()
    idx = sample_indices(n, sample, labels, seed)
    ref = np.asarray(features[idx], dtype=np.float32)
    if not np.isfinite(ref).all():
        raise ParameterError("The features contain NaN or infinite values.")
    if pca_dims and pca_dims < d:
        mean, comps = _pca(ref, pca_dims, seed)
    else:
        mean, comps = np.zeros(d, np.float32), None
    ref_red = _reduce(ref, mean, comps)
    # the reference map: the same pipeline as a small map (its PCA step is a no-op now)
    ref_map = project(ref_red, method, 2, seed=seed, pca_dims=None).coords
    seconds["sample_fit"] = time.perf_counter() - t0
    report(len(idx) if len(idx) == n else n * 0.33 * len(idx) / n)
    coords = np.empty((n, 2), np.float32)
    coords[idx] = ref_map
    if len(idx) == n:
        return LargeMap(method, coords, idx, _params(method, sample, k, pca_dims, seed), seconds)

    is_ref = np.zeros(n, bool)
    is_ref[idx] = True
    t_red = t_knn = 0.0
    done = 0
    for c0 in range(0, n, chunk):
        if stop():
            raise Stopped("Stopped: the map was not finished.")
        c1 = min(n, c0 + chunk)
        rows = np.flatnonzero(~is_ref[c0:c1]) + c0
        if rows.size:
            t1 = time.perf_counter()
            block = np.asarray(features[c0:c1], dtype=np.float32)[rows - c0]
            if not np.isfinite(block).all():
                raise ParameterError(f"The features contain NaN or infinite values (rows {c0}-{c1}).")
            q = _reduce(block, mean, comps)
            t2 = time.perf_counter()
            nb, _ = knn(q, ref_red, int(min(k, len(idx))), metric="l2")
            coords[rows] = np.median(ref_map[nb], axis=1)
            t3 = time.perf_counter()
            t_red += t2 - t1
            t_knn += t3 - t2
        done = c1
        report(n * 0.33 + 0.67 * done)
    seconds["reduce"] = t_red
    seconds["knn_place"] = t_knn
    return LargeMap(method, coords, idx, _params(method, sample, k, pca_dims, seed), seconds)


def _params(method, sample, k, pca_dims, seed) -> dict:
    return {"method": method, "sample": int(sample), "k": int(k), "pca_dims": int(pca_dims),
            "seed": int(seed), "placement": "median of k nearest reference points"}


class NeighbourIndex:
    """k nearest neighbours of single points in a large base: exact (BLAS) up to
    ``exact_max`` vectors, approximate (faiss HNSW) above. ``kind`` is "exact" or
    "approximate (faiss HNSW)"; ``build_seconds`` the index build time."""

    def __init__(self, base, metric: str = "cosine", *, exact_max: int = EXACT_QUERY_MAX,
                 hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH):
        n, d = _check(base)
        if metric not in ("cosine", "l2"):
            raise ParameterError(f"metric must be 'cosine' or 'l2', got {metric!r}.")
        self.base, self.metric, self.n = base, metric, n
        t0 = time.perf_counter()
        if n <= exact_max:
            self.kind, self._index = "exact", None
        else:
            import faiss
            self.kind = "approximate (faiss HNSW)"
            self._index = faiss.IndexHNSWFlat(d, int(hnsw_m))
            self._index.hnsw.efConstruction = int(ef_construction)
            for c0 in range(0, n, CHUNK):
                self._index.add(self._prep(np.asarray(base[c0:c0 + CHUNK], dtype=np.float32)))
            self._index.hnsw.efSearch = int(ef_search)
        self.build_seconds = time.perf_counter() - t0

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.metric == "cosine":                   # unit rows: L2 (chord) ranks like cosine
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return x

    def query(self, q, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(indices (Q, k), distances (Q, k)) of the nearest base rows to each row of ``q``
        (cosine distance 1 - cos, or Euclidean), nearest first."""
        q = np.atleast_2d(np.asarray(q, dtype=np.float32))
        if self._index is None:
            return knn(q, self.base, k, metric=self.metric)
        sq, ind = self._index.search(self._prep(q), int(k))
        sq = np.maximum(sq, 0.0)
        dist = sq / 2.0 if self.metric == "cosine" else np.sqrt(sq)   # chord^2 / 2 = 1 - cos
        return ind.astype(np.int64), dist.astype(np.float32)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact k nearest neighbours found by an approximate search."""
    approx, exact = np.asarray(approx), np.asarray(exact)
    if approx.shape != exact.shape:
        raise ParameterError(f"shapes differ: {approx.shape} vs {exact.shape}")
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / exact.size)
