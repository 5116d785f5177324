"""The Ray backend of the data-set executor: a warm pool of model actors.

Pipeline::

    input.parquet (one row group per chunk, in the job folder)
      ->  a pool of ChunkActor actors (Ray core actors, one model each, ``num_cpus=1`` and
          one torch thread on CPU clusters, ``num_gpus=1`` on GPU clusters), kept warm
          between jobs and keyed by model spec + weights hash
      ->  the driver hands out chunk numbers, one at a time per actor (pull-based), and
          each actor writes part-<chunk>.parquet into the job's folder (data directory)
      ->  the driver receives one tiny status tuple per chunk: progress, Stop, skipped

* **The model travels by spec + weights hash**, never as a pickled object:
  ``ChunkActor.__init__`` builds the bundle once from the model's JSON spec and checks the
  weights hash the job was planned with. The job kind travels as the ``"module:Class"``
  path of its Worker (:meth:`analysis.dataset.workers.WorkerRegistry.path`), imported by
  the actor on first use, so every registered kind (``crp`` from analysis.relevance, a
  test's own worker) runs on Ray. Workers must see the images and the data directory under
  the same paths as the driver (a shared file system).
* Each actor reads its chunk's rows from ``input.parquet`` (row group = chunk) and runs the
  same :class:`analysis.dataset.runner.BatchRunner` loop as the in-process backend, batch
  for batch, so both backends compute the same bits. It writes the part file itself,
  atomically: results never flow through the driver, and a job stopped or killed part-way
  resumes from the chunks already written.
* **Warm pool.** Starting an actor costs seconds (a Python process, importing torch and
  torchvision, building the model), far more than a small job's compute on a few cores.
  The pool outlives the job: the next job on the same model (any kind, any parameters,
  any data set) reuses the running actors and starts computing at once. A pool idle for
  ``keep_warm_s`` seconds (default :data:`KEEP_WARM_S`) is shut down by a reaper thread,
  a job on another model first shuts down idle pools of other models (freeing their CPUs /
  GPUs), and :func:`shutdown_pools` (also at interpreter exit) ends them all. The actors
  are created before the driver writes the job's input, so their start-up overlaps it.
* **Why not Ray Data's ``map_batches``** (the first version of this backend): its actor
  pool lives only as long as one dataset execution, so every job paid the whole start-up
  again (0.6x in-process end to end on 2 cores); and it gave neither per-chunk progress nor
  the part-file layout the in-process backend writes. The actors here follow the same
  batch-inference pattern (model loaded once per actor, batches streamed through it).
* A killed actor is restarted and its chunk retried (``max_restarts`` /
  ``max_task_retries``, ``RETRIES`` each); a chunk that still fails makes the job fail
  with :class:`analysis.dataset.runner.JobError` and the pool is discarded (never a
  silent hole: ``finalize`` also checks that every chunk's part exists and accounts for
  every image).
* **Stop** stops handing out chunks; the driver returns once the chunks already running
  (at most one per actor) report back, so the pool stays warm and nothing runs on behind
  the caller's back.
* Without ``ray_address`` (config / ``RAY_ADDRESS``) and without a running Ray, an
  embedded single-node Ray is started (``ray.init(num_cpus=..., include_dashboard=False)``)
  and ``on_info`` says so.
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

from analysis.core.config import get_config, set_config
from analysis.core.errors import ModelLoadError, ParameterError

RETRIES = 3
KEEP_WARM_S = 600.0            # an idle pool is shut down after this many seconds
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
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
                info = f"Connected to the Ray cluster at {address}."
            else:
                n = int(num_cpus or os.cpu_count() or 1)
                ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
                info = (f"Started an embedded single-node Ray ({n} CPUs) in this process; set ray_address "
                        "(or RAY_ADDRESS) to use a cluster.")
        except Exception as e:
            from analysis.dataset.runner import JobError
            raise JobError(f"Cannot start or reach Ray{f' at {address}' if address else ''}: "
                           f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from e
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
    """Ray actor: builds the model once, then runs whole chunks of any job on that model.

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
        os.environ.update(env or {})
        set_config(None)
        import torch
        t1 = time.perf_counter()
        from analysis.core.models.loaders import load_bundle
        from analysis.dataset.workers import model_spec_from
        t2 = time.perf_counter()
        cfg = get_config()
        set_config(dataclasses.replace(cfg, data_dir=Path(data_dir) if data_dir else cfg.data_dir,
                                       cache_dir=Path(cache_dir) if cache_dir else cfg.cache_dir))
        if threads:
            torch.set_num_threads(int(threads))
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
            r = self._runners[key] = BatchRunner(worker, job["source"], int(job["batch_size"]))
            while len(self._runners) > 4:
                self._runners.popitem(last=False)
        self._runners.move_to_end(key)
        return r

    def _rows(self, input_path: str, chunk: int) -> dict:
        import pyarrow.parquet as pq
        pf = self._inputs.get(input_path)
        if pf is None:
            pf = self._inputs[input_path] = pq.ParquetFile(input_path)
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
        table, sk = self._runner(job).run_chunk(self._rows(job["input_path"], chunk))
        write_part(Path(job["out_dir"]), int(chunk), table)
        return int(chunk), int(table.num_rows), len(sk)


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


