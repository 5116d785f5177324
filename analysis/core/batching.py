"""Batched work that survives out-of-memory errors: the batch halves and the same chunk
is retried (Captum's perturbations_per_eval idea, made automatic)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from analysis.core.errors import ParameterError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobProgress:
    """What long-running generators yield: ``done`` of ``total`` items, ``seconds`` since start."""
    done: int
    total: int
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, or the CPU allocator failing.

    Args:
        exc: the exception a batch raised.
    """
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc)))


def halve_after_oom(exc: BaseException, batch: int) -> int:
    """The batch size to retry with after ``exc``; re-raises anything that is not an
    out-of-memory error, or one at batch size 1."""
    if not is_oom(exc) or batch <= 1:
        raise exc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return max(1, batch // 2)


class Chunks:
    """``compute(start, stop)`` over ``range(n)`` in chunks of ``batch``; after an
    out-of-memory error the chunk halves and the same chunk is retried (anything else is
    re-raised). Iterating yields ``(start, stop, result)`` per chunk. ``should_stop()``,
    checked before every chunk, ends the iteration early: then ``stopped`` is true.
    ``batch`` is the chunk size that worked last.

    Args:
        n: how many items.
        batch: the first chunk size (at least 1).
        compute: ``compute(start, stop) -> result`` for items ``start..stop-1``.
        should_stop: optional; true ends the iteration before the next chunk.
    """

    def __init__(self, n: int, batch: int, compute: Callable[[int, int], Any],
                 should_stop: Callable[[], bool] | None = None):
        if batch < 1:
            raise ParameterError("batch size must be at least 1")
        self.n, self.batch, self.compute, self.should_stop = n, batch, compute, should_stop
        self.done = 0

    @property
    def stopped(self) -> bool:
        return self.done < self.n

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        while self.done < self.n:
            if self.should_stop is not None and self.should_stop():
                return
            start, stop = self.done, min(self.n, self.done + self.batch)
            try:
                out = self.compute(start, stop)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                self.batch = halve_after_oom(exc, self.batch)
                continue
            self.done = stop
            yield start, stop, out


def run_batched(n: int, batch: int, fn: Callable[[int, int], None], progress: Progress | None = None) -> int:
    """Call ``fn(start, stop)`` over ``range(n)`` in chunks of ``batch``, halving the chunk
    after an out-of-memory error. Returns the batch size that worked.

    Args:
        n: number of items.
        batch: first chunk size (≥ 1).
        fn: ``fn(start, stop)`` processes items ``start`` to ``stop - 1``; an out-of-memory error
            retries the same start with half the chunk, any other exception propagates.
        progress: ``progress(done, n)`` after each chunk, or None.
    """
    chunks = Chunks(n, batch, fn)
    for _, stop, _ in chunks:
        if progress:
            progress(stop, n)
    return chunks.batch


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where the
    platform has none). Takes no arguments."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
