"""One executor for every data-set job, with two backends: in-process and Ray.

A job is a pure function of (model spec, data-set reference, job kind, parameters) ->
per-image rows::

    spec = JobSpec("predict", ModelSpec("digits"), DatasetRef("digits"), batch_size=64)
    result = run(spec)                        # or run(spec, engine="ray")
    df = result.to_pandas(["index", "label", "pred", "confidence"])
    probs = result.array("top_probs")         # (n, 5) float32

**Outputs.** A job's rows live under ``<data_dir>/jobs/<kind>-<model>-<data>-<hash>/`` as
Parquet part files (one per chunk of images, in data-set order) plus ``meta.json``. The
folder name is the job key: the model's weights hash, the data set's content hash, the
kind and a hash of the normalised parameters, the batch size and the image subset (the
engine is not part of it: both backends produce the same rows). Columns with more than
one dimension (top-k ids, features, saliency maps) are fixed-size-list columns whose shape
is in ``meta["arrays"]``; :meth:`JobResult.table` / :meth:`JobResult.to_pandas` read only
the columns asked for.

**Completion.** Work happens in ``<key>.partial/``; every part is written atomically
(temporary name, then rename) and ``meta.json`` with ``complete: true`` is written last,
after which the folder is renamed to ``<key>`` in one step. A job that is stopped, fails
or whose process is killed leaves only the ``.partial`` folder: nothing is marked complete,
and running the same job again resumes from the chunks already written.

**Bad images.** An image that cannot be read or decoded becomes an entry of
``JobResult.skipped`` (index, path, reason) and has no row; files that were missing when the
data set was indexed are listed there too (index -1). Rows + skipped always account for
every requested image.

**Backends.** ``engine="local"`` runs the batches in this process (progress and Stop per
batch, holding a heavy-job slot of the device). ``engine="ray"`` runs the same
:mod:`analysis.dataset.workers` class inside Ray actors: Ray Data's ``map_batches`` with a
pool of actors per job (``ray_pipeline="data"``, default) or a warm pool of actors kept
between jobs (``"pool"``), see :mod:`analysis.dataset.ray_backend`. Both cut the images into the same batches, so the
same floating-point operations produce the same bits.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from analysis.core.config import ENGINES, get_config
from analysis.core.datasets import Dataset
from analysis.core.errors import ConvlensError, ParameterError
from analysis.core.fsio import fsync_dir
from analysis.core.models.bundle import ModelBundle
from analysis.core.models.loaders import ModelSpec, load_bundle, select_device
from analysis.dataset.manifest import DatasetRef, input_rows, open_dataset
from analysis.dataset.runner import (  # noqa: F401 - re-exported
    BatchRunner,
    JobError,
    part_info,
    slice_rows,
    to_arrow,
    write_part,
)
from analysis.dataset.workers import WORKERS, Worker, model_spec_dict, model_spec_from

__all__ = ["JobSpec", "JobResult", "JobError", "run", "load_result", "plan", "JobPlan", "KINDS",
           "Worker", "WORKERS", "jobs_dir"]

KINDS = tuple(WORKERS)
FORMAT = 1
Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


# --------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """What to compute: a pure description, JSON-serialisable (:meth:`to_dict`).

    Args:
        kind: ``"predict"`` | ``"features"`` | ``"saliency"`` | ``"trust"``.
        model: a :class:`ModelSpec` (or its dict, or a short name such as ``"digits"``).
        dataset: a :class:`DatasetRef` (or its dict, or ``"digits"`` / a manifest path).
        params: the kind's parameters (see :mod:`analysis.dataset.workers`); missing ones
            take their defaults.
        batch_size: images per forward pass.
        indices: data-set positions to run on, in this order (None = all images).
    """
    kind: str
    model: ModelSpec = field(default_factory=ModelSpec)
    dataset: DatasetRef = field(default_factory=DatasetRef)
    params: dict = field(default_factory=dict)
    batch_size: int = 64
    indices: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in WORKERS:
            raise ParameterError(f"Unknown job kind {self.kind!r}; use one of {', '.join(WORKERS)}.")
        object.__setattr__(self, "model", model_spec_from(self.model))
        ds = self.dataset
        if isinstance(ds, str):
            ds = DatasetRef.parse(ds)
        object.__setattr__(self, "dataset", DatasetRef.from_dict(ds))
        if not isinstance(self.params, dict):
            raise ParameterError("Job parameters must be a JSON object.")
        try:
            params = json.loads(json.dumps(self.params, sort_keys=True))
        except (TypeError, ValueError) as e:
            raise ParameterError(f"Job parameters must be JSON-serialisable: {e}") from None
        object.__setattr__(self, "params", params)
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 65536:
            raise ParameterError(f"batch_size must be an integer between 1 and 65536, got {b!r}")
        object.__setattr__(self, "batch_size", int(b))
        if self.indices is not None:
            idx = np.asarray(self.indices)
            if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
                raise ParameterError("indices must be a list of integers")
            object.__setattr__(self, "indices", tuple(int(i) for i in idx))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (inverse: :meth:`from_dict`)."""
        return {"kind": self.kind, "model": model_spec_dict(self.model), "dataset": self.dataset.to_dict(),
                "params": dict(self.params), "batch_size": self.batch_size,
                "indices": list(self.indices) if self.indices is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> "JobSpec":
        """A spec from :meth:`to_dict` output.

        Args:
            d: a dict with some of the keys ``kind``, ``model``, ``dataset``, ``params``,
                ``batch_size``, ``indices`` (a list is turned into a tuple); missing keys
                take the dataclass defaults.

        Raises:
            ParameterError: ``d`` is not a dict or has an unknown key.
        """
        if not isinstance(d, dict):
            raise ParameterError("A job spec must be a JSON object.")
        bad = set(d) - {"kind", "model", "dataset", "params", "batch_size", "indices"}
        if bad:
            raise ParameterError(f"Unknown job spec field(s): {', '.join(sorted(bad))}")
        d = dict(d)
        if d.get("indices") is not None:
            d["indices"] = tuple(d["indices"])
        return cls(**d)


def jobs_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where job outputs live: ``<data_dir>/jobs``."""
    return Path(data_dir or get_config().data_dir) / "jobs"


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------
@dataclass(eq=False)
class JobResult:
    """The output of one job (complete, or the part done so far).

    Attributes:
        spec: the job.
        key: the job key (folder name).
        path: the folder holding ``part-*.parquet`` and (when complete) ``meta.json``.
        complete: True only when every chunk was written and the folder was committed.
        n_rows: rows written (images computed).
        n_images: images requested.
        skipped: ``(index, path, reason)`` of images that could not be used.
        meta: model id and name, data-set hash and class names, normalised parameters,
            column shapes (``meta["arrays"]``), engine, seconds, warnings.
    """
    spec: JobSpec
    key: str
    path: Path
    complete: bool
    n_rows: int
    n_images: int
    skipped: list[tuple[int, str, str]]
    meta: dict

    @property
    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    @property
    def params(self) -> dict:
        return dict(self.meta.get("params", {}))

    def iter_tables(self, columns: Sequence[str] | None = None) -> Iterator["object"]:
        """pyarrow Tables, one per part file in data-set order, with only ``columns``."""
        import pyarrow.parquet as pq
        for p in self.parts:
            pf = pq.ParquetFile(p)
            if pf.metadata.num_rows == 0:
                continue
            have = pf.schema_arrow.names
            if columns is not None:
                missing = [c for c in columns if c not in have]
                if missing:
                    raise ParameterError(f"This {self.spec.kind} result has no column(s) {', '.join(missing)}; "
                                         f"it has {', '.join(have)}.")
            yield pf.read(columns=list(columns) if columns is not None else None)

    def table(self, columns: Sequence[str] | None = None):
        """One pyarrow Table of the rows (only ``columns``; all when None)."""
        import pyarrow as pa
        tables = list(self.iter_tables(columns))
        if not tables:
            return _empty_table(self.meta, columns)
        return pa.concat_tables(tables)

    def to_pandas(self, columns: Sequence[str] | None = None):
        """A pandas DataFrame of ``columns``; list columns hold one numpy array per row
        (use :meth:`array` for an (n, ...) array)."""
        return self.table(columns).to_pandas()

    def array(self, column: str) -> np.ndarray:
        """Column ``column`` as one numpy array: (n,) for scalars, (n, *shape) for arrays.
        A column the job rebuilds when read (``meta["derived"]``, e.g. a Grad-CAM job's
        ``map``, upsampled from the stored ``cam``) is rebuilt here."""
        how = self.meta.get("derived", {}).get(column)
        if how is not None and column not in self.meta.get("columns", []):
            from analysis.dataset.workers import DERIVED
            if how.get("op") not in DERIVED:
                raise ParameterError(f"This result rebuilds {column!r} with {how.get('op')!r}, which this "
                                     "version of convlens does not know.")
            return DERIVED[how["op"]](self.array(how["from"]), tuple(how["size"]))
        t = self.table([column])
        return column_array(t.column(column), self.meta.get("arrays", {}).get(column))

    def warnings(self) -> list[str]:
        """The job's warnings (skipped images, constant saliency maps) as a new list of
        sentences, from ``meta.json``; empty when there are none. No arguments."""
        return list(self.meta.get("warnings", []))


def column_array(col, shape: Sequence[int] | None) -> np.ndarray:
    """A pyarrow (chunked) column -> numpy; fixed-size lists are reshaped to ``(n, *shape)``.

    Args:
        col: a ``pyarrow.Array`` or ``pyarrow.ChunkedArray`` (possibly with no chunks) of n
            rows; scalar columns come back as an (n,) array, fixed-size-list columns as an
            (n, *shape) array.
        shape: the per-row shape of a fixed-size-list column (from ``meta["arrays"]``);
            None or empty keeps it flat, ``(n, list_size)``. Ignored for scalar columns.
    """
    import pyarrow as pa
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], type=col.type)
    if pa.types.is_fixed_size_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        shape = tuple(shape) if shape else (col.type.list_size,)
        return flat.reshape((len(col),) + shape)
    return col.to_numpy(zero_copy_only=False)


def _empty_table(meta: dict, columns):
    import pyarrow as pa
    names = list(columns) if columns is not None else list(meta.get("columns", {}))
    return pa.table({c: pa.array([]) for c in names})


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------
_BUNDLES: "OrderedDict[tuple, ModelBundle]" = OrderedDict()
_BUNDLES_LOCK = threading.Lock()


def _bundle(spec: ModelSpec, device) -> ModelBundle:
    key = (spec, str(device))
    with _BUNDLES_LOCK:
        if key in _BUNDLES:
            _BUNDLES.move_to_end(key)
            return _BUNDLES[key]
    b = load_bundle(spec, device=device)
    with _BUNDLES_LOCK:
        _BUNDLES[key] = b
        while len(_BUNDLES) > 3:
            _BUNDLES.popitem(last=False)
    return b


@dataclass(eq=False)
class JobPlan:
    """Everything a backend needs: the resolved data set, rows, key and folders."""
    spec: JobSpec
    bundle: ModelBundle
    dataset: Dataset
    params: dict
    rows: dict
    source: dict
    key: str
    final_dir: Path
    partial_dir: Path
    chunk_size: int

    @property
    def n(self) -> int:
        return len(self.rows["index"])

    def chunks(self) -> list[tuple[int, int, int]]:
        """(chunk number, start, stop) over the rows."""
        return [(c, s, min(self.n, s + self.chunk_size)) for c, s in enumerate(range(0, self.n, self.chunk_size))]

    def meta(self) -> dict:
        """The job's description for ``meta.json``: format, key, kind, spec, model (id, name,
        classes, preprocessing, input size), data set (hash, name, label, size, class names),
        normalised params, batch / chunk size and number of images. No arguments; the
        result fields (rows, columns, warnings, ...) are added by :func:`finalize`."""
        b = self.bundle
        return {"format": FORMAT, "key": self.key, "kind": self.spec.kind, "spec": self.spec.to_dict(),
                "model_id": b.model_id, "model_name": b.name, "model_classes": list(b.categories),
                "preprocess_id": b.preprocess.spec_id, "input_size": b.input_size,
                "dataset_hash": self.dataset.content_hash, "dataset_name": self.dataset.name,
                "dataset_label": self.spec.dataset.label(), "dataset_size": len(self.dataset),
                "class_names": list(self.dataset.class_names), "params": self.params,
                "batch_size": self.spec.batch_size, "chunk_size": self.chunk_size, "n_images": self.n}


LOCAL_MIN_CHUNK = 1024          # images: in-process, a part file per chunk costs a few ms whatever its size


def _default_chunk(n: int, batch: int, engine: str = "ray") -> int:
    batches = max(1, -(-n // batch))
    per_chunk = min(64, max(1, -(-batches // 8)))       # at least ~8 chunks, at most 64 batches each
    if engine == "local":
        # one process runs every chunk in turn: more chunks only add part files; resuming a
        # stopped job still keeps every finished chunk (at most 64 batches each)
        per_chunk = min(64, max(per_chunk, -(-LOCAL_MIN_CHUNK // batch)))
    return batch * per_chunk


def plan(spec: JobSpec, *, dataset: Dataset | None = None, bundle: ModelBundle | None = None,
         data_dir: str | os.PathLike | None = None, chunk_size: int | None = None,
         engine: str = "ray") -> JobPlan:
    """Resolve a spec: open the data set, build the model (to know its weights hash and
    resolve default parameters), compute the job key.

    Args:
        spec: the job.
        dataset: an already opened data set to use instead of opening ``spec.dataset``
            (in-process only for data sets that live in memory).
        bundle: an already built bundle of ``spec.model`` (its weights hash is used).
        data_dir: root of the outputs (default: the configured data directory).
        chunk_size: images per part file (a multiple of the batch size; default: about an
            eighth of the job, at most 64 batches; for ``engine="local"`` at least
            :data:`LOCAL_MIN_CHUNK` images, as far as 64 batches allow).
        engine: the engine the default chunk size is for: ``"ray"`` (chunks are the units
            spread over the workers) or ``"local"`` (one process: fewer, larger part files).
    """
    ds = dataset if dataset is not None else open_dataset(spec.dataset)
    b = bundle if bundle is not None else _bundle(spec.model, select_device())
    params = WORKERS[spec.kind].normalize(spec.params, b)
    idx = None if spec.indices is None else np.asarray(spec.indices, dtype=np.int64)
    try:
        rows, source = input_rows(ds, idx)
    except ConvlensError:
        if dataset is None:
            raise
        rows, source = _memory_rows(ds, idx), {"kind": "memory"}
    ident = {"format": FORMAT, "kind": spec.kind, "model_id": b.model_id, "preprocess": b.preprocess.spec_id,
             "dataset": ds.content_hash, "params": params, "batch_size": spec.batch_size,
             "indices": "all" if idx is None else hashlib.sha256(idx.tobytes()).hexdigest()}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    key = f"{spec.kind}-{b.model_id[:12]}-{ds.content_hash[:12]}-{h[:16]}"
    root = jobs_dir(data_dir)
    n = len(rows["index"])
    cs = chunk_size or _default_chunk(n, spec.batch_size, engine)
    cs = max(spec.batch_size, -(-int(cs) // spec.batch_size) * spec.batch_size)
    return JobPlan(spec=spec, bundle=b, dataset=ds, params=params, rows=rows, source=source, key=key,
                   final_dir=root / key, partial_dir=root / f"{key}.partial", chunk_size=cs)


def _memory_rows(ds: Dataset, idx) -> dict:
    idx = np.arange(len(ds), dtype=np.int64) if idx is None else idx
    n = len(idx)
    return {"index": idx, "path": np.asarray([ds.ids[i] for i in idx], dtype=object),
            "label": ds.labels[idx].astype(np.int64), "loc": np.asarray([""] * n, dtype=object),
            "digest": np.asarray([""] * n, dtype=object), "mask": np.asarray([""] * n, dtype=object)}


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------
def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _result_from(spec: JobSpec, d: Path, meta: dict, complete: bool) -> JobResult:
    sk = [tuple(s) for s in meta.get("skipped", [])]
    return JobResult(spec=spec, key=meta["key"], path=d, complete=complete, n_rows=int(meta.get("n_rows", 0)),
                     n_images=int(meta.get("n_images", 0)), skipped=sk, meta=meta)


def load_result(spec: JobSpec, *, data_dir: str | os.PathLike | None = None,
                dataset: Dataset | None = None) -> JobResult | None:
    """The complete result of ``spec`` if it was computed before (by any backend), else None.

    Args:
        spec: the job.
        data_dir: root of the outputs (default: the configured data directory).
        dataset: an already opened data set (see :func:`plan`).
    """
    p = plan(spec, data_dir=data_dir, dataset=dataset)
    meta = _read_json(p.final_dir / "meta.json")
    if meta and meta.get("complete"):
        return _result_from(spec, p.final_dir, meta, True)
    return None


def _prepare_partial(p: JobPlan) -> set[int]:
    """Create / validate the partial folder; returns the chunks already written."""
    d = p.partial_dir
    job = {"key": p.key, "chunk_size": p.chunk_size, "n": p.n}
    have = _read_json(d / "job.json")
    if have is not None and have != job:
        shutil.rmtree(d, ignore_errors=True)
        have = None
    d.mkdir(parents=True, exist_ok=True)
    if have is None:
        (d / "job.json").write_text(json.dumps(job))
    done = set()
    for f in d.glob("part-*.parquet"):
        try:
            part_info(f)
            done.add(int(f.stem.split("-")[1]))
        except Exception:  # noqa: BLE001 - an unreadable part is recomputed
            f.unlink(missing_ok=True)
    return done


def _dataset_skipped(p: JobPlan) -> list:
    return [[-1, str(i), f"not in the data set: {r}"] for i, r in p.dataset.skipped] if p.spec.indices is None else []


def _partial_result(p: JobPlan, engine: str, seconds: float) -> JobResult:
    rows, skipped, shapes, columns = 0, list(_dataset_skipped(p)), {}, []
    for f in sorted(p.partial_dir.glob("part-*.parquet")):
        n, sk, sh, cols = part_info(f)
        rows += n
        skipped.extend(sk)
        shapes.update(sh)
        columns = columns or cols
    meta = {**p.meta(), "complete": False, "n_rows": rows, "skipped": skipped, "arrays": shapes, "columns": columns,
            "derived": WORKERS[p.spec.kind].derived(p.params, p.bundle), "engine": engine, "seconds": seconds}
    return _result_from(p.spec, p.partial_dir, meta, False)


def _true_count(path: Path, column: str) -> int:
    """How many rows of a part file's bool ``column`` are True; the row groups whose
    statistics say "all False" (the usual case) are not read."""
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    md = pf.metadata
    j = pf.schema_arrow.get_field_index(column)
    n = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        st = rg.column(j).statistics if rg.num_rows else None
        if not rg.num_rows or (st is not None and st.has_min_max and not st.max):
            continue
        n += int(np.sum(pf.read_row_group(g, columns=[column]).column(column).to_numpy()))
    return n


def finalize(p: JobPlan, engine: str, seconds: float, extra: dict | None = None) -> JobResult:
    """Check every chunk is present, write ``meta.json`` (complete) and commit the folder.
    JobError if a chunk is missing (never a silent hole).

    Args:
        p: the job's plan; its partial folder holds the chunks' part files and is renamed to
            its final folder (if another process committed the same job first, theirs is kept).
        engine: the engine that computed the chunks, ``"local"`` or ``"ray"`` (recorded).
        seconds: the wall-clock time of the run in seconds (recorded).
        extra: further fields merged into ``meta.json`` last (e.g. the Ray run's info); None
            (the default) adds nothing.

    Returns:
        The complete :class:`JobResult`.
    """
    d = p.partial_dir
    rows, skipped, shapes, columns = 0, list(_dataset_skipped(p)), {}, []
    missing = []
    for c, a, b in p.chunks():
        f = d / f"part-{c:06d}.parquet"
        if not f.is_file():
            missing.append(c)
            continue
        n, sk, sh, cols = part_info(f)
        if n + len(sk) != b - a:
            raise JobError(f"Chunk {c} holds {n} rows and {len(sk)} skipped images for {b - a} images.")
        rows += n
        skipped.extend(sk)
        shapes.update(sh)
        columns = columns or cols
    if missing:
        raise JobError(f"{len(missing)} of {len(p.chunks())} chunks produced no output (first: chunk {missing[0]}); "
                       "the job is not complete. Run it again to compute the missing chunks.")
    warnings = []
    if skipped:
        warnings.append(f"{len(skipped)} image(s) could not be used; see the skipped list.")
    if "flat" in columns:
        nflat = sum(_true_count(f, "flat") for f in d.glob("part-*.parquet"))
        if nflat:
            warnings.append(f"{nflat} of {rows} saliency maps are constant (all values equal): "
                            "the method found nothing for those images.")
    meta = {**p.meta(), "complete": True, "n_rows": rows, "skipped": skipped, "arrays": shapes,
            "columns": columns, "derived": WORKERS[p.spec.kind].derived(p.params, p.bundle), "engine": engine,
            "seconds": seconds, "created": time.time(), "warnings": warnings, **(extra or {})}
    tmp = d / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, d / "meta.json")
    (d / "job.json").unlink(missing_ok=True)
    for t in d.glob(".tmp-*"):
        t.unlink(missing_ok=True)
    fsync_dir(d)
    try:
        os.rename(d, p.final_dir)
    except OSError:
        # Another process committed the same job first: theirs is identical.
        if not (p.final_dir / "meta.json").is_file():
            raise
        shutil.rmtree(d, ignore_errors=True)
    fsync_dir(p.final_dir.parent)
    return _result_from(p.spec, p.final_dir, meta, True)


def _run_local(p: JobPlan, progress: Progress | None, should_stop: ShouldStop | None,
               crop_cache: bool = True) -> JobResult:
    from analysis.core.jobs import heavy_job
    from analysis.dataset.manifest import CropCache
    t0 = time.perf_counter()
    done_chunks = _prepare_partial(p)
    worker = WORKERS[p.spec.kind](p.spec.model, p.params, bundle=p.bundle)
    crops = CropCache.open(p.dataset, p.bundle.preprocess) if crop_cache and not worker.raw_images else None
    runner = BatchRunner(worker, p.source, p.spec.batch_size, p.dataset, crops=crops)
    chunks = p.chunks()
    done = sum(b - a for c, a, b in chunks if c in done_chunks)
    if progress:
        progress(done, p.n)

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, p.n)

    todo = [(c, slice_rows(p.rows, a, b)) for c, a, b in chunks if c not in done_chunks]
    try:
        with heavy_job(p.bundle.device):
            finished = runner.run_chunks(todo, lambda c, table: write_part(p.partial_dir, c, table), should_stop,
                                         tick)
    finally:
        if crops is not None:
            crops.close()
    if not finished:
        return _partial_result(p, "local", time.perf_counter() - t0)
    return finalize(p, "local", time.perf_counter() - t0)


def run(spec: JobSpec, engine: str | None = None, progress: Progress | None = None,
        should_stop: ShouldStop | None = None, *, data_dir: str | os.PathLike | None = None,
        dataset: Dataset | None = None, bundle: ModelBundle | None = None, chunk_size: int | None = None,
        force: bool = False, ray_address: str | None = None, concurrency: int | None = None,
        num_gpus: float | None = None, retries: int | None = None,
        on_info: Callable[[str], None] | None = None, ray_pipeline: str | None = None,
        crop_cache: bool = True, ray_data_actors: bool | None = None) -> JobResult:
    """Run a data-set job (or return its stored result) and return the :class:`JobResult`.

    Args:
        spec: the job.
        engine: ``"local"`` (in-process) or ``"ray"``; default: the configured ``engine``.
        progress: ``progress(done, total)`` in images, called as batches (local) or chunks
            (Ray) finish.
        should_stop: polled between batches / chunks; when it returns True the job stops
            and the returned result has ``complete=False`` (run again to resume).
        data_dir: root of the outputs (default: the configured data directory).
        dataset: an already opened data set (see :func:`plan`).
        bundle: an already built bundle of ``spec.model`` (in-process reuse).
        chunk_size: images per part file (see :func:`plan`).
        force: recompute even when a complete result exists.
        ray_address, concurrency, num_gpus, retries: Ray only (see
            :func:`analysis.dataset.ray_backend.run_ray`).
        on_info: receives one-line notices (e.g. "started an embedded single-node Ray").
        ray_pipeline: Ray only: ``"data"`` (Ray Data ``map_batches``: on CPUs tasks in
            worker processes that keep the model between jobs, on GPUs an actor pool per
            job) or ``"pool"`` (warm actors kept between jobs); default the configured one.
        crop_cache: read and write the data set's decoded-crop cache
            (:class:`analysis.dataset.manifest.CropCache`; the same bits as decoding), in
            this process or in Ray's workers (the driver's ``cache_dir``).
        ray_data_actors: Ray Data only: True for an actor pool of the job on CPUs too,
            None for the default (see :func:`analysis.dataset.ray_backend.run_ray`'s
            ``data_actors``).

    Raises:
        ParameterError, DatasetError, ModelLoadError: bad spec, data set or model.
        JobError: the job failed as a whole (nothing is marked complete).
    """
    engine = (engine or get_config().engine).lower()
    if engine not in ENGINES:
        raise ParameterError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    p = plan(spec, dataset=dataset, bundle=bundle, data_dir=data_dir, chunk_size=chunk_size, engine=engine)
    meta = _read_json(p.final_dir / "meta.json")
    if meta and meta.get("complete"):
        if not force:
            if progress:
                progress(p.n, p.n)
            return _result_from(spec, p.final_dir, meta, True)
        shutil.rmtree(p.final_dir, ignore_errors=True)
    if engine == "local":
        return _run_local(p, progress, should_stop, crop_cache)
    if p.source.get("kind") == "memory":
        raise ParameterError("This data set exists only in this process's memory; use engine='local', or "
                             "save it as a folder, zip or manifest for Ray.")
    from analysis.dataset.ray_backend import run_ray
    t0 = time.perf_counter()
    done = _prepare_partial(p)
    info = run_ray(p, done, progress=progress, should_stop=should_stop, address=ray_address,
                   concurrency=concurrency, num_gpus=num_gpus, on_info=on_info, pipeline=ray_pipeline,
                   data_actors=ray_data_actors, crop_cache=crop_cache,
                   **({} if retries is None else {"retries": int(retries)}))
    if info.pop("stopped"):
        return _partial_result(p, "ray", time.perf_counter() - t0)
    return finalize(p, "ray", time.perf_counter() - t0, info)
