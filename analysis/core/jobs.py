"""Heavy jobs queue behind a per-device semaphore.

Several browser sessions share one server: an optimisation, a perturbation method or a
data-set scan from each of them at once would make all of them slow (and could exhaust
GPU memory). ``heavy_job(device)`` admits ``limits.max_concurrent_jobs`` jobs per device
at a time; the others wait in arrival order, and their pages say so (``on_wait``).

Re-entrant per thread: a heavy job that calls another heavy job does not queue twice
(and cannot deadlock against itself). Waiting polls, so that the caller's ``on_wait``
may raise (Streamlit raises its rerun/stop exceptions there when the user presses Stop
or changes a widget) and the job then leaves the queue.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator

from analysis.core.config import get_config
from analysis.core.errors import LimitError


@dataclass(frozen=True)
class QueueState:
    device: str
    running: int
    waiting: int          # jobs queued ahead of this one (including it)
    capacity: int
    seconds: float        # how long this job has waited


class DeviceSlots:
    """A fair (FIFO) counting semaphore with observable state."""

    def __init__(self, device: str, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.device, self.capacity = device, capacity
        self._cond = threading.Condition()
        self._running = 0
        self._queue: deque[object] = deque()
        self.peak = 0                       # most jobs ever running at once (tests, logs)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def acquire(self, *, on_wait: Callable[[QueueState], None] | None = None, poll: float = 0.25,
                timeout: float | None = None) -> None:
        """Take a slot, waiting in arrival order while all are busy.

        Args:
            on_wait: called with the queue state while waiting (may raise to leave the queue).
            poll: seconds between checks while waiting.
            timeout: give up (LimitError) after this many seconds; None waits for ever.
        """
        ticket = object()
        start = time.monotonic()
        with self._cond:
            self._queue.append(ticket)
        try:
            while True:
                with self._cond:
                    if self._queue[0] is ticket and self._running < self.capacity:
                        self._queue.popleft()
                        self._running += 1
                        self.peak = max(self.peak, self._running)
                        self._cond.notify_all()
                        return
                    ahead = list(self._queue).index(ticket) + 1
                    running = self._running
                waited = time.monotonic() - start
                if timeout is not None and waited > timeout:
                    raise LimitError(
                        f"The server is busy: {running} heavy jobs are running on {self.device} and this one "
                        f"waited {waited:.0f} s for a free slot. Try again in a moment.")
                if on_wait is not None:
                    on_wait(QueueState(self.device, running, ahead, self.capacity, waited))
                with self._cond:
                    if not (self._queue[0] is ticket and self._running < self.capacity):
                        self._cond.wait(poll)
        except BaseException:
            with self._cond:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                    self._cond.notify_all()
            raise

    def release(self) -> None:
        """Give the slot back and wake the next waiting job. Takes no arguments."""
        with self._cond:
            if self._running <= 0:
                raise RuntimeError("release without acquire")
            self._running -= 1
            self._cond.notify_all()


_lock = threading.Lock()
_slots: dict[str, DeviceSlots] = {}
_held = threading.local()


def _device_name(device) -> str:
    if device is None:
        from analysis.core.models.loaders import select_device
        device = select_device()
    name = str(device)
    return "cuda:0" if name == "cuda" else name


def slots(device=None) -> DeviceSlots:
    """The semaphore of ``device`` (default: the device models run on), sized by the config."""
    name = _device_name(device)
    capacity = get_config().limits.max_concurrent_jobs
    with _lock:
        s = _slots.get(name)
        if s is None or (s.capacity != capacity and s.running == 0 and s.waiting == 0):
            s = _slots[name] = DeviceSlots(name, capacity)
        return s


@contextlib.contextmanager
def heavy_job(device=None, *, on_wait: Callable[[QueueState], None] | None = None,
              timeout: float | None = None) -> Iterator[None]:
    """Hold one of the device's job slots for the body (queue until one is free).

    Nested use in the same thread takes no second slot. When the last job on the device ends,
    the reused allocator buffers are released.

    Args:
        device: the device whose slots are used; None for the one models run on.
        on_wait: called with the :class:`QueueState` while queued (may raise to leave the queue).
        timeout: give up with ``LimitError`` after this many seconds of queueing; None for the
            configured ``max_queue_seconds``.
    """
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    s = slots(device)
    if timeout is None:
        timeout = float(get_config().limits.max_queue_seconds)
    s.acquire(on_wait=on_wait, timeout=timeout)
    _held.depth = 1
    try:
        yield
    finally:
        _held.depth = 0
        s.release()
        if s.running == 0 and s.waiting == 0:
            _release_when_idle(s)


RELEASE_AFTER_S = 2.0      # idle seconds after the last heavy job before memory goes back to the kernel


def _release_when_idle(s: DeviceSlots) -> None:
    """Give the reused allocator buffers back (analysis/core/allocator.py) once ``s`` has had
    no heavy job for :data:`RELEASE_AFTER_S` seconds: a job that starts sooner (the next
    job of an audit, the next batch of a session) reuses them instead of faulting every page
    in again."""
    import analysis.core.allocator as allocator

    def later() -> None:
        if s.running == 0 and s.waiting == 0:
            allocator.release()
    if RELEASE_AFTER_S <= 0:
        later()
        return
    t = threading.Timer(RELEASE_AFTER_S, later)
    t.daemon = True
    t.name = "convlens-release-memory"
    t.start()


def reset() -> None:
    """Forget all semaphores (tests); jobs holding one keep it until they end."""
    with _lock:
        _slots.clear()


def drive(gen: Generator, on_step: Callable[[Any], None] | None = None,
          reply: Callable[[Any], Any] | None = None) -> Any:
    """Run a generator job (one that yields steps and returns its result) to its end.

    Args:
        gen: the generator.
        on_step: called with every yielded step (progress bars, logs).
        reply: what to send back after each step, from the step (e.g. "stop"); None sends None.

    Returns:
        The generator's return value.
    """
    try:
        step = next(gen)
        while True:
            if on_step is not None:
                on_step(step)
            step = gen.send(None if reply is None else reply(step))
    except StopIteration as fin:
        return fin.value
