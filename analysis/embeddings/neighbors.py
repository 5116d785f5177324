"""Nearest neighbours in feature space and in pixel space (CS231n lecture 12, "last layer").

The lecture's point: neighbours of an image in the space of the last layer's features
share its class even when their pixels differ a lot, while neighbours in pixel space
share colours and layout, not content. Both spaces are searched exactly here.

* ``knn``: exact k-nearest-neighbour search by matrix multiplication (``torch.mm`` in
  float32) in blocks, so a 100,000 x 1,280 base never needs a query x base matrix larger
  than ``block_elements`` floats (64 MB by default) at once. Cosine distance = 1 - cos.
  L2 ranks by sqrt(max(0, |q|^2 - 2 q.b + |b|^2)), then the k found are measured again
  directly as |q - b| and re-ranked (the expansion cancels badly for close pairs: two
  equal vectors of norm 30 can come out 1e-2 apart; directly they are 0 apart). So only
  pairs within that float32 noise of the k-th distance can be missed or swapped at the
  boundary. Ties (equal distances) go to the lower base index; NaN distances rank last
  and are reported as ``inf``.
* **Pixel space**: each image's model-input crop (``preprocess.geometry``, what the
  model sees) is area-averaged (PIL ``BOX``) down to a ``size`` x ``size`` thumbnail
  (default 32) and flattened, values in [0, 1], grey for grey models. Full 224x224x3 vectors
  of 100,000 images would take 60 GB; 32x32x3 thumbnails take 1.2 GB as float32 (0.3 GB
  stored as uint8 on disk) and keep what pixel distance responds to (colours, layout).
  Thumbnails are stored on disk (``analysis.core.diskcache``, kind ``pixels``) under a key
  naming the data set's content, the preprocessing and the size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

import analysis.core.diskcache as diskcache
from analysis.core.datasets import Dataset, image_count
from analysis.core.errors import ParameterError
from analysis.core.lru import LockedLRU
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import check_int, is_int
from analysis.embeddings.features import FeatureSet, features_for_images

METRICS = ("cosine", "l2")
SPACES = ("feature", "pixel")
MAX_K = 1000
DEFAULT_BLOCK_ELEMENTS = 16 * 2**20     # 64 MB of float32 distances per block
_QUERY_CHUNK = 1024
_FMAX = float(np.finfo(np.float32).max)  # NaN/inf distances, ranked after every finite one
PIXEL_KIND = "pixels"
_PIXEL_FORMAT = 1


# --------------------------------------------------------------------------------------
# Exact k-NN
# --------------------------------------------------------------------------------------
def _as_matrix(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ParameterError(f"{name} must be a numeric (rows, dim) matrix, got {a.dtype} {a.shape}")
    return a


def _block(a: np.ndarray, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [start, stop) as float32 (no copy when already float32) and their L2 norms."""
    b = np.ascontiguousarray(a[start:stop], dtype=np.float32)
    t = torch.from_numpy(b if b.flags.writeable else b.copy())    # a read-only memory map: torch wants writable
    return t, torch.linalg.vector_norm(t, dim=1)


