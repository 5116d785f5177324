"""The Ray Data backend of the data-set executor.

Pipeline (Ray's batch-inference pattern, ``map_batches`` with a callable class)::

    input.parquet (one row group per chunk)  ->  ray.data.from_items([{"chunk": c}, ...])
      ->  map_batches(ChunkActor, fn_constructor_kwargs={model spec, params, ...},
                      concurrency=n, num_gpus=1 on GPU clusters else 0, batch_size=1)
      ->  each actor writes part-<chunk>.parquet into the job's folder (data directory)
      ->  the driver iterates one tiny status row per chunk: progress, Stop, skipped

* ``ChunkActor.__init__`` builds the kind's :class:`analysis.dataset.workers.Worker` once
  from the model's JSON spec and checks the weights hash the job was planned with: the model
  travels by spec + hash, never as a pickled object. Workers must see the images and the
  data directory under the same paths as the driver (a shared file system).
* Each actor reads its chunk's rows from ``input.parquet`` (row group = chunk) and runs the
  same :class:`analysis.dataset.executor.BatchRunner` loop as the in-process backend, batch
  for batch, so both backends compute the same bits. It writes the part file itself,
  atomically: results never flow through the driver, and a job stopped or killed part-way
  resumes from the chunks already written.
* Why not ``write_parquet``: it names files itself and gives no per-chunk progress or
  Stop; writing the same ``part-<chunk>.parquet`` files as the in-process backend keeps one
  output layout, one resume rule and one reader.
* A killed actor is restarted and its chunk retried (``max_restarts`` /
  ``max_task_retries``, ``RETRIES`` each); a chunk that still fails makes the job fail
  with :class:`analysis.dataset.executor.JobError` (never a silent hole: ``finalize``
  also checks that every chunk's part exists and accounts for every image).
* Without ``ray_address`` (config / ``RAY_ADDRESS``) and without a running Ray, an
  embedded single-node Ray is started (``ray.init(num_cpus=...)``) and ``on_info`` says so.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from analysis.core.config import get_config, set_config
from analysis.core.errors import ParameterError

RETRIES = 3
FAULT_ENV = "CONVLENS_FAULT_KILL_CHUNK"   # tests: "<chunk>:<marker file>" kills the actor once per marker
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
    import ray
    try:
        return float(ray.cluster_resources().get("GPU", 0))
    except Exception:  # noqa: BLE001 - no cluster or an old Ray: no GPUs
        return 0.0


class ChunkActor:
    """Ray actor: builds the Worker once, then runs whole chunks and writes their parts.

    Constructor arguments are plain JSON-like values (kind, model spec dict, params, the
    expected weights hash, batch size, image source, paths, config paths, device).
    """

    def __init__(self, kind: str, model_spec: dict, params: dict, model_id: str, batch_size: int,
                 source: dict, input_path: str, out_dir: str, data_dir: str, cache_dir: str,
                 device: str, threads: int = 0, env: dict | None = None):
        os.environ.update(env or {})          # the driver's CONVLENS_* settings (limits, ...)
        set_config(None)
        import pyarrow.parquet as pq
        import torch

        from analysis.dataset.runner import BatchRunner
        from analysis.dataset.workers import WORKERS
        set_config(dataclasses.replace(get_config(), data_dir=Path(data_dir), cache_dir=Path(cache_dir)))
        if threads:
            torch.set_num_threads(int(threads))
        self.worker = WORKERS[kind](model_spec, params, model_id=model_id, device=device)
        self.runner = BatchRunner(self.worker, source, int(batch_size))
        self.input = pq.ParquetFile(input_path)
        self.out_dir = Path(out_dir)

    def _rows(self, chunk: int) -> dict:
        t = self.input.read_row_group(int(chunk))
        out = {}
        for name in t.column_names:
            col = t.column(name).to_numpy(zero_copy_only=False)
            out[name] = col.astype(object) if col.dtype.kind in "OUS" else col
        return out

    def _fault(self, chunk: int) -> None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return
        want, _, marker = spec.partition(":")
        if int(want) == int(chunk) and marker and (marker == "always" or os.path.exists(marker)):
            if marker != "always":
                os.unlink(marker)
            os._exit(1)          # a crash of the worker process, as an OOM kill would be

    def __call__(self, batch: dict) -> dict:
        from analysis.dataset.runner import write_part
        chunks, rows, skipped = [], [], []
        for c in np.asarray(batch["chunk"]).tolist():
            self._fault(c)
            table, sk = self.runner.run_chunk(self._rows(c))
            write_part(self.out_dir, int(c), table)
            chunks.append(int(c))
            rows.append(table.num_rows)
            skipped.append(len(sk))
        return {"chunk": np.asarray(chunks, np.int64), "rows": np.asarray(rows, np.int64),
                "skipped": np.asarray(skipped, np.int64)}


def write_input(p, path: Path) -> None:
    """The job's input rows as Parquet with one row group per chunk (atomically)."""
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


