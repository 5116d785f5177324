"""The batch loop both backends share, and the Parquet parts it writes.

``BatchRunner`` reads, decodes and preprocesses a slice of input rows (one batch ahead, in a
helper thread) and runs a Worker over it batch by batch; ``write_part`` writes one chunk's
rows atomically. The in-process backend and every Ray actor run exactly this code, so the
same batches produce the same bits.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from analysis.core.datasets import Dataset
from analysis.core.errors import ConvlensError
from analysis.core.fsio import atomic_open
from analysis.dataset.manifest import ImageReader
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


class BatchRunner:
    """Reads a slice of input rows and runs the worker over it batch by batch: the one
    loop both backends share (same batches -> same bits)."""

    def __init__(self, worker: Worker, source: dict, batch_size: int, dataset: Dataset | None = None):
        self.worker, self.batch_size = worker, batch_size
        self.reader = ImageReader(source) if source.get("kind") != "memory" else None
        self.dataset = dataset

    def _read(self, rows: dict):
        if self.reader is not None:
            return self.reader.read(rows)
        images, errors = [], []
        for i in rows["index"]:
            try:
                images.append(self.dataset.get(int(i)))
                errors.append("")
            except ConvlensError as e:
                images.append(None)
                errors.append(str(e))
        return images, [None] * len(images), errors

    def prepare(self, rows: dict) -> tuple[dict | None, list]:
        """Read, decode and preprocess one batch: (worker batch with the model input ``x``,
        or None when no image could be read; skipped entries)."""
        images, masks, errors = self._read(rows)
        ok = [k for k, e in enumerate(errors) if not e]
        skipped = [[int(rows["index"][k]), str(rows["path"][k]), errors[k]] for k, e in enumerate(errors) if e]
        if not ok:
            return None, skipped
        batch = {"index": rows["index"][ok], "path": rows["path"][ok], "label": rows["label"][ok],
                 "image": _objects([images[k] for k in ok]), "mask": _objects([masks[k] for k in ok])}
        try:
            batch["x"] = self.worker.inputs(batch)
        except ConvlensError as e:        # an image the preprocessing refuses: skip the batch's images one by one
            keep = []
            for k in range(len(ok)):
                try:
                    self.worker.bundle.preprocess(batch["image"][k])
                    keep.append(k)
                except ConvlensError as e1:
                    skipped.append([int(batch["index"][k]), str(batch["path"][k]), str(e1) or str(e)])
            if not keep:
                return None, skipped
            batch = {key: v[keep] for key, v in batch.items() if key != "x"}
            batch["x"] = self.worker.inputs(batch)
        return batch, skipped

    def run_batch(self, rows: dict) -> tuple[dict | None, list]:
        """One batch: (worker output for the readable images or None, skipped entries)."""
        batch, skipped = self.prepare(rows)
        return (self.worker(batch) if batch is not None else None), skipped

    def run_chunk(self, rows: dict, should_stop: ShouldStop | None = None,
                  on_batch: Callable[[int], None] | None = None):
        """All batches of ``rows`` -> (pyarrow table, skipped), or None when stopped.

        The next batch is read and preprocessed in a helper thread while the model runs
        the current one (same functions, same results; only the order of waiting changes).
        """
        outs, skipped = [], []
        n = len(rows["index"])
        starts = list(range(0, n, self.batch_size))
        if not starts:
            return to_arrow({}, []), []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="convlens-prefetch") as pool:
            nxt = pool.submit(self.prepare, _slice(rows, 0, min(n, self.batch_size)))
            for j, a in enumerate(starts):
                if should_stop is not None and should_stop():
                    nxt.cancel()
                    return None
                batch, sk = nxt.result()
                if j + 1 < len(starts):
                    b = starts[j + 1]
                    nxt = pool.submit(self.prepare, _slice(rows, b, min(n, b + self.batch_size)))
                if batch is not None:
                    outs.append(self.worker(batch))
                skipped.extend(sk)
                if on_batch is not None:
                    on_batch(min(n, a + self.batch_size) - a)
        return to_arrow(concat_columns(outs), skipped), skipped


def _objects(items: list) -> np.ndarray:
    a = np.empty(len(items), dtype=object)
    for k, v in enumerate(items):
        a[k] = v
    return a
