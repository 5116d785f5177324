"""Batched work that survives out-of-memory errors: the batch halves and the same chunk
is retried (Captum's perturbations_per_eval idea, made automatic)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    if batch < 1:
        raise ParameterError("batch size must be at least 1")
    start = 0
    while start < n:
        stop = min(n, start + batch)
        try:
            fn(start, stop)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            batch = halve_after_oom(exc, batch)
            continue
        start = stop
        if progress:
            progress(start, n)
    return batch
