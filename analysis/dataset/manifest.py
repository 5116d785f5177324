"""Data sets as job inputs: manifests (CSV / Parquet), image folders, zips, the digits.

A :class:`DatasetRef` names a data set in a way that survives a process boundary (JSON,
share links, audit records, Ray workers); :func:`open_dataset` turns it into an
:class:`analysis.core.datasets.Dataset` whose images are decoded lazily, one batch at a time.

Manifest layout (CSV with a header row, or Parquet)::

    path,label[,mask]
    images/cat/001.jpg,cat
    /abs/path/dog/002.png,dog,masks/dog/002.png

* ``path``: absolute, or relative to the manifest's folder (or to ``root`` when given).
* ``label``: a class name, or an integer class index. Without ``classes`` the class list is
  the sorted distinct names (string labels) or ``0..max`` (integer labels, so that label k
  is the model's class k). With ``classes``, a label outside the list is an error.
* ``mask`` (optional): an image whose non-black pixels mark the object; it goes through
  the same resize / crop as its image.
* Every path (image and mask) must lie inside the allowed roots: the configured
  ``dataset_dirs`` or, when none are configured, the manifest's own folder. Paths outside
  are refused (DatasetError naming them), never read.
* Indexing reads the manifest and ``stat``\\ s every file (no image is decoded): files that
  do not exist are listed in ``Dataset.skipped``; the content hash covers the class names
  and, per image, its label, its path as written and its size and modification time (so a
  file replaced on disk changes the hash, and a decoded file that changed since is
  reported instead of read). Millions of rows are fine (``limits.max_manifest_images``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from analysis.core.config import Limits, get_config
from analysis.core.datasets import (
    Dataset,
    ZipMembers,
    digits_images,
    load_digits_dataset,
    load_image_folder,
    load_zip_dataset,
)
from analysis.core.errors import ConvlensError, DatasetError, LimitError, ParameterError

__all__ = [
    "DatasetRef", "ManifestError", "open_dataset", "load_manifest", "input_rows", "ImageReader",
    "CropCache", "crop_cache_budget", "REF_KINDS",
]

REF_KINDS = ("digits", "manifest", "folder", "zip")
_HASH_TAG = b"convlens-manifest-v1\0"


class ManifestError(DatasetError):
    """A manifest is unreadable, lacks a column, has unknown labels or paths outside the
    allowed folders."""


@dataclass(frozen=True)
class DatasetRef:
    """A JSON-serialisable reference to a data set.

    kind: ``"digits"`` | ``"manifest"`` | ``"folder"`` | ``"zip"``.
    path: the manifest file (.csv / .parquet), the image folder, or the stored zip file.
    path_column, label_column, mask_column: manifest column names (``mask_column`` "" =
        use a column named ``mask`` when there is one).
    root: base folder for relative manifest paths ("" = the manifest's folder).
    classes: explicit class names for a manifest (labels must be among them).
    """
    kind: str = "digits"
    path: str = ""
    path_column: str = "path"
    label_column: str = "label"
    mask_column: str = ""
    root: str = ""
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in REF_KINDS:
            raise ParameterError(f"Unknown data-set kind {self.kind!r}; use one of {', '.join(REF_KINDS)}.")
        if self.kind != "digits" and not self.path:
            raise ParameterError(f"A {self.kind} data set needs a path.")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (inverse: :meth:`from_dict`)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetRef":
        """A ref from :meth:`to_dict` output; unknown keys are a ParameterError.

        Args:
            d: a dict of the ref's fields (``kind``, ``path``, ``classes`` as a list, ...);
                a DatasetRef is returned as it is.
        """
        if isinstance(d, DatasetRef):
            return d
        if not isinstance(d, dict):
            raise ParameterError("A data-set reference must be a JSON object.")
        known = {f for f in cls.__dataclass_fields__}
        bad = set(d) - known
        if bad:
            raise ParameterError(f"Unknown data-set reference field(s): {', '.join(sorted(bad))}")
        d = dict(d)
        if "classes" in d:
            d["classes"] = tuple(d["classes"] or ())
        return cls(**d)

    @classmethod
    def parse(cls, text: str) -> "DatasetRef":
        """From the command line: ``digits``, a JSON object, a .csv / .parquet manifest, a
        .zip file or a folder.

        Args:
            text: the ``--dataset`` argument: ``digits``, a JSON object (see
                :meth:`from_dict`), or a path (``~`` expanded, made absolute) whose suffix
                picks the kind: .csv / .parquet / .pq manifest, .zip, anything else a folder.
        """
        text = str(text).strip()
        if text == "digits":
            return cls("digits")
        if text.startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as e:
                raise ParameterError(f"The data-set reference is not valid JSON: {e}") from None
        low = text.lower()
        if low.endswith((".csv", ".parquet", ".pq")):
            return cls("manifest", str(Path(text).expanduser().resolve()))
        if low.endswith(".zip"):
            return cls("zip", str(Path(text).expanduser().resolve()))
        return cls("folder", str(Path(text).expanduser().resolve()))

    def label(self) -> str:
        """A short human label of the data set: ``digits``, else the kind and the file or
        folder name (e.g. ``folder cats``). No arguments."""
        return "digits" if self.kind == "digits" else f"{self.kind} {Path(self.path).name}"


# --------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------
def _read_table(path: Path, columns: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            names = pq.ParquetFile(path).schema_arrow.names
            return pq.read_table(path, columns=[c for c in columns if c in names]), names
        if suffix == ".csv":
            opts = pcsv.ConvertOptions(include_columns=None, strings_can_be_null=True)
            t = pcsv.read_csv(path, convert_options=opts)
            return t.select([c for c in columns if c in t.column_names]), t.column_names
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as e:
        raise ManifestError(f"Cannot read the manifest {path.name}: {str(e).splitlines()[0][:300]}") from e
    raise ManifestError(f"{path.name}: a manifest must be a .csv or .parquet file.")


def _labels(col, classes: tuple[str, ...], name: str) -> tuple[np.ndarray, list[str]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.null_count:
        first = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
        raise ManifestError(f"{name}: {col.null_count} row(s) have no label (first: row {first + 2} "
                            "counting the header as row 1).")
    if pa.types.is_integer(col.type):
        lab = col.to_numpy().astype(np.int64)
        if (lab < 0).any():
            raise ManifestError(f"{name}: integer labels must be class indices >= 0 (found {int(lab.min())}).")
        n = len(classes) if classes else int(lab.max()) + 1 if len(lab) else 0
        if classes and (lab >= n).any():
            bad = sorted({int(v) for v in lab[lab >= n]})[:5]
            raise ManifestError(f"{name}: unknown label(s) {bad}: only {n} classes are given.")
        return lab, list(classes) if classes else [str(i) for i in range(n)]
    if pa.types.is_floating(col.type):
        raise ManifestError(f"{name}: labels must be class names or integer class indices, not decimals.")
    text = pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)
    uniq, inv = np.unique(text.astype(str), return_inverse=True)
    names = list(classes) if classes else [str(u) for u in uniq]
    pos = {c: k for k, c in enumerate(names)}
    unknown = [str(u) for u in uniq if str(u) not in pos]
    if unknown:
        raise ManifestError(f"{name}: {len(unknown)} unknown label(s), e.g. {', '.join(map(repr, unknown[:5]))}; "
                            f"known classes: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}.")
    lut = np.array([pos[str(u)] for u in uniq], dtype=np.int64)
    return lut[inv.reshape(-1)], names


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _resolve_paths(values: np.ndarray, base: Path, roots: Sequence[Path], name: str, what: str) -> list[str]:
    out: list[str] = []
    outside: list[str] = []
    for v in values:
        p = Path(os.path.expanduser(str(v)))
        p = p if p.is_absolute() else base / p
        p = Path(os.path.normpath(p))
        # Symlinks are resolved lazily (only when the lexical path is inside): cheap for millions.
        if not _within(p, roots) or (p.is_symlink() and not _within(p.resolve(), roots)):
            outside.append(str(v))
        out.append(str(p))
    if outside:
        raise ManifestError(
            f"{name}: {len(outside)} {what} path(s) lie outside the allowed data-set folders "
            f"({', '.join(str(r) for r in roots)}), e.g. {', '.join(outside[:3])}. Move the files, or add "
            "their folder to dataset_dirs in the configuration.")
    return out


def load_manifest(
    path: str | os.PathLike,
    *,
    path_column: str = "path",
    label_column: str = "label",
    mask_column: str = "",
    root: str | os.PathLike | None = None,
    classes: Sequence[str] = (),
    allowed_roots: Iterable[str | os.PathLike] | None = None,
    limits: Limits | None = None,
) -> Dataset:
    """Index a CSV / Parquet manifest (see the module docstring) without decoding images.

    Args:
        path: the manifest file.
        path_column, label_column: column names of the image path and the label.
        mask_column: column of mask image paths ("" = ``mask`` when present, else none).
        root: base for relative paths (default: the manifest's folder).
        classes: explicit class names; labels outside them are an error.
        allowed_roots: folders the paths must lie in (default: ``dataset_dirs`` of the
            configuration, or the manifest's folder when none are configured).
        limits: size limits (default: the configured ones); ``max_manifest_images`` rows.

    Raises:
        ManifestError: unreadable manifest, missing column, empty, missing or unknown
            labels, paths outside the allowed roots, duplicate paths.
        LimitError: more rows than ``limits.max_manifest_images``.
    """
    limits = limits or get_config().limits
    mpath = Path(path).expanduser().resolve()
    name = mpath.name
    if not mpath.is_file():
        raise ManifestError(f"The manifest {path} does not exist.")
    wanted = [path_column, label_column] + ([mask_column] if mask_column else ["mask"])
    table, names = _read_table(mpath, wanted)
    missing = [c for c in (path_column, label_column) + ((mask_column,) if mask_column else ()) if c not in names]
    if missing:
        raise ManifestError(f"{name} has no column(s) {', '.join(map(repr, missing))}; its columns are "
                            f"{', '.join(map(repr, names[:20]))}. Name the path and label columns.")
    n = table.num_rows
    if n == 0:
        raise ManifestError(f"{name} has no rows.")
    if n > limits.max_manifest_images:
        raise LimitError(f"{name} lists {n:,} images, more than the limit of {limits.max_manifest_images:,} "
                         "(max_manifest_images).")
    pcol = table.column(path_column)
    if pcol.null_count:
        raise ManifestError(f"{name}: {pcol.null_count} row(s) have an empty path.")
    raw_paths = pcol.to_numpy(zero_copy_only=False).astype(str)
    labels, class_names = _labels(table.column(label_column), tuple(classes), name)
    base = Path(root).expanduser().resolve() if root else mpath.parent
    if allowed_roots is None:
        cfg = get_config().dataset_dirs
        allowed_roots = cfg if cfg else (mpath.parent,)
    roots = [Path(a).expanduser().resolve() for a in allowed_roots]
    paths = _resolve_paths(raw_paths, base, roots, name, "image")
    mcol = mask_column or ("mask" if "mask" in table.column_names else "")
    masks: list[str] | None = None
    if mcol:
        mvals = table.column(mcol).to_numpy(zero_copy_only=False)
        have = np.array([v is not None and str(v) != "" for v in mvals])
        resolved = _resolve_paths(np.asarray(mvals[have]).astype(str), base, roots, name, "mask") if have.any() else []
        it = iter(resolved)
        masks = [next(it) if h else "" for h in have]
    ids = [p.replace("\\", "/") for p in raw_paths]
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise ManifestError(f"{name}: {len(dup)} duplicate path(s), e.g. {dup[0]}.")

    h = hashlib.sha256(_HASH_TAG)
    cn = json.dumps(class_names, ensure_ascii=False).encode()
    h.update(len(cn).to_bytes(8, "little") + cn)
    keep, stats, skipped = [], [], []
    for k, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError as e:
            skipped.append((ids[k], f"file not found or unreadable: {e.strerror or e}"))
            continue
        keep.append(k)
        stats.append(f"stat:{st.st_size}:{st.st_mtime_ns}")
        rec = json.dumps([ids[k], int(labels[k]), stats[-1], masks[k] if masks else ""]).encode()
        h.update(len(rec).to_bytes(8, "little") + rec)
    if not keep:
        raise ManifestError(f"None of the {n} files listed in {name} exists "
                            f"(first: {skipped[0][0]}: {skipped[0][1]}).")
    keep_a = np.asarray(keep, dtype=np.int64)
    loader = _ManifestLoader([paths[k] for k in keep], stats, [masks[k] for k in keep] if masks else None, limits)
    return Dataset(name=mpath.stem, source="manifest", class_names=class_names, labels=labels[keep_a],
                   ids=[ids[k] for k in keep], content_hash=h.hexdigest(), skipped=skipped, _loader=loader)


class _ManifestLoader:
    """Decodes image i from its file after checking its size / mtime still match. Picklable."""

    def __init__(self, paths: list[str], stats: list[str], masks: list[str] | None, limits: Limits):
        self.paths, self.stats, self.masks, self.limits = paths, stats, masks, limits

    def __call__(self, i: int) -> np.ndarray:
        return read_file_image(self.paths[i], self.stats[i], self.limits)

    def source(self) -> dict:
        out = {"kind": "files", "paths": list(self.paths), "digests": list(self.stats)}
        if self.masks is not None:
            out["masks"] = list(self.masks)
        return out


# --------------------------------------------------------------------------------------
# Refs -> data sets
# --------------------------------------------------------------------------------------
_OPEN: "OrderedDict[tuple, Dataset]" = OrderedDict()
_OPEN_LOCK = threading.Lock()


def _fingerprint(ref: DatasetRef) -> tuple:
    """What must be unchanged for a cached open data set to be reused (cheap)."""
    if ref.kind == "digits":
        return ()
    p = Path(ref.path)
    try:
        st = p.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return ("missing",)


def open_dataset(ref: DatasetRef | dict, *, allowed_roots: Iterable[str | os.PathLike] | None = None,
                 limits: Limits | None = None) -> Dataset:
    """The data set a reference names (cached per reference while the file / folder is
    unchanged; folder contents changing later are caught when images are read).

    Args:
        ref: a :class:`DatasetRef` (or its dict).
        allowed_roots: for manifests and folders, the folders paths must lie in
            (default: ``dataset_dirs``; manifests also accept their own folder when none
            are configured).
        limits: size limits (default: the configured ones).
    """
    ref = DatasetRef.from_dict(ref)
    key = (ref, _fingerprint(ref), tuple(map(str, allowed_roots)) if allowed_roots is not None else None, limits)
    with _OPEN_LOCK:
        if key in _OPEN:
            _OPEN.move_to_end(key)
            return _OPEN[key]
    if ref.kind == "digits":
        ds = load_digits_dataset()
    elif ref.kind == "manifest":
        ds = load_manifest(ref.path, path_column=ref.path_column, label_column=ref.label_column,
                           mask_column=ref.mask_column, root=ref.root or None, classes=ref.classes,
                           allowed_roots=allowed_roots, limits=limits)
    elif ref.kind == "folder":
        roots = allowed_roots
        if roots is None and get_config().dataset_dirs:
            roots = get_config().dataset_dirs
        ds = load_image_folder(ref.path, limits=limits, allowed_roots=roots)
    else:
        p = Path(ref.path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise DatasetError(f"Cannot read the zip {ref.path}: {e}") from e
        ds = load_zip_dataset(data, name=p.name, store_dir=p.parent, limits=limits)
    with _OPEN_LOCK:
        _OPEN[key] = ds
        while len(_OPEN) > 8:
            _OPEN.popitem(last=False)
    return ds


# --------------------------------------------------------------------------------------
# Rows and readers (what a worker in any process needs to read one image)
# --------------------------------------------------------------------------------------
def input_rows(ds: Dataset, indices: Sequence[int] | np.ndarray | None = None) -> tuple[dict, dict]:
    """The job input of ``ds`` (restricted to ``indices``, in that order):

    ``(columns, source)`` where ``columns`` holds one entry per image: ``index`` (int64,
    position in ``ds``), ``path`` (the image id), ``label`` (int64), ``loc`` (absolute file
    path, zip member index or "" for digits), ``digest`` (sha256 hex / ``stat:..`` / "")
    and ``mask`` (mask file or ""); ``source`` is ``{"kind": ..., "zip": ...}`` for
    :class:`ImageReader`. Data sets that live only in memory raise DatasetError.
    """
    n = len(ds)
    if indices is None:
        idx = np.arange(n, dtype=np.int64)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ParameterError(f"Image indices must be between 0 and {n - 1}.")
    src = ds.image_source()
    kind = src["kind"]
    ids = [ds.ids[i] for i in idx]
    if kind == "digits":
        loc = [""] * len(idx)
        dig = [""] * len(idx)
    elif kind == "files":
        loc = [src["paths"][i] for i in idx]
        dig = [src["digests"][i] for i in idx]
    elif kind == "zip":
        loc = [str(src["members"][i]) for i in idx]
        dig = [src["digests"][i] for i in idx]
    else:
        raise DatasetError(f"Unknown image source {kind!r}")
    masks = src.get("masks")
    cols = {"index": idx, "path": np.asarray(ids, dtype=object), "label": ds.labels[idx].astype(np.int64),
            "loc": np.asarray(loc, dtype=object), "digest": np.asarray(dig, dtype=object),
            "mask": np.asarray([masks[i] for i in idx] if masks else [""] * len(idx), dtype=object)}
    source = {"kind": kind}
    if kind == "zip":
        source["zip"] = src["zip"]
    return cols, source


def read_file_image(path: str, digest: str, limits: Limits) -> np.ndarray:
    """Read and decode one image file, checking ``digest`` (sha256 hex or ``stat:size:mtime``).

    Args:
        path: the image file's path.
        digest: the file's digest when the data set was indexed: sha256 hex of its bytes,
            ``stat:<size>:<mtime_ns>``, or empty (no check).
        limits: the size limits; at most ``limits.max_upload_bytes`` (+1) bytes are read,
            and decoding follows the pixel / side limits of :func:`load_image`.

    Returns:
        The decoded image as an RGB uint8 array of shape (H, W, 3).

    Raises:
        DatasetError: the file is gone, unreadable, or changed since it was indexed
            (decoding errors are those of :func:`load_image`).
    """
    from analysis.core.images import load_image

    try:
        if digest.startswith("stat:"):
            st = os.stat(path)
            if f"stat:{st.st_size}:{st.st_mtime_ns}" != digest:
                raise DatasetError(f"{path} changed on disk since the data set was indexed")
        with open(path, "rb") as f:
            data = f.read(limits.max_upload_bytes + 1)
    except FileNotFoundError:
        raise DatasetError(f"{path} no longer exists") from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    if digest and not digest.startswith("stat:") and hashlib.sha256(data).hexdigest() != digest:
        raise DatasetError(f"{path} changed on disk since the data set was indexed")
    return load_image(data, limits=limits, name=Path(path).name)


class ImageReader:
    """Decodes the images of input rows (see :func:`input_rows`) in any process.

    ``read(rows) -> (images, masks, errors)``: ``images[k]`` is an RGB uint8 array or None
    when row k could not be read, ``errors[k]`` then says why ("" otherwise); ``masks[k]``
    is a bool (H, W) array or None. Never raises for one bad image.
    """

    def __init__(self, source: dict, limits: Limits | None = None):
        self.source = dict(source)
        self.limits = limits or get_config().limits
        self._zip = ZipMembers(self.source["zip"]) if self.source.get("kind") == "zip" else None

    def _one(self, index: int, loc: str, digest: str) -> np.ndarray:
        kind = self.source["kind"]
        if kind == "digits":
            return digits_images()[int(index)]
        if kind == "files":
            return read_file_image(loc, digest, self.limits)
        if kind == "zip":
            from analysis.core.images import load_image
            try:
                info, data = self._zip.read(int(loc))
            except (OSError, zipfile.BadZipFile) as e:
                raise DatasetError(f"cannot read {self.source['zip']}: {e}") from e
            if digest and hashlib.sha256(data).hexdigest() != digest:
                raise DatasetError(f"{info.filename} changed since the data set was indexed")
            return load_image(data, limits=self.limits, name=info.filename)
        raise DatasetError(f"Unknown image source {kind!r}")

    def read_one(self, index: int, loc: str, digest: str, mask: str = "") -> tuple:
        """Read one row: ``(image, mask, error)``; never raises for a bad image.

        Args:
            index: the row's position in the data set (digits: the image number).
            loc: the absolute file path, or the zip member number as text.
            digest: what the file must still hash to (sha256 hex / ``stat:size:mtime``), or "".
            mask: the mask file of the row, or "" for none.

        Returns:
            ``(RGB uint8 array, bool (H, W) mask or None, "")``, or ``(None, None, reason)``
            when the image (or its mask) cannot be read or decoded.
        """
        try:
            img = self._one(int(index), str(loc), str(digest))
            m = None
            if mask:
                mimg = read_file_image(str(mask), "", self.limits)
                m = mimg.max(axis=2) > 0
            return img, m, ""
        except (ConvlensError, OSError, zipfile.BadZipFile, RuntimeError, ValueError, IndexError) as e:
            return None, None, (str(e) or type(e).__name__)[:500]

    def read(self, rows: dict) -> tuple[list, list, list[str]]:
        """Read every row of ``rows`` (see :func:`input_rows`): ``(images, masks, errors)``.

        Args:
            rows: input rows with ``index``, ``loc``, ``digest`` and optionally ``mask``.
        """
        images, masks, errors = [], [], []
        mcol = rows.get("mask")
        for k in range(len(rows["index"])):
            img, m, err = self.read_one(rows["index"][k], rows["loc"][k], rows["digest"][k],
                                        str(mcol[k]) if mcol is not None else "")
            images.append(img)
            masks.append(m)
            errors.append(err)
        return images, masks, errors


# --------------------------------------------------------------------------------------
# Decoded-crop cache (repeated jobs on one data set skip reading, decoding and resizing)
# --------------------------------------------------------------------------------------
CROP_CACHE_ENV = "CONVLENS_CROP_CACHE_MB"
CROP_CACHE_DEFAULT_MB = 4096


def crop_cache_budget() -> int:
    """Largest crop cache of one data set, in bytes: ``CONVLENS_CROP_CACHE_MB`` (default
    4096; 0 switches the cache off). Takes no arguments."""
    raw = os.environ.get(CROP_CACHE_ENV, "").strip()
    try:
        mb = float(raw) if raw else CROP_CACHE_DEFAULT_MB
    except ValueError:
        mb = CROP_CACHE_DEFAULT_MB
    return max(0, int(mb * 2**20))


@functools.lru_cache(maxsize=1)
def _decoder_versions() -> dict:
    """Pillow's and its image codecs' versions: another decoder may give other pixels."""
    import PIL
    from PIL import features
    out = {"pillow": PIL.__version__}
    for codec in ("jpg", "zlib", "webp", "libtiff"):
        try:
            out[codec] = features.version(codec) or ""
        except (ValueError, AttributeError):
            out[codec] = ""
    return out


_HASH_WEIGHTS: dict[int, np.ndarray] = {}


def slot_hashes(crops: np.ndarray) -> np.ndarray:
    """A 32-bit checksum of each crop, for a torn-write check: the crop's bytes as uint64
    words, each times its own fixed odd constant, summed modulo 2**64 and folded to 32 bits
    (a changed word changes the sum; about 4x faster than zlib's crc32 per crop, and one
    numpy pass for a whole run of crops).

    Args:
        crops: (n, ...) uint8 array, C-contiguous, whose rows have a multiple of 8 bytes.
    """
    rows = np.ascontiguousarray(crops).reshape(len(crops), -1)
    if rows.shape[1] % 8:
        raise ValueError("slot_hashes needs rows of a multiple of 8 bytes")
    words = rows.view("<u8")
    k = _HASH_WEIGHTS.get(words.shape[1])
    if k is None:
        k = np.random.default_rng(0x5EED).integers(0, 2**63, words.shape[1], dtype=np.uint64) * np.uint64(2) + \
            np.uint64(1)
        _HASH_WEIGHTS[words.shape[1]] = k
    with np.errstate(over="ignore"):
        h = (words * k).sum(axis=1, dtype=np.uint64)
    return (h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


class CropCache:
    """The model's view of every image of one data set (the RGB uint8 crop that
    ``Preprocessing.geometry`` makes), kept on disk so that the next job on the same data
    set with the same geometry reads ``S * S * 3`` bytes instead of decoding and resizing.

    Layout: ``<cache_dir>/crops/<key>/crops.u8`` holds image ``i``'s crop at byte
    ``i * S * S * 3`` (a sparse file of ``n`` slots) and ``index.u64`` holds, per image,
    0 (not cached) or a tag: ``2 * 2**32 | h`` with ``h`` the 32-bit :func:`slot_hashes`
    of the crop (slots whose size is a multiple of 8 bytes: one vectorised pass over a whole
    run of crops) or ``2**32 | crc32(crop)`` (other sizes, and caches written before). The
    key is the data set's content hash, the geometry (input size, resize size,
    interpolation, crop mode) and the versions of Pillow and its codecs, so a changed file,
    label, preprocessing or decoder is another cache. A slot is written before its index entry, and
    a crop whose checksum does not match (a torn write) counts as missing; writers in
    several processes write the same bytes. Nothing is pickled.

    Args:
        dataset_hash: the data set's content hash.
        size: number of images of the data set (slots).
        preprocess: the bundle's :class:`Preprocessing` (its geometry part is the key).
        cache_dir: the cache root (default: the configured ``cache_dir``).
    """

    def __init__(self, dataset_hash: str, size: int, preprocess, cache_dir: str | os.PathLike | None = None):
        from analysis.core.diskcache import cache_key
        s = int(preprocess.input_size)
        self.side, self.size = s, int(size)
        self.slot = s * s * 3
        geo = {"input_size": s, "resize_size": preprocess.resize_size, "interpolation": preprocess.interpolation,
               "crop_mode": preprocess.crop_mode}
        self.key = cache_key("dataset-crops", 1, dataset_hash, geo, _decoder_versions())
        root = Path(cache_dir) if cache_dir is not None else Path(get_config().cache_dir)
        self.dir = root / "crops" / self.key[:40]
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.is_file():
            from analysis.core.fsio import atomic_write
            atomic_write(meta, json.dumps({"dataset_hash": dataset_hash, "images": self.size, **geo}).encode(),
                         fsync=False)
        self._fd_data = os.open(self.dir / "crops.u8", os.O_RDWR | os.O_CREAT, 0o644)
        self._fd_index = os.open(self.dir / "index.u64", os.O_RDWR | os.O_CREAT, 0o644)
        for fd, n in ((self._fd_data, self.size * self.slot), (self._fd_index, self.size * 8)):
            if os.fstat(fd).st_size < n:
                os.ftruncate(fd, n)          # sparse: no disk space until slots are written
        self._index = np.memmap(self.dir / "index.u64", dtype="<u8", mode="r", shape=(self.size,))
        self._data = np.memmap(self.dir / "crops.u8", dtype=np.uint8, mode="r",
                               shape=(self.size, s, s, 3)) if self.size else None
        self.writable = True

    @classmethod
    def open(cls, dataset, preprocess, cache_dir: str | os.PathLike | None = None) -> "CropCache | None":
        """The crop cache of ``dataset`` for ``preprocess``, or None when it would exceed the
        budget (:func:`crop_cache_budget`) or the cache folder cannot be used.

        Args:
            dataset: an :class:`analysis.core.datasets.Dataset` (its ``content_hash`` and size).
            preprocess: the bundle's :class:`Preprocessing`.
            cache_dir: the cache root (default: the configured ``cache_dir``).
        """
        return cls.open_hash(dataset.content_hash, len(dataset), preprocess, cache_dir)

    @classmethod
    def open_hash(cls, dataset_hash: str, size: int, preprocess,
                  cache_dir: str | os.PathLike | None = None) -> "CropCache | None":
        """:meth:`open` by the data set's content hash and size (what a Ray worker gets).

        Args:
            dataset_hash: the data set's content hash.
            size: its number of images.
            preprocess: the bundle's :class:`Preprocessing`.
            cache_dir: the cache root (default: the configured ``cache_dir``).
        """
        n = int(size)
        s = int(preprocess.input_size)
        if n == 0 or n * s * s * 3 > crop_cache_budget():
            return None
        try:
            return cls(dataset_hash, n, preprocess, cache_dir)
        except OSError:
            return None

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached crops of data-set positions ``indices``: ``(hit, crops)`` with ``hit`` a
        bool array and ``crops`` (number of hits, S, S, 3) uint8, in the order of the hits.

        Args:
            indices: int array of data-set positions.
        """
        import zlib
        idx = np.asarray(indices, dtype=np.int64)
        if self._data is None or not idx.size:
            return np.zeros(len(idx), bool), np.empty((0, self.side, self.side, 3), np.uint8)
        tags = np.asarray(self._index[idx])
        kind = tags >> np.uint64(32)
        hit = (kind == 1) | (kind == 2)
        crops = np.asarray(self._data[idx[hit]])
        want = tags[hit] & np.uint64(0xFFFFFFFF)
        ok = np.zeros(len(crops), bool)
        fast = kind[hit] == 2
        if fast.any() and self.slot % 8 == 0:
            ok[fast] = slot_hashes(crops[fast]) == want[fast]
        if not fast.all():
            slow = np.flatnonzero(~fast)
            ok[slow] = [zlib.crc32(crops[k]) == int(want[k]) for k in slow]
        if not ok.all():                    # a torn slot: read it again from the image
            pos = np.flatnonzero(hit)
            hit[pos[~ok]] = False
            crops = crops[ok]
        return hit, crops

    def put(self, index: int, crop: np.ndarray) -> None:
        """Store the crop of data-set position ``index`` (best effort: a full disk switches
        writing off for this cache).

        Args:
            index: the data-set position.
            crop: the (S, S, 3) uint8 crop ``Preprocessing.geometry`` made.
        """
        if not self.writable or crop.shape != (self.side, self.side, 3) or crop.dtype != np.uint8:
            return
        data = np.ascontiguousarray(crop).tobytes()
        tag = int(self._tags(np.ascontiguousarray(crop)[None])[0])
        try:
            os.pwrite(self._fd_data, data, int(index) * self.slot)
            os.pwrite(self._fd_index, int(tag).to_bytes(8, "little"), int(index) * 8)
        except OSError:
            self.writable = False

    def put_many(self, indices: Sequence[int], crops: Sequence[np.ndarray] | np.ndarray) -> None:
        """Store several crops; runs of consecutive positions are written with one call
        each (best effort, like :meth:`put`).

        Args:
            indices: the data-set positions.
            crops: their (S, S, 3) uint8 crops in the same order: an (n, S, S, 3) array or a
                sequence of arrays (crops of another shape or type are left out).
        """
        idx = np.asarray(indices, np.int64)
        shape = (self.side, self.side, 3)
        if isinstance(crops, np.ndarray) and crops.dtype == np.uint8 and crops.shape[1:] == shape:
            arr = crops
        else:
            keep = [k for k, c in enumerate(crops) if c.shape == shape and c.dtype == np.uint8]
            if not keep:
                return
            idx, arr = idx[keep], np.stack([crops[k] for k in keep])
        if not len(idx) or not self.writable:
            return
        if len(idx) > 1 and not bool(np.all(idx[1:] > idx[:-1])):    # not already in increasing order
            order = np.argsort(idx, kind="stable")
            idx, arr = idx[order], arr[order]
        arr = np.ascontiguousarray(arr)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(idx) != 1) + 1, [len(idx)]])
        mv = memoryview(arr).cast("B")
        all_tags = self._tags(arr)
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
            run = mv[a * self.slot:b * self.slot]
            tags = all_tags[a:b]
            try:
                os.pwrite(self._fd_data, run, int(idx[a]) * self.slot)
                os.pwrite(self._fd_index, tags.tobytes(), int(idx[a]) * 8)   # after the data, as in put
            except OSError:
                self.writable = False
                return

    def _tags(self, crops: np.ndarray) -> np.ndarray:
        """The index entries (little-endian uint64) of contiguous (n, S, S, 3) uint8 crops."""
        import zlib
        if self.slot % 8 == 0:
            return ((np.uint64(2) << np.uint64(32)) | slot_hashes(crops)).astype("<u8")
        return np.array([(1 << 32) | zlib.crc32(c) for c in crops], dtype="<u8")

    def close(self) -> None:
        """Close the files (the cache stays on disk). Takes no arguments."""
        for name in ("_fd_data", "_fd_index"):
            fd = getattr(self, name, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)
        self._index = self._data = None
        self.writable = False

    def __del__(self):
        self.close()
