"""Maps and neighbour search for many points (analysis/embeddings/large.py)."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.core.errors import ParameterError
from analysis.embeddings.large import NeighbourIndex, Stopped, large_map, recall_at_k, sample_indices
from analysis.embeddings.neighbors import knn
from analysis.embeddings.projection import knn_accuracy, project


def _blobs(n=3000, k=5, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(k, d))
    y = rng.integers(0, k, size=n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_sample_is_stratified_seeded_and_distinct():
    y = np.repeat([0, 1, 2], [900, 90, 10])
    s = sample_indices(1000, 100, y, seed=3)
    assert len(np.unique(s)) == len(s) and np.all(np.diff(s) > 0)
    counts = np.bincount(y[s], minlength=3)
    assert abs(counts[0] - 90) <= 1 and abs(counts[1] - 9) <= 1 and counts[2] >= 1
    assert np.array_equal(s, sample_indices(1000, 100, y, seed=3))
    assert not np.array_equal(s, sample_indices(1000, 100, y, seed=4))


def test_large_map_places_points_with_their_cluster(tmp_path):
    x, y = _blobs()
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    feats = np.load(tmp_path / "f.npy", mmap_mode="r")          # read lazily, in chunks
    seen = []
    m = large_map(feats, sample=600, k=10, pca_dims=8, labels=y, chunk=700,
                  progress=lambda d, t: seen.append((d, t)))
    assert m.coords.shape == (3000, 2) and np.isfinite(m.coords).all()
    assert len(m.sample_index) == 600 and set(m.seconds) == {"sample_fit", "reduce", "knn_place"}
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == 3000
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    # the placed points sit with their own cluster: 5-NN accuracy of the whole map
    assert knn_accuracy(m.coords, y) > 0.97
    # a placed point is the median position of its nearest reference points
    placed = np.setdiff1d(np.arange(3000), m.sample_index)
    assert not np.allclose(m.coords[placed].std(0), 0)


def test_large_map_on_a_small_set_is_the_plain_map():
    x, y = _blobs(400, 3, 8)
    m = large_map(x, sample=1000, pca_dims=0)
    ref = project(x, "tsne", 2, seed=0, pca_dims=None).coords
    assert np.array_equal(m.coords, ref) and len(m.sample_index) == 400


def test_large_map_stops_and_refuses_bad_parameters():
    x, _ = _blobs(2000, 3, 8)
    calls = []

    def stop():
        calls.append(1)
        return True
    with pytest.raises(Stopped):
        large_map(x, sample=300, pca_dims=0, should_stop=stop)
    assert calls
    for kw in ({"method": "mds"}, {"k": 0}, {"sample": True}, {"pca_dims": -1}):
        with pytest.raises(ParameterError):
            large_map(x, **kw)
    bad = x.copy()
    bad[1500, 0] = np.nan
    with pytest.raises(ParameterError, match="NaN"):
        large_map(bad, sample=300, pca_dims=0)
    with pytest.raises(ParameterError):
        large_map(np.zeros((10,)))


def test_neighbour_index_exact_equals_knn_and_approximate_recalls():
    x, _ = _blobs(3000, 5, 16)
    exact = NeighbourIndex(x, "l2")
    assert exact.kind == "exact"
    i, d = exact.query(x[:50], 10)
    ri, rd = knn(x[:50], x, 10, metric="l2")
    assert np.array_equal(i, ri) and np.allclose(d, rd)
    approx = NeighbourIndex(x, "l2", exact_max=0)
    assert approx.kind.startswith("approximate")
    ai, _ = approx.query(x[:200], 10)
    ei, _ = knn(x[:200], x, 10, metric="l2")
    assert recall_at_k(ai, ei) >= 0.95


def test_recall_at_k_known_answer():
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 9]])) == 0.75
    with pytest.raises(ParameterError):
        recall_at_k(np.zeros((2, 2)), np.zeros((2, 3)))
