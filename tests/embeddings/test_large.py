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


def _tables(x, y, pred, conf, sizes):
    """Feature rows cut into pyarrow tables like the executor's Parquet parts."""
    import pyarrow as pa
    out, s = [], 0
    for m in sizes:
        f = x[s:s + m]
        out.append(pa.table({"index": np.arange(s, s + m) * 2, "label": y[s:s + m], "pred": pred[s:s + m],
                             "confidence": conf[s:s + m],
                             "features": pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), f.shape[1])}))
        s += m
    return out


def test_store_features_round_trip_memory_mapped(tmp_path):
    from analysis.embeddings.large import open_features, store_features
    x, y = _blobs(n=1000, d=8)
    pred, conf = (y + 1) % 5, np.linspace(0, 1, 1000, dtype=np.float32)
    seen = []
    sf = store_features(_tables(x, y, pred, conf, [300, 0, 500, 200]), 1000, 8, tmp_path / "f", meta={"layer": "fc"},
                        progress=lambda d, t: seen.append((d, t)))
    assert isinstance(sf.features, np.memmap) and not sf.features.flags.writeable
    assert np.array_equal(np.asarray(sf.features), x) and np.array_equal(sf.index, np.arange(1000) * 2)
    assert np.array_equal(sf.labels, y) and np.array_equal(sf.preds, pred) and np.array_equal(sf.confidences, conf)
    assert seen == [(300, 1000), (800, 1000), (1000, 1000)] and sf.meta["layer"] == "fc"
    assert sf.row_of(10) == 5 and sf.row_of(11) is None and sf.row_of(5000) is None
    again = open_features(tmp_path / "f")
    assert np.array_equal(np.asarray(again.features), x)
    # a wrong row count leaves nothing behind; an unfinished folder is never opened
    with pytest.raises(ParameterError, match="999"):
        store_features(_tables(x, y, pred, conf, [999]), 1000, 8, tmp_path / "g")
    assert not (tmp_path / "g").exists() and not (tmp_path / "g.partial").exists()
    assert open_features(tmp_path / "g") is None
    (tmp_path / "f" / "meta.json").unlink()
    assert open_features(tmp_path / "f") is None


def test_store_features_stops_and_keeps_nothing(tmp_path):
    from analysis.embeddings.large import store_features
    x, y = _blobs(n=600, d=4)
    calls = []
    with pytest.raises(Stopped):
        store_features(_tables(x, y, y, np.ones(600, np.float32), [200, 200, 200]), 600, 4, tmp_path / "f",
                       should_stop=lambda: calls.append(1) or len(calls) > 1)
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.partial").exists()


def test_kept_map_comes_back_for_its_parameters_only(tmp_path):
    from analysis.embeddings.large import load_map, map_params, save_map
    x, y = _blobs(n=1200, d=8)
    m = large_map(x, sample=400, k=5, pca_dims=4, labels=y)
    save_map(tmp_path, m)
    assert m.params == map_params("tsne", sample=400, k=5, pca_dims=4)
    got = load_map(tmp_path, "tsne", map_params("tsne", sample=400, k=5, pca_dims=4), 1200)
    assert np.array_equal(got.coords, m.coords) and np.array_equal(got.sample_index, m.sample_index)
    assert load_map(tmp_path, "tsne", map_params("tsne", sample=400, k=6, pca_dims=4), 1200) is None
    assert load_map(tmp_path, "tsne", m.params, 1201) is None


def test_nearest_centroid_matches_brute_force_in_chunks():
    from analysis.embeddings.large import nearest_centroid
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 6)).astype(np.float32) * 3 + 1
    mu, sd = x.mean(0), x.std(0)
    c = rng.normal(size=(7, 6))
    got = nearest_centroid(x, c, mean=mu, scale=sd, chunk=130)
    z = (x - mu) / sd
    want = np.argmin(((z[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(got, want)
    with pytest.raises(Stopped):
        nearest_centroid(x, c, chunk=130, should_stop=lambda: True)


def test_hnsw_index_measures_its_recall_and_says_so():
    x, _ = _blobs(n=3000, d=16)
    exact = NeighbourIndex(x, "cosine")
    assert exact.kind == "exact" and exact.recall == 1.0 and exact.describe().startswith("exact search")
    seen = []
    approx = NeighbourIndex(x, "cosine", exact_max=100, progress=lambda d, t: seen.append((d, t)))
    assert approx.recall is None and seen[-1] == (3000, 3000)
    r = approx.measure_recall(queries=100, k=10)
    rows = np.sort(np.random.default_rng(0).choice(3000, size=100, replace=False))
    e, _ = knn(x[rows], x, 10, metric="cosine")
    a, _ = approx.query(x[rows], 10)
    assert r == approx.recall == recall_at_k(a, e) and r >= 0.95
    assert "faiss HNSW over 3,000 vectors" in approx.describe() and f"recall@10 {r:.3f}" in approx.describe()


def test_sample_is_capped_at_the_in_memory_limit(monkeypatch):
    from analysis.core.config import set_config
    monkeypatch.setenv("CONVLENS_MAX_DATASET_IMAGES", "500")
    set_config(None)
    x, y = _blobs(n=1500, d=8)
    m = large_map(x, sample=50_000, k=5, pca_dims=4, labels=y)       # 50,000 asked, 500 allowed
    assert 495 <= len(m.sample_index) <= 500 and m.coords.shape == (1500, 2)
