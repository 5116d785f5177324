"""Atomic file writes: a file appears whole at its path, or not at all.

Every writer in the project goes through here: the bytes go to a temporary file in the target's
folder (so the final ``os.replace`` is a rename on one file system), are flushed and fsync'ed,
and the temporary name is moved into place; the folder is fsync'ed so that the rename survives a
crash. On any error (including KeyboardInterrupt) the temporary file is removed and the target is
left as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; the files written here get the mode a plain open() would give.
_FILE_MODE = 0o666 & ~_read_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; best effort.

    Args:
        folder: the folder to flush; missing folders and file systems that refuse are ignored.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a binary file to write whose content replaces ``path`` only when the block ends well.

    Args:
        path: the final file; its folder is created if needed.
        fsync: flush the file and its folder to disk before returning (crash safety).

    Yields:
        A binary file object on a temporary file next to ``path``. If the block raises, the
        temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the whole new one.

    Args:
        path: the file to (re)write; its folder is created if needed.
        data: the file's bytes.
        fsync: flush the file and its folder to disk before returning.
    """
    with atomic_open(path, fsync=fsync) as f:
        f.write(data)
