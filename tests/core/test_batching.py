"""core.batching.Chunks: the one out-of-memory-safe chunk loop (features, patch scan, run_batched)."""
import pytest

from analysis.core.batching import Chunks
from analysis.core.errors import ParameterError


def test_chunks_cover_the_range_and_halve_after_oom():
    calls = []

    def compute(a, b):
        calls.append((a, b))
        if b - a > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return list(range(a, b))

    chunks = Chunks(10, 8, compute)
    got = list(chunks)
    assert [x for _, _, out in got for x in out] == list(range(10))
    assert [(a, b) for a, b, _ in got] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert calls[:3] == [(0, 8), (0, 4), (0, 2)]        # the same chunk, retried smaller
    assert chunks.batch == 2 and not chunks.stopped


def test_chunks_stop_early_and_reraise_other_errors():
    seen = []
    chunks = Chunks(10, 3, lambda a, b: seen.append((a, b)), should_stop=lambda: len(seen) == 2)
    assert [(a, b) for a, b, _ in chunks] == [(0, 3), (3, 6)]
    assert chunks.stopped and chunks.done == 6
    with pytest.raises(ValueError, match="other"):
        list(Chunks(3, 2, lambda a, b: (_ for _ in ()).throw(ValueError("other"))))
    with pytest.raises(RuntimeError, match="out of memory"):     # at batch size 1 OOM is final
        list(Chunks(3, 1, lambda a, b: (_ for _ in ()).throw(RuntimeError("out of memory"))))
    with pytest.raises(ParameterError):
        Chunks(3, 0, lambda a, b: None)
