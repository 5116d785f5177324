"""The batch loop both backends share, and the Parquet parts it writes.

``BatchRunner`` runs a Worker over input rows batch by batch, as a three-stage pipeline:

* **decode** (a small thread pool, :func:`decode_threads`): read, decode and crop each
  image (``Preprocessing.geometry``: PIL's decode and resize release the GIL), or take its
  crop from the :class:`analysis.dataset.manifest.CropCache`; two batches ahead of the model;
* **assemble** (one thread): stack a batch's crops and convert uint8 -> normalised float
  once per batch (``Preprocessing.to_unit`` / ``normalize``: the same operations as
  ``bundle.inputs``, so the same bits);
* **model** (the calling thread): the worker's forward (+ backward);
* **write** (one thread): concatenate a chunk's outputs, convert to Arrow and write its
  Parquet part (``write_part``) while the next chunk runs.

``write_part`` writes one chunk's rows atomically. The in-process backend and every Ray
actor run exactly this code, so the same batches produce the same bits.
"""
from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from analysis.core.datasets import Dataset
from analysis.core.errors import ConvlensError
from analysis.core.fsio import atomic_open
from analysis.dataset.manifest import CropCache, ImageReader
from analysis.dataset.workers import Worker

ShouldStop = Callable[[], bool]


class JobError(ConvlensError):
    """A data-set job failed as a whole (a worker died too often, Ray is unreachable...)."""


# --------------------------------------------------------------------------------------
# Rows <-> Arrow
# --------------------------------------------------------------------------------------
def to_arrow(columns: dict, skipped: list | None = None):
    """Worker output (dict of numpy arrays, equal first dimension) -> pyarrow Table; N-D
    arrays become fixed-size-list columns. ``skipped`` goes into the schema metadata."""
    import pyarrow as pa
    arrays, names, shapes = [], [], {}
    for name, a in columns.items():
        a = np.asarray(a)
        if a.dtype == object:
            arr = pa.array([str(v) for v in a], type=pa.string())
        elif a.ndim == 1:
            arr = pa.array(a)
        else:
            flat = np.ascontiguousarray(a).reshape(-1)
            arr = pa.FixedSizeListArray.from_arrays(pa.array(flat), int(np.prod(a.shape[1:])))
            shapes[name] = list(a.shape[1:])
        arrays.append(arr)
        names.append(name)
    t = pa.Table.from_arrays(arrays, names=names) if names else pa.table({})
    meta = {b"convlens.arrays": json.dumps(shapes).encode(),
            b"convlens.skipped": json.dumps(skipped or []).encode()}
    return t.replace_schema_metadata(meta)


def concat_columns(outs: list[dict]) -> dict:
    """Concatenate worker outputs batch by batch."""
    if not outs:
        return {}
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def write_part(job_dir: Path, chunk: int, table) -> Path:
    """Write one chunk's table as ``part-<chunk>.parquet`` atomically."""
    import pyarrow.parquet as pq
    target = job_dir / f"part-{chunk:06d}.parquet"
    with atomic_open(target) as f:
        # No dictionary encoding: ids are unique and maps / features are floats (5x faster).
        pq.write_table(table, f, use_dictionary=False)
    return target


def part_info(path: Path) -> tuple[int, list, dict, list[str]]:
    """(rows, skipped, array shapes, column names) of a part file, from its footer only."""
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    md = pf.schema_arrow.metadata or {}
    skipped = json.loads(md.get(b"convlens.skipped", b"[]"))
    shapes = json.loads(md.get(b"convlens.arrays", b"{}"))
    return pf.metadata.num_rows, skipped, shapes, pf.schema_arrow.names


def _slice(rows: dict, a: int, b: int) -> dict:
    return {k: v[a:b] for k, v in rows.items()}


DECODE_THREADS_ENV = "CONVLENS_DECODE_THREADS"
LOOKAHEAD = 2                       # batches decoded ahead of the model
MAX_PENDING_WRITES = 2              # chunks waiting for the writer before the model waits


