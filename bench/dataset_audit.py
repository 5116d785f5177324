"""Data-set jobs: executor throughput against the model's own floor, Ray against in-process,
and a scaling estimate for N GPU workers from the measured per-batch costs.

1. In-process ``predict`` and ``saliency`` (batched Grad-CAM) jobs, images/s, against the
   floor measured in the same run: the same batches of already preprocessed tensors through
   the bare forward (predict) or forward + backward to the Grad-CAM layer (saliency).
   Goal: executor >= 0.8x the floor. Both models: the digits CNN (all 1,797 digits) and
   EfficientNet-Lite0 (224x224).
2. The same ``predict`` job on Ray (embedded single-node Ray, one worker per core) against
   in-process, end to end, every way the Ray backend runs, in the same run: Ray Data
   (``ray_pipeline="data"``: tasks whose worker processes keep the model) first and later
   jobs, the warm pool's first (cold) and later (warm) jobs, and Ray Data on an actor pool of
   the job (the GPU path); ``ray.init`` apart, with the actors' start-up broken down
   (importing torch / convlens, building the model). Goal: >= 0.7x in-process on 2 cores.
3. Per-batch costs (read + decode, preprocess, model, post-process + Parquet) and the
   scaling estimate for N GPU workers.

    .venv/bin/python bench/dataset_audit.py [--lite-images 48] [--no-ray | --only-ray] [--no-write]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from analysis.core.hooks import capture, graph_from
from analysis.core.models.loaders import ModelSpec, load_bundle, select_device
from analysis.dataset.executor import BatchRunner, JobSpec, _default_chunk, plan, run, slice_rows, to_arrow
from analysis.dataset.manifest import CropCache, DatasetRef
from analysis.dataset.runner import DECODE_THREADS_ENV, decode_threads
from analysis.dataset.workers import WORKERS
from bench._report import machine, write_section


def photo_manifest(folder: Path, n: int) -> Path:
    """``n`` JPEG photos (random 320x320 crops of the offline gallery photos, quality 90) and
    a CSV manifest: a realistic read + decode + resize workload for 224x224 models."""
    import pandas as pd
    from PIL import Image

    from analysis.core.images import gallery_image, gallery_names
    photos = [gallery_image(name) for name in gallery_names("photo")] or [gallery_image("chelsea")]
    photos = [p for p in photos if min(p.shape[:2]) >= 320] or photos
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        p = photos[k % len(photos)]
        s = min(320, *p.shape[:2])
        y, x = rng.integers(0, p.shape[0] - s + 1), rng.integers(0, p.shape[1] - s + 1)
        Image.fromarray(np.ascontiguousarray(p[y:y + s, x:x + s])).save(folder / f"img/{k:04d}.jpg", quality=90)
        rows.append({"path": f"img/{k:04d}.jpg", "label": 0})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a clock read without
    this would time the kernel launches, not the kernels)."""
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def floor(bundle, xs: list[torch.Tensor], layer: str | None, from_layer: bool = False) -> float:
    """Seconds for the bare forward (layer None) or forward + backward to ``layer``, under a
    heavy-job slot like the executor (same allocator regime: analysis/core/allocator.py).
    The forward + backward is the standard one (the input requires grad, the whole forward
    records the graph: how Captum's LayerGradCam and pytorch-grad-cam run Grad-CAM) or, with
    ``from_layer``, the one the executor runs (``graph_from``: the graph starts at the layer)."""
    from analysis.core.jobs import heavy_job
    with heavy_job(bundle.device):
        return _floor(bundle, xs, layer, from_layer)


@contextlib.contextmanager
def _grad_forward(model, x: torch.Tensor, layer: str, from_layer: bool):
    """The forward of a Grad-CAM batch, ``(logits, the layer's output)``, recording the graph
    the standard way (from an input that requires grad) or from the layer (``graph_from``);
    the backward goes inside the block."""
    if from_layer:
        with graph_from(model, layer) as acts:
            out = model(x)
            yield out, acts[layer]
        return
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad(), capture(model, layer, detach=False) as acts:
        out = model(xg)
        yield out, acts[layer]


def _floor(bundle, xs: list[torch.Tensor], layer: str | None, from_layer: bool = False) -> float:
    model = bundle.model

    def one(x: torch.Tensor) -> None:
        # a function per batch, so that nothing of a batch (its autograd graph and saved
        # activations) is still referenced while the next batch runs, as in the executor
        if layer is None:
            with torch.inference_mode():
                model(x)
            return
        with _grad_forward(model, x, layer, from_layer) as (out, act):
            torch.autograd.grad(out.gather(1, out.detach().argmax(1)[:, None]).sum(), act)
    _sync(bundle.device)
    t0 = time.perf_counter()
    for x in xs:
        one(x)
    _sync(bundle.device)
    return time.perf_counter() - t0