def _smallest(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of every row of ``d`` (no NaN), ordered by (value, column):
    ``(values (q, k), columns (q, k))``. Among equal values at the k-th place the lowest
    columns are kept (``topk`` alone leaves that unspecified)."""
    q, c = d.shape
    k = min(k, c)
    if k == c:
        order = torch.sort(d, dim=1, stable=True).indices
        return d.gather(1, order), order
    vals = torch.topk(d, k, dim=1, largest=False, sorted=True).values
    t = vals[:, -1:]                                        # k-th smallest of each row
    cols = (d <= t).nonzero()                               # row-major: ascending columns
    if len(cols) == q * k:                                  # no extra tie at the k-th place
        cols = cols[:, 1].view(q, k)
    else:
        eq = d == t
        need = k - (vals < t).sum(dim=1, keepdim=True)      # entries < t are all in vals
        eq &= eq.cumsum(dim=1) <= need                      # the first `need` equal columns
        cols = ((d < t) | eq).nonzero()[:, 1].view(q, k)
    v = d.gather(1, cols)
    order = torch.sort(v, dim=1, stable=True).indices
    return v.gather(1, order), cols.gather(1, order)


def knn(query, base, k: int, metric: str = "cosine", exclude_self: np.ndarray | None = None, *,
        chunk_size: int | None = None, block_elements: int = DEFAULT_BLOCK_ELEMENTS
        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``base`` (N, D) for every row of ``query`` (Q, D).

    Returns ``(indices (Q, k') int64, distances (Q, k') float32)``, nearest first, with
    ``k' = min(k, N)`` (``min(k, N - 1)`` with ``exclude_self``). ``metric`` is ``"cosine"``
    (1 - cosine similarity, in [0, 2]; a zero vector is at distance 1 from everything) or
    ``"l2"`` (Euclidean). ``exclude_self[i]`` is a base index never returned for query i
    (its own index when the queries are base rows; -1 for none). Equal distances rank by
    lower base index. The base is processed ``chunk_size`` rows at a time (default: as many
    as keep a query-block x chunk distance matrix within ``block_elements`` floats).
    """
    if metric not in METRICS:
        raise ParameterError(f"Unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if not is_int(k) or not 1 <= k <= MAX_K:
        raise ParameterError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    q_arr, b_arr = _as_matrix(query, "query"), _as_matrix(base, "base")
    if q_arr.shape[1] != b_arr.shape[1]:
        raise ParameterError(f"query vectors have {q_arr.shape[1]} dimensions, the base {b_arr.shape[1]}.")
    nq, nb = len(q_arr), len(b_arr)
    if nb == 0:
        raise ParameterError("The base has no vectors to search.")
    if chunk_size is not None and (not is_int(chunk_size)
                                   or chunk_size < 1):
        raise ParameterError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not is_int(block_elements) or block_elements < 1:
        raise ParameterError(f"block_elements must be a positive integer, got {block_elements!r}")
    excl = None
    if exclude_self is not None:
        excl = np.atleast_1d(np.asarray(exclude_self))
        if excl.shape != (nq,) or not np.issubdtype(excl.dtype, np.integer):
            raise ParameterError(f"exclude_self must hold one integer base index per query ({nq}), "
                                 f"got {excl.dtype} {excl.shape}")
        excl = excl.astype(np.int64)
        if (excl >= nb).any() or (excl < -1).any():
            raise ParameterError(f"exclude_self indices must be from -1 to {nb - 1}.")
        if nb == 1:
            raise ParameterError("With exclude_self the base needs at least two vectors.")
    kk = int(min(k, nb - 1 if excl is not None else nb))
    cosine = metric == "cosine"
    out_i = np.empty((nq, kk), dtype=np.int64)
    out_d = np.empty((nq, kk), dtype=np.float32)
    # query blocks of up to 1024 rows, fewer when the blocks are tiny (>= 64 base rows each)
    q_chunk = max(1, min(_QUERY_CHUNK, int(block_elements) // 64))
    with torch.inference_mode():
        for q0 in range(0, nq, q_chunk):
            q1 = min(nq, q0 + q_chunk)
            q, qn = _block(q_arr, q0, q1)
            qinv = 1.0 / qn.clamp_min(1e-12)[:, None]
            rows = q1 - q0
            # distance block (rows x step) and base block (step x dim) within block_elements
            step = int(chunk_size) if chunk_size is not None else max(
                1, min(int(block_elements) // rows, int(block_elements) // max(1, b_arr.shape[1])))
            best_v = best_i = None
            ex_q = None if excl is None else excl[q0:q1]
            for b0 in range(0, nb, step):
                b1 = min(nb, b0 + step)
                b, bn = _block(b_arr, b0, b1)
                d = torch.mm(q, b.T)
                if cosine:
                    # raw dot products scaled afterwards (not unit rows first): equal base
                    # rows then give bit-equal distances wherever they sit in the block
                    d = d.mul_(qinv).div_(bn.clamp_min(1e-12)[None, :]).neg_().add_(1.0).clamp_(0.0, 2.0)
                else:
                    d = d.mul_(-2.0).add_(qn.square()[:, None]).add_(bn.square()[None, :])
                    d = d.clamp_(min=0.0).sqrt_()
                d = torch.nan_to_num_(d, nan=_FMAX, posinf=_FMAX, neginf=_FMAX)
                if excl is not None:
                    hit = np.flatnonzero((ex_q >= b0) & (ex_q < b1))
                    if hit.size:
                        d[torch.from_numpy(hit), torch.from_numpy(ex_q[hit] - b0)] = float("inf")
                v, c = _smallest(d, kk)
                c = c + b0
                if best_v is None:
                    best_v, best_i = v, c
                else:
                    # running best first: lower base indices, already in (distance, index)
                    # order, so a stable sort keeps lower indices first among equal values
                    cv, ci = torch.cat([best_v, v], dim=1), torch.cat([best_i, c], dim=1)
                    order = torch.sort(cv, dim=1, stable=True).indices[:, :kk]
                    best_v, best_i = cv.gather(1, order), ci.gather(1, order)
            bi, bv = best_i.numpy(), best_v.numpy()
            if not cosine:
                # |q|^2 - 2 q.b + |b|^2 cancels badly for close pairs (two equal vectors of
                # norm 30 can come out 1e-2 apart): recompute the k found directly, rank again
                exact = np.empty_like(bv)
                sub = max(1, int(block_elements) // max(1, kk * b_arr.shape[1]))
                for r0 in range(0, rows, sub):
                    r1 = min(rows, r0 + sub)
                    nbr = np.ascontiguousarray(b_arr[bi[r0:r1].reshape(-1)], dtype=np.float32)
                    diff = q[r0:r1, None, :] - torch.from_numpy(nbr).view(r1 - r0, kk, -1)
                    exact[r0:r1] = torch.linalg.vector_norm(diff, dim=2).numpy()
                exact[~np.isfinite(exact) | (bv >= _FMAX)] = np.inf
                order = np.lexsort((bi, exact), axis=1)
                bi, bv = np.take_along_axis(bi, order, 1), np.take_along_axis(exact, order, 1)
            out_i[q0:q1] = bi
            out_d[q0:q1] = bv
    out_d[out_d >= _FMAX] = np.inf
    return out_i, out_d


# --------------------------------------------------------------------------------------
# Pixel space
# --------------------------------------------------------------------------------------
def _check_size(bundle: ModelBundle, size) -> int:
    return min(check_int("size", size, 1, 256), bundle.input_size)     # a thumbnail is never larger than the crop


def _thumbnail(bundle: ModelBundle, image: np.ndarray, size: int) -> np.ndarray:
    crop = bundle.preprocess.geometry(image)
    if crop.shape[0] != size or crop.shape[1] != size:
        crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BOX))
    return crop


def _to_vectors(bundle: ModelBundle, thumbs: np.ndarray) -> np.ndarray:
    """(N, s, s, 3) uint8 -> (N, s*s*C) float32 in [0, 1] (grey models: mean of RGB, as
    the preprocessing does)."""
    x = thumbs.astype(np.float32) / np.float32(255.0)
    if bundle.preprocess.grayscale:
        x = x.mean(axis=3, keepdims=True, dtype=np.float32)
    return x.reshape(len(x), -1)


def pixel_key(bundle: ModelBundle, dataset: Dataset, size: int) -> str:
    """Disk-cache key of the pixel vectors of ``dataset`` at thumbnail ``size``.

    Args:
        bundle: the model (its preprocessing decides the crop).
        dataset: the data set.
        size: the thumbnail side in pixels.
    """
    return diskcache.cache_key("pixels", dataset.content_hash, bundle.preprocess.spec_id, int(size))


def pixel_thumbnails(bundle: ModelBundle, dataset: Dataset, size: int = 32, *,
                     progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, save: bool = True,
                     cache_dir=None) -> np.ndarray | None:
    """(N, size, size, 3) uint8 thumbnails of the model-input crops, from the disk cache or
    computed now (then stored); None if ``should_stop()`` turned true (nothing stored).

    Args:
        bundle: the model (its preprocessing gives the crop).
        dataset: the images.
        size: thumbnail side in pixels, 1-256, capped at the model's input size.
        progress: ``progress(done, total)`` in images while computing, or None.
        should_stop: polled between images; None never stops.
        save: store computed thumbnails in the disk cache.
        cache_dir: disk-cache root; None for the configured one.
    """
    size = _check_size(bundle, size)
    n = image_count(dataset)
    key = pixel_key(bundle, dataset, size)
    got = diskcache.load_arrays(PIXEL_KIND, key, cache_dir=cache_dir)
    if got is not None:
        arrays, meta = got
        t = arrays.get("thumbs")
        if meta.get("format") == _PIXEL_FORMAT and t is not None and t.shape == (n, size, size, 3) \
                and t.dtype == np.uint8:
            if progress is not None:
                progress(n, n)
            return t
    t0 = time.perf_counter()
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    if progress is not None:
        progress(0, n)
    for idx, images in dataset.iter_batches(256):
        if should_stop is not None and should_stop():
            return None
        for i, im in zip(idx, images):
            out[i] = _thumbnail(bundle, im, size)
        if progress is not None:
            progress(int(idx[-1]) + 1, n)
    if save:
        diskcache.save_arrays(PIXEL_KIND, key, {"thumbs": out},
                              {"format": _PIXEL_FORMAT, "size": size, "n": n,
                               "dataset_hash": dataset.content_hash,
                               "preprocess_id": bundle.preprocess.spec_id,
                               "seconds": time.perf_counter() - t0}, cache_dir=cache_dir)
    return out


def pixel_vectors(bundle: ModelBundle, dataset: Dataset, size: int = 32, *,
                  progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, save: bool = True,
                  cache_dir=None) -> np.ndarray | None:
    """Pixel-space vectors (N, s*s*C) float32 in [0, 1] of every image: its model-input
    crop area-averaged to ``s = min(size, input_size)`` pixels square, C = 3 (1 for grey
    models). See the module docstring for why thumbnails. None if stopped.

    Args:
        bundle: the model (its preprocessing gives the crop).
        dataset: the images.
        size: thumbnail side ``s`` before the cap, 1-256.
        progress: ``progress(done, total)`` in images while computing, or None.
        should_stop: polled between images; None never stops.
        save: store computed thumbnails in the disk cache.
        cache_dir: disk-cache root; None for the configured one.
    """
    thumbs = pixel_thumbnails(bundle, dataset, size, progress=progress, should_stop=should_stop,
                              save=save, cache_dir=cache_dir)
    return None if thumbs is None else _to_vectors(bundle, thumbs)


def pixel_vector(bundle: ModelBundle, image: np.ndarray, size: int = 32) -> np.ndarray:
    """The pixel-space vector (s*s*C,) of one raw RGB uint8 image, as ``pixel_vectors``.

    Args:
        bundle: the model (its preprocessing gives the crop).
        image: RGB uint8 (H, W, 3).
        size: thumbnail side, 1-256, capped at the model's input size.
    """
    size = _check_size(bundle, size)
    return _to_vectors(bundle, _thumbnail(bundle, image, size)[None])[0]


_PIXELS = LockedLRU(2)   # pixel_key -> (N, s*s*C) pixel vectors


def _cached_pixel_vectors(bundle, dataset, size, progress, should_stop) -> np.ndarray | None:
    """pixel_vectors kept in memory for the last two (data set, preprocessing, size)."""
    key = pixel_key(bundle, dataset, _check_size(bundle, size))
    return _PIXELS.get_or_compute(
        key, lambda: pixel_vectors(bundle, dataset, size, progress=progress, should_stop=should_stop))


# --------------------------------------------------------------------------------------
# Neighbours of one query
# --------------------------------------------------------------------------------------
@dataclass
class NeighborResult:
    """The k nearest data-set images of one query, nearest first.

    ``query`` is the data-set index of the query (None for an outside image, which then
    has no label). ``labels`` and ``predictions`` are the neighbours' data-set labels and
    the model's predictions for them; ``agreement`` is the fraction of neighbour labels
    equal to the query's label (None without a query label).
    """
    query: int | None
    metric: str
    space: str
    indices: np.ndarray
    distances: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    agreement: float | None
    query_label: int | None = None
    query_prediction: int | None = None
    layer: str = ""
    pixel_size: int | None = None


def neighbors(bundle: ModelBundle, dataset: Dataset, features: FeatureSet, query_index: int | None = None,
              query_image: np.ndarray | None = None, k: int = 8, metric: str = "cosine",
              space: str = "feature", *, pixel_size: int = 32,
              progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> NeighborResult | None:
    """The ``k`` nearest images of ``dataset`` to a query: a data-set image (``query_index``,
    never its own neighbour) or an outside image (``query_image``, RGB uint8), in the
    space of ``features`` (same layer, same model) or in pixel space (thumbnails of
    ``pixel_size``). ``features`` must come from ``bundle`` and ``dataset`` (it also gives
    the neighbours' predictions). Pixel space may have to read the whole data set once
    (``progress`` / ``should_stop``; None if stopped).

    Args:
        bundle: the model.
        dataset: the images searched.
        features: the feature set of ``dataset`` computed with ``bundle`` (its layer is the
            feature space; it also gives the neighbours' predictions).
        query_index: index of the query image in ``dataset``; exactly one of ``query_index``
            and ``query_image`` is given.
        query_image: an outside RGB uint8 query image.
        k: how many neighbours, at most 1000 (and fewer than the data set has).
        metric: "cosine" or "l2".
        space: "feature" or "pixel".
        pixel_size: thumbnail side for the pixel space.
        progress: ``progress(done, total)`` while thumbnails are computed, or None.
        should_stop: polled while thumbnails are computed; None never stops.
    """
    if space not in SPACES:
        raise ParameterError(f"Unknown space {space!r}; use one of {', '.join(SPACES)}.")
    if metric not in METRICS:
        raise ParameterError(f"Unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    if (query_index is None) == (query_image is None):
        raise ParameterError("Give exactly one of query_index and query_image.")
    features.check(bundle, dataset)
    qi = None
    if query_index is not None:
        if not is_int(query_index) \
                or not 0 <= query_index < len(dataset):
            raise ParameterError(f"query_index must be an image index from 0 to {len(dataset) - 1}, "
                                 f"got {query_index!r}")
        qi = int(query_index)
    if qi is not None and len(dataset) < 2:
        raise ParameterError("The data set needs at least two images to find neighbours of one of them.")

    q_label = None if qi is None else int(dataset.labels[qi])
    q_pred = None if qi is None else int(features.predictions[qi])
    size = None
    if space == "feature":
        base = features.features
        if qi is not None:
            query = base[qi:qi + 1]
        else:
            query, pred, _ = features_for_images(bundle, [query_image], features.layer)
            q_pred = int(pred[0])
    else:
        size = _check_size(bundle, pixel_size)
        base = _cached_pixel_vectors(bundle, dataset, size, progress, should_stop)
        if base is None:
            return None
        if qi is not None:
            query = base[qi:qi + 1]
        else:
            query = pixel_vector(bundle, query_image, size)[None]
            q_pred = int(features_for_images(bundle, [query_image], features.layer)[1][0])
    excl = None if qi is None else np.array([qi], dtype=np.int64)
    idx, dist = knn(query, base, k, metric, exclude_self=excl)
    idx, dist = idx[0], dist[0]
    labels = np.asarray(dataset.labels)[idx]
    agreement = None if q_label is None else float(np.mean(labels == q_label))
    return NeighborResult(query=qi, metric=metric, space=space, indices=idx, distances=dist,
                          labels=labels, predictions=features.predictions[idx], agreement=agreement,
                          query_label=q_label, query_prediction=q_pred, layer=features.layer,
                          pixel_size=size)
