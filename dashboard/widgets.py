"""Widgets shared by several pages: class target and layer pickers, a job runner with a
progress bar and a cross-session result cache.

``run_job`` and ``drive_with_progress`` are the central compute points: heavy jobs queue
behind the device's semaphore (``analysis.core.jobs``), and every computed result is recorded
in the audit trail (``dashboard.audit_ui``) with the page, user and view it came from."""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Callable

import streamlit as st

from analysis.core.jobs import QueueState, heavy_job
from analysis.core.layers import LayerInfo
from analysis.core.models.bundle import ModelBundle
from analysis.core.predict import Prediction, search_classes
from dashboard.text import plain


def target_picker(bundle: ModelBundle, pred: Prediction, key: str) -> int:
    """Predicted class by default, any of the top-5, or any class searched by name."""
    mode = st.radio("Target class", ["Predicted", "Top-5", "Search"], horizontal=True, key=f"{key}_mode")
    if mode == "Predicted":
        st.caption(f"Predicted: **{plain(pred.labels[0])}** ({pred.probs[0]:.1%})")
        return int(pred.indices[0])
    if mode == "Top-5":
        opts = list(range(len(pred.labels)))
        i = st.selectbox("Class", opts, key=f"{key}_top5",
                         format_func=lambda i: f"{pred.labels[i]} ({pred.probs[i]:.1%})")
        return int(pred.indices[i])
    q = st.text_input("Search class names", key=f"{key}_query", placeholder="e.g. goldfish")
    hits = search_classes(bundle, q, limit=50) if q.strip() else []
    if not hits:
        st.caption("No match yet: using the predicted class." if q.strip() else "Type part of a class name.")
        return int(pred.indices[0])
    idx = st.selectbox("Matches", [h[0] for h in hits], key=f"{key}_hit",
                       format_func=lambda i: f"{bundle.categories[i]} ({i})")
    return int(idx)


def layer_picker(infos: list[LayerInfo], default: str, key: str, label: str = "Layer",
                 spatial_only: bool = True) -> str:
    names = [i.name for i in infos if i.calls > 0 and (i.spatial or not spatial_only)]
    shapes = {i.name: i.output_shape for i in infos}
    index = names.index(default) if default in names else len(names) - 1
    return st.selectbox(label, names, index=index, key=key,
                        format_func=lambda n: f"{n}  {'x'.join(map(str, shapes[n]))}")


class _ResultCache:
    """A small LRU shared by all sessions: results of unchanged requests come back at once."""

    def __init__(self, size: int = 128):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource
def result_cache() -> _ResultCache:
    return _ResultCache()


def queue_message(q: QueueState) -> str:
    return (f"Queued: {q.running} heavy job{'s' if q.running != 1 else ''} running on {q.device} "
            f"(at most {q.capacity} at once), {q.waiting - 1} ahead of this one · waited {q.seconds:.0f} s")


@contextlib.contextmanager
def job_slot(heavy: bool, bar=None):
    """Hold a device slot for a heavy job; while queued, say so in ``bar`` (or a notice)."""
    if not heavy:
        yield
        return
    notice = None

    def on_wait(q: QueueState):
        nonlocal notice
        if bar is not None:
            bar.progress(0.0, text=queue_message(q))
        else:
            notice = notice or st.empty()
            notice.caption(queue_message(q))
    try:
        with heavy_job(on_wait=on_wait):
            if notice is not None:
                notice.empty()
            yield
    finally:
        if notice is not None:
            notice.empty()


def run_job(key: tuple, label: str, fn: Callable, *, with_progress: bool = True, heavy: bool | None = None,
            record: bool = True):
    """Return the cached result for ``key`` or compute ``fn(progress)`` with a progress bar.

    ``heavy`` (default: ``with_progress``) jobs wait for a free slot of the device. A
    computed result is recorded in the audit trail (``record=False``: helpers such as
    thumbnails; only analysis results are recorded anyway)."""
    cache = result_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    bar = st.progress(0.0, text=label) if with_progress else None

    def progress(done: int, total: int):
        if bar is not None:
            bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: {done}/{total}")
    try:
        with st.spinner(label) if bar is None else _null():
            with job_slot(with_progress if heavy is None else heavy, bar):
                value = fn(progress)
    finally:
        if bar is not None:
            bar.empty()
    cache.put(key, value)
    if record:
        from dashboard.audit_ui import record as audit_record
        audit_record(value, key, label)
    return value


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def drive_with_progress(gen, label: str):
    """Run a convlens generator (yielding JobProgress, returning its result) with a progress
    bar; a Stop button (or any rerun) interrupts it, and then nothing is saved."""
    bar = st.progress(0.0, text=label)
    value = None
    try:
        with job_slot(True, bar):
            while True:
                try:
                    p = next(gen)
                except StopIteration as fin:
                    value = fin.value
                    break
                bar.progress(p.fraction, text=f"{label}: {p.done}/{p.total}")
    finally:
        bar.empty()
    if value is not None:
        from dashboard.audit_ui import record as audit_record
        audit_record(value, None, label)
    return value
