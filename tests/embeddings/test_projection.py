"""Maps of feature vectors (analysis.embeddings.projection): shapes and dtypes of every method in 2-D
and 3-D, determinism, parameter validation, the disk cache, PCA's explained variance,
and map quality on scikit-learn's digits (5-NN accuracy of the 2-D map)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import analysis.core.diskcache as diskcache
import analysis.embeddings.projection as projection
from analysis.core.config import load_config, set_config
from analysis.core.errors import LimitError, ParameterError
from analysis.embeddings.projection import Projection, knn_accuracy, project


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(300, 20, centers=4, cluster_std=3.0, random_state=0)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def digits_xy():
    return load_digits(return_X_y=True)


def _cv5(coords, labels) -> float:
    return float(cross_val_score(KNeighborsClassifier(5), coords, labels, cv=5).mean())


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_shapes_and_dtypes(blobs, method, dims):
    x, _ = blobs
    p = project(x, method, dims, n_iter=60 if method != "pca" else None)
    assert isinstance(p, Projection)
    assert p.method == method and p.dims == dims
    assert p.coords.shape == (len(x), dims) and p.coords.dtype == np.float32
    assert np.isfinite(p.coords).all()
    assert p.seconds >= 0 and not p.from_cache
    assert p.params["seed"] == 0
    if method == "pca":
        assert p.explained_variance_ratio is not None
    else:
        assert p.explained_variance_ratio is None
        assert p.params["pca_dims"] is None          # 20-D features: nothing to reduce
        assert p.params["neighbors"] == "exact"


def test_effective_params(blobs):
    x, _ = blobs
    p = project(x)                                    # the default: 2-D t-SNE
    assert p.method == "tsne" and p.dims == 2
    assert p.params["perplexity"] == 30.0 and p.params["k_neighbors"] == 90
    assert p.params["n_iter"] == 250 and p.params["early_exaggeration_iter"] == 125
    assert p.params["gradient"] == "bh"               # < 5,000 points
    assert "kl_divergence" in p.quality
    wide = np.random.default_rng(0).normal(size=(60, 80)).astype(np.float32)
    q = project(wide, "umap", n_neighbors=5, n_iter=20, pca_dims=10)
    assert q.params["pca_dims"] == 10 and q.params["n_epochs"] == 20
    r = project(wide, "umap", n_neighbors=5, n_iter=20, pca_dims=500)
    assert r.params["pca_dims"] == 60                 # capped at min(N, D)
    r = project(wide[:, :40], "tsne", perplexity=5, n_iter=20, pca_dims=50)
    assert r.params["pca_dims"] is None               # 40-D: nothing to reduce
    r = project(wide, "tsne", perplexity=5, n_iter=20, pca_dims=0)
    assert r.params["pca_dims"] is None


def test_tiny_inputs_and_cosine():
    x = np.random.default_rng(1).normal(size=(5, 3))
    assert project(x, "tsne", perplexity=1.5, n_iter=20).coords.shape == (5, 2)
    assert project(x, "umap", n_neighbors=3, n_iter=20).coords.shape == (5, 2)
    assert project(x, "pca", 3).coords.shape == (5, 3)
    xi = np.random.default_rng(2).integers(0, 5, size=(40, 6))       # ints, duplicates
    xi[0] = 0                                                          # a zero row
    p = project(xi, "tsne", perplexity=5, metric="cosine", n_iter=30)
    assert p.params["metric"] == "cosine" and np.isfinite(p.coords).all()
    assert np.isfinite(project(xi, "umap", n_neighbors=5, metric="cosine", n_iter=20).coords).all()
    assert np.isfinite(project(xi, "pca", metric="cosine", standardize=True).coords).all()


def test_progress_reports(blobs):
    x, _ = blobs
    seen = []
    project(x, "tsne", n_iter=100, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 150) and seen[-1] == (150, 150)
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(seen) >= 6      # every 25 iterations
    seen.clear()
    project(x, "umap", n_iter=30, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 30) and seen[-1] == (30, 30)


# --------------------------------------------------------------------------- determinism

def test_pca_and_tsne_deterministic(blobs):
    x, _ = blobs
    for method in ("pca", "tsne"):
        projection.clear_memory_caches()
        a = project(x, method, seed=3, n_iter=60 if method == "tsne" else None).coords
        projection.clear_memory_caches()
        b = project(x, method, seed=3, n_iter=60 if method == "tsne" else None).coords
        c = project(x, method, seed=3, n_iter=60 if method == "tsne" else None).coords  # shared kNN
        assert np.array_equal(a, b) and np.array_equal(a, c), method
    d = project(x, "tsne", seed=4, n_iter=60).coords
    assert not np.array_equal(a, d)                    # the seed is used (jitter of the init)


def test_umap_deterministic_on_one_machine(blobs):
    # Seeded UMAP runs its epochs on one thread: identical on the same machine and
    # library versions (not promised across numba / CPU versions).
    x, _ = blobs
    a = project(x, "umap", seed=7, n_iter=50).coords
    projection.clear_memory_caches()
    b = project(x, "umap", seed=7, n_iter=50).coords
    assert np.array_equal(a, b)
    c = project(x, "umap", seed=8, n_iter=50).coords
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs, match", [
    (dict(method="tsne", perplexity=40), r"perplexity must be less than N/3"),
    (dict(method="tsne", perplexity=0.5), r"perplexity must be a number >= 1"),
    (dict(method="tsne", perplexity=float("nan")), r"perplexity"),
    (dict(method="umap", n_neighbors=100), r"n_neighbors must be less than the number of points \(100\)"),
    (dict(method="umap", n_neighbors=1), r"n_neighbors must be an integer >= 2"),
    (dict(method="umap", n_neighbors=5.5), r"n_neighbors must be an integer"),
    (dict(method="umap", min_dist=1.5), r"min_dist"),
    (dict(method="umap", min_dist=-0.1), r"min_dist"),
    (dict(dims=1), r"dims must be 2 or 3"),
    (dict(dims=4), r"dims must be 2 or 3"),
    (dict(dims=True), r"dims must be 2 or 3"),
    (dict(method="mds"), r"Unknown method 'mds'"),
    (dict(metric="manhattan"), r"Unknown metric"),
    (dict(seed=-1), r"seed must be an integer"),
    (dict(seed=1.5), r"seed must be an integer"),
    (dict(pca_dims=1), r"pca_dims must be None, 0"),
    (dict(pca_dims=-3), r"pca_dims"),
    (dict(n_iter=5), r"n_iter must be"),
    (dict(n_iter=10 ** 6), r"n_iter must be"),
    (dict(standardize="yes"), r"standardize"),
])
def test_parameter_errors(kwargs, match):
    x = np.random.default_rng(0).normal(size=(100, 8))
    with pytest.raises(ParameterError, match=match):
        project(x, **kwargs)


@pytest.mark.parametrize("features, match", [
    (np.zeros((4, 3)), r"at least 5 points"),
    (np.zeros(10), r"2-D array"),
    (np.zeros((10, 0)), r"no dimensions"),
    (np.array([["a", "b"]] * 6), r"numeric"),
    (np.full((6, 2), np.nan), r"NaN or infinite"),
])
def test_feature_errors(features, match):
    with pytest.raises(ParameterError, match=match):
        project(features, "pca")


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_identical_vectors_are_refused_for_every_method(method):
    # a layer whose output does not vary (e.g. dead units): t-SNE used to end in a
    # RuntimeError ("invalid map") and PCA in NaN explained variance
    x = np.full((50, 8), 0.25, np.float32)
    with pytest.raises(ParameterError, match="All 50 feature vectors are identical"):
        project(x, method, perplexity=5, n_neighbors=5)
    x[3, 5] = 1.0                                     # one differing value: a valid map
    assert np.isfinite(project(x, "pca").coords).all()


def test_bounds_at_the_edge():
    """perplexity < N/3 and n_neighbors < N exactly at the boundary, checked before any
    computation; the largest allowed values run."""
    x = np.random.default_rng(5).normal(size=(90, 6)).astype(np.float32)
    with pytest.raises(ParameterError, match=r"perplexity must be less than N/3 = 30 for 90 points \(got 30\)"):
        project(x, "tsne", perplexity=30)
    p = project(x, "tsne", perplexity=29.9, n_iter=20)
    assert p.params["k_neighbors"] == 89 and np.isfinite(p.coords).all()
    with pytest.raises(ParameterError, match=r"n_neighbors must be less than the number of points \(90\), got 90"):
        project(x, "umap", n_neighbors=90)
    assert np.isfinite(project(x, "umap", n_neighbors=89, n_iter=20).coords).all()
    with pytest.raises(ParameterError, match="3-D PCA map needs at least 3 dimensions and points"):
        project(x[:, :2], "pca", 3)


def test_pca_needs_enough_dimensions_and_labels_shape():
    with pytest.raises(ParameterError, match="3-D PCA map"):
        project(np.random.default_rng(0).normal(size=(10, 2)), "pca", 3)
    with pytest.raises(ParameterError, match="labels must have shape"):
        project(np.random.default_rng(0).normal(size=(10, 4)), "pca", labels=[0, 1])


def test_point_limit():
    set_config(load_config(env={"CONVLENS_MAX_DATASET_IMAGES": "50"}))
    with pytest.raises(LimitError, match="exceed the limit of 50"):
        project(np.zeros((51, 3)), "pca")


# --------------------------------------------------------------------------- disk cache

def test_disk_cache_hit_and_keys(blobs, tmp_path, monkeypatch):
    x, y = blobs
    parts = ("features-key-123",)
    first = project(x, "tsne", n_iter=60, cache_parts=parts, cache_dir=tmp_path)
    pca_first = project(x, "pca", cache_parts=parts, cache_dir=tmp_path)
    files = list((tmp_path / projection.CACHE_KIND).glob("*.npz"))
    assert len(files) == 2

    def boom(*a, **k):
        raise AssertionError("recomputed instead of reading the cache")
    monkeypatch.setattr(projection, "PROJECTIONS", {m: dataclasses.replace(e, run=boom)
                                                    for m, e in projection.PROJECTIONS.items()})
    again = project(x, "tsne", n_iter=60, cache_parts=parts, cache_dir=tmp_path, labels=y)
    assert again.from_cache and np.array_equal(again.coords, first.coords)
    assert again.coords.dtype == np.float32
    assert again.params == first.params and again.seconds == pytest.approx(first.seconds)
    assert again.quality["kl_divergence"] == pytest.approx(first.quality["kl_divergence"])
    assert 0 <= again.quality["knn_accuracy"] <= 1
    pca_again = project(x, "pca", cache_parts=parts, cache_dir=tmp_path)
    assert pca_again.from_cache
    np.testing.assert_array_equal(pca_again.explained_variance_ratio,
                                  pca_first.explained_variance_ratio)
    # a parameter of another method does not change the key ...
    assert project(x, "pca", n_neighbors=7, perplexity=5, cache_parts=parts,
                   cache_dir=tmp_path).from_cache
    # ... but every parameter of this one, the dims, the method and the parts do
    for kwargs in (dict(perplexity=20), dict(seed=1), dict(dims=3), dict(metric="cosine"),
                   dict(n_iter=61), dict(pca_dims=10), dict(standardize=True),
                   dict(method="umap")):
        call = dict(method="tsne", n_iter=60) | kwargs
        with pytest.raises(AssertionError, match="recomputed"):
            project(x, **call, cache_parts=parts, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):
        project(x, "tsne", n_iter=60, cache_parts=("other-features",), cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):
        project(x[:-1], "tsne", n_iter=60, cache_parts=parts, cache_dir=tmp_path)
    # a corrupt entry counts as missing
    for f in files:
        f.write_bytes(b"garbage")
    with pytest.raises(AssertionError, match="recomputed"):
        project(x, "tsne", n_iter=60, cache_parts=parts, cache_dir=tmp_path)


def test_cache_key_function():
    base = dict(seed=0, metric="euclidean", standardize=False, perplexity=30.0)
    k1 = projection.projection_key(("f",), "tsne", 2, 100, 8, base)
    assert k1 == projection.projection_key(["f"], "tsne", 2, 100, 8, dict(base))
    assert k1 != projection.projection_key(("f",), "tsne", 2, 100, 8, base | {"perplexity": 31.0})
    assert k1 != projection.projection_key(("f",), "tsne", 3, 100, 8, base)
    assert k1 != projection.projection_key(("f",), "umap", 2, 100, 8, base)
    assert diskcache.cache_path(projection.CACHE_KIND, k1).name == f"{k1}.npz"


# --------------------------------------------------------------------------- PCA

def test_explained_variance_ratio(digits_xy, blobs):
    x, _ = digits_xy
    p = project(x, "pca")
    r = p.explained_variance_ratio
    assert r.shape == (50,)
    assert np.all(np.diff(r) <= 1e-12) and np.all(r >= 0)
    assert r.sum() <= 1 + 1e-9
    # the map's coordinates are the first components
    full = project(x, "pca", 3).coords
    np.testing.assert_allclose(np.abs(full[:, :2]), np.abs(p.coords), rtol=1e-4, atol=1e-3)
    small = project(blobs[0], "pca").explained_variance_ratio
    assert small.shape == (20,) and small.sum() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- quality

def test_digits_umap_map_5nn_at_least_90(digits_xy):
    x, y = digits_xy
    p = project(x, "umap", labels=y)
    acc = _cv5(p.coords, y)
    assert acc >= 0.90, acc
    assert p.quality["knn_accuracy"] >= 0.90


def test_digits_default_tsne_map_5nn_at_least_90(digits_xy):
    x, y = digits_xy
    p = project(x)                       # the app's default
    acc = _cv5(p.coords, y)
    assert acc >= 0.90, acc


def test_knn_accuracy_helper():
    coords = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 10] + \
        np.random.default_rng(0).normal(scale=0.1, size=(40, 2))
    labels = np.r_[np.zeros(20), np.ones(20)]
    assert knn_accuracy(coords, labels) == 1.0
    assert knn_accuracy(coords, np.zeros(40)) is None            # one class
    assert knn_accuracy(coords[:10], labels[:10]) is None        # too few points


def test_a_registered_method_is_one_entry(blobs, monkeypatch, tmp_path):
    """A toy method (the first ``dims`` features) added as one table entry: ``project``
    accepts it, checks its option, caches it under its own name."""
    x, _ = blobs
    seen = {}

    def resolve(n, d, dims, options, params):
        if dims > d:
            raise ParameterError(f"first-features needs {dims} features")
        params["columns"] = list(range(dims))

    def run(x, dims, params, progress):
        seen["params"] = dict(params)
        return x[:, params["columns"]], None, {}

    monkeypatch.setattr(projection, "PROJECTIONS", dict(projection.PROJECTIONS))
    projection.register_projection(projection.ProjectionMethod("first", "First features", run, resolve))
    p = project(x, "first", 3, cache_parts=("k",), cache_dir=tmp_path)
    np.testing.assert_array_equal(p.coords, x[:, :3].astype(np.float32))
    assert p.method == "first" and p.params["columns"] == [0, 1, 2] and seen["params"]["seed"] == 0
    assert "pca_dims" not in p.params                     # not a neighbour method: no pre-reduction
    assert project(x, "first", 3, cache_parts=("k",), cache_dir=tmp_path).from_cache
    with pytest.raises(ParameterError, match="first-features needs 3"):
        project(x[:, :2], "first", 3)
    with pytest.raises(ParameterError, match="use one of tsne, umap, pca, first"):
        project(x, "mds")
