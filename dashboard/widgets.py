"""Widgets shared by several pages: class target and layer pickers, and the one job runner.

``run_job`` is the only compute point of the UI (issue 15): a result cache shared by all
sessions, a queue slot of the device (``analysis.core.jobs``), a progress bar, a Stop
button, the audit record (``dashboard.audit_ui``, explicit computations only) and the
share-link mark. ``dashboard.optimize_ui.live_run`` and ``dashboard.style_ui.run_training``
are views around it (start button, live preview, loss curves)."""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Generator

import streamlit as st

from analysis.core.jobs import QueueState, heavy_job
from analysis.core.layers import LayerInfo
from analysis.core.lru import LockedLRU
from analysis.core.models.bundle import ModelBundle
from analysis.core.predict import Prediction, search_classes
from dashboard import share
from dashboard.errors import guard
from dashboard.text import plain


@contextlib.contextmanager
def page(title: str, caption: str, what: str = ""):
    """A page's head and body: its title and caption, then the with-block under
    ``dashboard.errors.guard(what or title)`` (errors as messages, never a traceback).

    Args:
        title: the page's title.
        caption: one or two sentences under it (what the page shows, and after whom).
        what: the name error messages start with (default: the title).
    """
    st.title(title)
    st.caption(caption)
    with guard(what or title):
        yield


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
    by_name = {i.name: i for i in infos}
    index = names.index(default) if default in names else len(names) - 1
    help_text = None
    if spatial_only:                 # say which layers are offered and why the others are not
        left = [i for i in infos if i.calls > 0 and not i.spatial]
        kinds = sorted({str(i.layout.kind) for i in left})
        help_text = (f"{len(names)} layers with a spatial map are offered (channels-first, channels-last or "
                     f"patch tokens on their grid; the layout is shown after the shape). "
                     + (f"Not offered: {len(left)} layers without one (layouts: {', '.join(kinds)}), such as "
                        "pooled vectors, the classifier, attention internals or class tokens alone: there is "
                        "no map of positions to show." if left else ""))

    def fmt(n: str) -> str:
        i = by_name[n]
        shape = "x".join(map(str, i.output_shape or ()))
        return f"{n}  {shape}" + ("" if i.layout.kind == "nchw" else f"  ({i.layout})")

    return st.selectbox(label, names, index=index, key=key, format_func=fmt, help=help_text)


@st.cache_resource
def result_cache() -> LockedLRU:
    """A small LRU shared by all sessions: results of unchanged requests come back at once."""
    return LockedLRU(128)


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


