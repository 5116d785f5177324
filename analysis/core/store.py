"""Content-addressed storage of uploaded files (weights, class names, images, zips).

A file is stored once as ``<data_dir>/uploads/<sha256>`` with its original name in a
sidecar, so a model or image choice can be named by hash in session state, caches and
share links. Nothing lists the store: a hash is only known to whoever has the content.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from analysis.core.config import get_config
from analysis.core.errors import LimitError, ParameterError
from analysis.core.fsio import atomic_write

_HASH = re.compile(r"^[0-9a-f]{64}$")


def uploads_dir(root: Path | None = None) -> Path:
    """The uploads folder (created if needed).

    Args:
        root: the folder to use (default ``<data_dir>/uploads``).
    """
    d = Path(root or get_config().data_dir / "uploads")
    d.mkdir(parents=True, exist_ok=True)
    return d


def upload_digest(data: bytes) -> str:
    """The reference (sha256 hex digest) ``data`` is stored under."""
    return hashlib.sha256(data).hexdigest()


def has_upload(digest: str, root: Path | None = None) -> bool:
    """Whether an upload with this digest is stored.

    Args:
        digest: sha256 hex digest of the upload's bytes.
        root: the uploads folder; None for ``<data_dir>/uploads``.
    """
    return bool(_HASH.match(digest or "")) and (uploads_dir(root) / digest).is_file()


def save_upload(data: bytes, filename: str, root: Path | None = None, max_bytes: int | None = None) -> str:
    """Store ``data`` (atomically, once) and return its sha256 hex digest.

    Args:
        data: the file's bytes.
        filename: its original name (kept in a sidecar for messages).
        root: the store folder (default ``<data_dir>/uploads``).
        max_bytes: refuse (LimitError, nothing written) larger files; default the
            configuration's ``max_upload_bytes``. Validate the content before storing it, or
            ``discard_upload`` it when it is refused later.
    """
    limit = get_config().limits.max_upload_bytes if max_bytes is None else max_bytes
    if len(data) > limit:
        raise LimitError(f"'{Path(filename).name}' is {len(data) / 2**20:.1f} MB, over the upload limit of "
                         f"{limit / 2**20:.0f} MB; nothing was stored.")
    digest = upload_digest(data)
    d = uploads_dir(root)
    path = d / digest
    if not path.exists():
        atomic_write(path, data)
    meta = d / f"{digest}.json"
    if not meta.exists():
        meta.write_text(json.dumps({"filename": Path(filename).name, "bytes": len(data)}))
    return digest


def read_upload(digest: str, root: Path | None = None) -> tuple[bytes, str]:
    """(bytes, original file name) of a stored upload. ParameterError if unknown.

    Args:
        digest: sha256 hex digest of the upload's bytes.
        root: the uploads folder; None for ``<data_dir>/uploads``.
    """
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


def discard_upload(digest: str, root: Path | None = None) -> bool:
    """Remove a stored upload (and its sidecar) that was refused after storing. True if removed.

    Args:
        digest: sha256 hex digest of the upload's bytes.
        root: the uploads folder; None for ``<data_dir>/uploads``.
    """
    if not _HASH.match(digest or ""):
        return False
    d = uploads_dir(root)
    removed = False
    for p in (d / digest, d / f"{digest}.json"):
        try:
            p.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed
