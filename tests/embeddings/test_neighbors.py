"""Nearest neighbours: exact k-NN against brute force (both metrics, chunking, ties,
exclude_self, memory blocks), pixel-space vectors and their cache, and neighbours on the
digits model (feature space finds the query's class)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import analysis.core.diskcache as diskcache
import analysis.embeddings.features as features
import analysis.embeddings.neighbors as neighbors
from analysis.core.datasets import Dataset, load_digits_dataset
from analysis.core.errors import ParameterError
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import weights_sha256
from analysis.embeddings.neighbors import knn

# ------------------------------------------------------------------------------ reference

def _brute(query: np.ndarray, base: np.ndarray, metric: str, exclude=None) -> np.ndarray:
    """All distances (Q, N) in float64: np.linalg.norm, or 1 - cosine."""
    q, b = query.astype(np.float64), base.astype(np.float64)
    if metric == "l2":
        d = np.stack([np.linalg.norm(b - row, axis=1) for row in q])
    else:
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        d = 1.0 - qn @ bn.T
    if exclude is not None:
        for i, e in enumerate(exclude):
            if e >= 0:
                d[i, e] = np.inf
    return d


def _check_against_brute(query, base, k, metric, exclude=None, tol=1e-5, **kw):
    """knn equals argsort of the brute-force distances (stable: lower index on ties), up to
    swaps of neighbours whose exact distances differ by less than float32 noise."""
    idx, dist = knn(query, base, k, metric, exclude_self=exclude, **kw)
    full = _brute(query, base, metric, exclude)
    ref = np.argsort(full, axis=1, kind="stable")[:, :idx.shape[1]]
    ref_d = np.take_along_axis(full, ref, axis=1)
    assert idx.shape == ref.shape and idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_allclose(dist, ref_d, rtol=0, atol=tol)
    got_d = np.take_along_axis(full, idx, axis=1)
    np.testing.assert_allclose(got_d, ref_d, rtol=0, atol=tol)         # any swap is a near-tie
    if exclude is not None:
        assert not (idx == np.asarray(exclude)[:, None]).any()
    assert all(len(set(row)) == len(row) for row in idx.tolist())
    return (idx == ref).mean()


# ------------------------------------------------------------------------------ knn

@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
def test_knn_matches_brute_force(metric, chunk_size):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 16)).astype(np.float32)
    query = rng.normal(size=(20, 16)).astype(np.float32)
    assert _check_against_brute(query, base, 10, metric, chunk_size=chunk_size) == 1.0
    # queries from the base, each excluding its own index (-1: exclude nothing)
    qi = np.array([0, 5, 299, 150, 7])
    excl = qi.copy()
    excl[3] = -1
    assert _check_against_brute(base[qi], base, 6, metric, excl, chunk_size=chunk_size) == 1.0
    idx, dist = knn(base[qi], base, 6, metric, chunk_size=chunk_size)
    assert idx[3, 0] == 150 and dist[3, 0] < 1e-3 and (metric == "cosine" or dist[3, 0] == 0.0)  # itself


def test_knn_5000x64_exact():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(5000, 64)).astype(np.float32)
    qi = rng.choice(5000, 600, replace=False)
    for metric in ("l2", "cosine"):
        exact = _check_against_brute(base[qi], base, 8, metric, qi, tol=2e-5)
        assert exact >= 0.999
        exact = _check_against_brute(base[qi], base, 8, metric, qi, tol=2e-5, chunk_size=997)
        assert exact >= 0.999


def test_knn_ties_lower_index_first():
    # integer-valued vectors: every dot product and norm is exact in float32
    rng = np.random.default_rng(2)
    protos = rng.integers(-3, 4, size=(6, 5)).astype(np.float32)
    which = rng.integers(0, 6, size=80)
    base = protos[which]                                               # many exact duplicates
    for metric in ("l2", "cosine"):
        for chunk in (None, 3, 10):
            idx, dist = knn(base, base, 12, metric, exclude_self=np.arange(80), chunk_size=chunk)
            full = _brute(base, base, metric, np.arange(80))
            full = np.round(full, 6)                                   # cosine: 1 - 1 noise
            ref = np.lexsort((np.broadcast_to(np.arange(80), full.shape), full), axis=1)[:, :12]
            np.testing.assert_array_equal(idx, ref)
    # a full tie (all vectors equal): the lowest indices, self excluded, in index order
    same = np.ones((20, 4), np.float32)
    idx, dist = knn(same[[0, 3]], same, 5, "l2", exclude_self=np.array([0, 3]), chunk_size=4)
    assert idx.tolist() == [[1, 2, 3, 4, 5], [0, 1, 2, 4, 5]]
    np.testing.assert_array_equal(dist, 0.0)
    # far from the origin (norm ~1000) the |q|^2 - 2 q.b + |b|^2 expansion cancels; the k
    # found are measured again directly, so duplicates are exactly 0 apart, in index order
    far = base + 1000.0
    idx, dist = knn(far[:5], far, 12, "l2", exclude_self=np.arange(5))
    ref = np.lexsort((np.broadcast_to(np.arange(80), (5, 80)), _brute(base[:5], base, "l2", np.arange(5))),
                     axis=1)[:, :12]
    np.testing.assert_array_equal(idx, ref)
    same_proto = which[idx] == which[:5, None]
    assert (dist[same_proto] == 0).all() and (dist[~same_proto] > 1).all()
    # a scalar exclude_self for a single query
    assert 7 not in knn(base[7], base, 79, "l2", exclude_self=7)[0]


def test_knn_parameters_and_edge_cases():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(10, 4)).astype(np.float32)
    for bad in (dict(metric="manhattan"), dict(k=0), dict(k=True), dict(k=2.0), dict(k=10**6)):
        kw = {"k": 3, "metric": "cosine", **bad}
        with pytest.raises(ParameterError):
            knn(base[:2], base, **kw)
    with pytest.raises(ParameterError):
        knn(base[:2, :3], base, 3)                                    # dimension mismatch
    with pytest.raises(ParameterError):
        knn(base[:2], base, 3, exclude_self=np.array([1]))            # one per query
    with pytest.raises(ParameterError):
        knn(base[:2], base, 3, exclude_self=np.array([1, 10]))        # out of range
    with pytest.raises(ParameterError):
        knn(base[:2], base[:0], 3)
    with pytest.raises(ParameterError):
        knn(base[:1], base, 3, chunk_size=0)
    # k larger than the base: all of it (minus the excluded one)
    idx, _ = knn(base[:2], base, 50, "l2")
    assert idx.shape == (2, 10)
    idx, _ = knn(base[:2], base, 50, "l2", exclude_self=np.array([0, 1]))
    assert idx.shape == (2, 9) and 0 not in idx[0] and 1 not in idx[1]
    # a 1-D query is one row; integer input is accepted
    idx1, d1 = knn(base[4], base, 2, "l2")
    assert idx1.shape == (1, 2) and idx1[0, 0] == 4
    assert knn(np.array([[1, 0]]), np.array([[0, 1], [2, 0]]), 1, "cosine")[0].tolist() == [[1]]
    # zero vector: cosine distance 1 to everything; NaN rows rank last as inf
    z = np.vstack([np.zeros((1, 4), np.float32), base])
    _, dz = knn(z[:1], z[1:], 3, "cosine")
    np.testing.assert_allclose(dz, 1.0)
    nan_base = base.copy()
    nan_base[[0, 2]] = np.nan
    idx, d = knn(base[5:6], nan_base, 10, "l2")
    assert idx[0, -2:].tolist() == [0, 2] and np.isinf(d[0, -2:]).all() and np.isfinite(d[0, :-2]).all()


def test_knn_blocks_stay_small(monkeypatch):
    """No query x base distance block larger than block_elements (the 100k x 1280 design)."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(20000, 8)).astype(np.float32)
    query = base[:100]
    ref = knn(query, base, 5, "l2")
    shapes = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: shapes.append((a.shape[0], b.shape[1])) or real_mm(a, b))
    got = knn(query, base, 5, "l2", block_elements=100_000)
    assert max(r * c for r, c in shapes) <= 100_000 and len(shapes) == 20
    np.testing.assert_array_equal(got[0], ref[0])
    # large k with small blocks: the direct L2 re-measure also runs in blocks
    shapes.clear()
    assert _check_against_brute(base[:30], base[:200], 50, "l2", block_elements=1000) == 1.0
    assert max(r * c for r, c in shapes) <= 1000
    # default sizing for one query against 100,000 x 1,280 float32: base blocks of
    # 16M elements (64 MB), never the whole 512 MB base converted at once
    shapes.clear()
    big = np.lib.stride_tricks.as_strided(np.zeros(1280, np.float32), (100_000, 1280), (0, 4))
    knn(big[:1], big, 3, "cosine")
    assert max(c for _, c in shapes) * 1280 <= neighbors.DEFAULT_BLOCK_ELEMENTS
    assert sum(c for _, c in shapes) == 100_000


