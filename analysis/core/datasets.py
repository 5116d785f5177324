"""Labelled image data sets: scikit-learn digits, server-side image folders, zip uploads.

Later pages (maximally-activating patches, nearest neighbours, t-SNE maps) work on a
:class:`Dataset`: a list of RGB images with integer labels, stable per-image ids and a
content hash that identifies the data set independently of where it lives on disk.

Layout of folder and zip data sets (the torchvision "ImageFolder" layout)::

    root/<class name>/<image file>
    root/<class name>/<any sub folders>/<image file>   (counts for <class name>)

* Classes are the sorted names of the sub folders that contain at least one image file
  (an image file is one with a known extension; empty sub folders are not classes).
* Files directly in ``root`` and hidden files or folders (name starting with ``.``,
  and ``__MACOSX``) are ignored.
* Every image is read once while indexing, hashed and decoded to validate it; files that
  cannot be decoded are listed in :attr:`Dataset.skipped` instead of failing the load.
* Images are decoded lazily afterwards (one at a time, on :meth:`Dataset.get`), and the
  bytes are checked against the digest taken while indexing, so a file changed on disk
  after indexing is reported instead of silently breaking :attr:`Dataset.content_hash`.

In a zip, the class folders are either at the archive root or inside one top-level
folder (a single top-level folder with images nested two levels below it is taken to be
such a wrapper, not a lone class). Zip uploads are never extracted: the archive is stored content-addressed as
``<store_dir>/<sha256>.zip`` and its members are read from it in memory.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from operator import index as _as_index
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from analysis.core.config import Limits, get_config
from analysis.core.errors import ConvlensError, DatasetError, LimitError, ParameterError
from analysis.core.fsio import atomic_write
from analysis.core.schema import is_int

DEFAULT_DATASET = "digits"

#: File extensions (lower case, with dot) recognised as images in folder / zip data sets.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

ProgressFn = Callable[[int, int], None]

_HASH_TAG = b"convlens-dataset-v1\0"


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------
@dataclass(eq=False)
class Dataset:
    """A labelled image data set.

    Attributes:
        name: display name (folder name, zip file stem, or ``"digits"``).
        source: ``"digits"``, ``"folder"`` or ``"zip"``.
        class_names: class names; ``labels`` index into this list.
        labels: int64 array, one label per image (read-only).
        ids: stable per-image identifiers: the path relative to the data-set root for
            folders and zips (``"cat/001.jpg"``), ``"digits/0000"`` for digits.
        content_hash: sha256 hex digest over the image contents, labels and class names;
            independent of the location on disk and of file names.
        skipped: ``(id, reason)`` for files that were found but could not be used.
    """

    name: str
    source: str
    class_names: list[str]
    labels: np.ndarray
    ids: list[str]
    content_hash: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Returns image i as RGB uint8 HxWx3. Private: set by the loader functions.
    _loader: Callable[[int], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.labels.setflags(write=False)
        if len(self.labels) != len(self.ids):
            raise ValueError("labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    def _check_index(self, i) -> int:
        try:
            i = _as_index(i)
        except TypeError:
            raise ParameterError(f"Image index must be an integer, got {i!r}") from None
        n = len(self)
        if not -n <= i < n:
            raise ParameterError(f"Image index {i} is out of range for a data set of {n} images")
        return i % n

    def get(self, i: int) -> np.ndarray:
        """Image ``i`` as a read-only RGB uint8 array of shape (H, W, 3)."""
        i = self._check_index(i)
        if self._loader is None:
            raise DatasetError(f"Data set {self.name!r} has no image loader")
        img = self._loader(i)
        if img.flags.writeable:
            img.setflags(write=False)
        return img

    def get_many(self, indices: Iterable[int]) -> list[np.ndarray]:
        """Images for ``indices`` (in that order), see :meth:`get`."""
        return [self.get(i) for i in indices]

    def iter_batches(
        self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Yield ``(batch_indices, images)`` over ``indices`` (default: all images in order).

        ``batch_indices`` is an int64 array; only one batch of images is in memory at a time.

        Args:
            batch_size: images per batch (a positive integer).
            indices: image indices to read, in this order; None for all.
        """
        if not is_int(batch_size) or batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        if indices is None:
            idx = np.arange(len(self), dtype=np.int64)
        else:
            idx = np.asarray(indices)
            if idx.size == 0:
                return
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ParameterError("indices must be a one-dimensional sequence of integers")
            idx = idx.astype(np.int64)
        for start in range(0, len(idx), int(batch_size)):
            chunk = idx[start:start + int(batch_size)]
            yield chunk, self.get_many(chunk)

    def image_source(self) -> dict:
        """Where image ``i`` lives, for readers in other processes (data-set jobs, Ray).

        Returns ``{"kind": "digits"}``, ``{"kind": "files", "paths": [...], "digests":
        [...]}`` (absolute paths; sha256 hex digests or ``""`` when only a size / mtime
        ``"stat:<size>:<mtime_ns>"`` check is known) or ``{"kind": "zip", "zip": path,
        "members": [...], "digests": [...]}`` (member index in the stored archive).
        DatasetError for data sets whose images exist only in this process's memory.
        """
        fn = getattr(self._loader, "source", None)
        if fn is None:
            raise DatasetError(f"Data set {self.name!r} has no on-disk image source")
        return fn()

    def summary(self) -> dict:
        """Counts for display: images, classes, images per class, skipped files."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {
            "name": self.name,
            "source": self.source,
            "n_images": len(self),
            "n_classes": len(self.class_names),
            "class_counts": {c: int(n) for c, n in zip(self.class_names, counts)},
            "n_skipped": len(self.skipped),
            "content_hash": self.content_hash,
        }


def _content_hash(class_names: Sequence[str], labels: Sequence[int], digests: Sequence[bytes]) -> str:
    """sha256 over class names, then (label, sha256(content)) per image in data-set order."""
    h = hashlib.sha256(_HASH_TAG)
    names = json.dumps(list(class_names), ensure_ascii=False).encode("utf-8")
    h.update(len(names).to_bytes(8, "little"))
    h.update(names)
    h.update(len(digests).to_bytes(8, "little"))
    for label, digest in zip(labels, digests):
        h.update(int(label).to_bytes(8, "little", signed=True))
        h.update(digest)
    return h.hexdigest()


def _indexed(name: str, source: str, class_names: list[str], labels, ids: list[str],
             digests: Sequence[bytes], skipped: list, loader) -> Dataset:
    """The Dataset of indexed images: int64 labels and the content hash of (class names,
    labels, digests)."""
    return Dataset(name=name, source=source, class_names=class_names, labels=np.asarray(labels, dtype=np.int64),
                   ids=ids, content_hash=_content_hash(class_names, labels, digests), skipped=skipped,
                   _loader=loader)


def _resolve_limits(limits: Limits | None) -> Limits:
    return get_config().limits if limits is None else limits


def _decode(data: bytes, limits: Limits, name: str) -> np.ndarray:
    from analysis.core.images import load_image  # lazy: keeps this module importable on its own

    return load_image(data, limits=limits, name=name)


class _Progress:
    """Calls ``fn(done, total)`` at least every 5 % of ``total`` and always at the end."""

    def __init__(self, fn: ProgressFn | None, total: int):
        self.fn, self.total = fn, total
        self.step = max(1, total // 20)
        self.last = -1
        if fn is not None:
            fn(0, total)
            self.last = 0

    def update(self, done: int) -> None:
        if self.fn is not None and (done - self.last >= self.step or done == self.total) and done != self.last:
            self.fn(done, self.total)
            self.last = done

    def finish(self) -> None:
        if self.fn is not None and self.last != self.total:
            self.fn(self.total, self.total)
            self.last = self.total


def _is_hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _order(entries: list[tuple[str, str]], class_names: list[str]) -> list[tuple[int, str]]:
    """(class, id) pairs -> (label, id) sorted by label then id: the canonical order."""
    label_of = {c: k for k, c in enumerate(class_names)}
    return sorted((label_of[c], i) for c, i in entries)


def _index_images(
    items: list[tuple[int, str, object]],
    read: Callable[[object], bytes],
    limits: Limits,
    progress: ProgressFn | None,
    skipped: list[tuple[str, str]],
) -> tuple[list[int], list[str], list[object], list[bytes]]:
    """Read, hash and validate every ``(label, id, handle)``; failures go to ``skipped``.

    Returns the labels, ids, handles and sha256 digests of the usable images.
    """
    labels: list[int] = []
    ids: list[str] = []
    handles: list[object] = []
    digests: list[bytes] = []
    prog = _Progress(progress, len(items))
    for done, (label, item_id, handle) in enumerate(items, 1):
        try:
            data = read(handle)
            _decode(data, limits, item_id)
        except (ConvlensError, OSError, zipfile.BadZipFile, RuntimeError, ValueError) as e:
            skipped.append((item_id, str(e) or type(e).__name__))
        else:
            labels.append(label)
            ids.append(item_id)
            handles.append(handle)
            digests.append(hashlib.sha256(data).digest())
        prog.update(done)
    prog.finish()
    if not ids:
        first = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
        raise DatasetError(f"None of the image files could be read ({first})")
    return labels, ids, handles, digests


def _check_count(n: int, limits: Limits, what: str) -> None:
    if n > limits.max_dataset_images:
        raise LimitError(
            f"{what} contains {n} images, more than the limit of {limits.max_dataset_images} images"
        )


# --------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------
def image_count(dataset: Dataset) -> int:
    """The number of images of ``dataset``; DatasetError if it has none (nothing to scan).

    Args:
        dataset: the data set a job is about to go through.
    """
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"Data set {dataset.name!r} has no images.")
    return n


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float 0..16, targets) of scikit-learn's digits, read from the
    CSV that scikit-learn ships, as its ``load_digits`` does, without importing scikit-learn
    (its import takes seconds and the sidebar loads the digits on every cold start).
    Falls back to ``sklearn.datasets.load_digits`` if the file is not found."""
    import gzip
    import importlib.util
    try:
        spec = importlib.util.find_spec("sklearn")
        root = Path(next(iter(spec.submodule_search_locations)))
        with gzip.open(root / "datasets" / "data" / "digits.csv.gz", "rt") as f:
            data = np.loadtxt(f, delimiter=",")
        if data.shape == (1797, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    except (AttributeError, TypeError, StopIteration, OSError, ValueError):
        pass
    from sklearn.datasets import load_digits
    raw = load_digits()
    return raw.images, raw.target


@lru_cache(maxsize=1)
def load_digits_dataset() -> Dataset:
    """scikit-learn's hand-written digits: 1,797 RGB uint8 images of 8x8 pixels, 10 classes.

    Pixel values 0..16 are scaled to 0..255 (white digit on black). Cached: every call
    returns the same (read-only) object.
    """
    raw_images, target = _digits_arrays()
    grey = np.rint(np.asarray(raw_images, dtype=np.float64) * (255.0 / 16.0))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))  # (N, 8, 8, 3)
    images.setflags(write=False)
    labels = np.asarray(target, dtype=np.int64)
    loader = _ArrayLoader(images, {"kind": "digits"})
    class_names = [str(k) for k in range(10)]
    digests = [hashlib.sha256(img.tobytes()).digest() for img in images]
    # views of a read-only array are read-only
    return _indexed("digits", "digits", class_names, labels, [f"digits/{k:04d}" for k in range(len(images))],
                    digests, [], loader)


