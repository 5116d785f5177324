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
``index.kind`` says which ran; ``index.measure_recall`` measures its recall@k against the
exact search on random base rows (the page shows it).

**Features on disk** (:func:`store_features`, :func:`open_features`): the features of a data
set past the in-memory limit arrive as Parquet parts of the data-set executor's ``features``
job; they are copied part by part into one ``features.npy`` (float32, opened memory-mapped,
read-only) beside ``rows.npz`` (data-set index, label, prediction, confidence per row:
small) and ``meta.json`` written last. A folder without ``meta.json`` is unfinished and is
never opened. Maps of the stored features are kept beside them (:func:`save_map`,
:func:`load_map`), keyed by their parameters.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from analysis.core.config import get_config
from analysis.core.errors import ConvlensError, ParameterError
from analysis.core.fsio import atomic_write, fsync_dir
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
    label keeps its share, at least one point each) when given.

    Args:
        n: number of points.
        size: sample size (capped at ``n``).
        labels: optional (n,) labels to stratify by.
        seed: seeds the draw.
    """
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
        sample: size of the reference sample (capped at N and at ``limits.max_dataset_images``,
            the most points a map fits in memory; N <= sample maps every point).
        k: neighbours used to place a point (1..100).
        pca_dims: PCA dimensions for the kNN and the reference map (0: none).
        seed: seeds the sample, the PCA and the reference map.
        labels: optional (N,) labels; the sample is then stratified by label.
        progress: ``progress(done, total)`` over the points placed (sample fit counts 1/3).
        should_stop: checked between chunks; raises Stopped when it returns True.
        chunk: rows reduced and placed per step (progress and Stop between steps).
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
    idx = sample_indices(n, min(sample, get_config().limits.max_dataset_images), labels, seed)
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
    "approximate (faiss HNSW)"; ``build_seconds`` the index build time; ``recall`` the
    recall@k measured by :meth:`measure_recall` (1.0 for exact search, None until measured).

    Args:
        base: (N, D) vectors (a memory-mapped array is read in chunks for HNSW).
        metric: "cosine" or "l2".
        exact_max: largest base searched exactly.
        hnsw_m, ef_construction, ef_search: faiss HNSW parameters.
        progress: ``progress(done, total)`` over the vectors added to an HNSW index.
        should_stop: checked between chunks of the HNSW build; raises Stopped.
    """

    def __init__(self, base, metric: str = "cosine", *, exact_max: int = EXACT_QUERY_MAX,
                 hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH,
                 progress: Progress | None = None, should_stop: Callable[[], bool] | None = None):
        n, d = _check(base)
        if metric not in ("cosine", "l2"):
            raise ParameterError(f"metric must be 'cosine' or 'l2', got {metric!r}.")
        self.base, self.metric, self.n = base, metric, n
        t0 = time.perf_counter()
        self.recall: float | None = None
        self.recall_k = 0
        self.recall_queries = 0
        if n <= exact_max:
            self.kind, self._index = "exact", None
            self.recall = 1.0
        else:
            import faiss
            self.kind = "approximate (faiss HNSW)"
            self._index = faiss.IndexHNSWFlat(d, int(hnsw_m))
            self._index.hnsw.efConstruction = int(ef_construction)
            for c0 in range(0, n, CHUNK):
                if should_stop is not None and should_stop():
                    raise Stopped("Stopped: the neighbour index was not built.")
                self._index.add(self._prep(np.asarray(base[c0:c0 + CHUNK], dtype=np.float32)))
                if progress is not None:
                    progress(min(n, c0 + CHUNK), n)
            self._index.hnsw.efSearch = int(ef_search)
        self.build_seconds = time.perf_counter() - t0

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.metric == "cosine":                   # unit rows: L2 (chord) ranks like cosine
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return x

    def measure_recall(self, queries: int = 200, k: int = 10, seed: int = 0) -> float:
        """Recall@``k`` of this index against the exact search, on ``queries`` random base
        rows (seeded by ``seed``); stored in ``self.recall`` (exact search: 1.0, not measured)."""
        if self._index is None:
            return 1.0
        rows = np.sort(np.random.default_rng(seed).choice(self.n, size=int(min(queries, self.n)), replace=False))
        q = np.asarray(self.base[rows], dtype=np.float32)
        k = int(min(k, self.n))
        exact, _ = knn(q, self.base, k, metric=self.metric)
        approx, _ = self.query(q, k)
        self.recall, self.recall_k, self.recall_queries = recall_at_k(approx, exact), k, len(rows)
        return self.recall

    def describe(self) -> str:
        """One line for the page: which search runs, on how many vectors, and its recall."""
        if self._index is None:
            return f"exact search (one BLAS pass over {self.n:,} vectors per query)"
        rec = (f", recall@{self.recall_k} {self.recall:.3f} against exact search on {self.recall_queries} "
               "random images" if self.recall is not None else ", recall not measured")
        return (f"approximate search: faiss HNSW over {self.n:,} vectors (built in {self.build_seconds:.1f} s"
                f"{rec})")

    def query(self, q, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(indices (Q, k), distances (Q, k)) of the nearest base rows to each row of ``q``
        (cosine distance 1 - cos, or Euclidean), nearest first.

        Args:
            q: (Q, D) or (D,) query vectors.
            k: neighbours per query.
        """
        q = np.atleast_2d(np.asarray(q, dtype=np.float32))
        if self._index is None:
            return knn(q, self.base, k, metric=self.metric)
        sq, ind = self._index.search(self._prep(q), int(k))
        sq = np.maximum(sq, 0.0)
        dist = sq / 2.0 if self.metric == "cosine" else np.sqrt(sq)   # chord^2 / 2 = 1 - cos
        return ind.astype(np.int64), dist.astype(np.float32)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact k nearest neighbours found by an approximate search.

    Args:
        approx: (Q, k) indices found by the approximate search.
        exact: (Q, k) indices of the exact search.
    """
    approx, exact = np.asarray(approx), np.asarray(exact)
    if approx.shape != exact.shape:
        raise ParameterError(f"shapes differ: {approx.shape} vs {exact.shape}")
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / exact.size)


