"""The Ray backend equals the in-process backend exactly through both pipelines (Ray Data,
the default, and the warm actor pool), the pool reuses its actors across jobs, and both
survive / report dead workers (the fault comes from a test-only worker kind,
tests/dataset/ray_faults.py). One local Ray cluster (2 CPUs) serves the whole session
(conftest.ray_cluster). The tests are ordered so that the pool is started as few times as
possible (a Ray Data job shuts idle pools down to free their CPUs): the pool's tests first,
then Ray Data's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.core.models.loaders import ModelSpec
from analysis.dataset import ray_backend
from analysis.dataset.__main__ import main
from analysis.dataset.executor import JobError, JobSpec, load_result, run
from analysis.dataset.manifest import DatasetRef
from analysis.dataset.workers import WORKERS, model_spec_dict
from tests.dataset import ray_faults
from tests.dataset.conftest import assert_same_result, write_digits_manifest

N = 256


def _kw(pipeline: str) -> dict:
    """run()'s Ray arguments for a test's pipeline: "pool", "data" (Ray Data as configured:
    tasks on CPUs) or "data-actors" (Ray Data on an actor pool of the job, what GPUs get)."""
    return {"ray_pipeline": "pool" if pipeline == "pool" else "data",
            "ray_data_actors": True if pipeline == "data-actors" else None}


def _both(spec, tmp_path, pipeline="pool", **kw):
    local = run(spec, engine="local", data_dir=tmp_path / "local")
    remote = run(spec, engine="ray", data_dir=tmp_path / "ray", chunk_size=64, **_kw(pipeline), **kw)
    assert local.complete and remote.complete and remote.meta["engine"] == "ray"
    assert remote.meta["ray_pipeline"] == _kw(pipeline)["ray_pipeline"]
    assert local.key == remote.key                      # the engine is not part of the job
    return local, remote


def _features_equal(tmp_path, pipeline):
    spec = JobSpec("features", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(N)))
    local, remote = _both(spec, tmp_path, pipeline)
    assert remote.n_rows == N and remote.array("features").shape == (N, 64)
    assert_same_result(local, remote)
    assert (remote.array("pred") == remote.array("label")).mean() > 0.9
    return remote


def test_ray_features_and_predictions_equal_in_process_on_the_warm_pool(ray_cluster, digits, tmp_path):
    _features_equal(tmp_path, "pool")


def test_ray_gradcam_maps_equal_in_process(ray_cluster, digits, tmp_path):
    # through Ray Data's actor pool: the path GPU clusters take, here on CPU actors
    spec = JobSpec("saliency", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(N)),
                   params={"method": "gradcam"})
    local, remote = _both(spec, tmp_path, "data-actors")
    assert remote.meta["ray_processes"] and remote.meta["ray_models_built"] == len(remote.meta["ray_processes"])
    maps = remote.array("map")
    assert maps.shape == (N, 32, 32) and maps.max() > 0
    assert_same_result(local, remote)


def test_ray_deletion_auc_equals_in_process(ray_cluster, digits, tmp_path):
    spec = JobSpec("trust", ModelSpec("digits"), "digits", batch_size=16, indices=tuple(range(0, 1600, 25)),
                   params={"method": "gradcam", "steps": 8, "n_random": 1})
    local, remote = _both(spec, tmp_path)
    assert_same_result(local, remote)
    d = remote.array("deletion_auc")
    assert d.shape == (64,) and np.all((d >= 0) & (d <= 1))


def test_ray_crp_job_equals_in_process_and_reuses_the_warm_actors(ray_cluster, digits, tmp_path, capsys):
    # "crp" is registered by module path: the actors import analysis.relevance.workers
    # themselves (nothing in them imported it before), and the pool of the digits model
    # started by the earlier jobs is reused (same actor processes, no start-up)
    # the command line chooses the pipeline (the configured default is Ray Data)
    assert main(["audit", "--model", "digits", "--dataset", "digits", "--indices", "0-31", "--batch-size", "16",
                 "--engine", "ray", "--ray-pipeline", "pool", "--data-dir", str(tmp_path / "warm"), "--quiet",
                 "--no-record"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] and out["engine"] == "ray" and out["ray_pipeline"] == "pool"
    assert ray_backend.prestart(ModelSpec("digits"), concurrency=2, pipeline="pool") == 0   # the pool is running
    pids = _actor_pids()
    spec = JobSpec("crp", ModelSpec("digits"), "digits", params={"layer": "features.relu3"}, batch_size=16,
                   indices=tuple(range(64)))
    local, remote = _both(spec, tmp_path)
    assert_same_result(local, remote)
    assert remote.meta["ray_warm"] and _actor_pids() == pids
    rel = remote.array("channel_relevance")
    assert rel.shape[0] == 64 and np.abs(rel).sum() > 0


def _actor_pids() -> set[int]:
    import ray
    (pool,) = ray_backend._POOLS.values()
    return {info["pid"] for info in ray.get([a.info.remote() for a in pool.actors])}


@pytest.fixture
def killing_kind():
    WORKERS[ray_faults.KIND] = ray_faults.PATH          # by path: the driver never imports the class first
    yield ray_faults.KIND
    del WORKERS[ray_faults.KIND]


@pytest.mark.parametrize("pipeline", ["pool", "data", "data-actors"])
def test_ray_stop_resume_and_a_killed_worker(ray_cluster, digits, tmp_path, killing_kind, pipeline):
    bad = {5: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 150: b"not an image at all"}
    manifest = write_digits_manifest(tmp_path / "set", 200, corrupt=bad)
    marker = tmp_path / "kill-once"
    # the worker process dies on the batch holding image 160 (chunk 3) while the marker exists
    spec = JobSpec(killing_kind, ModelSpec("digits"), DatasetRef("manifest", str(manifest)), batch_size=25,
                   params={"kill_index": 160, "marker": str(marker)})
    if pipeline != "pool":       # a warm pool is up (the pool's run of this test): Ray Data must free its CPUs
        ray_backend.prestart(ModelSpec("digits"), concurrency=2, pipeline="pool")
        assert ray_backend.pool_info()
    # Stop once the first chunk is done (one actor): nothing is complete
    seen = []
    first = run(spec, engine="ray", data_dir=tmp_path / "ray", chunk_size=50, concurrency=1, **_kw(pipeline),
                progress=lambda d, n: seen.append(d), should_stop=lambda: bool(seen) and seen[-1] > 0)
    assert not first.complete and not (first.path / "meta.json").exists()
    assert load_result(spec, data_dir=tmp_path / "ray") is None
    if pipeline != "pool":
        assert ray_backend.pool_info() == []             # the idle pool was shut down, not waited for
    parts = {int(f.stem.split("-")[1]) for f in first.path.glob("part-*.parquet")}
    done = first.n_rows + len(first.skipped)     # rows and skips of the parts the result counted
    if pipeline == "pool":       # chunks handed out one at a time: exactly the first one ran
        assert parts == {0} and done == 50
    else:                        # Ray Data may have run ahead of the Stop, never past the data; a
        # chunk already running when Stop returned may land just after: whole chunks only
        assert 0 in parts and parts <= {0, 1, 2, 3}
        assert done % 50 == 0 and 50 <= done <= 50 * len(parts)
        if 3 in parts:           # as if stopped before the last chunk
            (first.path / "part-000003.parquet").unlink()
            parts.discard(3)
    # Resume; the actor running chunk 3 dies once (os._exit) and Ray restarts it and retries the chunk
    marker.write_text("")
    seen = []
    full = run(spec, engine="ray", data_dir=tmp_path / "ray", chunk_size=50, **_kw(pipeline),
               progress=lambda d, n: seen.append(d))
    assert seen[0] == 50 * len(parts)                    # resumed after the chunks already written
    assert not marker.exists()                           # the worker really was killed
    assert full.complete and full.n_rows == 198 and full.meta["ray_pipeline"] == _kw(pipeline)["ray_pipeline"]
    assert sorted((i, p) for i, p, _ in full.skipped) == [(5, "img/0005.png"), (150, "img/0150.png")]
    assert all(reason for _, _, reason in full.skipped)
    # the same rows as the plain predict job in-process
    plain = JobSpec("predict", ModelSpec("digits"), DatasetRef("manifest", str(manifest)), batch_size=25)
    local = run(plain, engine="local", data_dir=tmp_path / "local")
    assert sorted(local.skipped) == sorted(full.skipped)
    assert_same_result(local, full)
    assert np.array_equal(full.array("index"), [i for i in range(200) if i not in bad])


def test_ray_data_features_and_predictions_equal_in_process(ray_cluster, digits, tmp_path):
    # after the pool's tests: Ray Data (the default pipeline) runs tasks in Ray's worker
    # processes, which build the model once each, and shut the idle pool down
    remote = _features_equal(tmp_path, "data")
    assert ray_backend.pool_info() == []
    assert 1 <= len(remote.meta["ray_processes"]) <= 2 and remote.meta["ray_models_built"] <= 2


def test_ray_data_jobs_reuse_the_worker_processes_and_their_models(ray_cluster, digits, tmp_path):
    # CPU Ray Data runs tasks; Ray reuses its idle worker processes, and each keeps the
    # model it built: a second job on the model runs in the same processes without a build
    first = run(JobSpec("predict", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(128))),
                engine="ray", data_dir=tmp_path, chunk_size=32, ray_pipeline="data")
    second = run(JobSpec("features", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(128, 256))),
                 engine="ray", data_dir=tmp_path, chunk_size=32, ray_pipeline="data")
    assert first.complete and second.complete
    assert set(second.meta["ray_processes"]) <= set(first.meta["ray_processes"])
    assert second.meta["ray_models_built"] == 0 and not second.meta["ray_warm"]     # (a warm pool's flag)
    # what the processes hold, read by a plain task (Ray runs it in one of them)
    import ray
    info = ray.get(ray.remote(num_cpus=1)(ray_backend.process_models).remote())
    assert info["pid"] in first.meta["ray_processes"] and info["built"] >= 1
    assert model_spec_dict(ModelSpec("digits")) in [m["model"] for m in info["models"]]
    assert len(info["models"]) <= ray_backend.MODELS_PER_PROCESS


def test_ray_workers_fill_and_read_the_crop_cache(ray_cluster, digits, tmp_path):
    # the workers open the data set's crop cache in the driver's cache_dir: a first job
    # fills it, a later one reads it (shown by a planted crop with a valid checksum)
    import shutil

    from analysis.dataset.executor import plan
    from analysis.dataset.manifest import CropCache
    man = write_digits_manifest(tmp_path / "d", 96)
    spec = JobSpec("predict", ModelSpec("digits"), DatasetRef("manifest", str(man)), batch_size=16)
    ds = plan(spec, bundle=digits, data_dir=tmp_path / "plan").dataset
    cache = CropCache.open(ds, digits.preprocess)
    shutil.rmtree(cache.dir)
    cache.close()
    kw = {"engine": "ray", "chunk_size": 32, "ray_pipeline": "data"}
    first = run(spec, data_dir=tmp_path / "ray", **kw)
    cache = CropCache.open(ds, digits.preprocess)
    hit, crops = cache.get(np.arange(96))
    assert hit.all()                                         # filled by the workers
    assert np.array_equal(crops, np.stack([digits.preprocess.geometry(ds.get(i)) for i in range(96)]))
    local = run(spec, engine="local", data_dir=tmp_path / "local", bundle=digits, crop_cache=False)
    assert_same_result(local, first)
    cache.put_many([0, 1], crops[[50, 51]])                  # rows 0 and 1 now hold images 50 and 51
    cache.close()
    second = run(spec, data_dir=tmp_path / "ray2", **kw)
    plain = run(spec, data_dir=tmp_path / "plain", crop_cache=False, **kw)
    assert_same_result(local, plain)                         # crop_cache=False: decoded, as before
    p1, p2 = first.array("top_probs"), second.array("top_probs")
    assert np.array_equal(p2[[0, 1]], p1[[50, 51]]) and not np.array_equal(p2[[0, 1]], p1[[0, 1]])
    assert np.array_equal(p2[2:], p1[2:])


@pytest.fixture
def settings_kind():
    WORKERS[ray_faults.SETTINGS_KIND] = ray_faults.SETTINGS_PATH
    yield ray_faults.SETTINGS_KIND
    del WORKERS[ray_faults.SETTINGS_KIND]


def test_ray_data_cached_models_keep_their_own_settings(ray_cluster, digits, tmp_path, settings_kind, monkeypatch):
    # two jobs on one model with other settings (data directory, a CONVLENS_* variable) get
    # two cached models in the same worker processes; neither job sees the other's settings
    import dataclasses

    from analysis.core.config import get_config, set_config
    base = get_config()

    def job(folder: str, mark: str, indices: range):
        set_config(dataclasses.replace(base, data_dir=tmp_path / folder))
        if mark:
            monkeypatch.setenv(ray_faults.MARK_ENV, mark)
        else:
            monkeypatch.delenv(ray_faults.MARK_ENV, raising=False)
        res = run(JobSpec(settings_kind, ModelSpec("digits"), "digits", batch_size=32, indices=tuple(indices)),
                  engine="ray", chunk_size=32, ray_pipeline="data")
        assert res.complete and res.path.is_relative_to(tmp_path / folder)
        assert set(res.array("data_dir").tolist()) == {str(tmp_path / folder)}
        assert set(res.array("mark").tolist()) == {mark}
        return res

    try:
        a = job("a", "a", range(0, 128))
        b = job("b", "", range(128, 256))
        assert set(a.meta["ray_processes"]) & set(b.meta["ray_processes"])    # a process held both
        assert b.meta["ray_models_built"] >= 1                                 # other settings: own model
        again = job("a", "a", range(256, 384))
        assert again.meta["ray_models_built"] == 0                             # a's model, still cached
    finally:
        set_config(base)


@pytest.mark.parametrize("pipeline", ["data", "data-actors", "pool"])
def test_ray_worker_that_always_dies_is_reported(ray_cluster, digits, tmp_path, killing_kind, pipeline):
    spec = JobSpec(killing_kind, ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(128)),
                   params={"kill_index": 40, "marker": "always"})
    with pytest.raises(JobError, match="Ray job failed"):
        run(spec, engine="ray", data_dir=tmp_path, chunk_size=32, retries=0, concurrency=1, **_kw(pipeline))
    assert load_result(spec, data_dir=tmp_path) is None
    # chunk 1 killed its worker; nothing is marked complete, and chunk 1 has no part
    (partial,) = tmp_path.glob("jobs/*.partial")
    written = sorted(f.name for f in partial.glob("part-*.parquet"))
    assert "part-000001.parquet" not in written and not (partial / "meta.json").exists()
    if pipeline == "pool":       # chunk 0 was written before chunk 1 killed the only actor
        assert written == ["part-000000.parquet"]


def test_ray_data_prestart_builds_the_model_in_the_worker_processes(ray_cluster, digits, tmp_path, monkeypatch):
    import ray
    # what an embedded Ray does at start: import torch in the idle workers (here waited for)
    assert all(not w["error"] for w in ray.get(ray_backend.warm_workers(n=2)))
    # settings no job used before (a CONVLENS_* variable): a model the processes do not hold
    monkeypatch.setenv("CONVLENS_TEST_MARK", "prestart")
    # 2 tasks, waited for here (the page does not wait)
    assert ray_backend.prestart(ModelSpec("digits"), concurrency=2, pipeline="data", wait=True) == 2
    probe = ray.remote(num_cpus=1)(ray_backend.process_models)
    seen = ray.get([probe.remote() for _ in range(6)])
    holders = {i["pid"] for i in seen if any(m["env"].get("CONVLENS_TEST_MARK") == "prestart" for m in i["models"])}
    assert holders                                                   # prestart built it in worker processes
    res = run(JobSpec("predict", ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(128))),
              engine="ray", data_dir=tmp_path, chunk_size=32, ray_pipeline="data")
    assert res.complete
    # a process that held the prestarted model used it (Ray may also hand a chunk to another idle process)
    assert not holders & set(res.meta["ray_built_in"])
    assert res.meta["ray_models_built"] == len(res.meta["ray_built_in"]) <= len(set(res.meta["ray_processes"]) - holders)


def test_a_worker_process_keeps_at_most_two_models_and_frees_idle_ones(digits, tmp_path):
    # the per-process model cache of Ray Data's tasks, run in this process (no Ray needed)
    import time

    from analysis.core.config import get_config, set_config
    base = get_config()

    def ctor(name: str) -> dict:
        return {"model_spec": model_spec_dict(ModelSpec("digits")), "model_id": "", "device": "cpu", "threads": 0,
                "env": {}, "data_dir": str(tmp_path / name), "cache_dir": ""}

    try:
        a, built = ray_backend.process_model(ctor("a"), keep_warm_s=60)
        assert built and get_config().data_dir == tmp_path / "a"
        assert ray_backend.process_model(ctor("a"), keep_warm_s=60) == (a, False)
        ray_backend.process_model(ctor("b"), keep_warm_s=60)
        assert get_config().data_dir == tmp_path / "b"          # the settings of the model in use
        assert ray_backend.process_model(ctor("a"), keep_warm_s=60)[1] is False
        assert get_config().data_dir == tmp_path / "a"
        ray_backend.process_model(ctor("c"), keep_warm_s=0.3)    # b, the least recently used, goes
        held = [m["data_dir"] for m in ray_backend.process_models()["models"]]
        assert held == [str(tmp_path / "a"), str(tmp_path / "c")]
        assert ray_backend.process_model(ctor("b"), keep_warm_s=0.3)[1] is True
        ray_backend.process_model(ctor("a"), keep_warm_s=0.3)
        deadline = time.monotonic() + 20
        while ray_backend.process_models()["models"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray_backend.process_models()["models"] == []     # freed after keep_warm_s idle
    finally:
        set_config(base)


def test_job_kinds_resolve_by_module_path_in_a_fresh_process():
    # what a Ray actor sees: only analysis.dataset imported, yet "crp" is known and loads lazily
    import subprocess
    import sys

    from tests.paths import REPO
    code = ("import sys; from analysis.dataset.executor import KINDS, WORKERS; "
            "assert 'crp' in KINDS and 'analysis.relevance.workers' not in sys.modules; "
            "print(WORKERS['crp'].__module__, WORKERS.path('crp'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["analysis.relevance.workers", "analysis.relevance.workers:CRPWorker"]


def test_bad_worker_paths_are_clear_errors():
    from analysis.core.errors import ParameterError
    from analysis.dataset.workers import resolve_worker, worker_path
    for bad, msg in (("analysis.dataset.workers", "package.module:Class"), ("no.such.module:X", "Cannot load"),
                     ("analysis.dataset.workers:np", "not a data-set Worker"),
                     ("analysis.dataset.workers:Nope", "Cannot load")):
        with pytest.raises(ParameterError, match=msg):
            resolve_worker(bad)
    assert resolve_worker(ray_faults.PATH) is ray_faults.KillingPredictWorker
    assert worker_path(ray_faults.KillingPredictWorker) == ray_faults.PATH

    class Local(ray_faults.KillingPredictWorker):
        kind = "local"
    with pytest.raises(ParameterError, match="not importable"):
        worker_path(Local)


def test_an_idle_pool_is_shut_down(ray_cluster, digits):
    import time

    import ray
    assert ray_backend.prestart(ModelSpec("digits"), concurrency=1, keep_warm_s=1.0, pipeline="pool") in (0, 1)
    (pool,) = ray_backend._POOLS.values()
    actor = pool.actors[0]
    assert ray_backend.pool_info()[0]["actors"] == 1
    deadline = time.monotonic() + 30
    while ray_backend.pool_info() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_backend.pool_info() == []
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.info.remote(), timeout=30)