def digits_images() -> np.ndarray:
    """The digits images as one read-only (1797, 8, 8, 3) uint8 array (readers of jobs)."""
    return load_digits_dataset()._loader.images


class _ArrayLoader:
    """Image i of an in-memory array; ``source()`` says how another process finds it."""

    def __init__(self, images: np.ndarray, source: dict):
        self.images, self._source = images, source

    def __call__(self, i: int) -> np.ndarray:
        return self.images[i]

    def source(self) -> dict:
        return dict(self._source)


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------
class _FolderLoader:
    """Decodes image i from its file, checking it is unchanged since indexing. Picklable."""

    def __init__(self, paths: list[Path], digests: list[bytes], limits: Limits):
        self.paths, self.digests, self.limits = paths, digests, limits

    def __call__(self, i: int) -> np.ndarray:
        path = self.paths[i]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"Cannot read {path}: {e}. Reload the data set.") from e
        if hashlib.sha256(data).digest() != self.digests[i]:
            raise DatasetError(f"{path} changed on disk since the data set was loaded. Reload it.")
        return _decode(data, self.limits, str(path))

    def source(self) -> dict:
        return {"kind": "files", "paths": [str(p) for p in self.paths],
                "digests": [d.hex() for d in self.digests]}


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def load_image_folder(
    root: str | os.PathLike,
    *,
    limits: Limits | None = None,
    allowed_roots: Iterable[str | os.PathLike] | None = None,
    progress: ProgressFn | None = None,
) -> Dataset:
    """Index an ImageFolder-style directory ``root/<class>/<images>`` (see module doc).

    Args:
        root: the data-set directory.
        limits: size limits (default: the configured ones).
        allowed_roots: if given, ``root`` (symlinks resolved) must lie inside one of these
            directories; image files that resolve to outside them are skipped.
            Symlinked folders below the class folders are not followed.
        progress: optional ``progress(done, total)`` callback while indexing.

    Raises:
        DatasetError: outside ``allowed_roots``, missing, not a directory, no class
            folders, no images, or no image could be decoded.
        LimitError: more than ``limits.max_dataset_images`` image files.
    """
    limits = _resolve_limits(limits)
    given = Path(root).expanduser()
    resolved = given.resolve()
    allowed = None
    if allowed_roots is not None:
        allowed = [Path(a).expanduser().resolve() for a in allowed_roots]
        if not _within(resolved, allowed):
            raise DatasetError(
                f"{given} is not inside an allowed data-set folder "
                f"({', '.join(str(a) for a in allowed) or 'none configured'})"
            )
    if not resolved.exists():
        raise DatasetError(f"Data-set folder {given} does not exist")
    if not resolved.is_dir():
        raise DatasetError(f"{given} is not a folder")

    try:
        subdirs = [p for p in resolved.iterdir() if not _is_hidden(p.name) and p.is_dir()]
    except OSError as e:
        raise DatasetError(f"Cannot list {given}: {e}") from e
    if not subdirs:
        raise DatasetError(
            f"{given} has no class sub folders: expected {given.name}/<class name>/<image files>"
        )

    entries: list[tuple[str, str]] = []  # (class name, id)
    for sub in subdirs:
        for dirpath, dirnames, filenames in os.walk(sub, followlinks=False):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            rel_dir = Path(dirpath).relative_to(resolved).as_posix()
            for fn in filenames:
                if not _is_hidden(fn) and _is_image_name(fn):
                    entries.append((sub.name, f"{rel_dir}/{fn}"))
    if not entries:
        raise DatasetError(
            f"{given} contains no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
            "in its class sub folders"
        )
    _check_count(len(entries), limits, f"Data-set folder {given}")

    class_names = sorted({c for c, _ in entries})
    skipped: list[tuple[str, str]] = []
    items: list[tuple[int, str, object]] = []
    for label, item_id in _order(entries, class_names):
        path = resolved / item_id
        if allowed is not None and not _within(path.resolve(), allowed):
            skipped.append((item_id, "links to a file outside the allowed data-set folders"))
            continue
        items.append((label, item_id, path))

    def read(path: Path) -> bytes:
        size = path.stat().st_size
        if size > limits.max_upload_bytes:
            raise LimitError(f"file is {size} bytes, more than the limit of {limits.max_upload_bytes}")
        return path.read_bytes()

    labels, ids, paths, digests = _index_images(items, read, limits, progress, skipped)
    return _indexed(resolved.name or str(resolved), "folder", class_names, labels, ids, digests, skipped,
                    _FolderLoader(paths, digests, limits))


