"""The Ray Data backend equals the in-process backend exactly, and survives / reports dead
workers. One local Ray cluster (2 CPUs) serves the whole session (conftest.ray_cluster)."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.core.models.loaders import ModelSpec
from analysis.dataset.executor import JobError, JobSpec, load_result, run
from analysis.dataset.manifest import DatasetRef
from analysis.dataset.ray_backend import FAULT_ENV
from tests.dataset.conftest import write_digits_manifest

N = 256


def _same(a, b):
    """Every column of two results equal, bit for bit (NaN == NaN)."""
    ta, tb = a.table(), b.table()
    assert ta.column_names == tb.column_names
    for c in ta.column_names:
        x, y = a.array(c), b.array(c)
        assert x.shape == y.shape, c
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"column {c} differs"


def _both(spec, tmp_path, **kw):
    local = run(spec, engine="local", data_dir=tmp_path / "local")
    remote = run(spec, engine="ray", data_dir=tmp_path / "ray", chunk_size=64, **kw)
    assert local.complete and remote.complete and remote.meta["engine"] == "ray"
    assert local.key == remote.key                      # the engine is not part of the job
    return local, remote


def test_ray_features_and_predictions_equal_in_process(ray_cluster, digits, tmp_path):
    spec = JobSpec("features", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(N)))
    local, remote = _both(spec, tmp_path)
    assert remote.n_rows == N and remote.array("features").shape == (N, 64)
    _same(local, remote)
    assert (remote.array("pred") == remote.array("label")).mean() > 0.9


def test_ray_gradcam_maps_equal_in_process(ray_cluster, digits, tmp_path):
    spec = JobSpec("saliency", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(N)),
                   params={"method": "gradcam"})
    local, remote = _both(spec, tmp_path)
    maps = remote.array("map")
    assert maps.shape == (N, 32, 32) and maps.max() > 0
    _same(local, remote)


def test_ray_deletion_auc_equals_in_process(ray_cluster, digits, tmp_path):
    spec = JobSpec("trust", ModelSpec("digits"), "digits", batch_size=16, indices=tuple(range(0, 1600, 25)),
                   params={"method": "gradcam", "steps": 8, "n_random": 1})
    local, remote = _both(spec, tmp_path)
    _same(local, remote)
    d = remote.array("deletion_auc")
    assert d.shape == (64,) and np.all((d >= 0) & (d <= 1))


def test_ray_stop_resume_and_a_killed_worker(ray_cluster, digits, tmp_path, monkeypatch):
    bad = {5: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 150: b"not an image at all"}
    manifest = write_digits_manifest(tmp_path / "set", 200, corrupt=bad)
    spec = JobSpec("predict", ModelSpec("digits"), DatasetRef("manifest", str(manifest)), batch_size=25)
    # Stop after the first chunk: nothing is complete
    first = run(spec, engine="ray", data_dir=tmp_path / "ray", chunk_size=50, concurrency=1,
                should_stop=lambda: True)
    assert not first.complete and not (first.path / "meta.json").exists()
    assert first.n_rows + len(first.skipped) >= 50
    assert load_result(spec, data_dir=tmp_path / "ray") is None
    parts = {int(f.stem.split("-")[1]) for f in first.path.glob("part-*.parquet")}
    if parts == {0, 1, 2, 3}:         # Ray ran ahead of the Stop: as if killed before the last chunk
        (first.path / "part-000003.parquet").unlink()
        parts.discard(3)
    victim = max({0, 1, 2, 3} - parts)
    # Resume; the actor running the victim chunk dies once (os._exit) and Ray retries it
    marker = tmp_path / "kill-once"
    marker.write_text("")
    monkeypatch.setenv(FAULT_ENV, f"{victim}:{marker}")
    seen = []
    full = run(spec, engine="ray", data_dir=tmp_path / "ray", chunk_size=50, progress=lambda d, n: seen.append(d))
    assert seen[0] == 50 * len(parts)                    # resumed after the chunks already written
    assert not marker.exists()                           # the worker really was killed
    assert full.complete and full.n_rows == 198
    assert sorted((i, p) for i, p, _ in full.skipped) == [(5, "img/0005.png"), (150, "img/0150.png")]
    assert all(reason for _, _, reason in full.skipped)
    monkeypatch.delenv(FAULT_ENV)
    local = run(spec, engine="local", data_dir=tmp_path / "local")
    assert sorted(local.skipped) == sorted(full.skipped)
    _same(local, full)
    assert np.array_equal(full.array("index"), [i for i in range(200) if i not in bad])


def test_ray_worker_that_always_dies_is_reported(ray_cluster, digits, tmp_path, monkeypatch):
    spec = JobSpec("predict", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(128)))
    monkeypatch.setenv(FAULT_ENV, "1:always")
    with pytest.raises(JobError, match="Ray job failed"):
        run(spec, engine="ray", data_dir=tmp_path, chunk_size=32, retries=0, concurrency=1)
    assert load_result(spec, data_dir=tmp_path) is None