def run_job(key, label: str, fn: Callable, *, start: bool = True, with_progress: bool = True,
            heavy: bool | None = None, record: bool = True, title: str | None = None, stop: str | None = None,
            on_step: Callable | None = None, step_text: Callable | None = None, share_name: str | None = None,
            meta: dict | None = None, cache: bool = True):
    """The one way the UI runs a job: result cache, queue slot, progress bar, Stop, audit
    record and share-link mark. Returns the result, or None (not started, or stopped).

    ``fn(progress)`` computes the result, calling ``progress(done, total)`` if it likes; or
    it returns a generator (a convlens long job yielding steps with ``done``/``step`` and
    ``total``, returning its result), which is driven here: the bar follows its steps,
    ``on_step(step)`` draws previews, ``step_text(step)`` words the bar. An interrupted
    generator is closed (fast-style training saves a checkpoint then).

    * ``key``: the request; an unchanged request comes from the cross-session result cache
      (``cache=False`` or ``key=None``: stored elsewhere, e.g. an index on disk).
    * ``start``: whether this run asks for the computation (a button's value); a share link
      that showed the result of ``key`` (``share_name``) starts it too. Otherwise None.
    * ``heavy`` (default ``with_progress``): wait for a free slot of the device.
    * ``stop``: the key of a Stop button shown beside the bar while the job runs (any rerun
      interrupts it; the button goes away with the bar).
    * ``record``: the job is an explicit computation (a button, a request the page keeps):
      record it in the audit trail under ``title`` (default ``label``) with ``meta``
      (``target``, ``layer``, ``method``; ``image=False`` when the sidebar image is no input).
      Results computed by merely visiting a page pass ``record=False``.
    * ``share_name``: the share link notes ``{share_name}_result`` while the result is shown.
    """
    store = result_cache() if cache and key is not None else None
    hit = store.get(key) if store is not None else None
    if hit is not None:
        if share_name:
            share.mark(share_name, key)
        return hit
    if not start and not (share_name and share.resume(share_name, key)):
        if share_name:
            share.unmark(share_name)
        return None
    box = st.empty()                   # Stop and the bar live here and go away together
    bar = None
    with box.container():
        if stop is not None:
            b_col, s_col = st.columns([5, 1], vertical_alignment="center")
            s_col.button("Stop", key=stop, help="Stops after the current step.")
            holder = b_col
        else:
            holder = st
        if with_progress:
            bar = holder.progress(0.0, text=label)

    def progress(done: int, total: int):
        if bar is not None:
            bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: {done}/{total}")

    def tick(s) -> None:
        done = getattr(s, "done", getattr(s, "step", 0))
        total = getattr(s, "total", 1) or 1
        if bar is not None:
            bar.progress(min(1.0, max(0.0, done / total)),
                         text=step_text(s) if step_text is not None else f"{label}: {done}/{total}")
        if on_step is not None:
            on_step(s)

    gen = None
    try:
        with st.spinner(label) if bar is None else contextlib.nullcontext():
            with job_slot(with_progress if heavy is None else heavy, bar):
                value = fn(progress)
                if inspect.isgenerator(value):
                    gen, value = value, None
                    from analysis.optimize import run as drive
                    value = drive(gen, on_step=tick)
    finally:
        if gen is not None:
            gen.close()                # interrupted (Stop, rerun, error): let the job clean up
        box.empty()
    if value is None:
        return None
    if store is not None:
        store.put(key, value)
    if record:
        from dashboard.audit_ui import record as audit_record
        audit_record(value, key, title or label, meta=meta)
    if share_name:
        share.mark(share_name, key)
    return value


def drive_with_progress(gen, label: str, title: str | None = None):
    """A generator job started by a button, with nothing kept in the result cache (its
    result is stored on disk): ``run_job`` with ``cache=False``."""
    return run_job(None, label, lambda _p: gen, title=title or _TITLES.get(getattr(gen, "__name__", ""), label),
                   meta={"image": False}, cache=False)


def record_button(name: str, value, key, title: str, meta: dict | None = None, where=None) -> str | None:
    """A shown result that the page computed on its own (a visit, not a request) enters the
    audit trail only when asked: this button records it. Returns the run's uid once."""
    where = where or st
    if where.button("Record in the audit trail", key=f"{name}_record", icon=":material/fact_check:",
                    help="Adds this result, with the model, image and settings, to the Audit trail page."):
        from dashboard.audit_ui import record as audit_record
        uid = audit_record(value, key, title, meta=meta)
        if uid is not None:
            where.caption("Recorded in the audit trail.")
        return uid
    return None


@dataclass
class SequenceStep:
    """A step of job ``index`` (named ``name``) of ``count`` jobs run one after the other."""
    index: int
    count: int
    name: str
    step: object

    @property
    def done(self) -> float:
        s = self.step
        return self.index + getattr(s, "done", getattr(s, "step", 0)) / max(getattr(s, "total", 1) or 1, 1)

    @property
    def total(self) -> int:
        return self.count


def in_sequence(jobs: list[tuple[str, Callable[[], Generator]]]) -> Generator:
    """Several generator jobs as one (for ``run_job``): yields a :class:`SequenceStep` per
    step of each, returns the list of their results. Stopping it closes the current one."""
    out = []
    for i, (name, make) in enumerate(jobs):
        gen = make()
        try:
            s = next(gen)
            while True:
                cmd = yield SequenceStep(i, len(jobs), name, s)
                s = gen.send(cmd)
        except StopIteration as fin:
            out.append(fin.value)
        finally:
            gen.close()
    return out


# Audit titles of generator jobs whose progress label names something else ("Extracting x").
_TITLES = {"extract": "Feature extraction", "scan": "Patch scan"}