# ------------------------------------------------------------------------------ pixel space

def _subset(ds: Dataset, n: int, start: int = 0) -> Dataset:
    h = hashlib.sha256(f"{ds.content_hash}|{start}:{start + n}".encode()).hexdigest()
    return Dataset(name=f"{ds.name}[{start}:{start + n}]", source=ds.source, class_names=list(ds.class_names),
                   labels=ds.labels[start:start + n], ids=list(ds.ids[start:start + n]), content_hash=h,
                   _loader=lambda i: ds.get(start + i))


def test_pixel_vectors_digits_and_cache(digits, monkeypatch):
    ds = _subset(load_digits_dataset(), 120, start=300)
    v = neighbors.pixel_vectors(digits, ds)                               # 32 = the digits crop
    assert v.shape == (120, 32 * 32) and v.dtype == np.float32            # grey model: one channel
    crops = np.stack([digits.preprocess.geometry(ds.get(i)) for i in range(120)])
    np.testing.assert_allclose(v, crops.astype(np.float32).mean(axis=3).reshape(120, -1) / 255, atol=1e-6)
    np.testing.assert_allclose(neighbors.pixel_vector(digits, ds.get(9)), v[9], atol=1e-7)
    # stored: a second call reads no image; size is part of the key (capped at the crop)
    monkeypatch.setattr(neighbors, "_thumbnail", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    np.testing.assert_array_equal(neighbors.pixel_vectors(digits, ds), v)
    monkeypatch.undo()
    v16 = neighbors.pixel_vectors(digits, ds, size=16)
    assert v16.shape == (120, 256)
    assert neighbors.pixel_vectors(digits, ds, size=64).shape == (120, 1024)
    with pytest.raises(ParameterError):
        neighbors.pixel_vectors(digits, ds, size=0)
    # stopped: None and nothing stored
    other = _subset(load_digits_dataset(), 300, start=1000)
    seen = []
    assert neighbors.pixel_vectors(digits, other, progress=lambda d, t: seen.append(d),
                                   should_stop=lambda: len(seen) >= 2) is None
    assert seen == [0, 256]
    assert not diskcache.cache_path("pixels", neighbors.pixel_key(digits, other, 32)).exists()


def test_pixel_vectors_rgb_downscaled(lite0):
    from analysis.inside.patches import gallery_dataset
    ds = gallery_dataset(crops_per_image=1, size=256)
    v = neighbors.pixel_vectors(lite0, ds, size=32, save=False)
    assert v.shape == (len(ds), 32 * 32 * 3)
    crop = lite0.preprocess.geometry(ds.get(2))
    thumb = np.asarray(Image.fromarray(crop).resize((32, 32), Image.BOX)).astype(np.float32) / 255
    np.testing.assert_allclose(v[2], thumb.reshape(-1), atol=1e-7)
    assert 0.0 <= v.min() and v.max() <= 1.0


# ------------------------------------------------------------------------------ neighbours

@pytest.fixture(scope="module")
def digit_features(digits):
    ds = load_digits_dataset()
    return ds, features.load_features(digits, ds) or features.run_extract(digits, ds, batch_size=256)


def test_feature_neighbours_share_the_label(digits, digit_features):
    ds, fs = digit_features
    sha = weights_sha256(digits.model)
    queries = np.random.default_rng(0).choice(len(ds), 50, replace=False)
    agree = {"feature": [], "pixel": []}
    for q in queries:
        for space in agree:
            r = neighbors.neighbors(digits, ds, fs, query_index=int(q), k=8, space=space)
            assert r.query == q and r.space == space and len(r.indices) == 8
            assert q not in r.indices and np.all(np.diff(r.distances) >= 0)
            np.testing.assert_array_equal(r.labels, ds.labels[r.indices])
            np.testing.assert_array_equal(r.predictions, fs.predictions[r.indices])
            assert r.query_label == ds.labels[q] and r.agreement == np.mean(r.labels == ds.labels[q])
            agree[space].append(r.agreement)
    feat, pix = float(np.mean(agree["feature"])), float(np.mean(agree["pixel"]))
    print(f"\ndigits, k=8, cosine, 50 queries: feature-space agreement {feat:.3f}, pixel-space {pix:.3f}")
    assert feat >= 0.9
    assert count_hooks(digits.model) == 0 and weights_sha256(digits.model) == sha


def test_outside_query_image(digits, digit_features):
    ds, fs = digit_features
    img = ds.get(42)
    for space in ("feature", "pixel"):
        r = neighbors.neighbors(digits, ds, fs, query_image=img, k=5, metric="l2", space=space)
        assert r.query is None and r.agreement is None and r.query_label is None
        assert r.indices[0] == 42 and r.distances[0] == pytest.approx(0.0, abs=1e-3)  # itself is in the set
        assert r.query_prediction == fs.predictions[42]
        inside = neighbors.neighbors(digits, ds, fs, query_index=42, k=4, metric="l2", space=space)
        np.testing.assert_array_equal(inside.indices, r.indices[1:])


def test_neighbours_parameters(digits, digit_features):
    ds, fs = digit_features
    with pytest.raises(ParameterError):
        neighbors.neighbors(digits, ds, fs)                                       # no query
    with pytest.raises(ParameterError):
        neighbors.neighbors(digits, ds, fs, query_index=1, query_image=ds.get(1))  # two
    with pytest.raises(ParameterError):
        neighbors.neighbors(digits, ds, fs, query_index=len(ds))
    with pytest.raises(ParameterError):
        neighbors.neighbors(digits, ds, fs, query_index=1, space="latent")
    with pytest.raises(ParameterError):
        neighbors.neighbors(digits, ds, fs, query_index=1, metric="dot")
    with pytest.raises(ParameterError, match="another data set"):
        neighbors.neighbors(digits, _subset(ds, 100), fs, query_index=1)