def decode_threads() -> int:
    """Threads that read, decode and crop images for one job: ``CONVLENS_DECODE_THREADS``,
    else the usable cores minus one (the model's), at least 1 and at most 8. Takes no
    arguments."""
    raw = os.environ.get(DECODE_THREADS_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return min(64, int(raw))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


class _Pending:
    """A batch on its way through the decode stage."""

    __slots__ = ("rows", "hit", "hit_crops", "parts")

    def __init__(self, rows: dict, hit: np.ndarray, hit_crops: np.ndarray, parts: list):
        self.rows, self.hit, self.hit_crops, self.parts = rows, hit, hit_crops, parts


class BatchRunner:
    """Reads input rows and runs the worker over them batch by batch: the one loop both
    backends share (same batches -> same bits). See the module docstring for the stages.

    Args:
        worker: the job's :class:`analysis.dataset.workers.Worker`.
        source: the image source of the rows (:func:`analysis.dataset.manifest.input_rows`);
            ``{"kind": "memory"}`` reads through ``dataset``.
        batch_size: images per forward.
        dataset: the data set (needed for in-memory data sets only).
        crops: a :class:`CropCache` of the data set for the worker's preprocessing, or None.
            Not used when the worker needs the decoded images themselves
            (``worker.raw_images``).
        threads: decode threads (default :func:`decode_threads`).
    """

    def __init__(self, worker: Worker, source: dict, batch_size: int, dataset: Dataset | None = None, *,
                 crops: CropCache | None = None, threads: int | None = None):
        self.worker, self.batch_size = worker, batch_size
        self.reader = ImageReader(source) if source.get("kind") != "memory" else None
        self.dataset = dataset
        self.raw = bool(getattr(worker, "raw_images", True))
        self.crops = None if self.raw else crops
        self.threads = int(threads) if threads else decode_threads()
        self.pre = worker.bundle.preprocess
        self.check = source.get("kind") == "files"

    # -- decode stage -----------------------------------------------------------------
    def _read_one(self, rows: dict, k: int) -> tuple:
        if self.reader is not None:
            m = rows.get("mask")
            return self.reader.read_one(rows["index"][k], rows["loc"][k], rows["digest"][k],
                                        str(m[k]) if m is not None else "")
        try:
            return self.dataset.get(int(rows["index"][k])), None, ""
        except ConvlensError as e:
            return None, None, str(e)

    def _decode(self, rows: dict, positions: Sequence[int]) -> list[tuple]:
        """Rows ``positions`` -> ``(image, mask, crop, error)`` each (error "" when fine)."""
        out = []
        for k in positions:
            img, m, err = self._read_one(rows, k)
            crop = None
            if not err:
                try:
                    crop = self.pre.geometry(img)
                except ConvlensError as e:
                    img, m, err = None, None, str(e) or type(e).__name__
                else:
                    if self.crops is not None:
                        self.crops.put(int(rows["index"][k]), crop)
            out.append((img if self.raw else None, m, crop, err))
        return out

    def _cached(self, rows: dict) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows["index"])
        if self.crops is None:
            return np.zeros(n, bool), np.empty((0,), np.uint8)
        hit, crops = self.crops.get(rows["index"])
        if not hit.any():
            return hit, crops
        pos = np.flatnonzero(hit)
        use = np.ones(len(pos), bool)
        m = rows.get("mask")
        if m is not None:                     # rows with a mask file are read in full (the mask too)
            use &= np.array([not str(m[k]) for k in pos], bool)
        if self.check:                        # a file that changed since indexing is reported, not served
            use &= np.array([_unchanged(str(rows["loc"][k]), str(rows["digest"][k])) for k in pos], bool)
        if not use.all():
            hit[pos[~use]] = False
            crops = crops[use]
        return hit, crops

    def _submit(self, pool: ThreadPoolExecutor | None, rows: dict) -> _Pending:
        hit, crops = self._cached(rows)
        miss = np.flatnonzero(~hit).tolist()
        parts = []
        if miss:
            k = max(1, min(self.threads, len(miss)))
            step = -(-len(miss) // k)
            for a in range(0, len(miss), step):
                pos = miss[a:a + step]
                if pool is None:
                    f: Future = Future()
                    f.set_result(self._decode(rows, pos))
                else:
                    f = pool.submit(self._decode, rows, pos)
                parts.append((pos, f))
        return _Pending(rows, hit, crops, parts)

    # -- assemble stage ---------------------------------------------------------------
    def _assemble(self, p: _Pending) -> tuple[dict | None, list]:
        rows, n = p.rows, len(p.rows["index"])
        res: list = [None] * n
        for k, c in zip(np.flatnonzero(p.hit), p.hit_crops):
            res[k] = (None, None, c, "")
        for pos, f in p.parts:
            for k, r in zip(pos, f.result()):
                res[k] = r
        skipped = [[int(rows["index"][k]), str(rows["path"][k]), r[3]] for k, r in enumerate(res) if r[3]]
        ok = [k for k, r in enumerate(res) if not r[3]]
        if not ok:
            return None, skipped
        crops = np.stack([res[k][2] for k in ok])
        batch = {"index": rows["index"][ok], "path": rows["path"][ok], "label": rows["label"][ok],
                 "image": _objects([res[k][0] for k in ok]), "mask": _objects([res[k][1] for k in ok]),
                 "crop": crops}
        # uint8 -> normalised float once per batch; the same operations as bundle.inputs(images)
        batch["x"] = self.pre.normalize(self.pre.to_unit(crops)).to(self.worker.bundle.device)
        return batch, skipped

    def prepare(self, rows: dict) -> tuple[dict | None, list]:
        """Read, decode and preprocess one batch in this thread: (worker batch with the crops
        ``crop`` and the model input ``x``, or None when no image could be read; skipped
        entries ``[index, path, reason]``).

        Args:
            rows: the batch's input rows.
        """
        return self._assemble(self._submit(None, rows))

    def run_batch(self, rows: dict) -> tuple[dict | None, list]:
        """One batch: (worker output for the readable images or None, skipped entries).

        Args:
            rows: the batch's input rows.
        """
        batch, skipped = self.prepare(rows)
        return (self.worker(batch) if batch is not None else None), skipped

    # -- the pipeline -----------------------------------------------------------------
    def run_chunks(self, chunks: Iterable[tuple[int, dict]], write: Callable[[int, object], None],
                   should_stop: ShouldStop | None = None, on_batch: Callable[[int], None] | None = None) -> bool:
        """Run every chunk through the pipeline and hand each finished chunk to ``write``.

        Args:
            chunks: ``(chunk number, input rows)`` pairs, in order.
            write: ``write(chunk number, pyarrow table)``, called in the writer thread, one
                chunk at a time in order; the table's schema metadata holds the skipped
                entries.
            should_stop: polled before every batch; when it returns True no further batch
                starts, the chunks finished so far are still written and False is returned.
            on_batch: called with the number of input rows of each batch once it is done.

        Returns:
            True when every chunk was computed and written, False when stopped.
        """
        plan = []                                         # (chunk, rows of the chunk, batch start)
        for c, rows in chunks:
            n = len(rows["index"])
            if n == 0:
                plan.append((c, rows, None))
            plan.extend((c, rows, a) for a in range(0, n, self.batch_size))
        if not plan:
            return True
        decode = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="convlens-decode")
        assemble = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convlens-assemble")
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convlens-write")
        ahead: deque = deque()
        writes: deque = deque()
        stopped = False

        def batch_rows(j: int) -> dict | None:
            c, rows, a = plan[j]
            return None if a is None else _slice(rows, a, min(len(rows["index"]), a + self.batch_size))

        def submit(j: int) -> None:
            r = batch_rows(j)
            if r is None:
                ahead.append(None)
            else:
                ahead.append(assemble.submit(self._assemble, self._submit(decode, r)))

        try:
            for j in range(min(LOOKAHEAD, len(plan))):
                submit(j)
            outs, skipped = [], []
            for j, (c, _rows, a) in enumerate(plan):
                if a is not None and should_stop is not None and should_stop():
                    stopped = True
                    break
                fut = ahead.popleft()
                if j + LOOKAHEAD < len(plan):
                    submit(j + LOOKAHEAD)
                if fut is not None:
                    batch, sk = fut.result()
                    if batch is not None:
                        outs.append(self.worker(batch))
                    skipped.extend(sk)
                    if on_batch is not None:
                        on_batch(len(batch_rows(j)["index"]))
                last = j + 1 == len(plan) or plan[j + 1][0] != c
                if last:
                    while len(writes) >= MAX_PENDING_WRITES:
                        writes.popleft().result()
                    writes.append(writer.submit(_write_chunk, write, c, outs, skipped))
                    outs, skipped = [], []
            while writes:
                writes.popleft().result()
        finally:
            decode.shutdown(wait=True, cancel_futures=True)
            assemble.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True)          # chunks already finished are still written
        return not stopped

    def run_chunk(self, rows: dict, should_stop: ShouldStop | None = None,
                  on_batch: Callable[[int], None] | None = None):
        """All batches of ``rows`` -> (pyarrow table, skipped), or None when stopped.

        Args:
            rows: the chunk's input rows.
            should_stop: polled before every batch.
            on_batch: called with the number of input rows of each batch once it is done.
        """
        got: list = []
        done = self.run_chunks([(0, rows)], lambda c, t: got.append(t), should_stop, on_batch)
        if not done:
            return None
        table = got[0]
        return table, json.loads((table.schema.metadata or {}).get(b"convlens.skipped", b"[]"))


def _write_chunk(write: Callable[[int, object], None], chunk: int, outs: list[dict], skipped: list) -> None:
    write(chunk, to_arrow(concat_columns(outs), skipped))


def _unchanged(path: str, digest: str) -> bool:
    if not digest.startswith("stat:"):
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    return f"stat:{st.st_size}:{st.st_mtime_ns}" == digest


def _objects(items: list) -> np.ndarray:
    a = np.empty(len(items), dtype=object)
    for k, v in enumerate(items):
        a[k] = v
    return a