def run_ray(p, done_chunks: set[int], *, progress=None, should_stop=None, address: str | None = None, concurrency: int | None = None,
            num_gpus: float | None = None, on_info: Callable[[str], None] | None = None, retries: int = RETRIES):
    """Run the missing chunks of a planned job (:func:`analysis.dataset.executor.plan`)
    on Ray Data; the executor prepares the job folder before and commits it after.
    Returns ``{"stopped": bool, "ray_actors": n, "ray_gpus_per_actor": g}``.

    Args:
        p: the JobPlan.
        done_chunks: chunks whose parts exist already (resume).
        progress: ``progress(done, total)`` in images, after each chunk.
        should_stop: polled after each chunk; True stops the job (result not complete).
        address: Ray address (see :func:`ensure_ray`).
        concurrency: number of actors (default: one per GPU on GPU clusters, else the
            cluster's CPUs, at most one per chunk).
        num_gpus: GPUs per actor (default 1 when the cluster has GPUs, else 0).
        on_info: receives one-line notices.
        retries: restarts of a dead actor and retries of its chunk before the job fails.
    """
    import ray

    from analysis.dataset.runner import JobError

    ensure_ray(address, on_info=on_info)
    input_path = p.partial_dir / "input.parquet"
    if not input_path.is_file():
        write_input(p, input_path)
    chunks = p.chunks()
    todo = [c for c, _, _ in chunks if c not in done_chunks]
    sizes = {c: b - a for c, a, b in chunks}
    done = sum(sizes[c] for c in done_chunks)
    if progress:
        progress(done, p.n)
    gpus = cluster_gpus()
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 else 0.0
    if num_gpus < 0:
        raise ParameterError("num_gpus must be at least 0")
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrency = int(gpus // num_gpus) if num_gpus else max(1, cpus)
    concurrency = max(1, min(int(concurrency), max(1, len(todo))))
    cfg = get_config()
    env = {k: v for k, v in os.environ.items() if k.startswith("CONVLENS_") and k != "CONVLENS_DEVICE"}
    device = "cuda" if num_gpus else "cpu"
    stopped = False
    if todo:
        from ray.data import DataContext
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        items = [{"chunk": c} for c in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates remote args as keywords without a named replacement for
            # max_restarts / max_task_retries (its own default is to retry forever).
            warnings.simplefilter("ignore", DeprecationWarning)
            out = ds.map_batches(
                ChunkActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_cpus=1, num_gpus=num_gpus, max_restarts=retries, max_task_retries=retries,
                fn_constructor_kwargs={
                    "kind": p.spec.kind, "model_spec": p.spec.to_dict()["model"], "params": p.params,
                    "model_id": p.bundle.model_id, "batch_size": p.spec.batch_size, "source": p.source,
                    "input_path": str(input_path), "out_dir": str(p.partial_dir), "data_dir": str(cfg.data_dir),
                    "cache_dir": str(cfg.cache_dir), "device": device, "threads": 1 if not num_gpus else 0,
                    "env": env})
        it = out.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for status in it:
                for c in np.asarray(status["chunk"]).tolist():
                    done += sizes[int(c)]
                if progress:
                    progress(done, p.n)
                if should_stop is not None and should_stop():
                    stopped = True
                    break
        except ray.exceptions.RayError as e:
            raise JobError(f"The Ray job failed: {_first_line(e)}. Chunks written so far are kept; run the job "
                           "again to resume.") from e
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            del it, out, ds
    if not stopped:
        input_path.unlink(missing_ok=True)
    return {"stopped": stopped, "ray_actors": concurrency, "ray_gpus_per_actor": num_gpus}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    last = [line for line in text if line.strip()][-1:] if text else []
    return (type(e).__name__ + (": " + last[0][:300] if last else ""))