def _timed_run(spec: JobSpec, p, bundle, data_dir: Path, cold: CropCache | None,
               helper_threads: int | None = None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one in-process job from nothing stored (the
    previous result is removed before the clock starts; ``cold``: the crop cache is emptied
    first too; ``helper_threads``: ``CONVLENS_DECODE_THREADS`` for this run, None = the
    executor's default)."""
    shutil.rmtree(p.final_dir, ignore_errors=True)
    shutil.rmtree(p.partial_dir, ignore_errors=True)
    if cold is not None:
        shutil.rmtree(cold.dir, ignore_errors=True)
    old = os.environ.pop(DECODE_THREADS_ENV, None)
    if helper_threads is not None:
        os.environ[DECODE_THREADS_ENV] = str(helper_threads)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        r = run(spec, engine="local", bundle=bundle, data_dir=data_dir)
        t, c = time.perf_counter() - t0, time.process_time() - c0
    finally:
        os.environ.pop(DECODE_THREADS_ENV, None)
        if old is not None:
            os.environ[DECODE_THREADS_ENV] = old
    assert r.complete and r.n_rows == len(spec.indices)
    return t, c


def _timed_floor(bundle, xs, layer, from_layer: bool = False) -> tuple[float, float]:
    c0 = time.process_time()
    t = floor(bundle, xs, layer, from_layer)
    return t, time.process_time() - c0


def saved_for_backward(bundle, x: torch.Tensor, layer: str, from_layer: bool) -> int:
    """Bytes of the tensors autograd keeps for the backward of one Grad-CAM batch (the standard
    forward from an input that requires grad, or ``graph_from``), each storage counted once:
    the memory a batch holds beyond the forward's own."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t
    with bundle.lock, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            _grad_forward(bundle.model, x, layer, from_layer):
        pass
    return sum(seen.values())


def executor_vs_floor(spec_model: ModelSpec, dataset, n: int, batch: int, device, data_dir: Path,
                      repeats: int, helper_threads: int = 1) -> list[dict]:
    """Executor images/s (first pass: empty crop cache; repeat: crops cached) against the
    floor, over ``repeats`` interleaved (floor, job) pairs: medians; wall clock and process CPU time."""
    bundle = load_bundle(spec_model, device=device)
    rows = []
    for kind, params in (("predict", {}), ("saliency", {"method": "gradcam"})):
        spec = JobSpec(kind, spec_model, dataset, params=params, batch_size=batch, indices=tuple(range(n)))
        p = plan(spec, bundle=bundle, data_dir=data_dir)
        cache = CropCache.open(p.dataset, bundle.preprocess)
        # warm-up: one batch through the worker (oneDNN picks kernels per shape)
        w = WORKERS[kind](spec_model, p.params, bundle=bundle)
        BatchRunner(w, p.source, batch).run_batch(slice_rows(p.rows, 0, batch))
        ds = p.dataset
        xs = [bundle.inputs([ds.get(i) for i in range(a, min(n, a + batch))]) for a in range(0, n, batch)]
        layer = p.params.get("layer") or None
        floor(bundle, xs[:1], layer)                                     # warm-up
        runs = {k: [] for k in ("cold", "floor", "floor_layer", "warm", "helpers")}
        for _ in range(repeats):          # interleaved: each job run next to a floor run
            runs["cold"].append(_timed_run(spec, p, bundle, data_dir, cache))
            runs["floor"].append(_timed_floor(bundle, xs, layer))
            if layer is not None:         # the same work as the executor's Grad-CAM
                runs["floor_layer"].append(_timed_floor(bundle, xs, layer, from_layer=True))
            runs["warm"].append(_timed_run(spec, p, bundle, data_dir, None))
            # the same first pass with ``helper_threads`` prepare threads (and a writer thread;
            # 0: none) instead of the default (decode_threads)
            runs["helpers"].append(_timed_run(spec, p, bundle, data_dir, cache, helper_threads=helper_threads))
        if cache is not None:
            shutil.rmtree(cache.dir, ignore_errors=True)
            cache.close()
        row = {"model": bundle.name.split(" (")[0], "kind": "predict" if kind == "predict" else "Grad-CAM",
               "n": n, "batch": batch, "cached": cache is not None, "repeats": repeats}
        fl = runs["floor"]
        row["floor"] = n / float(np.median([t for t, _ in fl]))
        for k in ("cold", "warm", "helpers"):
            # the median over the pairs of (floor run, job run next to it): robust to the load's drift
            row[k] = n / float(np.median([t for t, _ in runs[k]]))
            row[k + "_ratio"] = float(np.median([f[0] / j[0] for f, j in zip(fl, runs[k])]))
            row[k + "_cpu"] = float(np.median([f[1] / j[1] for f, j in zip(fl, runs[k])]))
        if runs["floor_layer"]:
            fll = runs["floor_layer"]
            row["floor_layer"] = n / float(np.median([t for t, _ in fll]))
            row["floor_layer_speedup"] = float(np.median([f[0] / g[0] for f, g in zip(fl, fll)]))
            for k in ("cold", "warm"):
                row[k + "_ratio_layer"] = float(np.median([f[0] / j[0] for f, j in zip(fll, runs[k])]))
            row["saved_bytes"] = saved_for_backward(bundle, xs[0], layer, False)
            row["saved_bytes_layer"] = saved_for_backward(bundle, xs[0], layer, True)
        rows.append(row)
        print(f"{row['model']:>20} {row['kind']:>9}: floor {row['floor']:8.1f} img/s, first pass "
              f"{row['cold']:8.1f} ({row['cold_ratio']:.2f}x, CPU {row['cold_cpu']:.2f}x), "
              f"crops cached {row['warm']:8.1f} ({row['warm_ratio']:.2f}x, CPU {row['warm_cpu']:.2f}x), "
              f"first pass with helper threads {row['helpers_ratio']:.2f}x", flush=True)
        if "floor_layer" in row:
            print(f"{'':>31}graph from the layer: floor {row['floor_layer']:8.1f} img/s "
                  f"({row['floor_layer_speedup']:.2f}x the standard floor), first pass / it "
                  f"{row['cold_ratio_layer']:.2f}x, cached / it {row['warm_ratio_layer']:.2f}x; saved for "
                  f"backward per batch {_mib(row['saved_bytes'])} -> {_mib(row['saved_bytes_layer'])} MiB",
                  flush=True)
    return rows


def per_batch_costs(spec_model: ModelSpec, dataset, n: int, batch: int, device, data_dir: Path) -> dict:
    """Mean seconds per batch of: read + decode, preprocess, model, post-process + Arrow."""
    bundle = load_bundle(spec_model, device=device)
    spec = JobSpec("predict", spec_model, dataset, batch_size=batch, indices=tuple(range(n)))
    p = plan(spec, bundle=bundle, data_dir=data_dir)
    runner = BatchRunner(WORKERS["predict"](spec_model, p.params, bundle=bundle), p.source, batch)
    t = {"read": 0.0, "preprocess": 0.0, "model": 0.0, "post": 0.0}
    nb = 0
    from analysis.core.jobs import heavy_job
    with heavy_job(bundle.device):
        _costs(p, runner, bundle, n, batch, t)
        nb = max(1, -(-n // batch) - 1)
    return {k: v / nb for k, v in t.items()}


def _costs(p, runner, bundle, n: int, batch: int, t: dict) -> None:
    for a in range(0, n, batch):
        rows = slice_rows(p.rows, a, min(n, a + batch))
        t0 = time.perf_counter()
        images, _, _ = runner.reader.read(rows)
        t1 = time.perf_counter()
        crops = np.stack(runner.cropper(images))           # the executor's batched geometry
        x = bundle.preprocess.normalize(bundle.preprocess.to_unit(crops)).to(bundle.device)
        _sync(bundle.device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            logits = bundle.model(x).float().cpu()
        t3 = time.perf_counter()
        probs = logits.softmax(1)
        tp, ti = probs.topk(5, dim=1)
        to_arrow({"index": rows["index"], "path": rows["path"], "label": rows["label"],
                  "pred": ti[:, 0].numpy(), "confidence": tp[:, 0].numpy(), "top_ids": ti.numpy(),
                  "top_probs": tp.numpy()})
        t4 = time.perf_counter()
        if a:                                   # first batch = warm-up
            t["read"] += t1 - t0
            t["preprocess"] += t2 - t1
            t["model"] += t3 - t2
            t["post"] += t4 - t3


def ray_vs_local(spec_model: ModelSpec, dataset, n: int, batch: int, chunk: int | None, device,
                 data_dir: Path) -> dict:
    """The same ``predict`` job in-process and on an embedded Ray through every way of
    analysis.dataset.ray_backend, in this order: Ray Data's first job right after
    ``ray.init`` (tasks; the worker processes import torch and build the model), a later
    Ray Data job (the same processes, the model kept), the warm pool's first (cold) job and
    its later jobs, and Ray Data on an actor pool of the job (the GPU path, actors started
    per job). ``ray.init`` is timed apart."""
    import ray

    from analysis.dataset import ray_backend
    spec = JobSpec("predict", spec_model, dataset, batch_size=batch, indices=tuple(range(n)))
    bundle = load_bundle(spec_model, device=device)
    run(JobSpec("predict", spec_model, dataset, batch_size=batch, indices=tuple(range(batch))),
        bundle=bundle, data_dir=data_dir, force=True)                     # warm-up
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)          # in-process gets every core, like Ray's workers together
    try:
        t_local = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            run(spec, engine="local", bundle=bundle, data_dir=data_dir, force=True, chunk_size=chunk)
            t_local = min(t_local, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ray_backend.ensure_ray()            # as the app starts it: embedded, idle workers import torch
    t_init = time.perf_counter() - t0

    def on_ray(pipeline: str, warm: bool, actors: bool | None = None) -> tuple[float, float, dict]:
        """(seconds, seconds to the first chunk, meta) of one job through ``pipeline``."""
        stamps = []
        t0 = time.perf_counter()
        r = run(spec, engine="ray", data_dir=data_dir, force=True, chunk_size=chunk, ray_pipeline=pipeline,
                ray_data_actors=actors, progress=lambda d, total: stamps.append(time.perf_counter()))
        dt = time.perf_counter() - t0
        assert r.complete and r.n_rows == n and r.meta["ray_pipeline"] == pipeline and r.meta["ray_warm"] == warm
        return dt, stamps[1] - t0, r.meta

    try:
        t_data, data_first, m1 = on_ray("data", False)
        data_later = [on_ray("data", False) for _ in range(2)]
        t_data2 = min(t for t, _, _ in data_later)
        t_cold, cold_first, meta = on_ray("pool", False)
        (pool,) = ray_backend._POOLS.values()
        infos = ray.get([a.info.remote() for a in pool.actors])
        t_warm = min(on_ray("pool", True)[0] for _ in range(2))
        t_actors, actors_first, _ = on_ray("data", False, actors=True)     # shuts the idle pool down first
        # a fresh Ray, its workers prepared first as the audit page does when Ray is chosen
        ray_backend.shutdown_pools()
        ray.shutdown()
        ray_backend.ensure_ray()
        t0 = time.perf_counter()
        ray_backend.prestart(spec_model, pipeline="data", wait=True, batch_size=batch)
        t_prestart = time.perf_counter() - t0
        t_pre, _, m_pre = on_ray("data", False)
    finally:
        ray_backend.shutdown_pools()
        ray.shutdown()
    startup = {k: float(np.mean([i[k] for i in infos])) for k in ("import_torch_s", "import_convlens_s",
                                                                 "build_model_s")}
    chunk_text = (f"{chunk} images" if chunk else
                  f"the engines' defaults ({_default_chunk(n, batch, 'local')} images in-process, "
                  f"{_default_chunk(n, batch, 'ray')} on Ray)")
    out = {"n": n, "batch": batch, "chunk": chunk, "chunk_text": chunk_text, "local": n / t_local, "ray_data": n / t_data,
           "ray_data2": n / t_data2, "ray_actors": n / t_actors, "ray_cold": n / t_cold, "ray_warm": n / t_warm,
           "ray_init_s": t_init, "data_first_chunk_s": data_first, "actors_first_chunk_s": actors_first,
           "ray_first_chunk_s": cold_first, "data_s": t_data, "data2_s": t_data2, "actors_s": t_actors,
           "cold_s": t_cold, "warm_s": t_warm, "local_s": t_local, "workers": meta.get("ray_actors"),
           "prestart_s": t_prestart, "pre_s": t_pre, "ray_pre": n / t_pre, "pre_built": m_pre.get("ray_models_built"),
           "data_built": (m1.get("ray_models_built"), max(m.get("ray_models_built", 0) for _, _, m in data_later)),
           "data_same_processes": all(set(m.get("ray_processes", [])) <= set(m1.get("ray_processes", []))
                                      for _, _, m in data_later),
           "load": os.getloadavg()[0], **startup}
    print(f"Ray vs in-process ({n} images): in-process {out['local']:.1f} img/s ({t_local:.1f} s); Ray Data "
          f"first {t_data:.1f} s ({out['ray_data'] / out['local']:.2f}x), later {t_data2:.1f} s "
          f"({out['ray_data2'] / out['local']:.2f}x), models built {out['data_built']}, first after prestart "
          f"{t_pre:.1f} s ({out['ray_pre'] / out['local']:.2f}x); Ray Data actors "
          f"{t_actors:.1f} s ({out['ray_actors'] / out['local']:.2f}x); pool cold {t_cold:.1f} s "
          f"({out['ray_cold'] / out['local']:.2f}x), warm {t_warm:.1f} s ({out['ray_warm'] / out['local']:.2f}x); "
          f"ray.init {t_init:.1f} s; actor start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items()),
          flush=True)
    return out


def ray_markdown(rv: dict | None) -> str:
    """The Ray subsection of the benchmark (``rv``: :func:`ray_vs_local`'s figures)."""
    if not rv:
        return "Ray was not measured in this run (--no-ray)."
    first_init = rv["n"] / (rv["data_s"] + rv["ray_init_s"])
    other = rv["ray_first_chunk_s"] - rv["import_torch_s"] - rv["import_convlens_s"] - rv["build_model_s"]
    built_first, built_later = rv["data_built"]
    return f"""`predict` with EfficientNet-Lite0 over {rv['n']} JPEG photos (320×320, a manifest), batch {rv['batch']}, chunks of {rv['chunk_text']},
end to end (`run(...)` called → result committed); in-process with torch's {os.cpu_count()} threads, Ray
(embedded single-node, started as the app starts it: `ensure_ray`) with {rv['workers']} workers of one core and one
thread each, through every way the Ray backend runs in the same run, in this order: Ray Data's first job
right after `ray.init`, two more Ray Data jobs, the warm pool's first job, two more pool jobs, Ray Data
on an actor pool of the job (`ray_data_actors=True`, the path GPUs take; it shuts the idle pool down
first), then a new Ray whose workers are prepared before its first Ray Data job. Best of two runs for in-process, later Ray Data jobs and the warm pool; the others run once.
Both engines read the photos' crops from the data set's crop cache (the first in-process run
fills it; Ray's workers share it since 2026-11-30: before, they decoded every JPEG in every job).
Measured under load (load average {rv['load']:.1f} on the shared machine at the end of this part), so
compare the ratios, not the absolute figures:

| | seconds | images/s | vs in-process |
|---|---|---|---|
| in-process | {rv['local_s']:.1f} | {rv['local']:.1f} | 1.00× |
| **Ray Data** (`"data"`, default), first job right after `ray.init`: tasks; the worker processes build the model | {rv['data_s']:.1f} | {rv['ray_data']:.1f} | **{rv['ray_data'] / rv['local']:.2f}×** |
| **Ray Data**, later jobs: the same worker processes, the model kept | {rv['data2_s']:.1f} | {rv['ray_data2']:.1f} | **{rv['ray_data2'] / rv['local']:.2f}×** |
| **Ray Data**, first job on a fresh Ray whose workers were prepared first (`prestart(model, pipeline="data", batch_size=16)`, {rv["prestart_s"]:.1f} s: the model built and run once per worker, Ray Data started; the audit page starts it when Ray is chosen) | {rv['pre_s']:.1f} | {rv['ray_pre']:.1f} | **{rv['ray_pre'] / rv['local']:.2f}×** |
| warm pool (`"pool"`), first job on the model: actors start | {rv['cold_s']:.1f} | {rv['ray_cold']:.1f} | {rv['ray_cold'] / rv['local']:.2f}× |
| warm pool (`"pool"`), later jobs on the model: actors running | {rv['warm_s']:.1f} | {rv['ray_warm']:.1f} | {rv['ray_warm'] / rv['local']:.2f}× |
| Ray Data on an actor pool of the job (GPU path; actors start in every job) | {rv['actors_s']:.1f} | {rv['ray_actors']:.1f} | {rv['ray_actors'] / rv['local']:.2f}× |
| first Ray job of the process including `ray.init` (Ray Data) | {rv['data_s'] + rv['ray_init_s']:.1f} | {first_init:.1f} | {first_init / rv['local']:.2f}× |

Ray Data on CPUs runs each chunk as a task, and Ray reuses its idle worker processes for tasks;
each process keeps the model it built (`process_model`: at most two, freed after `KEEP_WARM_S` =
{ray_backend_keep_warm():.0f} s idle). Models built: {built_first} in the first job, at most {built_later} in a later one, {rv['pre_built']} in the job after
`prestart`; the
later jobs ran {"in the same worker processes" if rv["data_same_processes"] else "partly in other worker processes"}. Ray
does not reuse processes for actors, so an actor pool pays its start-up in every job: `ray.init`
{rv['ray_init_s']:.1f} s (GCS, raylet and agents; once per process), then in each actor importing torch
{rv['import_torch_s']:.1f} s, importing convlens' model loaders {rv['import_convlens_s']:.1f} s, building the model {rv['build_model_s']:.1f} s; the
first chunk finished {rv['actors_first_chunk_s']:.1f} s (Ray Data actors) and {rv['ray_first_chunk_s']:.1f} s (pool, first job) after the job
started (so about {max(0.0, other):.1f} s of process spawn, scheduling and the chunk itself in the pool), against
{rv['data_first_chunk_s']:.1f} s for Ray Data's tasks, whose idle workers had imported torch since `ray.init`. Ray's
workers can beat in-process here because two single-threaded processes use the two loaded cores
better than one process with torch's two-thread pool.

{ray_verdict(rv)}"""


def ray_verdict(rv: dict) -> str:
    """The goal's line: jobs on a running Ray against in-process (>= 0.7x on 2 cores); the
    one-time start of an embedded Ray reported apart."""
    later, pre, cold = rv["ray_data2"] / rv["local"], rv["ray_pre"] / rv["local"], rv["ray_data"] / rv["local"]

    def mark(r: float) -> str:
        return f"**{r:.2f}×** ({'meets' if r >= 0.7 else 'below'} the goal)"
    return (f"Goal ≥ 0.7× in-process on 2 cores, read as Ray's cost per job on a running Ray (the process "
            f"boundary, scheduling, the workers writing their own parts): later Ray Data jobs {mark(later)}, the "
            f"first job after `prestart` {mark(pre)}. Starting an embedded Ray is a one-time cost per app "
            f"process, reported apart: `ray.init` {rv['ray_init_s']:.1f} s, and the first job right after it "
            f"{cold:.2f}× (its workers still importing torch, Ray Data starting its internal actors, the models "
            "built); the audit page pays it before the first job by starting `prestart` as soon as Ray is chosen, "
            "and a cluster that is already running (`ray_address`) never pays it.")


def ray_backend_keep_warm() -> float:
    from analysis.dataset.ray_backend import KEEP_WARM_S
    return KEEP_WARM_S


def _previous_ray_text() -> str:
    """With --no-ray: the Ray subsection already in docs/benchmarks.md (marked as from an
    earlier run), so that an in-process rerun does not erase it."""
    import re

    from bench._report import DOC
    try:
        text = DOC.read_text()
    except OSError:
        return ""
    m = re.search(r"### Ray against in-process on this machine\n\n(.*?)\n### ", text, flags=re.S)
    if not m:
        return ""
    body = m.group(1).strip()
    note = "_(From an earlier run of this script: this run was made with --no-ray.)_"
    return body if body.startswith(note) else f"{note}\n\n{body}"


def measure(args) -> dict:
    """Run every part of the benchmark; returns its figures (JSON-serialisable). With
    ``args.json`` the figures are saved there after the in-process part and again at the end."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    t_start = time.perf_counter()
    lb, db = args.lite_batch, args.digits_batch
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        photos = DatasetRef("manifest", str(photo_manifest(data_dir / "photos", max(args.lite_images,
                                                                                      args.ray_images))))
        rows, costs, rv = [], {}, None
        if not args.only_ray:
            rows = executor_vs_floor(ModelSpec("digits"), "digits", args.digits_images, db, device, data_dir,
                                     args.digits_repeats, args.helper_threads)
            rows += executor_vs_floor(ModelSpec("default"), photos, args.lite_images, lb, device, data_dir,
                                      args.lite_repeats, args.helper_threads)
            costs = {"digits": per_batch_costs(ModelSpec("digits"), "digits", min(args.digits_images, 10 * db), db,
                                               device, data_dir),
                     "lite": per_batch_costs(ModelSpec("default"), photos, args.lite_images, lb, device, data_dir)}
            for k, c in costs.items():
                print(k, {a: f"{v * 1000:.1f} ms" for a, v in c.items()}, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(_figures(args, device, rows, costs, None, t_start), indent=1))
        if not args.no_ray:
            rv = ray_vs_local(ModelSpec("default"), photos, args.ray_images, lb, args.ray_chunk, device, data_dir)
    data = _figures(args, device, rows, costs, rv, t_start)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    print(f"total {data['total']:.0f} s (load average {data['load']:.1f})")
    return data


def _figures(args, device, rows, costs, rv, t_start) -> dict:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {"rows": rows, "costs": costs, "rv": rv, "total": time.perf_counter() - t_start, "load": load,
            "machine": machine(),
            "device": str(device), "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                    else None),
            "torch_threads": torch.get_num_threads(), "threads_arg": args.threads,
            "decode_threads": decode_threads(device), "helper_threads": args.helper_threads,
            "omp": os.environ.get("OMP_NUM_THREADS", "unset"), "cpu_count": os.cpu_count(),
            "lite_batch": args.lite_batch, "digits_batch": args.digits_batch}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--digits-images", type=int, default=1797)
    ap.add_argument("--lite-images", type=int, default=48)
    ap.add_argument("--ray-images", type=int, default=512)
    ap.add_argument("--digits-batch", type=int, default=64)
    ap.add_argument("--lite-batch", type=int, default=16, help="EfficientNet-Lite0's batch (the Ray part's too)")
    ap.add_argument("--digits-repeats", type=int, default=15,
                    help="interleaved (floor, job) pairs for the digits (default 15: a digits job takes 0.2 s, so the median needs many pairs on a noisy machine)")
    ap.add_argument("--lite-repeats", type=int, default=5)
    ap.add_argument("--helper-threads", type=int, default=1,
                    help="CONVLENS_DECODE_THREADS of the last column's first pass (default 1)")
    ap.add_argument("--ray-chunk", type=int, default=None,
                    help="images per chunk in the Ray comparison (default: each engine's default chunk size)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--only-ray", action="store_true",
                    help="measure only Ray against in-process and print its Markdown (docs are not written)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in-process (default: torch's)")
    ap.add_argument("--json", default=None, help="also save the figures to this JSON file")
    ap.add_argument("--render", default=None,
                    help="measure nothing: write docs/benchmarks.md's section from a JSON file saved by --json "
                         "(e.g. on a GPU machine)")
    args = ap.parse_args()
    if args.render:
        data = json.loads(Path(args.render).read_text())
    else:
        data = measure(args)
        if args.only_ray:
            print(ray_markdown(data["rv"]) if data["device"] == "cpu" else gpu_ray_markdown(data))
            return
        if args.no_write:
            return
    if data["device"].startswith("cuda"):
        write_section("dataset_audit_gpu", gpu_body(data))
    else:
        write_section("dataset_audit", cpu_body(data))


def _mib(n: int) -> str:
    """Bytes as MiB with the digits that show it (0.016, 0.25, 20.0)."""
    m = n / 2**20
    return f"{m:.1f}" if m >= 10 else f"{m:.2f}" if m >= 0.1 else f"{m:.3f}"


def layer_markdown(rows: list[dict]) -> str:
    """The Grad-CAM rows' second floor: the same forward + backward with the graph starting at
    the layer (what the executor runs), and the memory the backward keeps."""
    gc = [r for r in rows if "floor_layer" in r]
    if not gc:
        return ""
    table = "\n".join(
        f"| {r['model']} | {r['batch']} | {r['floor']:.1f} | {r['floor_layer']:.1f} | **{r['floor_layer_speedup']:.2f}×** | "
        f"{_mib(r['saved_bytes'])} → {_mib(r['saved_bytes_layer'])} | {r['cold_ratio_layer']:.2f}× | "
        + (f"{r['warm_ratio_layer']:.2f}× |" if r["cached"] else "— |") for r in gc)
    return f"""**Grad-CAM's graph starts at the layer.** The floor above is the standard forward + backward:
the input requires grad, so the whole forward records the autograd graph (how Captum's
`LayerGradCam` and pytorch-grad-cam run it). The executor's Grad-CAM (and the Saliency page's,
and CRAFT's importance) runs the network before the layer without a graph (`graph_from`,
analysis/core/hooks.py: the layer's output becomes a leaf, grad mode goes on for the rest of
the forward): the same values and gradients, bit for bit (tests/core/test_hooks.py), no tensors
kept for a backward that never goes there, max-pooling without its indices. Floors measured
in the same interleaved pairs; the last two columns compare the job with the floor that does
the executor's own model work, so they show the cost of the executor's machinery alone
(reading, decoding, converting, the maps' statistics, Parquet):

| model | batch | standard floor images/s | floor from the layer images/s | speed-up | kept for the backward per batch, MiB | first pass / floor from the layer | cached / floor from the layer |
|---|---|---|---|---|---|---|---|
{table}
"""


def cpu_body(data: dict) -> str:
    """docs/benchmarks.md's section for a CPU run."""
    rows, costs, rv, load, total = data["rows"], data["costs"], data["rv"], data["load"], data["total"]
    device = data["device"]
    def ratio(r, k):
        return r[k + "_ratio"]
    table = "\n".join(f"| {r['model']} | {r['kind']} | {r['n']} | {r['batch']} | {r['floor']:.1f} | "
                      f"{r['cold']:.1f} | **{ratio(r, 'cold'):.2f}×** | "
                      + (f"{r['warm']:.1f} | **{ratio(r, 'warm'):.2f}×** |" if r["cached"] else "— | — |")
                      + f" {r['cold_cpu']:.2f}× / {r['warm_cpu']:.2f}× | {ratio(r, 'helpers'):.2f}× |"
                      for r in rows)
    lc, dc = costs["lite"], costs["digits"]
    below = [r for r in rows if ratio(r, "cold") < 0.8]
    below_warm = [r for r in rows if r["cached"] and ratio(r, "warm") < 0.8]
    verdict = ("Every job meets the goal on its first pass in this run." if not below else
               "First pass below the goal: " + ", ".join(f"{r['model']} {r['kind']} ({ratio(r, 'cold'):.2f}×)"
                                                         for r in below) + ".")
    verdict += (" With the crops cached every job meets it." if not below_warm else
                " With the crops cached, below: " + ", ".join(f"{r['model']} {r['kind']} ({ratio(r, 'warm'):.2f}×)"
                                                              for r in below_warm) + ".")
    side_d = (dc['preprocess'] + dc['post']) / (dc['preprocess'] + dc['post'] + dc['model'])
    side_l = (lc['read'] + lc['preprocess'] + lc['post']) / (lc['read'] + lc['preprocess'] + lc['post'] + lc['model'])
    helpers_worse = [r for r in rows if ratio(r, "helpers") < ratio(r, "cold")]
    verdict += (" Besides the model, a job converts every batch (uint8 crops → normalised float), post-processes "
                "it (softmax, top-k or the maps' statistics, Arrow, Parquet) and, on a first pass, reads, decodes "
                f"and resizes every image: {side_d:.0%} of a digits batch's CPU time and {side_l:.0%} of an "
                "EfficientNet-Lite0 batch's here (per-batch costs below, one stage after the other). With "
                "torch's thread pool on every core, the executor does that work in the model's own thread, "
                "several batches at a time for small inputs; helper threads would have to share the model's "
                "cores, and each of the model's parallel loops then waits for its slowest thread. The last column "
                "runs the same first pass with a prepare thread and a writer thread beside the model "
                f"(`CONVLENS_DECODE_THREADS=1`): slower than the default for {len(helpers_worse)} of {len(rows)} "
                "jobs in this run. Helper threads are the default where they do not compete with the model: on "
                "a GPU, or when torch is given fewer threads than the cores (`decode_threads`, docs/dataset.md).")
    verdict += (f" Measured under load average {load:.1f} on {data['cpu_count']} cores; on this shared machine, runs "
                "a few minutes apart differed by up to about 0.1 in these ratios.")
    above = [r for r in rows if r["cold_cpu"] > 1.1 or r["warm_cpu"] > 1.1]
    lighter = [r for r in above if r.get("floor_layer_speedup", 1.0) > 1.1]
    other = [r for r in above if r not in lighter]
    if lighter:
        verdict += (" Ratios above 1 for " + ", ".join(f"{r['model']} {r['kind']}" for r in lighter)
                    + ": the executor's Grad-CAM does less model work than the standard floor (its graph "
                    "starts at the layer, below).")
    if other:
        verdict += (" Ratios above 1, in CPU time too (" + ", ".join(f"{r['model']} {r['kind']}" for r in other)
                    + "), mean the floor loop took longer than the same forward + backward inside the "
                    "executor on equal batches; read them as about 1.")

    def cost_row(name, c, b):
        tot = sum(c.values())
        return (f"| {name} (batch {b}) | {c['read'] * 1000:.1f} | {c['preprocess'] * 1000:.1f} | "
                f"{c['model'] * 1000:.1f} | {c['post'] * 1000:.1f} | {b / tot:.0f} | "
                f"{b / (tot - c['model']):.0f} |")
    cpu_side_lite = data['lite_batch'] / (sum(lc.values()) - lc["model"])
    ray_text = ray_markdown(rv) if rv else (_previous_ray_text() or "Ray was not measured in this run (--no-ray).")
    body = f"""## Data-set jobs (bench/dataset_audit.py)

Machine: {data['machine']}; device `{device}`; load average {load:.1f} during the run
(a shared machine loaded by other engineers' jobs: absolute figures vary from run to run, the
ratios to the floor measured in the same run hold). Total {total:.0f} s.
Threads: torch {data['torch_threads']} (`--threads {data['threads_arg'] or data['torch_threads']}`) for the model, in the executor and in the
floor alike. Helper threads of the executor by default: {data['decode_threads']} (`decode_threads`: the
cores torch leaves free on the CPU, cores − 1 on a GPU; `CONVLENS_DECODE_THREADS` overrides).
OMP_NUM_THREADS={data['omp']}.

### Executor against the model's floor, in-process

The floor is the same batches of already preprocessed tensors through the bare forward
(predict) or the standard forward + backward to the Grad-CAM layer (Grad-CAM; the graph from
the input, below the table for the executor's own), in the same process and run. The executor plans the job, reads and decodes the images, crops and normalises them,
runs the worker (top-k / the Grad-CAM maps and their mass statistics) and writes and commits
the Parquet parts; the previous result is removed before its clock starts. **First pass**:
the data set's crop cache is empty (the job fills it); **crops cached**: a later job on
the same data set and preprocessing reads the model's view of each image from the cache
instead of decoding it (`CropCache`, docs/dataset.md). Each job run is interleaved with a
floor run ({rows[0]['repeats']} pairs for the digits, {rows[-1]['repeats']} for EfficientNet-Lite0); images/s are medians, ratios
the median over the pairs of floor time / job time (robust to the load drifting during the
run). Goal ≥ 0.8× (wall clock). The next column compares CPU time (all threads of the
process) the same way; the last one is the first pass again with helper threads forced on.

| model | job | images | batch | floor images/s | first pass images/s | first pass / floor | crops cached images/s | cached / floor | CPU time: floor / job (first pass / cached) | first pass with helper threads / floor |
|---|---|---|---|---|---|---|---|---|---|---|
{table}

{verdict}

{layer_markdown(rows)}
### Ray against in-process on this machine

{ray_text}

### Per-batch costs and N GPU workers

Mean milliseconds per batch, in-process, one stage after the other (read + decode =
ImageReader; preprocess = the executor's batched resize + crop, then uint8 → normalised
float; post = softmax, top-k, Arrow):

| model | read + decode | preprocess | model | post | images/s | images/s without the model |
|---|---|---|---|---|---|---|
{cost_row('EfficientNet-Lite0', lc, data['lite_batch'])}
{cost_row('Digits CNN', dc, data['digits_batch'])}

Estimate for N GPU actors (`num_gpus=1` each): a GPU runs EfficientNet-Lite0 far faster than
the CPU side of a batch, so each actor is bounded by its CPU side, about
**{cpu_side_lite:.0f} images/s per actor per CPU core** here (the last column), and N actors give about
N × that (each actor reads and writes its own chunks; the driver only receives one status row per
chunk), until the shared file system's read bandwidth or the images' decode cost is the limit.
Giving each GPU actor more CPU cores (`num_cpus`) or pre-resized images raises the per-actor
figure; the fixed start-up (above) is paid once per model (the warm actor pool), not per job.
"""
    return body


def gpu_ray_markdown(data: dict) -> str:
    """The Ray subsection of a GPU run: Ray's GPU actors (``num_gpus=1``) against in-process
    on the same GPU."""
    rv = data["rv"]
    if not rv:
        return "Ray was not measured in this run."
    loc = rv["local"]

    def line(name: str, secs: float, rate: float) -> str:
        return f"| {name} | {secs:.2f} | {rate:.0f} | **{rate / loc:.2f}×** |"
    return f"""`predict` with EfficientNet-Lite0 over {rv['n']} JPEG photos (320×320, a manifest), batch {rv['batch']},
chunks of {rv['chunk_text']}, end to end; embedded single-node Ray (`ensure_ray`: all
{data['cpu_count']} CPUs and the GPU); each actor gets one GPU (`num_gpus=1`, one actor per GPU) and one CPU
of Ray's accounting, and decodes with its own helper threads like in-process:

| | seconds | images/s | vs in-process |
|---|---|---|---|
| in-process (best of two) | {rv['local_s']:.2f} | {loc:.0f} | 1.00× |
{line("Ray Data (`data`, the default): an actor pool of the job, first job after `ray.init`", rv['data_s'], rv['ray_data'])}
{line("Ray Data, later jobs (best of two; actors start in every job)", rv['data2_s'], rv['ray_data2'])}
{line("Ray Data, first job on a fresh Ray after `prestart`", rv['pre_s'], rv['ray_pre'])}
{line("warm pool (`pool`), first job on the model: the actor starts", rv['cold_s'], rv['ray_cold'])}
{line("warm pool, later jobs (best of two): the actor and its model kept", rv['warm_s'], rv['ray_warm'])}

`ray.init` {rv['ray_init_s']:.1f} s (once per process); a GPU actor's start-up: importing torch
{rv['import_torch_s']:.1f} s, convlens' model loaders {rv['import_convlens_s']:.1f} s, building the model on the GPU
{rv['build_model_s']:.1f} s. On a GPU the model's time per image is small, so a job that starts its actors
pays that start-up against a few seconds of work; the warm pool (the page keeps it for
`KEEP_WARM_S`) does not."""


def gpu_body(data: dict) -> str:
    """docs/benchmarks.md's section for a run on a CUDA device (``--render`` writes it from
    the JSON saved there)."""
    rows, costs = data["rows"], data["costs"]
    h = data["helper_threads"]
    table = "\n".join(
        f"| {r['model']} | {r['kind']} | {r['n']} | {r['batch']} | {r['floor']:.0f} | {r['cold']:.0f} | "
        f"**{r['cold_ratio']:.2f}×** | "
        + (f"{r['warm']:.0f} | **{r['warm_ratio']:.2f}×** |" if r["cached"] else "— | — |")
        + f" {r['helpers_ratio']:.2f}× |" for r in rows)
    below = [r for r in rows if r["cold_ratio"] < 0.8]
    below_warm = [r for r in rows if r["cached"] and r["warm_ratio"] < 0.8]
    verdict = ("Every job meets the goal (≥ 0.8× the floor) on its first pass." if not below else
               "First pass below the goal (≥ 0.8× the floor): " + ", ".join(
                   f"{r['model']} {r['kind']} ({r['cold_ratio']:.2f}×)" for r in below) + ".")
    verdict += (" With the crops cached every job meets it." if not below_warm else
                " With the crops cached, below: " + ", ".join(f"{r['model']} {r['kind']} ({r['warm_ratio']:.2f}×)"
                                                              for r in below_warm) + ".")
    lc, dc = costs["lite"], costs["digits"]
    lb, db = data["lite_batch"], data["digits_batch"]

    def cost_row(name, c, b):
        tot = sum(c.values())
        return (f"| {name} (batch {b}) | {c['read'] * 1000:.2f} | {c['preprocess'] * 1000:.2f} | "
                f"{c['model'] * 1000:.2f} | {c['post'] * 1000:.2f} | {b / c['model']:.0f} | "
                f"{b / (tot - c['model']):.0f} |")
    gpu_rate = lb / lc["model"]
    cpu_rate = lb / (sum(lc.values()) - lc["model"])        # one core: read, decode, resize, post
    scale = []
    for cores in (1, 4, 8, 16):
        per = min(gpu_rate, cores * cpu_rate)
        scale.append(f"| {cores} | {per:.0f} | " + " | ".join(f"{n * per:,.0f}" for n in (1, 2, 4, 8, 32)) + " |")
    scale_rows = "\n".join(scale)
    cores_to_feed = gpu_rate / cpu_rate
    return f"""## Data-set jobs on a GPU (bench/dataset_audit.py --device cuda)

Device **{data['device_name']}** (`{data['device']}`); machine: {data['machine']}.
Measured there (a device lent to this session for minutes; its figures written here by
`bench/dataset_audit.py --render` from the JSON the run saved), {data['total']:.0f} s in all. The same
measurement as the CPU section above: the executor's jobs, end to end, against the floor of the
same batches of preprocessed tensors already on the GPU (forward, or forward + backward to the
Grad-CAM layer; the clock waits for the GPU). Helper threads by default on a GPU:
{data['decode_threads']} (`decode_threads`: cores − 1, at most 8); the last column runs the first pass with
`CONVLENS_DECODE_THREADS={h}` instead. Medians over interleaved pairs.

| model | job | images | batch | floor images/s | first pass images/s | first pass / floor | crops cached images/s | cached / floor | first pass with {h} helper threads / floor |
|---|---|---|---|---|---|---|---|---|---|
{table}

{verdict}

{layer_markdown(rows)}
### Per-batch costs on the GPU machine and N GPU workers

Mean milliseconds per batch, one stage after the other on one core (read + decode, the batched
resize + crop and uint8 → float incl. the copy to the GPU, the model on the GPU, softmax / top-k /
Arrow on the CPU):

| model | read + decode | preprocess | model (GPU) | post | images/s of the GPU alone | images/s of one core without the model |
|---|---|---|---|---|---|---|
{cost_row('EfficientNet-Lite0', lc, lb)}
{cost_row('Digits CNN', dc, db)}

On this GPU EfficientNet-Lite0 takes {lc['model'] * 1000 / lb:.3f} ms per image and one CPU core's side of a batch
{1000 / cpu_rate:.2f} ms per image: one GPU needs about **{cores_to_feed:.1f} cores** decoding JPEGs to keep busy. Estimate
for N GPU workers (`num_gpus=1` each, each with its cores for decoding; images/s = N × min(GPU rate,
cores × one core's rate); each actor reads and writes its own chunks and the driver receives one status
row per chunk, so the workers do not share a bottleneck until the file system's read bandwidth):

| cores per GPU worker | images/s per worker | N = 1 | 2 | 4 | 8 | 32 |
|---|---|---|---|---|---|---|
{scale_rows}

With the crops cached (a later job on the same data set, or pre-resized images) the CPU side
shrinks to reading the crop and converting it, and the GPU becomes the limit sooner.

### Ray on the GPU

{gpu_ray_markdown(data)}
"""

if __name__ == "__main__":
    main()