# --------------------------------------------------------------------------------------
# Features on disk
# --------------------------------------------------------------------------------------
ROW_COLUMNS = ("index", "label", "pred", "confidence")
_STORE_FORMAT = 1


@dataclass
class StoredFeatures:
    """Features of a data set kept on disk. ``features`` (N, D) float32, memory-mapped
    read-only; per row ``index`` (position in the data set: unreadable images have no
    row), ``labels``, ``preds`` (int64) and ``confidences`` (float32); ``meta`` what
    :func:`store_features` was given plus the row count and the seconds it took."""
    path: Path
    features: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    confidences: np.ndarray
    meta: dict

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def row_of(self, index: int) -> int | None:
        """The row of data-set image ``index`` (None when it has no row: it was skipped)."""
        r = int(np.searchsorted(self.index, int(index)))
        return r if r < len(self.index) and int(self.index[r]) == int(index) else None


def store_key(*parts) -> str:
    """A folder name for stored features: a hash of ``parts`` (model id, preprocessing,
    data-set hash, layer... anything JSON-serialisable)."""
    return hashlib.sha256(json.dumps([_STORE_FORMAT, *parts], sort_keys=True).encode()).hexdigest()[:32]


def _column(table, name: str) -> np.ndarray:
    if isinstance(table, dict):
        return np.asarray(table[name])
    import pyarrow as pa
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def store_features(tables: Iterable, n_rows: int, dim: int, folder, *, meta: dict | None = None,
                   progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> StoredFeatures:
    """Copy feature rows, table by table, into ``folder``/features.npy (float32, written
    through a memory map: never more than one table in memory) and ``rows.npz``; then
    write ``meta.json`` and return :func:`open_features` of the folder.

    Args:
        tables: pyarrow Tables (or dicts of arrays) with columns ``features`` (fixed-size
            list or (n, dim) array), ``index``, ``label``, ``pred`` and ``confidence``, in
            data-set order (e.g. ``JobResult.iter_tables`` of a ``features`` job).
        n_rows: total rows of all tables (ParameterError when they hold another count).
        dim: feature dimensions.
        folder: destination (replaced; work happens in ``folder.partial`` first).
        meta: JSON-serialisable facts kept in meta.json (model, layer, data set, job key).
        progress: ``progress(done, n_rows)`` after each table.
        should_stop: checked between tables; raises Stopped (nothing is kept).
    """
    if not is_int(n_rows) or n_rows < 1 or not is_int(dim) or dim < 1:
        raise ParameterError(f"n_rows and dim must be positive integers, got {n_rows!r} and {dim!r}.")
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32, shape=(int(n_rows), int(dim)))
    rows = {c: [] for c in ROW_COLUMNS}
    done = 0
    try:
        for t in tables:
            if should_stop is not None and should_stop():
                raise Stopped("Stopped: the features were not stored.")
            f = np.asarray(_column(t, "features"), dtype=np.float32)
            m = len(f)
            if m == 0:
                continue
            if f.ndim != 2 or f.shape[1] != dim:
                raise ParameterError(f"feature rows have shape {f.shape[1:]}, expected ({dim},).")
            if done + m > n_rows:
                raise ParameterError(f"the tables hold more than the {n_rows:,} rows announced.")
            feats[done:done + m] = f
            for c in ROW_COLUMNS:
                rows[c].append(_column(t, c))
            done += m
            if progress is not None:
                progress(done, int(n_rows))
        if done != n_rows:
            raise ParameterError(f"the tables hold {done:,} rows, {n_rows:,} were announced.")
        feats.flush()
        del feats
        cols = {c: np.concatenate(v) for c, v in rows.items()}
        index = cols["index"].astype(np.int64)
        if index.size > 1 and not (np.diff(index) > 0).all():
            raise ParameterError("feature rows must come in increasing data-set order.")
        np.savez(tmp / "rows.npz", index=index, label=cols["label"].astype(np.int64),
                 pred=cols["pred"].astype(np.int64), confidence=cols["confidence"].astype(np.float32))
        info = {"format": _STORE_FORMAT, "n": int(n_rows), "dim": int(dim), "seconds": time.perf_counter() - t0,
                **(meta or {})}
        atomic_write(tmp / "meta.json", json.dumps(info).encode())
        fsync_dir(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_features(folder)


def open_features(folder) -> StoredFeatures | None:
    """The features stored in ``folder`` by :func:`store_features` (features memory-mapped,
    read-only), or None when there are none or they are unfinished or unreadable.

    Args:
        folder: the folder given to :func:`store_features`.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != _STORE_FORMAT:
            return None
        feats = np.load(folder / "features.npy", mmap_mode="r")
        with np.load(folder / "rows.npz") as z:
            cols = {c: z[c] for c in ROW_COLUMNS}
    except (OSError, ValueError, KeyError):
        return None
    if feats.shape != (meta["n"], meta["dim"]) or any(len(v) != meta["n"] for v in cols.values()):
        return None
    return StoredFeatures(folder, feats, cols["index"], cols["label"], cols["pred"], cols["confidence"], meta)


def _map_file(folder: Path, method: str, params: dict) -> Path:
    h = hashlib.sha256(json.dumps([method, params], sort_keys=True).encode()).hexdigest()[:24]
    return Path(folder) / f"map-{h}.npz"


def save_map(folder, m: LargeMap) -> Path:
    """Keep map ``m`` of the features in ``folder`` (keyed by its method and parameters).

    Args:
        folder: a :func:`store_features` folder.
        m: the map of its features.
    """
    import io
    path = _map_file(Path(folder), m.method, m.params)
    buf = io.BytesIO()
    np.savez(buf, coords=m.coords, sample_index=m.sample_index,
             info=np.frombuffer(json.dumps({"params": m.params, "seconds": m.seconds}).encode(), np.uint8))
    atomic_write(path, buf.getvalue())
    return path


def load_map(folder, method: str, params: dict, n: int) -> LargeMap | None:
    """The map kept by :func:`save_map` for ``method`` and ``params`` (the ``params`` of a
    LargeMap), or None; a map whose point count is not ``n`` is ignored.

    Args:
        folder: a :func:`store_features` folder.
        method: "tsne" or "umap".
        params: the map's parameters (``LargeMap.params``).
        n: the number of feature rows.
    """
    path = _map_file(Path(folder), method, params)
    try:
        with np.load(path) as z:
            coords, sample_index = z["coords"], z["sample_index"]
            info = json.loads(z["info"].tobytes().decode())
    except (OSError, ValueError, KeyError):
        return None
    if coords.shape != (n, 2):
        return None
    return LargeMap(method, coords, sample_index, info["params"], info["seconds"])


def map_params(method: str = "tsne", *, sample: int = DEFAULT_SAMPLE, k: int = DEFAULT_K, pca_dims: int = 50,
               seed: int = 0) -> dict:
    """The ``LargeMap.params`` that :func:`large_map` gives for these arguments (the key of
    a kept map).

    Args:
        method, sample, k, pca_dims, seed: as for :func:`large_map`.
    """
    return _params(method, sample, k, pca_dims, seed)


def nearest_centroid(features, centroids, *, mean=None, scale=None, chunk: int = CHUNK,
                     progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """(N,) index of the nearest row of ``centroids`` (squared Euclidean) for every row of
    ``(features - mean) / scale``, computed ``chunk`` rows at a time (memory-mapped input).

    Args:
        features: (N, D) array.
        centroids: (K, D) centres in the standardised space.
        mean, scale: (D,) standardisation (default 0 and 1; a zero scale counts as 1).
        chunk: rows per step.
        progress: ``progress(done, N)`` after each chunk.
        should_stop: checked between chunks; raises Stopped.
    """
    n, d = _check(features)
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != d or len(c) < 1:
        raise ParameterError(f"centroids must be (K, {d}), got {c.shape}.")
    mu = np.zeros(d) if mean is None else np.asarray(mean, dtype=np.float64)
    sd = np.ones(d) if scale is None else np.asarray(scale, dtype=np.float64)
    sd = np.where(sd > 0, sd, 1.0)
    out = np.empty(n, np.int64)
    cc = (c ** 2).sum(1)
    for c0 in range(0, n, int(chunk)):
        if should_stop is not None and should_stop():
            raise Stopped("Stopped: the points were not assigned.")
        z = (np.asarray(features[c0:c0 + chunk], dtype=np.float64) - mu) / sd
        out[c0:c0 + len(z)] = np.argmin(cc[None, :] - 2 * z @ c.T, axis=1)
        if progress is not None:
            progress(min(n, c0 + chunk), n)
    return out
