"""The Ray backend of the executor: Ray Data per job (default) or a warm actor pool.

Both cut a job the same way and run the same code on the workers::

    input.parquet (one row group per chunk, in the job folder)
      ->  worker processes that build the model once (``num_gpus=1`` each on GPU clusters,
          else ``num_cpus=1`` and one torch thread) and run whole chunks
      ->  each writes part-<chunk>.parquet into the job's folder (data directory)
      ->  the driver receives one tiny status row per chunk: progress, Stop, skipped

``ray_pipeline = "data"`` (default, config / ``run(..., ray_pipeline=)`` / CLI
``--ray-pipeline``): **Ray Data**, Ray's batch-inference pattern::

    ray.data.from_items([{"chunk": c}, ...])
      ->  CPU:  map_batches(data_chunks, fn_kwargs={job, model spec + hash, ...},
                            compute=TaskPoolStrategy(size=n), num_cpus=1, batch_size=1,
                            max_retries=RETRIES)
          GPU:  map_batches(DataChunkActor, fn_constructor_kwargs={job, model spec + hash, ...},
                            compute=ActorPoolStrategy(size=n), num_gpus=1, batch_size=1)
      ->  iter_batches over the status rows (progress; Stop ends the iteration)

  On CPUs the chunks run as Ray **tasks**, and Ray reuses its idle worker processes for
  tasks (across chunks and across jobs; it does not for actors, whose processes are new
  each time). Each process keeps the models it built (:func:`process_model`: keyed by
  model spec + weights hash + device + threads + ``CONVLENS_*`` settings + data / cache
  directories; at most :data:`MODELS_PER_PROCESS`, least recently used out; a model idle
  for ``keep_warm_s`` is freed by a daemon thread), so only the first job on a model pays
  for importing torch and building it, and later jobs start computing at once. The job's
  settings are applied to the process before every chunk, so two cached models with
  different settings never see each other's. An embedded Ray started by
  :func:`ensure_ray` imports torch in its idle workers at once (:func:`warm_workers`), and
  :func:`prestart` can build a model there before the first job.
  On GPUs Ray Data keeps an actor pool for the job (the actors start with the job and end
  with it): a reused task process cannot switch its CUDA device safely, and one actor per
  GPU is how Ray Data schedules GPUs.
  Ray Data schedules the chunks on the cluster, retries them and streams the status rows;
  this suits one-off jobs, clusters and ``ray job submit``. A Ray Data job first shuts
  down idle warm pools (below), whose CPUs / GPUs its workers need.

``ray_pipeline = "pool"``: a **warm pool** of plain Ray actors (:class:`ChunkActor`) kept
between jobs, keyed by model spec + weights hash. The next job on the same model (any kind,
parameters or data set) reuses the running actors and starts computing at once; the driver
hands out chunk numbers one at a time per actor (pull-based). A pool idle for
``keep_warm_s`` seconds (default :data:`KEEP_WARM_S`) is shut down by a reaper thread, a
job on another model first shuts down idle pools of other models, and
:func:`shutdown_pools` (also at interpreter exit) ends them all; :func:`prestart` starts a
model's pool before its first job. The actors are created before the driver writes the
job's input, so their start-up overlaps it. This suits interactive sessions that run many
jobs on one model.

Common to both:

* **The model travels by spec + weights hash**, never as a pickled object:
  ``ChunkActor.__init__`` builds the bundle once from the model's JSON spec and checks the
  weights hash the job was planned with. The job kind travels as the ``"module:Class"``
  path of its Worker (:meth:`analysis.dataset.workers.WorkerRegistry.path`), imported by
  the actor on first use, so every registered kind (``crp`` from analysis.relevance, a
  test's own worker) runs on Ray. Workers must see the images and the data directory under
  the same paths as the driver (a shared file system).
* Each worker reads its chunk's rows from ``input.parquet`` (row group = chunk) and runs
  the same :class:`analysis.dataset.runner.BatchRunner` loop as the in-process backend,
  batch for batch, so both backends compute the same bits (on CPU workers without helper
  threads, ``threads=0``: the model already uses the worker's one core). It writes the
  part file itself, atomically: results never flow through the driver, and a job stopped
  or killed part-way resumes from the chunks already written. (Ray Data's
  ``write_parquet`` names files itself and gives no per-chunk progress or Stop; one part
  layout keeps one resume rule and one reader for every engine.)
* A killed actor is restarted and its chunk retried (``max_restarts`` /
  ``max_task_retries``, ``RETRIES`` each), a Ray Data task whose worker process died is
  retried (``max_retries``, ``RETRIES``; Ray Data's own default retries forever); a chunk
  that still fails makes the job fail with :class:`analysis.dataset.runner.JobError` (a
  warm pool is then discarded). Never a silent hole: ``finalize`` also checks that every
  chunk's part exists and accounts for every image.
* **Stop**: no further chunk is started; the driver returns once the chunks it is waiting
  on report back (pool: at most one per actor; Ray Data: the iteration ends and the
  dataset's execution is shut down). Nothing is marked complete.
* Without ``ray_address`` (config / ``RAY_ADDRESS``) and without a running Ray, an
  embedded single-node Ray is started (``ray.init(num_cpus=..., include_dashboard=False)``,
  then one task per CPU that imports torch in the idle workers, not waited for) and
  ``on_info`` says so.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Callable

import numpy as np

from analysis.core.config import RAY_PIPELINES, get_config, set_config
from analysis.core.errors import ModelLoadError, ParameterError

RETRIES = 3
_WARMING: list = []            # the embedded Ray's import tasks (prestart lets them finish first)
KEEP_WARM_S = 600.0            # an idle pool is shut down (a worker's cached model freed) after this many seconds
_INIT_LOCK = threading.Lock()


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               on_info: Callable[[str], None] | None = None) -> str:
    """Connect to Ray (once per process) and return a one-line description.

    Args:
        address: a Ray cluster address (``ray://host:10001`` or ``host:6379``); default the
            configured ``ray_address`` or ``RAY_ADDRESS``. None and no running Ray: an
            embedded single-node Ray is started.
        num_cpus: CPUs of the embedded Ray (default: all of this machine's).
        on_info: receives the description when Ray was started or connected now.
    """
    import ray
    with _INIT_LOCK:
        if ray.is_initialized():
            return "Ray is running in this process"
        address = address or get_config().ray_address or os.environ.get("RAY_ADDRESS")
        embedded = 0
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
                info = f"Connected to the Ray cluster at {address}."
            else:
                n = int(num_cpus or os.cpu_count() or 1)
                ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
                info = (f"Started an embedded single-node Ray ({n} CPUs) in this process; set ray_address "
                        "(or RAY_ADDRESS) to use a cluster.")
                embedded = n
        except Exception as e:
            from analysis.dataset.runner import JobError
            raise JobError(f"Cannot start or reach Ray{f' at {address}' if address else ''}: "
                           f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from e
        if embedded:
            try:                # torch imported in the idle workers while the first job is prepared
                _WARMING[:] = warm_workers(n=embedded)
            except Exception:  # noqa: BLE001 - best effort: the first job then imports it itself
                _WARMING.clear()
    if on_info:
        on_info(info)
    return info


def cluster_gpus() -> float:
    """GPUs of the connected Ray cluster (0 when unknown)."""
    import ray
    try:
        return float(ray.cluster_resources().get("GPU", 0))
    except Exception:  # noqa: BLE001 - no cluster or an old Ray: no GPUs
        return 0.0


class ChunkActor:
    """Builds the model once, then runs whole chunks of any job on that model: a warm
    pool's Ray actor, and the model a Ray Data worker process caches (:func:`process_model`).

    Args:
        model_spec: the model's JSON spec dict (:func:`analysis.dataset.workers.model_spec_dict`).
        model_id: the weights hash every job on this actor was planned with; an actor that
            builds different weights refuses to start (ModelLoadError).
        device: ``"cpu"`` or ``"cuda"``.
        threads: torch threads (0 = torch's default).
        env: the driver's ``CONVLENS_*`` settings (limits, ...).
        data_dir, cache_dir: the driver's data and cache directories.
    """

    def __init__(self, model_spec: dict, model_id: str, device: str, threads: int = 0, env: dict | None = None,
                 data_dir: str = "", cache_dir: str = ""):
        t0 = time.perf_counter()
        import torch
        t1 = time.perf_counter()
        self.settings = {"env": dict(env or {}), "data_dir": data_dir, "cache_dir": cache_dir,
                         "threads": int(threads)}
        self.apply_settings()
        from analysis.core.models.loaders import load_bundle
        from analysis.dataset.workers import model_spec_from
        t2 = time.perf_counter()
        spec = self.spec = model_spec_from(model_spec)
        self.bundle = load_bundle(spec, device=torch.device(device))
        if model_id and self.bundle.model_id != model_id:
            raise ModelLoadError(
                f"This Ray worker built {spec.label()} with weights {self.bundle.short_id}, but the job was "
                f"planned with {model_id[:12]}: the weights differ between machines.")
        self.device = device
        self._runners: OrderedDict = OrderedDict()
        self._inputs: OrderedDict = OrderedDict()
        self.timing = {"import_torch_s": t1 - t0, "import_convlens_s": t2 - t1,
                       "build_model_s": time.perf_counter() - t2, "pid": os.getpid()}

    def apply_settings(self) -> None:
        """Apply this actor's process-wide settings (its job's ``CONVLENS_*`` environment,
        data and cache directories, torch threads) to the process: at construction and
        before every chunk, because a Ray task worker process may hold models built for
        other settings (:func:`process_model`). Takes no arguments."""
        apply_process_settings(**self.settings)

    def info(self) -> dict:
        """Start-up timings (seconds) and the process id."""
        return dict(self.timing)

    def _runner(self, job: dict):
        from analysis.dataset.runner import BatchRunner
        from analysis.dataset.workers import resolve_worker
        key = json.dumps([job["worker"], job["params"], job["batch_size"], job["source"]], sort_keys=True)
        r = self._runners.get(key)
        if r is None:
            cls = resolve_worker(job["worker"])
            worker = cls(self.spec, job["params"], device=self.device, bundle=self.bundle)
            # one CPU core per CPU worker: the model uses it, so no decode / writer threads
            # (they would only compete with it); GPU actors keep the runner's pipeline
            r = self._runners[key] = BatchRunner(worker, job["source"], int(job["batch_size"]),
                                                 threads=0 if self.device == "cpu" else None)
            while len(self._runners) > 4:
                self._runners.popitem(last=False)
        self._runners.move_to_end(key)
        return r

    def _rows(self, input_path: str, chunk: int) -> dict:
        import pyarrow.parquet as pq
        st = os.stat(input_path)
        key = (input_path, st.st_ino, st.st_size, st.st_mtime_ns)     # a rewritten input is read anew
        pf = self._inputs.get(key)
        if pf is None:
            pf = self._inputs[key] = pq.ParquetFile(input_path)
            while len(self._inputs) > 4:
                self._inputs.popitem(last=False)
        t = pf.read_row_group(int(chunk))
        out = {}
        for name in t.column_names:
            col = t.column(name).to_numpy(zero_copy_only=False)
            out[name] = col.astype(object) if col.dtype.kind in "OUS" else col
        return out

    def run(self, job: dict, chunk: int) -> tuple[int, int, int]:
        """Compute one chunk of ``job`` and write its part file; returns (chunk, rows, skipped).

        Args:
            job: worker path, normalised params, batch size, image source, input and output
                paths (plain JSON-like values, built by :func:`run_ray`).
            chunk: the chunk number (= row group of the job's input file).
        """
        from analysis.dataset.runner import write_part
        self.apply_settings()
        runner = self._runner(job)
        crops = self._crops(job, runner)
        runner.crops = crops
        try:
            table, sk = runner.run_chunk(self._rows(job["input_path"], chunk))
        finally:
            runner.crops = None
            if crops is not None:
                crops.close()
        write_part(Path(job["out_dir"]), int(chunk), table)
        return int(chunk), int(table.num_rows), len(sk)

    @staticmethod
    def _crops(job: dict, runner):
        """The data set's crop cache for this chunk (opened per chunk: a few file opens, and
        no file held between jobs), or None: not asked for, a worker that needs the decoded
        images, or a cache folder this machine cannot use."""
        from analysis.dataset.manifest import CropCache
        c = job.get("crops")
        if not c or runner.raw:
            return None
        return CropCache.open_hash(str(c["dataset_hash"]), int(c["size"]), runner.pre)


class DataChunkActor(ChunkActor):
    """Ray Data's callable class on GPU clusters (``map_batches`` with an actor pool): a
    :class:`ChunkActor` bound to one job, turning batches of chunk numbers into status rows
    (see :func:`data_chunks`).

    Args:
        job: the job (as for :meth:`ChunkActor.run`).
        **ctor: :class:`ChunkActor`'s arguments (model spec, weights hash, device, ...).
    """

    def __init__(self, job: dict, **ctor):
        super().__init__(**ctor)
        self.job = job
        self._fresh = True

    def __call__(self, batch: dict) -> dict:
        """Run the chunks of ``batch`` (column ``chunk``) and return their status columns.

        Args:
            batch: a numpy batch of Ray Data with a ``chunk`` column.
        """
        built, self._fresh = self._fresh, False
        return _status([self.run(self.job, c) for c in _chunks_of(batch)], built)


# --------------------------------------------------------------------------------------
# Ray Data on CPUs: tasks, and models cached per worker process
# --------------------------------------------------------------------------------------
MODELS_PER_PROCESS = 2            # models a Ray worker process keeps (least recently used out)


@dataclasses.dataclass(eq=False)
class _Cached:
    actor: ChunkActor
    keep_warm_s: float
    last_used: float = dataclasses.field(default_factory=time.monotonic)
    busy: int = 0


_MODELS: OrderedDict[str, _Cached] = OrderedDict()      # this worker process's built models
_MODELS_LOCK = threading.Lock()
_MODELS_BUILT = 0                                         # models built in this process so far
_SWEEPER: threading.Thread | None = None
_OWN_ENV: dict | None = None                              # this process's CONVLENS_* before any job's


def apply_process_settings(env: dict | None = None, data_dir: str = "", cache_dir: str = "", threads: int = 0) -> None:
    """Make one job's settings this process's: its ``CONVLENS_*`` variables (those a
    previous job set and this one does not are removed again; the process's own stay),
    the configuration re-read with its data and cache directories, and torch's threads.
    Cheap; called before every chunk in Ray workers.

    Args:
        env: the driver's ``CONVLENS_*`` variables.
        data_dir: the driver's data directory ("" keeps the configured one).
        cache_dir: the driver's cache directory ("" keeps the configured one).
        threads: torch threads (0 leaves torch's setting alone).
    """
    global _OWN_ENV
    if _OWN_ENV is None:
        _OWN_ENV = {k: v for k, v in os.environ.items() if k.startswith("CONVLENS_")}
    for k in [k for k in os.environ if k.startswith("CONVLENS_") and k not in _OWN_ENV and k not in (env or {})]:
        del os.environ[k]
    os.environ.update(_OWN_ENV)
    os.environ.update(env or {})
    set_config(None)
    cfg = get_config()
    set_config(dataclasses.replace(cfg, data_dir=Path(data_dir) if data_dir else cfg.data_dir,
                                   cache_dir=Path(cache_dir) if cache_dir else cfg.cache_dir))
    if threads:
        import torch
        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))


def process_model(ctor: dict, keep_warm_s: float = KEEP_WARM_S) -> tuple[_Cached, bool]:
    """This worker process's :class:`ChunkActor` for ``ctor`` (model spec + weights hash +
    device + threads + environment + directories), built on first use and kept for later
    chunks and later jobs: (cache entry, whether it was built now). The process keeps at
    most :data:`MODELS_PER_PROCESS` models (least recently used out) and frees a model idle
    for ``keep_warm_s`` seconds (a daemon thread). The settings of ``ctor`` are applied
    to the process either way.

    Args:
        ctor: :class:`ChunkActor`'s keyword arguments (:func:`_actor_args`).
        keep_warm_s: idle seconds before the model is freed.
    """
    global _MODELS_BUILT, _SWEEPER
    key = json.dumps(ctor, sort_keys=True, default=str)
    with _MODELS_LOCK:
        entry = _MODELS.get(key)
        if entry is not None:
            _MODELS.move_to_end(key)
            entry.last_used, entry.keep_warm_s = time.monotonic(), float(keep_warm_s)
    if entry is not None:
        entry.actor.apply_settings()
        return entry, False
    entry = _Cached(ChunkActor(**ctor), float(keep_warm_s))
    with _MODELS_LOCK:
        _MODELS[key] = entry
        _MODELS.move_to_end(key)
        while len(_MODELS) > MODELS_PER_PROCESS:
            _MODELS.popitem(last=False)
        _MODELS_BUILT += 1
        if _SWEEPER is None or not _SWEEPER.is_alive():
            _SWEEPER = threading.Thread(target=_sweep_models, name="convlens-ray-model-sweeper", daemon=True)
            _SWEEPER.start()
    return entry, True


def _sweep_models() -> None:
    """Free this process's models idle for longer than their ``keep_warm_s``; ends when
    none is left (:func:`process_model` starts it again)."""
    import gc
    global _SWEEPER
    while True:
        now = time.monotonic()
        with _MODELS_LOCK:
            old = [k for k, e in _MODELS.items() if not e.busy and now - e.last_used > e.keep_warm_s]
            for k in old:
                del _MODELS[k]
            waits = [e.keep_warm_s - (now - e.last_used) for e in _MODELS.values()]
            if not _MODELS:
                _SWEEPER = None
        if old:
            gc.collect()
        if not waits:
            return
        time.sleep(min(5.0, max(0.2, min(waits) + 0.05)))


def process_models() -> dict:
    """This process's model cache: ``{"pid", "built": models built so far, "models":
    [{"model", "data_dir", "env", "idle_s"}, ...]}`` (``env``: the job's ``CONVLENS_*``
    settings) (what a Ray worker holds; call it as a Ray
    task). Takes no arguments."""
    now = time.monotonic()
    with _MODELS_LOCK:
        models = [{"model": json.loads(k)["model_spec"], "data_dir": e.actor.settings["data_dir"],
                   "env": dict(json.loads(k).get("env") or {}),
                   "idle_s": 0.0 if e.busy else now - e.last_used} for k, e in _MODELS.items()]
        return {"pid": os.getpid(), "built": _MODELS_BUILT, "models": models}


def _chunks_of(batch: dict) -> list[int]:
    import numpy as np
    return [int(c) for c in np.asarray(batch["chunk"]).tolist()]


def _status(rows: list[tuple[int, int, int]], built: bool) -> dict:
    """Status columns of a batch of chunks: chunk, rows, skipped, the worker's pid and
    whether the model was built for it (on its first chunk)."""
    import numpy as np
    cols = {name: np.asarray([row[k] for row in rows], np.int64) for k, name in enumerate(("chunk", "rows", "skipped"))}
    cols["pid"] = np.full(len(rows), os.getpid(), np.int64)
    cols["built"] = np.asarray([bool(built) and k == 0 for k in range(len(rows))], np.int64)
    return cols


def data_chunks(batch: dict, job: dict, ctor: dict, keep_warm_s: float = KEEP_WARM_S) -> dict:
    """Ray Data's task function on CPUs (``map_batches`` with tasks): run the chunks of
    ``batch`` with this worker process's cached model (:func:`process_model`) and return
    their status columns (chunk, rows, skipped, pid, built).

    Args:
        batch: a numpy batch of Ray Data with a ``chunk`` column.
        job: the job (as for :meth:`ChunkActor.run`).
        ctor: :class:`ChunkActor`'s arguments.
        keep_warm_s: idle seconds before this process frees the model.
    """
    entry, built = process_model(ctor, keep_warm_s)
    with _MODELS_LOCK:
        entry.busy += 1
    try:
        rows = [entry.actor.run(job, c) for c in _chunks_of(batch)]
    finally:
        with _MODELS_LOCK:
            entry.busy -= 1
            entry.last_used = time.monotonic()
    return _status(rows, built)


def warm_process(ctor: dict | None = None, keep_warm_s: float = KEEP_WARM_S, batch_size: int = 0) -> dict:
    """Run in an idle Ray worker process (as a task): import torch, convlens's model
    loaders, the batch loop, pyarrow and Ray Data and, with ``ctor``, build that model into the
    process's cache (with ``batch_size``, also run one forward of that many blank images, so
    that the kernels for the jobs' batch shape are ready), so that a later Ray Data task
    there starts computing at once. Never raises: returns ``{"pid", "seconds", "error"}``.

    Args:
        ctor: :class:`ChunkActor`'s arguments, or None to import only.
        keep_warm_s: idle seconds before the model is freed again.
        batch_size: images in the warm-up forward (0: none).
    """
    t0 = time.perf_counter()
    try:
        import importlib
        # ray.data too: its first map task in a process imports it (0.6 s here, pandas included)
        for name in ("torch", "analysis.core.models.loaders", "analysis.dataset.runner", "pyarrow.parquet",
                     "ray.data"):
            importlib.import_module(name)
        if ctor is not None:
            entry, _ = process_model(ctor, keep_warm_s)
            if batch_size > 0:
                import torch
                b = entry.actor.bundle
                x = b.preprocess.model_input(np.zeros((int(batch_size), b.input_size, b.input_size, 3), np.uint8))
                with b.lock, torch.inference_mode():
                    b.model(x.to(b.device))
        error = ""
    except Exception as e:  # noqa: BLE001 - best effort: the job reports any real error
        error = f"{type(e).__name__}: {e}"
    return {"pid": os.getpid(), "seconds": time.perf_counter() - t0, "error": error}


def warm_workers(ctor: dict | None = None, n: int | None = None, keep_warm_s: float = KEEP_WARM_S,
                 batch_size: int = 0) -> list:
    """Fire ``n`` one-CPU tasks (default: one per CPU of the cluster) that run
    :func:`warm_process` in Ray's idle worker processes, without waiting; returns their
    object refs (``ray.get`` them to wait). Ray reuses those processes for later tasks
    (Ray Data's included), which then find torch imported and, with ``ctor``, the model built.

    Args:
        ctor: :class:`ChunkActor`'s arguments to build, or None to import only.
        n: number of tasks.
        keep_warm_s: as in :func:`warm_process`.
        batch_size: as in :func:`warm_process`.
    """
    import ray
    if n is None:
        n = max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=0)(warm_process)
    return [task.remote(ctor, keep_warm_s, int(batch_size)) for _ in range(int(n))]


# --------------------------------------------------------------------------------------
# The warm pool (driver side)
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Pool:
    key: tuple
    ctor: dict
    options: dict
    actors: list = dataclasses.field(default_factory=list)
    users: int = 0
    last_used: float = dataclasses.field(default_factory=time.monotonic)
    keep_warm_s: float = KEEP_WARM_S


_POOLS: dict[tuple, _Pool] = {}
_POOLS_LOCK = threading.Lock()
_REAPER: threading.Thread | None = None


def _session() -> str:
    """Identifies the current Ray connection (actors of an earlier one are gone)."""
    import ray
    try:
        ctx = ray.get_runtime_context()
        return f"{ctx.get_job_id()}/{ctx.get_node_id()}"
    except Exception:  # noqa: BLE001
        return ""


def _kill(pool: _Pool) -> None:
    import ray
    if not ray.is_initialized() or pool.key[0] != _session():
        pool.actors.clear()            # that Ray is gone, and its actors with it
        return
    for a in pool.actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or Ray is gone
            pass
    pool.actors.clear()


def shutdown_pools() -> int:
    """Shut down every warm actor pool of this process; returns how many actors were ended.
    Call before ``ray.shutdown()`` for a clean exit (also registered at interpreter exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    n = 0
    for pool in pools:
        n += len(pool.actors)
        _kill(pool)
    return n


atexit.register(shutdown_pools)


def pool_info() -> list[dict]:
    """The warm pools: model spec, weights hash, device, actors, users and idle seconds."""
    now = time.monotonic()
    with _POOLS_LOCK:
        return [{"model": p.ctor["model_spec"], "model_id": p.ctor["model_id"], "device": p.ctor["device"],
                 "actors": len(p.actors), "users": p.users, "idle_s": 0.0 if p.users else now - p.last_used}
                for p in _POOLS.values()]


def _reap_loop() -> None:
    while True:
        time.sleep(5.0)
        now = time.monotonic()
        with _POOLS_LOCK:
            old = [k for k, p in _POOLS.items() if p.users == 0 and now - p.last_used > p.keep_warm_s]
            pools = [_POOLS.pop(k) for k in old]
        for p in pools:
            _kill(p)


def _drop_idle(keep: tuple | None = None, session: str | None = None) -> None:
    """Shut down the idle pools other than ``keep`` (and every pool of a Ray connection
    other than ``session``, default the current one), freeing their CPUs / GPUs."""
    session = _session() if session is None else session
    with _POOLS_LOCK:
        stale = [k for k, p in _POOLS.items() if k != keep and (p.users == 0 or k[0] != session)]
        dropped = [_POOLS.pop(k) for k in stale]
    for p in dropped:
        _kill(p)


def _acquire(ctor: dict, options: dict, size: int, keep_warm_s: float) -> tuple[_Pool, int]:
    """The warm pool for ``ctor`` (model spec + weights hash + device + settings) with at
    least ``size`` actors (new ones start asynchronously) and how many actors were started
    now; idle pools of other models are shut down first."""
    import ray
    global _REAPER
    key = (_session(), json.dumps(ctor, sort_keys=True, default=str), json.dumps(options, sort_keys=True))
    _drop_idle(keep=key, session=key[0])
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = _Pool(key=key, ctor=ctor, options=options)
        pool.users += 1
        pool.keep_warm_s = float(keep_warm_s)
        missing = size - len(pool.actors)
        if missing > 0:
            cls = ray.remote(ChunkActor).options(**options)
            pool.actors.extend(cls.remote(**ctor) for _ in range(missing))
        if _REAPER is None or not _REAPER.is_alive():
            _REAPER = threading.Thread(target=_reap_loop, name="convlens-ray-pool-reaper", daemon=True)
            _REAPER.start()
    return pool, max(0, missing)


def _release(pool: _Pool, broken: bool) -> None:
    with _POOLS_LOCK:
        pool.users -= 1
        pool.last_used = time.monotonic()
        if broken and _POOLS.get(pool.key) is pool:
            del _POOLS[pool.key]
        else:
            broken = False
    if broken:
        _kill(pool)


def _resources(concurrency: int | None, num_gpus: float | None, chunks: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for a job of ``chunks`` chunks on the connected cluster."""
    import ray
    gpus = cluster_gpus()
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 else 0.0
    if num_gpus < 0:
        raise ParameterError("num_gpus must be at least 0")
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrency = int(gpus // num_gpus) if num_gpus else max(1, cpus)
    return max(1, min(int(concurrency), max(1, chunks))), float(num_gpus)


def _actor_args(model_spec: dict, model_id: str, num_gpus: float, retries: int) -> tuple[dict, dict]:
    """The actors' constructor arguments and Ray options (for a warm pool: its key)."""
    if retries < 0:
        raise ParameterError("retries must be at least 0")
    cfg = get_config()
    env = {k: v for k, v in os.environ.items() if k.startswith("CONVLENS_") and k != "CONVLENS_DEVICE"}
    ctor = {"model_spec": model_spec, "model_id": model_id, "device": "cuda" if num_gpus else "cpu",
            "threads": 0 if num_gpus else 1, "env": env, "data_dir": str(cfg.data_dir), "cache_dir": str(cfg.cache_dir)}
    options = {"num_cpus": 1, "num_gpus": num_gpus, "max_restarts": int(retries), "max_task_retries": int(retries)}
    return ctor, options


def prestart(model, *, address: str | None = None, concurrency: int | None = None, num_gpus: float | None = None,
             retries: int = RETRIES, keep_warm_s: float = KEEP_WARM_S, pipeline: str | None = None,
             on_info: Callable[[str], None] | None = None, wait: bool = False, batch_size: int = 64) -> int:
    """Get ``model`` ready on Ray now, without a job, so that the first job on it does not
    wait for the workers' start-up (call it when the Ray engine and the model are chosen,
    e.g. in a background thread). Returns how many actors or tasks were started now.

    * ``pipeline = "pool"``: starts the model's warm actor pool (0: it was running). The
      actors start asynchronously; the pool is shut down after ``keep_warm_s`` seconds
      without a job like any other.
    * ``pipeline = "data"`` on CPUs: fires one task per actor slot (``concurrency``) that
      builds the model into the cache of an idle Ray worker process (:func:`warm_workers`),
      where Ray Data's tasks find it; best effort, without waiting. On GPUs Ray Data starts
      its actors per job, so there is nothing to prepare (returns 0).

    Args:
        model: a ModelSpec, its dict or a short name (see
            :func:`analysis.dataset.workers.model_spec_from`).
        address: Ray address (see :func:`ensure_ray`).
        concurrency: number of actors / tasks (default as in :func:`run_ray` for a large job).
        num_gpus: GPUs per actor (default as in :func:`run_ray`).
        retries: as in :func:`run_ray` (part of the pool's key: use the jobs' value).
        keep_warm_s: idle seconds before the pool is shut down (the model freed).
        pipeline: ``"data"`` or ``"pool"``; default the configured ``ray_pipeline``.
        on_info: receives one-line notices (e.g. that an embedded Ray was started).
        wait: return only once the workers are ready (the actors constructed, the tasks'
            models built); the default returns at once.
        batch_size: Ray Data: the jobs' batch size (default: :class:`JobSpec`'s); each
            worker runs one forward of that shape, and Ray Data's own start-up (its
            internal actors, once per Ray session) is done here too. 0 skips both.
    """
    import ray

    from analysis.core.models.loaders import load_bundle, select_device
    from analysis.dataset.workers import model_spec_dict, model_spec_from
    pipeline = _pipeline(pipeline)
    spec = model_spec_from(model)
    model_id = load_bundle(spec, device=select_device()).model_id
    ensure_ray(address, on_info=on_info)
    n, num_gpus = _resources(concurrency, num_gpus, 1 << 30)
    ctor, options = _actor_args(model_spec_dict(spec), model_id, num_gpus, retries)
    if pipeline == "data":
        if num_gpus:
            return 0
        _settle_warmup()
        refs = warm_workers(ctor, n=n, keep_warm_s=keep_warm_s, batch_size=batch_size)
        if batch_size > 0:
            _warm_ray_data()
        if wait:
            ray.get(refs)
        return len(refs)
    pool, started = _acquire(ctor, options, n, keep_warm_s)
    _release(pool, False)
    if wait:
        ray.get([a.info.remote() for a in pool.actors])
    return started


_RAY_DATA_WARM: set = set()


def _warm_ray_data() -> None:
    """Run a two-row Ray Data pipeline once per Ray session: Ray Data starts its internal
    actors (statistics, autoscaling) on its first execution, about 1.6 s on 2 CPUs, which
    the first job would otherwise wait for."""
    import warnings

    import ray
    session = _session()
    if session in _RAY_DATA_WARM:
        return
    _RAY_DATA_WARM.add(session)
    from ray.data import DataContext
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        try:
            ray.data.range(2, override_num_blocks=1).materialize()
        except Exception:  # noqa: BLE001 - best effort: the first job then starts them itself
            pass


def _settle_warmup(timeout: float = 60.0) -> None:
    """Wait (at most ``timeout`` s) for the embedded Ray's import tasks, so that the model
    is built in those same worker processes: a task fired while they still run would make
    Ray start another process, and a job could then land on one without the model."""
    import ray
    refs, _WARMING[:] = list(_WARMING), []
    if refs:
        try:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort, as the warm-up itself
            pass


def _pipeline(pipeline: str | None) -> str:
    pipeline = str(pipeline or get_config().ray_pipeline).strip().lower()
    if pipeline not in RAY_PIPELINES:
        raise ParameterError(f"ray_pipeline must be one of {', '.join(RAY_PIPELINES)}, got {pipeline!r}")
    return pipeline


def write_input(p, path: Path) -> None:
    """The job's input rows as Parquet with one row group per chunk (atomically); nothing
    when ``path`` exists already (a resumed job).

    Args:
        p: the JobPlan (:func:`analysis.dataset.executor.plan`).
        path: the file to write.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    if path.is_file():
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    schema = pa.schema([("index", pa.int64()), ("path", pa.string()), ("label", pa.int64()),
                        ("loc", pa.string()), ("digest", pa.string()), ("mask", pa.string())])
    with pq.ParquetWriter(tmp, schema) as w:
        for _, a, b in p.chunks():
            cols = {k: p.rows[k][a:b] for k in schema.names}
            t = pa.table({k: pa.array([str(v) for v in cols[k]], pa.string()) if schema.field(k).type == pa.string()
                          else pa.array(np.asarray(cols[k], np.int64)) for k in schema.names}, schema=schema)
            w.write_table(t, row_group_size=max(1, b - a))
    os.replace(tmp, path)


@dataclasses.dataclass
class _Job:
    """What both pipelines get: the plan, the job for the actors, the chunks to run, the
    actors' constructor arguments and options, and the driver's callbacks."""
    plan: object
    job: dict
    todo: list
    ctor: dict
    options: dict
    concurrency: int
    tick: Callable[[int], None]
    should_stop: Callable[[], bool] | None
    keep_warm_s: float
    data_actors: bool = False

    def stop(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())


def run_ray(p, done_chunks: set[int], *, progress=None, should_stop=None, address: str | None = None,
            concurrency: int | None = None, num_gpus: float | None = None,
            on_info: Callable[[str], None] | None = None, retries: int = RETRIES,
            keep_warm_s: float = KEEP_WARM_S, pipeline: str | None = None, data_actors: bool | None = None,
            crop_cache: bool = True):
    """Run the missing chunks of a planned job (:func:`analysis.dataset.executor.plan`)
    on Ray, through Ray Data or the model's warm actor pool; the executor prepares the job
    folder before and commits it after. Returns ``{"stopped": bool, "ray_pipeline": name,
    "ray_actors": n, "ray_gpus_per_actor": g, "ray_warm": bool}`` (``ray_warm``: a warm
    pool's actors were already running when the job started; always False for Ray Data),
    and for Ray Data also ``"ray_processes"`` (the worker pids that ran its chunks) and
    ``"ray_models_built"`` (models built for it: 0 when every chunk found its model cached
    in its worker process) and ``"ray_built_in"`` (the pids of the processes that built one).

    Args:
        p: the JobPlan.
        done_chunks: chunks whose parts exist already (resume).
        progress: ``progress(done, total)`` in images, after each chunk.
        should_stop: polled while chunks run; True starts no further chunk and returns
            once the running ones report back (result not complete).
        address: Ray address (see :func:`ensure_ray`).
        concurrency: number of actors / concurrent tasks (default: one per GPU on GPU
            clusters, else the cluster's CPUs, at most one per chunk).
        num_gpus: GPUs per actor (default 1 when the cluster has GPUs, else 0).
        on_info: receives one-line notices.
        retries: restarts of a dead actor and retries of its chunk (Ray Data on CPUs:
            retries of a chunk's task whose worker process died) before the job fails.
        keep_warm_s: seconds the pool stays up after its last job (0: shut down at once);
            Ray Data on CPUs: seconds a worker process keeps the model after its last chunk.
        pipeline: ``"data"`` (Ray Data: tasks with models cached per worker process on
            CPUs, an actor pool per job on GPUs) or ``"pool"`` (warm actors kept between
            jobs); default the configured ``ray_pipeline``.
        data_actors: Ray Data only: True runs the chunks on an actor pool of this job
            (``ActorPoolStrategy``, what GPUs always get), False on tasks in worker
            processes that keep the model; None (default): actors on GPUs, tasks on CPUs.
            False with GPUs is a ParameterError.
        crop_cache: the workers read and fill the data set's crop cache in the driver's
            ``cache_dir`` (:class:`analysis.dataset.manifest.CropCache`; a worker that cannot
            open it there decodes every image).
    """
    from analysis.dataset.workers import WORKERS, model_spec_dict

    pipeline = _pipeline(pipeline)
    ensure_ray(address, on_info=on_info)
    chunks = p.chunks()
    todo = [c for c, _, _ in chunks if c not in done_chunks]
    sizes = {c: b - a for c, a, b in chunks}
    done = sum(sizes[c] for c in done_chunks)
    if progress:
        progress(done, p.n)
    concurrency, num_gpus = _resources(concurrency, num_gpus, len(todo))
    if data_actors is None:
        data_actors = bool(num_gpus)
    elif num_gpus and not data_actors:
        raise ParameterError("Ray Data on GPUs runs an actor pool (a reused task process cannot switch its CUDA "
                             "device safely): leave data_actors unset or True.")
    ctor, options = _actor_args(model_spec_dict(p.spec.model), p.bundle.model_id, num_gpus, retries)
    input_path = p.partial_dir / "input.parquet"

    def tick(chunk: int) -> None:
        nonlocal done
        done += sizes[int(chunk)]
        if progress:
            progress(done, p.n)

    stopped, warm, extra = False, False, {}
    if todo:
        job = {"worker": WORKERS.path(p.spec.kind), "params": p.params, "batch_size": p.spec.batch_size,
               "source": p.source, "input_path": str(input_path), "out_dir": str(p.partial_dir),
               "crops": {"dataset_hash": p.dataset.content_hash, "size": len(p.dataset)} if crop_cache else None}
        run_pipeline = _run_pool if pipeline == "pool" else _run_data
        stopped, warm, extra = run_pipeline(_Job(p, job, todo, ctor, options, concurrency, tick, should_stop,
                                                 keep_warm_s, bool(data_actors)))
    if not stopped:
        input_path.unlink(missing_ok=True)
    return {"stopped": stopped, "ray_pipeline": pipeline, "ray_actors": concurrency,
            "ray_gpus_per_actor": num_gpus, "ray_warm": warm, **extra}


def _run_data(j: _Job) -> tuple[bool, bool, dict]:
    """Ray Data: ``map_batches`` with tasks on CPUs (models cached per worker process) or
    with an actor pool for this job on GPUs. Returns (stopped, warm=False,
    {"ray_processes": worker pids, "ray_models_built": n})."""
    import warnings

    import numpy as np
    import ray
    from ray.data import DataContext

    _drop_idle()                        # idle warm pools hold the CPUs / GPUs our workers need
    write_input(j.plan, Path(j.job["input_path"]))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates remote args as keywords without a named replacement for
        # max_retries / max_restarts / max_task_retries (its own default is to retry
        # forever), and its DataContext warns about its own deprecated defaults when first
        # created.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # One map operator whose outputs are tiny status rows (the workers write the parts):
        # the per-operator reservation of CPUs only held tasks back, starting one at a time
        # (8 chunks on 2 CPUs: 3.1 s instead of 2.1 s; docs/benchmarks.md).
        ctx.op_resource_reservation_enabled = False
        ds = ray.data.from_items([{"chunk": c} for c in j.todo], override_num_blocks=len(j.todo))
        if j.data_actors:
            # GPUs: a reused task worker cannot switch its CUDA device safely, one actor per GPU
            out = ds.map_batches(DataChunkActor, batch_size=1, batch_format="numpy",
                                 compute=ray.data.ActorPoolStrategy(size=j.concurrency),
                                 fn_constructor_kwargs={"job": j.job, **j.ctor}, **j.options)
        else:
            out = ds.map_batches(data_chunks, batch_size=1, batch_format="numpy",
                                 compute=ray.data.TaskPoolStrategy(size=j.concurrency),
                                 fn_kwargs={"job": j.job, "ctor": j.ctor, "keep_warm_s": float(j.keep_warm_s)},
                                 num_cpus=j.options["num_cpus"], max_retries=j.options["max_task_retries"])
    it = out.iter_batches(batch_size=None, batch_format="numpy")
    stopped, pids, built, built_in = False, set(), 0, set()
    try:
        for status in it:
            for c in np.asarray(status["chunk"]).tolist():
                j.tick(c)
            pids.update(int(x) for x in np.asarray(status["pid"]).tolist())
            b = np.asarray(status["built"]).astype(bool)
            built += int(b.sum())
            built_in.update(int(x) for x in np.asarray(status["pid"])[b].tolist())
            if j.stop():
                stopped = True
                break
    except ray.exceptions.RayError as e:
        raise _job_error(e) from e
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()                     # ends the dataset's execution (and its actors)
    return stopped, False, {"ray_processes": sorted(pids), "ray_models_built": built, "ray_built_in": sorted(built_in)}


def _run_pool(j: _Job) -> tuple[bool, bool, dict]:
    """The warm pool: chunk numbers handed out one at a time per actor. Returns (stopped,
    warm: the pool's actors were running before this job, {})."""
    import ray

    pool, started = _acquire(j.ctor, j.options, j.concurrency, j.keep_warm_s)   # they start while we write the input
    broken, stopped = False, False
    try:
        write_input(j.plan, Path(j.job["input_path"]))
        queue, free, running = deque(j.todo), list(range(j.concurrency))[::-1], {}
        actors = pool.actors[:j.concurrency]
        while queue or running:
            while queue and free and not stopped:
                a = free.pop()
                running[actors[a].run.remote(j.job, queue.popleft())] = a
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
            for ref in ready:
                free.append(running.pop(ref))
                j.tick(ray.get(ref)[0])
            if not stopped and j.stop():
                stopped = True
    except ray.exceptions.RayError as e:
        # a dead actor (retries used up) ends the pool; an error raised by the worker's
        # code (RayTaskError) leaves the actors warm
        broken = not isinstance(e, ray.exceptions.RayTaskError)
        raise _job_error(e) from e
    except BaseException:
        broken = True
        raise
    finally:
        _release(pool, broken)
    return stopped, started == 0, {}


def _job_error(e: BaseException):
    from analysis.dataset.runner import JobError
    return JobError(f"The Ray job failed: {_first_line(e)}. Chunks written so far are kept; run the job "
                    "again to resume.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    last = [line for line in text if line.strip()][-1:] if text else []
    return (type(e).__name__ + (": " + last[0][:300] if last else ""))
