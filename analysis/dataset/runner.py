"""The batch loop both backends share, and the Parquet parts it writes.

``BatchRunner`` runs a Worker over input rows batch by batch, as a three-stage pipeline:

* **prepare** (one thread, plus :func:`decode_threads` - 1 decode threads): take the crops
  the :class:`analysis.dataset.manifest.CropCache` holds, read, decode and crop the other
  images (``Preprocessing.geometry``; PIL's decode and resize release the GIL), then stack
  the batch's crops and convert uint8 -> normalised float once per batch
  (``Preprocessing.to_unit`` / ``normalize``: the same operations as ``bundle.inputs``, so
  the same bits); up to two batches ahead of the model;
* **model** (the calling thread): the worker's model part (``Worker.compute``: forward,
  backward);
* **write** (one thread), per chunk: the worker's numpy post-processing of each batch
  (``Worker.finish``), then concatenate, convert to Arrow and write the Parquet part
  (``write_part``) while the model runs the next chunk's batches.

``write_part`` writes one chunk's rows atomically. The in-process backend and every Ray
actor run exactly this code, so the same batches produce the same bits.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from analysis.core.batching import usable_cores
from analysis.core.datasets import Dataset
from analysis.core.errors import ConvlensError
from analysis.core.fsio import atomic_open
from analysis.core.models.bundle import all_grey
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


def write_part(job_dir: Path, chunk: int, table) -> Path:
    """Write one chunk's table as ``part-<chunk>.parquet`` atomically.

    Args:
        job_dir: the job's (partial) folder the part file goes in.
        chunk: the chunk number (zero-padded to 6 digits in the file name).
        table: the chunk's ``pyarrow.Table`` (written without dictionary encoding).

    Returns:
        The path of the written file.
    """
    import pyarrow.parquet as pq
    target = job_dir / f"part-{chunk:06d}.parquet"
    with atomic_open(target) as f:
        # No dictionary encoding: ids are unique and maps / features are floats (5x faster).
        pq.write_table(table, f, use_dictionary=False)
    return target


def part_info(path: Path) -> tuple[int, list, dict, list[str]]:
    """(rows, skipped, array shapes, column names) of a part file, from its footer only.

    Args:
        path: a ``part-<chunk>.parquet`` file written by :func:`write_part`; skipped images
            and array shapes come from its ``convlens.skipped`` / ``convlens.arrays`` schema
            metadata.
    """
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    md = pf.schema_arrow.metadata or {}
    skipped = json.loads(md.get(b"convlens.skipped", b"[]"))
    shapes = json.loads(md.get(b"convlens.arrays", b"{}"))
    return pf.metadata.num_rows, skipped, shapes, pf.schema_arrow.names


def slice_rows(rows: dict, a: int, b: int) -> dict:
    """Rows ``a`` to ``b - 1`` of a column dict (name -> array or list): a batch or a chunk.

    Args:
        rows: the columns, all of the same length.
        a: first row.
        b: one past the last row.
    """
    return {k: v[a:b] for k, v in rows.items()}


DECODE_THREADS_ENV = "CONVLENS_DECODE_THREADS"
LOOKAHEAD = 2                       # batches decoded ahead of the model
MAX_PENDING_WRITES = 2              # chunks waiting for the writer before the model waits
GROUP_BYTES = 16 << 20              # model input prepared in one go (consecutive batches of a chunk)


def decode_threads(device=None) -> int:
    """Helper threads that read, decode and crop images (and a writer thread) for one job,
    0 for none: every stage in the model's thread, one batch after the other.

    ``CONVLENS_DECODE_THREADS`` decides when set. Otherwise: on an accelerator (the model's
    thread mostly waits for the device) the usable cores minus one; on the CPU, the cores
    torch's own thread pool leaves free (``usable cores - torch.get_num_threads()``), and 0
    when it uses them all, torch's default. Measured on 2 cores (docs/benchmarks.md):
    helper threads that share the model's cores slow every job down, because each
    ``parallel_for`` of the model waits for its slowest thread, while the work they take off
    the model is a few percent of it.

    Args:
        device: the model's device (``torch.device`` or its name); None counts as the CPU.
    """
    raw = os.environ.get(DECODE_THREADS_ENV, "").strip()
    if raw.isdigit():
        return min(64, int(raw))
    cores = usable_cores()
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    if kind != "cpu":
        return max(1, min(8, cores - 1))
    import torch
    return max(0, min(8, cores - torch.get_num_threads()))


class BatchGeometry:
    """``Preprocessing.geometry`` for many images at once, with the same bits.

    PIL resizes in two separable passes, horizontal then vertical, each rounding to uint8
    with coefficients that depend only on the sizes: every output row of the horizontal
    pass comes from its own input row, every output column of the vertical pass from its own
    input column. So images of one size are resized together: stacked one above the other
    for the horizontal pass, side by side for the vertical one (one C call each, without
    the GIL, instead of five Python-level PIL calls per image), then cropped by slicing.
    The first group of every size (per geometry, once per process) is checked against
    ``geometry`` image by image; a difference (another Pillow build) switches the batched
    path off for that geometry.

    Args:
        preprocess: the bundle's :class:`Preprocessing`.
    """

    MAX_SIDE = 32000                    # pixels of a stacked image's long side

    _checked: dict = {}                  # (geometry, h, w, grey) -> bool, for the whole process
    _checked_lock = threading.Lock()

    def __init__(self, preprocess):
        self.pre = preprocess
        self.geo = (preprocess.input_size, preprocess.resize_size, preprocess.interpolation, preprocess.crop_mode)
        with self._checked_lock:
            self.verified: set[tuple] = {(h, w, grey) for (g, h, w, grey), ok in self._checked.items()
                                                   if g == self.geo and ok}
            self.enabled = all(ok for (g, *_), ok in self._checked.items() if g == self.geo)
        self._lock = threading.Lock()

    def __call__(self, images: Sequence[np.ndarray | None]) -> list:
        """Crops of ``images``: an (S, S, 3) uint8 array per image, None where the image is
        None, and the error text where the preprocessing refuses the image.

        Args:
            images: decoded RGB uint8 images (or None).
        """
        s = self.pre.input_size
        dest = np.empty((len(images), s, s, 3), np.uint8)
        filled, refused = self.into(images, dest)
        return [dest[k] if filled[k] else refused.get(k) for k in range(len(images))]

    def into(self, images: Sequence[np.ndarray | None], dest: np.ndarray,
             grey_rows: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, str]]:
        """Write the crops of ``images`` into ``dest[k]`` (one copy per group of same-size
        images): ``(filled, refused)``, a bool array of the rows written and ``{k: error
        text}`` for the images the preprocessing refuses (None images are neither).

        Args:
            images: decoded RGB uint8 images (or None), or one (n, h, w, 3) uint8 array of
                same-size images.
            dest: an (len(images), S, S, 3) uint8 array.
            grey_rows: a bool array of len(images) or None: set True for the rows whose crop
                is known to be grey (R == G == B; resized as one band), False for the others.
        """
        if grey_rows is not None:
            grey_rows[:] = False
        filled = np.zeros(len(images), bool)
        refused: dict[int, str] = {}

        def one(k: int) -> None:
            c = self._one(images[k])
            if isinstance(c, str):
                refused[k] = c
            else:
                dest[k] = c
                filled[k] = True
        groups: dict[tuple[int, int], list[int]] = {}
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == 3 \
                and images.dtype == np.uint8 and self.enabled:
            groups[images.shape[1:3]] = list(range(len(images)))     # one stack of same-size images
        else:
            for k, im in enumerate(images):
                if im is None:
                    continue
                if self.enabled and isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3 \
                        and im.dtype == np.uint8:
                    groups.setdefault(im.shape[:2], []).append(k)
                else:
                    one(k)
        for (h, w), ks in groups.items():
            if len(ks) == 1 or not self.enabled:
                for k in ks:
                    one(k)
                continue
            per = max(1, self.MAX_SIDE // max(h, w, self._target(h, w)[0]))
            for a in range(0, len(ks), per):
                sub = ks[a:a + per]
                stack = images[a:a + per] if isinstance(images, np.ndarray) else np.stack([images[k] for k in sub])
                grey = all_grey(stack)
                crops = self._group(stack, grey)        # grey: (n, S, S), one band
                with self._lock:
                    check = (h, w, grey) not in self.verified
                if check:
                    ok = all(np.array_equal(np.broadcast_to(crops[i][..., None], (*crops[i].shape, 3)) if grey
                                            else crops[i], self.pre.geometry(images[k])) for i, k in enumerate(sub))
                    with self._lock:
                        if ok:
                            self.verified.add((h, w, grey))
                        else:
                            self.enabled = False
                    with self._checked_lock:
                        BatchGeometry._checked[(self.geo, h, w, grey)] = ok
                    if not ok:
                        for k in sub:
                            one(k)
                        continue
                at = np.asarray(sub, np.int64)
                if grey_rows is not None and grey:
                    grey_rows[at] = True
                if grey:
                    # band by band: numpy copies a broadcast (n, S, S, 1) -> (n, S, S, 3) or a
                    # repeated array several times slower than three strided copies
                    if at[-1] - at[0] + 1 == len(at):       # consecutive rows
                        for c in range(3):
                            dest[at[0]:at[-1] + 1, ..., c] = crops
                    else:
                        dest[at] = np.repeat(crops[..., None], 3, axis=3)
                else:
                    dest[at] = crops
                filled[at] = True
        return filled, refused

    def _one(self, image):
        try:
            return self.pre.geometry(image)
        except ConvlensError as e:
            return str(e) or type(e).__name__

    def _target(self, h: int, w: int) -> tuple[int, int]:
        pre = self.pre
        if pre.crop_mode == "squash":
            return pre.resize_size, pre.resize_size
        s = pre.resize_size / min(w, h)
        return max(pre.input_size, round(w * s)), max(pre.input_size, round(h * s))

    def _group(self, group: np.ndarray, grey: bool = False) -> np.ndarray:
        """The crops of a stack of same-size images: (n, S, S, 3), or (n, S, S) when ``grey``
        (the one band every channel equals)."""
        from PIL import Image

        from analysis.core.models.bundle import PIL_INTERPOLATION
        n, h, w, _ = group.shape
        nw, nh = self._target(h, w)
        interp = PIL_INTERPOLATION[self.pre.interpolation]
        # grey images (R == G == B: scans, digits) are resized as one channel: PIL resizes
        # every band alike, so the three equal bands come out equal (checked like the rest)
        out = group[..., :1] if grey else group
        c = out.shape[3]

        def image(a: np.ndarray):
            return Image.fromarray(np.ascontiguousarray(a[..., 0] if grey else a))
        if nw != w:        # horizontal pass: all images stacked vertically
            tall = image(out.reshape(n * h, w, c))
            out = np.asarray(tall.resize((nw, n * h), interp)).reshape(n, h, nw, c)
        if nh != h:        # vertical pass: all images side by side
            wide = image(out.transpose(1, 0, 2, 3).reshape(h, n * nw, c))
            out = np.asarray(wide.resize((n * nw, nh), interp)).reshape(nh, n, nw, c).transpose(1, 0, 2, 3)
        s = self.pre.input_size
        left, top = (nw - s) // 2, (nh - s) // 2
        crop = out[:, top:top + s, left:left + s]
        return crop[..., 0] if grey else np.ascontiguousarray(crop)


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
        threads: helper threads (default :func:`decode_threads` for the worker's device; when
            that is 0, the images missing from the crop cache are still decoded on every
            usable core while the model waits). 0 runs every stage in the calling thread.
    """

    def __init__(self, worker: Worker, source: dict, batch_size: int, dataset: Dataset | None = None, *,
                 crops: CropCache | None = None, threads: int | None = None):
        self.worker, self.batch_size = worker, batch_size
        self.reader = ImageReader(source) if source.get("kind") != "memory" else None
        self.dataset = dataset
        self.raw = bool(getattr(worker, "raw_images", True))
        self.crops = None if self.raw else crops
        self.threads = decode_threads(worker.bundle.device) if threads is None else max(0, int(threads))
        self.pre = worker.bundle.preprocess
        self.cropper = BatchGeometry(self.pre)
        # no helper threads by default: image files are still decoded on this many threads,
        # while the model waits (1 when the caller or CONVLENS_DECODE_THREADS chose the threads)
        # (files only: decoding them releases the GIL; arrays already in memory, like the
        # digits, are resized faster by one thread than by two taking turns)
        chosen = threads is not None or os.environ.get(DECODE_THREADS_ENV, "").strip().isdigit()
        files = self.reader is not None and source.get("kind") != "digits"
        self.decode_cores = min(8, usable_cores()) if files and not chosen else 1
        self._decoders = 1
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

    def _decode(self, rows: dict, positions: Sequence[int]) -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``positions`` -> ``(image, mask, error)`` each (error "" when fine), their crops
        (an (len(positions), S, S, 3) uint8 array), which rows of it hold a crop and which
        of those are known to be grey."""
        s = self.pre.input_size
        dense = np.empty((len(positions), s, s, 3), np.uint8)
        grey = np.zeros(len(positions), bool)
        if self.reader is not None and self.reader.source.get("kind") == "digits":   # one in-memory array
            from analysis.core.datasets import digits_images
            stack = digits_images()[np.asarray(rows["index"])[np.asarray(positions, np.int64)]]
            filled, refused = self.cropper.into(stack, dense, grey)
            read = [(im, None, "") for im in stack] if self.raw else [(None, None, "")] * len(positions)
        else:
            read = [self._read_one(rows, k) for k in positions]
            filled, refused = self.cropper.into([r[0] if not r[2] else None for r in read], dense, grey)
        out = []
        for j, (img, m, err) in enumerate(read):
            if not err and j in refused:                # the preprocessing refuses this image
                img, m, err = None, None, refused[j]
            out.append((img if self.raw else None, m, err))
        return out, dense, filled, grey

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

    def _prepare(self, rows: dict, pool: ThreadPoolExecutor | None = None,
                 bounds: Sequence[tuple[int, int]] | None = None) -> list[tuple[dict | None, list]]:
        """Batches ``bounds`` (``(a, b)`` row ranges of ``rows``; default: all rows as one
        batch), prepared together: cached crops, then the other images decoded and cropped
        here and (when ``pool`` is given) on the decode pool, then uint8 -> normalised float
        once for all of them. One ``(batch or None, skipped entries)`` per range, each batch
        holding exactly the readable images of its range, so the model sees the same batches
        as when each is prepared alone (and the conversion is per element: the same bits)."""
        n = len(rows["index"])
        bounds = list(bounds) if bounds is not None else [(0, n)]
        s = self.pre.input_size
        hit, hit_crops = self._cached(rows)
        crops = np.empty((n, s, s, 3), np.uint8)
        if len(hit_crops):
            crops[hit] = hit_crops
        ok = hit.copy()
        images = masks = None
        errors: dict[int, str] = {}
        miss = np.flatnonzero(~hit).tolist()
        all_grey_rows = False
        if miss:
            k = max(1, min(self._decoders if pool is not None else 1, len(miss)))
            step = -(-len(miss) // k)
            parts = [miss[a:a + step] for a in range(0, len(miss), step)]
            futs = [pool.submit(self._decode, rows, pos) for pos in parts[1:]] if pool is not None else []
            done = [(parts[0], self._decode(rows, parts[0]))] + [(pos, f.result()) for pos, f in zip(parts[1:], futs)]
            fresh = []
            all_grey_rows = True
            for pos, (res, dense, filled, grey) in done:
                all_grey_rows = all_grey_rows and bool(grey[filled].all())
                for j, (img, m, err) in enumerate(res):
                    if err:
                        errors[pos[j]] = err
                        continue
                    if img is not None:
                        images = images if images is not None else np.empty(n, dtype=object)
                        images[pos[j]] = img
                    if m is not None:
                        masks = masks if masks is not None else np.empty(n, dtype=object)
                        masks[pos[j]] = m
                at = np.asarray(pos, np.int64)[filled]
                if len(done) == 1 and len(pos) == n and filled.all():
                    crops = dense                       # every row decoded here, in order: no copy
                else:
                    crops[at] = dense[filled]           # one copy into the batch, not one per image
                ok[at] = True
                fresh.append(at)
            at = np.concatenate(fresh)
            if self.crops is not None and len(at):      # for the next job on this data set
                # every row decoded: at is 0..n-1 in order (the parts are consecutive slices of
                # the sorted misses), so the whole array goes
                self.crops.put_many(np.asarray(rows["index"])[at], crops if len(at) == n else crops[at])
        # uint8 -> normalised float once for every readable image; the same operations as
        # bundle.inputs(images), element by element (every crop decoded here grey, none from
        # the cache: known grey, not checked again)
        grey = True if miss and not hit.any() and all_grey_rows else None
        x = self.pre.model_input(crops[ok] if not ok.all() else crops, grey=grey).to(self.worker.bundle.device) \
            if ok.any() else None
        first = np.concatenate([[0], np.cumsum(ok)])            # row -> its position in x
        out = []
        for a, b in bounds:
            skipped = [[int(rows["index"][k]), str(rows["path"][k]), errors[k]] for k in sorted(errors) if a <= k < b]
            sel = ok[a:b]
            m_ok = int(sel.sum())
            if not m_ok:
                out.append((None, skipped))
                continue
            part = slice(a, b)
            batch = {"index": rows["index"][part][sel], "path": rows["path"][part][sel],
                     "label": rows["label"][part][sel],
                     "image": images[part][sel] if images is not None else np.empty(m_ok, dtype=object),
                     "mask": masks[part][sel] if masks is not None else np.empty(m_ok, dtype=object),
                     "crop": crops[part][sel], "x": x[int(first[a]):int(first[b])]}
            out.append((batch, skipped))
        return out

    def prepare(self, rows: dict) -> tuple[dict | None, list]:
        """Read, decode and preprocess one batch in this thread: (worker batch with the crops
        ``crop`` and the model input ``x``, or None when no image could be read; skipped
        entries ``[index, path, reason]``).

        Args:
            rows: the batch's input rows.
        """
        return self._prepare(rows)[0]

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
        plan = []                    # per batch: (chunk, the chunk's rows, a, b); rows None for an empty chunk
        for c, rows in chunks:
            n = len(rows["index"])
            if n == 0:
                plan.append((c, None, 0, 0))
            plan.extend((c, rows, a, min(n, a + self.batch_size)) for a in range(0, n, self.batch_size))
        if not plan:
            return True
        if self.threads == 0:
            return self._run_serial(plan, write, should_stop, on_batch)
        # the prepare thread decodes too; the pool holds the other threads - 1 decoders
        self._decoders = self.threads
        decode = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="convlens-decode") \
            if self.threads > 1 else None
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convlens-write")
        ready: queue.Queue = queue.Queue(maxsize=LOOKAHEAD)
        quit_ = threading.Event()

        def produce() -> None:                            # the prepare thread: batches in order, ahead
            items = self._prepared(plan, decode)
            while not quit_.is_set():
                try:
                    item = (next(items), None)
                except StopIteration:
                    return
                except BaseException as e:  # noqa: BLE001 - handed to the model thread, raised there
                    item = (None, e)
                while not quit_.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item[1] is not None:
                    return

        producer = threading.Thread(target=produce, name="convlens-prepare", daemon=True)
        producer.start()
        writes: deque = deque()
        stopped = False
        try:
            staged, skipped = [], []
            for j, (c, rows, a, b) in enumerate(plan):
                if rows is not None and should_stop is not None and should_stop():
                    stopped = True
                    break
                got, err = ready.get()
                if err is not None:
                    raise err
                if got is not None:
                    batch, sk = got
                    if batch is not None:
                        staged.append(self.worker.compute(batch))    # the model; the rest on the writer
                    skipped.extend(sk)
                    if on_batch is not None:
                        on_batch(b - a)
                if j + 1 == len(plan) or plan[j + 1][0] != c:      # the chunk's last batch
                    while len(writes) >= MAX_PENDING_WRITES:
                        writes.popleft().result()
                    writes.append(writer.submit(_write_chunk, self.worker, write, c, staged, skipped))
                    staged, skipped = [], []
            while writes:
                writes.popleft().result()
        finally:
            quit_.set()
            while producer.is_alive():
                try:
                    ready.get(timeout=0.05)
                except queue.Empty:
                    pass
            if decode is not None:
                decode.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True)          # chunks already finished are still written
        return not stopped

    def _prepared(self, plan: list, pool: ThreadPoolExecutor | None = None) -> Iterator:
        """``(batch or None, skipped)`` for every batch of ``plan`` in order (None for an empty
        chunk). Consecutive batches of one chunk are prepared together, up to
        :data:`GROUP_BYTES` of model input: for small inputs (the 32 x 32 digits) the fixed
        cost of each step per call is what a batch costs, so one call per group instead of
        per batch takes most of the preparation's time off the model's way."""
        pre = self.pre
        per_batch = pre.input_size * pre.input_size * (1 if pre.grayscale else 3) * 4 * self.batch_size
        limit = max(1, GROUP_BYTES // max(1, per_batch))
        j = 0
        while j < len(plan):
            c, rows, a0, _ = plan[j]
            if rows is None:
                yield None
                j += 1
                continue
            e = j + 1
            while e < len(plan) and e - j < limit and plan[e][0] == c and plan[e][1] is rows:
                e += 1
            b0 = plan[e - 1][3]
            yield from self._prepare(slice_rows(rows, a0, b0), pool, [(a - a0, b - a0) for _, _, a, b in plan[j:e]])
            j = e

    def _run_serial(self, plan: list, write, should_stop, on_batch) -> bool:
        """``threads=0``: one stage after the other in the calling thread. Only reading and
        decoding the images that are not in the crop cache is spread over the usable cores
        (as many threads as :attr:`decode_cores`), while the model waits for them: they never
        run beside it."""
        self._decoders = max(1, int(self.decode_cores))
        decode = ThreadPoolExecutor(max_workers=self._decoders - 1, thread_name_prefix="convlens-decode") \
            if self._decoders > 1 else None
        staged, skipped = [], []
        items = self._prepared(plan, decode)
        try:
            for j, (c, rows, a, b) in enumerate(plan):
                if rows is not None:
                    if should_stop is not None and should_stop():
                        return False
                    batch, sk = next(items)
                    if batch is not None:
                        staged.append(self.worker.compute(batch))
                    skipped.extend(sk)
                    if on_batch is not None:
                        on_batch(b - a)
                else:
                    next(items)
                if j + 1 == len(plan) or plan[j + 1][0] != c:
                    _write_chunk(self.worker, write, c, staged, skipped)
                    staged, skipped = [], []
        finally:
            if decode is not None:
                decode.shutdown(wait=True, cancel_futures=True)
        return True

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


def _write_chunk(worker: Worker, write: Callable[[int, object], None], chunk: int, staged: list,
                 skipped: list) -> None:
    write(chunk, to_arrow(worker.stored(worker.finish_many(staged)) if staged else {}, skipped))


def _unchanged(path: str, digest: str) -> bool:
    """Whether the file still matches its digest from indexing (``stat:size:mtime``: one
    ``stat``; a sha256 hex digest: the file hashed again, still far cheaper than decoding)."""
    try:
        if digest.startswith("stat:"):
            st = os.stat(path)
            return f"stat:{st.st_size}:{st.st_mtime_ns}" == digest
        if not digest:
            return True
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == digest
    except OSError:
        return False
