"""A small on-disk cache for numpy results (patch indexes, feature caches...).

Entries live in ``<cache_dir>/<kind>/<key>.npz``: the arrays, plus the metadata as a JSON
string stored in the same archive under ``__meta__`` (one file per entry, so an entry is
written and replaced atomically as a whole). Files are written to a temporary name in the
same folder and moved into place with ``os.replace``; readers never see half a file.
Nothing is pickled (``allow_pickle=False`` both ways). A file that cannot be read back
(truncated, corrupt, wrong layout) counts as missing and is deleted.

>>> key = cache_key("patches", model_id, layer, dataset_hash, k)
>>> save_arrays("patches", key, {"values": v}, {"layer": layer})
>>> arrays, meta = load_arrays("patches", key)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from analysis.core.config import get_config
from analysis.core.errors import ParameterError
from analysis.core.fsio import atomic_open
from analysis.core.jsonsafe import NOT_SCALAR, json_scalar

_META = "__meta__"
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def _canonical(obj: Any) -> Any:
    """JSON-able canonical form: tuples -> lists, numpy scalars/arrays -> Python values,
    paths -> strings. Anything else that JSON cannot encode is refused (no repr() keys)."""
    if (s := json_scalar(obj)) is not NOT_SCALAR:
        return s                    # NaN / inf as strings: JSON has none; distinct and stable
    if isinstance(obj, (list, tuple)):
        return [_canonical(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.dtype.str, "shape": list(obj.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ParameterError(f"cache_key cannot use a value of type {type(obj).__name__}")


def cache_key(*parts: Any) -> str:
    """sha256 hex digest of a canonical JSON encoding of ``parts`` (sorted keys, no
    whitespace). Equal parts give equal keys across processes and Python versions;
    ``(1, 2)`` and ``[1, 2]`` are the same part."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path(get_config().cache_dir)


def _check(kind: str, key: str | None = None) -> None:
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ParameterError(f"Invalid cache kind {kind!r} (letters, digits, '_', '-', '.').")
    if key is not None and (not isinstance(key, str) or not _KEY.match(key)):
        raise ParameterError(f"Invalid cache key {key!r} (use cache_key()).")


def cache_path(kind: str, key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the entry ``kind``/``key`` is (or would be) stored.

    Args:
        kind: the entry's family (letters, digits, ``_``, ``.``, ``-``), one folder per kind.
        key: the entry's key (from ``cache_key``; letters, digits, ``_``, ``-``).
        cache_dir: cache root; None for the configured ``cache_dir``.
    """
    _check(kind, key)
    return _root(cache_dir) / kind / f"{key}.npz"


def save_arrays(kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """Store ``arrays`` (name -> numeric/bool/string array) and JSON-able ``meta``
    atomically; replaces an existing entry. Returns the file's path.

    Args:
        kind: the entry's family (one folder per kind).
        key: the entry's key (from ``cache_key``).
        arrays: name -> array; object arrays are refused (no pickles).
        meta: JSON-able metadata (NaN not allowed), stored inside the file.
        cache_dir: cache root; None for the configured ``cache_dir``.
    """
    path = cache_path(kind, key, cache_dir)
    if _META in arrays:
        raise ParameterError(f"The array name {_META!r} is reserved.")
    payload = {}
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.hasobject:
            raise ParameterError(f"Array {name!r} has dtype object; the cache stores no pickles.")
        payload[str(name)] = a
    payload[_META] = np.array(json.dumps(_canonical(meta or {}), sort_keys=True, allow_nan=False))
    with atomic_open(path) as f:
        np.savez(f, allow_pickle=False, **payload)
    return path


def load_arrays(kind: str, key: str, cache_dir: str | os.PathLike | None = None
                ) -> tuple[dict[str, np.ndarray], dict] | None:
    """``(arrays, meta)`` of a stored entry, or None when it is missing or unreadable
    (an unreadable file is deleted so the caller recomputes and stores it again).

    Args:
        kind: the entry's family.
        key: the entry's key.
        cache_dir: cache root; None for the configured ``cache_dir``.
    """
    path = cache_path(kind, key, cache_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop(_META)[()]))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (OSError, ValueError, KeyError, EOFError, TypeError, IndexError,
            zipfile.BadZipFile, UnicodeDecodeError):
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return arrays, meta


def clear(kind: str, cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every entry of ``kind``; returns how many entry files were removed.

    Args:
        kind: the family to clear.
        cache_dir: cache root; None for the configured ``cache_dir``.
    """
    _check(kind)
    folder = _root(cache_dir) / kind
    if not folder.is_dir():
        return 0
    n = sum(1 for p in folder.glob("*.npz"))
    shutil.rmtree(folder, ignore_errors=True)
    return n
