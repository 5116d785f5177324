"""One thread-safe in-memory LRU for the whole project: ``cachetools.LRUCache`` behind a lock.

Values are computed outside the lock (``get_or_compute``), so a slow computation never blocks
readers of other keys; two threads missing the same key at once both compute it and the last
one stored wins (the values are equal: every cache here is keyed by everything its value
depends on).
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Hashable

from cachetools import LRUCache


class LockedLRU:
    """A bounded least-recently-used mapping safe to share between threads (and sessions)."""

    def __init__(self, maxsize: int):
        """Args:
            maxsize: how many entries are kept; the least recently used one goes first.
        """
        self.maxsize = int(maxsize)
        self._cache: LRUCache = LRUCache(maxsize=self.maxsize)   # key -> (use tick, value)
        self._lock = threading.Lock()
        self._ticks = itertools.count()

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value stored under ``key`` (marking it recently used), else ``default``.

        Args:
            key: the cache key.
            default: returned when the key is absent.
        """
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return default
            self._cache[key] = (next(self._ticks), hit[1])
            return hit[1]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` (most recently used), evicting the oldest entry if full.

        Args:
            key: the cache key.
            value: the value to keep.
        """
        with self._lock:
            self._cache[key] = (next(self._ticks), value)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value for ``key``, or ``compute()`` (called outside the lock) stored and returned.

        Args:
            key: the cache key.
            compute: makes the value on a miss; a None result is returned but not stored.
        """
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache[key] = (next(self._ticks), hit[1])
                return hit[1]
        value = compute()
        if value is not None:
            self.put(key, value)
        return value

    def find(self, pred: Callable[[Hashable, Any], bool]) -> tuple[Hashable, Any] | None:
        """The most recently used ``(key, value)`` for which ``pred(key, value)`` holds, else None.

        Args:
            pred: a cheap test of one entry (called under the lock).
        """
        with self._lock:
            # reading every entry touches each in LRUCache's own order: restore it from the ticks
            entries = sorted((tick, k, v) for k, (tick, v) in list(self._cache.items()))
            for _, k, _ in entries:
                self._cache[k]
            for _tick, k, v in reversed(entries):
                if pred(k, v):
                    self._cache[k] = (next(self._ticks), v)
                    return k, v
            return None

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._cache

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._cache.clear()