def _acquire(ctor: dict, options: dict, size: int, keep_warm_s: float) -> tuple[_Pool, int]:
    """The warm pool for ``ctor`` (model spec + weights hash + device + settings) with at
    least ``size`` actors (new ones start asynchronously) and how many actors were started
    now; idle pools of other models are shut down first."""
    import ray
    global _REAPER
    key = (_session(), json.dumps(ctor, sort_keys=True, default=str), json.dumps(options, sort_keys=True))
    with _POOLS_LOCK:
        stale = [k for k, p in _POOLS.items() if k != key and (p.users == 0 or k[0] != key[0])]
        dropped = [_POOLS.pop(k) for k in stale]
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
    for p in dropped:
        _kill(p)
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


def _pool_args(model_spec: dict, model_id: str, num_gpus: float, retries: int) -> tuple[dict, dict]:
    """The actors' constructor arguments and Ray options: together the pool's key."""
    cfg = get_config()
    env = {k: v for k, v in os.environ.items() if k.startswith("CONVLENS_") and k != "CONVLENS_DEVICE"}
    ctor = {"model_spec": model_spec, "model_id": model_id, "device": "cuda" if num_gpus else "cpu",
            "threads": 0 if num_gpus else 1, "env": env, "data_dir": str(cfg.data_dir), "cache_dir": str(cfg.cache_dir)}
    options = {"num_cpus": 1, "num_gpus": num_gpus, "max_restarts": int(retries), "max_task_retries": int(retries)}
    return ctor, options


def prestart(model, *, address: str | None = None, concurrency: int | None = None, num_gpus: float | None = None,
             retries: int = RETRIES, keep_warm_s: float = KEEP_WARM_S,
             on_info: Callable[[str], None] | None = None) -> int:
    """Start the warm actor pool of ``model`` now, without a job, so that the first job on
    it does not wait for the actors' start-up (call it when the Ray engine and the model are
    chosen, e.g. in a background thread). Returns how many actors were started (0: the pool
    was running). The actors start asynchronously; the pool is shut down after
    ``keep_warm_s`` seconds without a job like any other.

    Args:
        model: a ModelSpec, its dict or a short name (see
            :func:`analysis.dataset.workers.model_spec_from`).
        address: Ray address (see :func:`ensure_ray`).
        concurrency: number of actors (default as in :func:`run_ray` for a large job).
        num_gpus: GPUs per actor (default as in :func:`run_ray`).
        retries: as in :func:`run_ray` (part of the pool's key: use the jobs' value).
        keep_warm_s: idle seconds before the pool is shut down.
        on_info: receives one-line notices (e.g. that an embedded Ray was started).
    """
    from analysis.core.models.loaders import load_bundle, select_device
    from analysis.dataset.workers import model_spec_dict, model_spec_from
    spec = model_spec_from(model)
    model_id = load_bundle(spec, device=select_device()).model_id
    ensure_ray(address, on_info=on_info)
    n, num_gpus = _resources(concurrency, num_gpus, 1 << 30)
    ctor, options = _pool_args(model_spec_dict(spec), model_id, num_gpus, retries)
    pool, started = _acquire(ctor, options, n, keep_warm_s)
    _release(pool, False)
    return started