# --------------------------------------------------------------------------------------
# Zip uploads
# --------------------------------------------------------------------------------------
class ZipMembers:
    """A stored zip file read by member index, with one handle per thread (opened on the
    thread's first read), so that decode threads inflate members in parallel. Picklable: a
    copy (another process) opens its own handles.

    Args:
        path: the zip file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def read(self, i: int) -> tuple[zipfile.ZipInfo, bytes]:
        """``(info, bytes)`` of member ``i`` (its place in the zip's list); OSError or
        BadZipFile when the file cannot be opened or read.

        Args:
            i: the member's index in ``ZipFile.infolist()``.
        """
        zf = getattr(self._local, "zip", None)
        if zf is None:
            zf = self._local.zip = zipfile.ZipFile(self.path)
        info = zf.infolist()[i]
        return info, zf.read(info)


class _ZipLoader:
    """Reads member i from the stored zip (opened once, shared under a lock). Picklable."""

    def __init__(self, path: Path, members: list[int], digests: list[bytes], limits: Limits):
        self.path, self.members, self.digests, self.limits = path, members, digests, limits
        self._zip = ZipMembers(path)

    def __call__(self, i: int) -> np.ndarray:
        try:
            info, data = self._zip.read(self.members[i])
        except (OSError, zipfile.BadZipFile) as e:
            raise DatasetError(f"Cannot read image {i} from {self.path}: {e}. Upload it again.") from e
        if hashlib.sha256(data).digest() != self.digests[i]:
            raise DatasetError(f"{self.path} changed since the data set was loaded. Upload it again.")
        return _decode(data, self.limits, info.filename)

    def source(self) -> dict:
        return {"kind": "zip", "zip": str(self.path), "members": list(self.members),
                "digests": [d.hex() for d in self.digests]}


def _member_parts(name: str) -> list[str] | None:
    """Path components of a zip member name, or None if it is unsafe (absolute, ``..``)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _store_zip(data: bytes, digest: str, store_dir: Path) -> Path:
    """Write ``data`` to ``store_dir/<digest>.zip`` atomically (no-op if already there)."""
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        target = store_dir / f"{digest}.zip"
        if target.is_file() and target.stat().st_size == len(data):
            return target
        atomic_write(target, data)
    except OSError as e:
        raise DatasetError(f"Cannot store the uploaded zip in {store_dir}: {e}") from e
    return target


def load_zip_dataset(
    data: bytes,
    *,
    name: str = "upload.zip",
    store_dir: str | os.PathLike | None = None,
    limits: Limits | None = None,
    progress: ProgressFn | None = None,
) -> Dataset:
    """Index a zip upload in the ImageFolder layout (class folders at the zip root, or
    inside one top-level folder). Nothing is extracted: the zip is stored as
    ``<store_dir>/<sha256>.zip`` (default store: ``<data_dir>/datasets``) and members are
    read from it. Ids and the content hash equal those of the same files in a folder.

    Unsafe member names (absolute, ``..``), encrypted members, members larger than
    ``limits.max_upload_bytes`` and undecodable images are listed in ``skipped``.

    Raises:
        LimitError: zip larger than ``max_upload_bytes``, declared uncompressed total over
            ``max_dataset_bytes``, too many members or images.
        DatasetError: not a zip, no class folders / images, no image could be decoded.

    Args:
        data: the zip file's bytes.
        name: the upload's file name (the data set's label and error messages).
        store_dir: where the zip is stored; None for the default store.
        limits: size and count limits; None for the configured ones.
        progress: ``progress(done, total)`` while members are decoded, or None.
    """
    limits = _resolve_limits(limits)
    data = bytes(data)
    if len(data) > limits.max_upload_bytes:
        raise LimitError(
            f"{name} is {len(data)} bytes, more than the upload limit of {limits.max_upload_bytes} bytes"
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise DatasetError(f"{name} is not a valid zip file ({e})") from e

    # Checks on the central directory, before decompressing anything (zip bombs).
    max_members = 2 * limits.max_dataset_images + 1000
    if len(infos) > max_members:
        raise LimitError(f"{name} has {len(infos)} entries, more than the limit of {max_members}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_dataset_bytes:
        raise LimitError(
            f"{name} would uncompress to {total} bytes, more than the data-set limit of "
            f"{limits.max_dataset_bytes} bytes"
        )

    skipped: list[tuple[str, str]] = []
    candidates: list[tuple[list[str], int]] = []  # (path parts, member index)
    seen: set[str] = set()
    for k, info in enumerate(infos):
        if info.is_dir():
            continue
        parts = _member_parts(info.filename)
        if parts is None:
            skipped.append((info.filename, "unsafe path in the archive (absolute or '..'); ignored"))
            continue
        if not parts or any(_is_hidden(p) for p in parts) or not _is_image_name(parts[-1]):
            continue
        key = "/".join(parts)
        if key in seen:
            skipped.append((key, "duplicate entry in the archive"))
            continue
        seen.add(key)
        candidates.append((parts, k))

    # A single top-level folder holding class folders is the data-set root: strip it. (With
    # one top-level folder and images nested deeper, a one-class data set is less likely.)
    tops = {parts[0] for parts, _ in candidates}
    if len(tops) == 1 and any(len(parts) >= 3 for parts, _ in candidates):
        candidates = [(parts[1:], k) for parts, k in candidates]
    in_class = [(parts, k) for parts, k in candidates if len(parts) >= 2]
    if not in_class:
        if candidates:
            raise DatasetError(
                f"{name} has no class folders: expected <class name>/<image files> "
                "(optionally inside one top-level folder)"
            )
        raise DatasetError(
            f"{name} contains no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class folders"
        )
    _check_count(len(in_class), limits, name)

    member_of = {"/".join(parts): k for parts, k in in_class}
    entries = [(parts[0], "/".join(parts)) for parts, _ in in_class]
    class_names = sorted({c for c, _ in entries})
    items: list[tuple[int, str, object]] = []
    for label, item_id in _order(entries, class_names):
        info = infos[member_of[item_id]]
        if info.flag_bits & 0x1:
            skipped.append((item_id, "encrypted member; not supported"))
        elif info.file_size > limits.max_upload_bytes:
            skipped.append((item_id, f"{info.file_size} bytes, more than the limit of {limits.max_upload_bytes}"))
        else:
            items.append((label, item_id, member_of[item_id]))

    def read(k: int) -> bytes:
        # ZipExtFile never returns more than the declared file_size and checks the CRC.
        return zf.read(infos[k])

    with zf:
        labels, ids, members, digests = _index_images(items, read, limits, progress, skipped)

    sha = hashlib.sha256(data).hexdigest()
    store = Path(store_dir) if store_dir is not None else get_config().data_dir / "datasets"
    path = _store_zip(data, sha, store)
    stem = PurePosixPath(name.replace("\\", "/")).name
    stem = stem[:-4] if stem.lower().endswith(".zip") else stem
    return _indexed(stem or "upload", "zip", class_names, labels, ids, digests, skipped,
                    _ZipLoader(path, members, digests, limits))


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------
def train_test_split_indices(
    labels: Sequence[int] | np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``(train_idx, test_idx)``, sorted int64 arrays.

    Each class contributes ``round(n_c * test_fraction)`` test images, clamped so that a
    class with at least two images has at least one image on each side.

    Args:
        labels: (N,) integer class label per image.
        test_fraction: share of each class in the test set, strictly between 0 and 1.
        seed: NumPy generator seed of the shuffle within each class.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ParameterError("labels must be a one-dimensional array")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ParameterError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * float(test_fraction)))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        else:
            n_test = 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    empty = np.zeros(0, dtype=np.int64)
    train_idx = np.sort(np.concatenate(train or [empty])).astype(np.int64)
    test_idx = np.sort(np.concatenate(test or [empty])).astype(np.int64)
    return train_idx, test_idx
