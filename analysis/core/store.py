"""Content-addressed storage of uploaded files (weights, class names, images, zips).

A file is stored once as ``<data_dir>/uploads/<sha256>`` with its original name in a
sidecar, so a model or image choice can be named by hash in session state, caches and
share links. Nothing lists the store: a hash is only known to whoever has the content.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from analysis.core.config import get_config
from analysis.core.errors import ParameterError

_HASH = re.compile(r"^[0-9a-f]{64}$")


def uploads_dir(root: Path | None = None) -> Path:
    d = Path(root or get_config().data_dir / "uploads")
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_upload(data: bytes, filename: str, root: Path | None = None) -> str:
    """Store ``data`` (atomically, once) and return its sha256 hex digest."""
    digest = hashlib.sha256(data).hexdigest()
    d = uploads_dir(root)
    path = d / digest
    if not path.exists():
        tmp = d / f".{digest}.tmp{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    meta = d / f"{digest}.json"
    if not meta.exists():
        meta.write_text(json.dumps({"filename": Path(filename).name, "bytes": len(data)}))
    return digest


def read_upload(digest: str, root: Path | None = None) -> tuple[bytes, str]:
    """(bytes, original file name) of a stored upload. ParameterError if unknown."""
    if not _HASH.match(digest or ""):
        raise ParameterError("Not an upload reference (expected a sha256 hex digest).")
    d = uploads_dir(root)
    path = d / digest
    if not path.is_file():
        raise ParameterError("This upload is not stored on this server (it may have been removed).")
    try:
        filename = json.loads((d / f"{digest}.json").read_text())["filename"]
    except (OSError, ValueError, KeyError):
        filename = digest
    return path.read_bytes(), filename