def write_input(p, path: Path) -> None:
    """The job's input rows as Parquet with one row group per chunk (atomically).

    Args:
        p: the JobPlan (:func:`analysis.dataset.executor.plan`).
        path: the file to write.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
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


def run_ray(p, done_chunks: set[int], *, progress=None, should_stop=None, address: str | None = None,
            concurrency: int | None = None, num_gpus: float | None = None,
            on_info: Callable[[str], None] | None = None, retries: int = RETRIES,
            keep_warm_s: float = KEEP_WARM_S):
    """Run the missing chunks of a planned job (:func:`analysis.dataset.executor.plan`)
    on the warm Ray actor pool of its model; the executor prepares the job folder before
    and commits it after. Returns ``{"stopped": bool, "ray_actors": n,
    "ray_gpus_per_actor": g, "ray_warm": bool}`` (``ray_warm``: the pool's actors were
    already running when the job started).

    Args:
        p: the JobPlan.
        done_chunks: chunks whose parts exist already (resume).
        progress: ``progress(done, total)`` in images, after each chunk.
        should_stop: polled while chunks run; True hands out no further chunk and returns
            once the running ones (at most one per actor) are written (result not complete).
        address: Ray address (see :func:`ensure_ray`).
        concurrency: number of actors (default: one per GPU on GPU clusters, else the
            cluster's CPUs, at most one per chunk).
        num_gpus: GPUs per actor (default 1 when the cluster has GPUs, else 0).
        on_info: receives one-line notices.
        retries: restarts of a dead actor and retries of its chunk before the job fails.
        keep_warm_s: seconds the pool stays up after its last job (0: shut down at once).
    """
    import ray

    from analysis.dataset.runner import JobError
    from analysis.dataset.workers import WORKERS, model_spec_dict

    ensure_ray(address, on_info=on_info)
    worker = WORKERS.path(p.spec.kind)
    chunks = p.chunks()
    todo = [c for c, _, _ in chunks if c not in done_chunks]
    sizes = {c: b - a for c, a, b in chunks}
    done = sum(sizes[c] for c in done_chunks)
    if progress:
        progress(done, p.n)
    concurrency, num_gpus = _resources(concurrency, num_gpus, len(todo))
    if retries < 0:
        raise ParameterError("retries must be at least 0")
    input_path = p.partial_dir / "input.parquet"
    stopped = False
    warm = False
    if todo:
        ctor, options = _pool_args(model_spec_dict(p.spec.model), p.bundle.model_id, num_gpus, retries)
        pool, started = _acquire(ctor, options, concurrency, keep_warm_s)   # they start while we write the input
        warm = started == 0
        broken = False
        try:
            if not input_path.is_file():
                write_input(p, input_path)
            job = {"worker": worker, "params": p.params, "batch_size": p.spec.batch_size, "source": p.source,
                   "input_path": str(input_path), "out_dir": str(p.partial_dir)}
            queue, free, running = deque(todo), list(range(concurrency))[::-1], {}
            actors = pool.actors[:concurrency]
            while queue or running:
                while queue and free and not stopped:
                    a = free.pop()
                    running[actors[a].run.remote(job, queue.popleft())] = a
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
                for ref in ready:
                    free.append(running.pop(ref))
                    c, _, _ = ray.get(ref)
                    done += sizes[int(c)]
                    if progress:
                        progress(done, p.n)
                if not stopped and should_stop is not None and should_stop():
                    stopped = True
        except ray.exceptions.RayError as e:
            # a dead actor (retries used up) ends the pool; an error raised by the worker's
            # code (RayTaskError) leaves the actors warm
            broken = not isinstance(e, ray.exceptions.RayTaskError)
            raise JobError(f"The Ray job failed: {_first_line(e)}. Chunks written so far are kept; run the job "
                           "again to resume.") from e
        except BaseException:
            broken = True
            raise
        finally:
            _release(pool, broken)
    if not stopped:
        input_path.unlink(missing_ok=True)
    return {"stopped": stopped, "ray_actors": concurrency, "ray_gpus_per_actor": num_gpus, "ray_warm": warm}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    last = [line for line in text if line.strip()][-1:] if text else []
    return (type(e).__name__ + (": " + last[0][:300] if last else ""))
