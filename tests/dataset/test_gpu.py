"""The data-set jobs on a CUDA device: in-process on the GPU agrees with the CPU, leaves no
hook and gives its GPU memory back, and Ray's GPU actors (``num_gpus=1``, the path GPU
clusters take) give exactly the in-process GPU result. Skipped where torch sees no CUDA
device (the CI machine has none); on a GPU machine ``python -m pytest
tests/dataset/test_gpu.py`` runs them (the GPU bundles are built explicitly; the session's
Ray cluster sees the GPU and gives each actor one)

(docs/benchmarks.md records the last run, with the device's name)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.core.models.loaders import ModelSpec, load_bundle
from analysis.dataset.executor import JobSpec, run
from tests.dataset.conftest import assert_same_result

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N = 256


def _job(kind: str, **params) -> JobSpec:
    return JobSpec(kind, ModelSpec("digits"), "digits", batch_size=32, indices=tuple(range(N)), params=params)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_gpu_jobs_agree_with_the_cpu_and_leave_nothing_behind(digits, tmp_path):
    gpu = load_bundle(ModelSpec("digits"), device=torch.device("cuda"))
    assert next(gpu.model.parameters()).is_cuda
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for kind, params in (("features", {}), ("saliency", {"method": "gradcam"})):
        spec = _job(kind, **params)
        on_gpu = run(spec, engine="local", bundle=gpu, data_dir=tmp_path / "gpu", crop_cache=False)
        on_cpu = run(spec, engine="local", bundle=digits, data_dir=tmp_path / "cpu", crop_cache=False)
        assert on_gpu.complete and on_gpu.n_rows == N
        # the same predictions (the digits CNN's top logit is never a near tie on these)
        assert np.array_equal(on_gpu.array("pred"), on_cpu.array("pred"))
        col = "features" if kind == "features" else "map"
        g, c = on_gpu.array(col), on_cpu.array(col)
        assert g.shape == c.shape and np.abs(c).max() > 0
        # TF32 / other kernels: close, not equal
        assert np.abs(g - c).max() <= 2e-2 * np.abs(c).max(), col
        if kind == "saliency":
            assert np.mean(np.abs(on_gpu.array("mass_centre") - on_cpu.array("mass_centre"))) < 1e-2
    assert _hooks(gpu.model) == 0
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + 1024      # activations and gradients freed


def test_gpu_job_is_deterministic_across_runs(tmp_path):
    gpu = load_bundle(ModelSpec("digits"), device=torch.device("cuda"))
    spec = _job("saliency", method="gradcam")
    a = run(spec, engine="local", bundle=gpu, data_dir=tmp_path / "a")
    b = run(spec, engine="local", bundle=gpu, data_dir=tmp_path / "b", crop_cache=False)
    assert_same_result(a, b)                    # the crop cache (filled by a) and decoding give the same bits


@pytest.mark.parametrize("pipeline", ["data", "pool"])
def test_ray_gpu_actors_equal_in_process_on_the_gpu(ray_cluster, tmp_path, pipeline):
    import ray
    assert ray.cluster_resources().get("GPU", 0) >= 1
    gpu = load_bundle(ModelSpec("digits"), device=torch.device("cuda"))
    for kind, params in (("predict", {}), ("saliency", {"method": "gradcam"})):
        spec = _job(kind, **params)
        local = run(spec, engine="local", bundle=gpu, data_dir=tmp_path / "local")
        remote = run(spec, engine="ray", data_dir=tmp_path / pipeline, chunk_size=64, ray_pipeline=pipeline,
                     concurrency=1)
        assert remote.complete and remote.meta["ray_gpus_per_actor"] == 1.0
        assert remote.meta["ray_pipeline"] == pipeline
        assert_same_result(local, remote)
