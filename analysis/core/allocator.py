"""glibc malloc settings for CPU tensor work.

With glibc's defaults, the large, short-lived buffers of a CNN forward (activations of a
few MB to a few hundred MB) are mmapped per allocation, or returned to the kernel at the top
of the heap as soon as they are freed, so the next forward faults every page in again: on
the 2-core machine of docs/benchmarks.md a quarter of a batched forward's CPU time was spent
in the kernel zeroing pages, and batch-32 throughput was less than half of what it is
without that.

``tune()`` keeps freed memory in the process instead (``mallopt``: no mmapped allocations,
so every buffer comes from the heap and is reused; trim threshold 1 GiB; top pad 64 MiB).
The memory goes back to the kernel when the process is idle: ``release()``
(``malloc_trim``) runs once a device has had no heavy job for ``RELEASE_AFTER_S`` = 2 s
(analysis/core/jobs.py: back-to-back jobs reuse the buffers),
and glibc trims by itself when more than 1 GiB is free at the heap's top. Effect:
``bench/allocator.py`` (docs/benchmarks.md). ``CONVLENS_MALLOC_TUNING=0`` keeps glibc's
defaults; ``CONVLENS_MALLOC_NOMMAP=0`` keeps mmap for buffers above 32 MiB. A no-op on
other C libraries and platforms.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4

_done: bool | None = None
_libc = None
_lock = threading.Lock()


def _off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def settings() -> dict[int, int]:
    """The glibc malloc settings convlens applies ({mallopt parameter: value}); environment
    variables CONVLENS_MALLOC_* switch parts off. Takes no arguments."""
    s = {M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 2**30, M_TOP_PAD: 64 * 2**20}
    if not _off("CONVLENS_MALLOC_NOMMAP"):
        s[M_MMAP_MAX] = 0
    return s


def _c():
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.mallopt.argtypes, _libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _libc.malloc_trim.argtypes, _libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune(force: bool = False) -> bool:
    """Apply the settings once per process; True when glibc accepted all of them.

    Args:
        force: apply them again even if done already in this process.
    """
    global _done
    with _lock:
        if _done is not None and not force:
            return _done
        _done = False
        libc = None if _off("CONVLENS_MALLOC_TUNING") else _c()
        if libc is not None:
            _done = all(libc.mallopt(k, v) == 1 for k, v in settings().items())
        return _done


def release() -> bool:
    """Give free heap memory back to the kernel (``malloc_trim(0)``); True if any was."""
    libc = _c() if _done else None
    return bool(libc.malloc_trim(0)) if libc is not None else False
