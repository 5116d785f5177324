"""Heavy jobs queue behind a per-device semaphore (analysis/core/jobs.py), and many sessions at
once get the results of serial runs: 8 threads, each one session on a different page
doing that page's computation through the same semaphore and audit recording the
dashboard uses, against the serial results; no hook is left on the shared models and
memory comes back near its starting level."""
import ctypes
import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import analysis.core.jobs as jobs
from analysis.core.config import Config, Limits, set_config
from analysis.core.errors import LimitError


@pytest.fixture(autouse=True)
def _fresh_slots():
    jobs.reset()
    yield
    jobs.reset()


def _cfg(n: int, queue_s: int = 900) -> Config:
    from analysis.core.config import get_config
    base = get_config()
    import dataclasses
    return dataclasses.replace(base, limits=dataclasses.replace(base.limits, max_concurrent_jobs=n,
                                                                max_queue_seconds=queue_s))


# ------------------------------------------------------------------ the semaphore

def test_at_most_n_run_at_once_fifo():
    set_config(_cfg(2))
    running, peak, order, lock = [0], [0], [], threading.Lock()

    def job(i):
        with jobs.heavy_job("cpu"):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                order.append(i)
            time.sleep(0.05)
            with lock:
                running[0] -= 1
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(job, range(8)))
    assert peak[0] == 2 and sorted(order) == list(range(8))
    assert jobs.slots("cpu").peak == 2 and jobs.slots("cpu").running == 0


def _in_thread(fn, timeout=10):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e
    t = threading.Thread(target=target)
    t.start()
    t.join(timeout)
    assert not t.is_alive()
    return out


def test_devices_have_their_own_slots():
    set_config(_cfg(1))

    def other_device():
        with jobs.heavy_job("cuda:1", timeout=2):
            return jobs.slots("cuda:1").running
    with jobs.heavy_job("cpu"):
        assert _in_thread(other_device) == {"value": 1}      # not blocked by cpu's job


def test_reentrant_within_a_thread():
    set_config(_cfg(1))
    with jobs.heavy_job("cpu"):
        with jobs.heavy_job("cpu"):                       # would deadlock if it queued again
            assert jobs.slots("cpu").running == 1
    assert jobs.slots("cpu").running == 0


def test_waiting_reports_and_can_be_abandoned():
    """on_wait sees the queue; an exception raised there (Streamlit's Stop / rerun) takes
    the job out of the queue, and the next one still gets the slot."""
    set_config(_cfg(1))
    seen = []

    class Rerun(BaseException):
        pass

    def on_wait(q):
        seen.append(q)
        if len(seen) >= 2:
            raise Rerun()

    def queued():
        with jobs.heavy_job("cpu", on_wait=on_wait):
            return "ran"
    with jobs.heavy_job("cpu"):
        out = _in_thread(queued)
        assert isinstance(out.get("error"), Rerun)
        assert seen[0].running == 1 and seen[0].waiting == 1 and seen[0].capacity == 1
        assert jobs.slots("cpu").waiting == 0
    assert _in_thread(queued) == {"value": "ran"}
    assert jobs.slots("cpu").running == 0


def test_queue_timeout_is_a_message():
    set_config(_cfg(1))

    def queued():
        with jobs.heavy_job("cpu", timeout=0.3):
            return "ran"
    with jobs.heavy_job("cpu"):
        out = _in_thread(queued)
    assert isinstance(out.get("error"), LimitError) and "busy" in str(out["error"])
    assert jobs.slots("cpu").waiting == 0 and jobs.slots("cpu").running == 0


def test_memory_goes_back_only_after_the_device_was_idle_for_a_while(monkeypatch):
    """Back-to-back heavy jobs reuse the allocator's buffers: malloc_trim runs once the device
    has had no job for RELEASE_AFTER_S seconds, not at the end of every job."""
    import analysis.core.allocator as allocator
    calls = []
    monkeypatch.setattr(allocator, "release", lambda: calls.append(time.monotonic()) or True)
    monkeypatch.setattr(jobs, "RELEASE_AFTER_S", 0.3)
    with jobs.heavy_job("cpu"):
        pass
    with jobs.heavy_job("cpu"):                 # the next job within the idle time
        assert calls == []
        time.sleep(0.5)                         # the first job's timer fires while this one runs
        assert calls == []
    assert calls == []
    time.sleep(0.6)
    assert len(calls) == 1                      # idle long enough: released once


def test_config_limit_is_documented_default():
    assert Limits().max_concurrent_jobs == 2 and Limits().max_queue_seconds == 900


# ------------------------------------------------------------------ 8 sessions at once

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _workloads(lite0, digits, chelsea, coffee):
    """One page's computation per session, as the page runs it (same analysis calls)."""
    import dataclasses

    from analysis.core.datasets import load_digits_dataset
    from analysis.core.predict import predict
    from analysis.embeddings.features import extract, load_features, penultimate_layer
    from analysis.embeddings.neighbors import neighbors
    from analysis.inside.activations import activations, neuron_gradient
    from analysis.optimize import run
    from analysis.optimize.featurevis import PRESETS, channel_visualization, class_visualization, deepdream, invert
    from analysis.saliency.methods import attribute

    ds = load_digits_dataset()
    layer = penultimate_layer(digits)
    if load_features(digits, ds, layer) is None:
        run_gen = extract(digits, ds, layer)
        try:
            while True:
                next(run_gen)
        except StopIteration:
            pass
    fs = load_features(digits, ds, layer)
    cs = PRESETS["CS231n"]

    def arrays(x):
        from analysis.audit.trail import summarise
        return summarise(x, "").arrays

    return {
        "home": lambda: [predict(lite0, coffee, k=5)],
        "saliency": lambda: [attribute(lite0, chelsea, None, "gradcam"), attribute(lite0, chelsea, 281, "guided_backprop"),
                             attribute(lite0, chelsea, 281, "occlusion", window=56, stride=56)],
        "inside": lambda: [activations(lite0, coffee, "_blocks.5"), neuron_gradient(lite0, coffee, "_blocks.5", 3, None, True)],
        "embeddings": lambda: [neighbors(digits, ds, fs, query_index=7, k=5, metric="cosine", space="feature")],
        "classvis": lambda: [run(class_visualization(lite0, [281], dataclasses.replace(cs, steps=3), steps=3,
                                                     size=48, preview_every=0))],
        "channelvis": lambda: [run(channel_visualization(lite0, "_blocks.6", 4, steps=3, size=40, preview_every=0))],
        "deepdream": lambda: [run(deepdream(lite0, chelsea, "_blocks.4", octaves=1, steps_per_octave=2,
                                            max_side=80))],
        "inversion": lambda: [run(invert(lite0, coffee, "_blocks.2", steps=3, preview_every=0))],
    }, arrays


def test_eight_sessions_on_different_pages(lite0, digits, chelsea, coffee, tmp_path):
    from analysis.audit.trail import AuditStore, RunInput, summarise
    from analysis.core.hooks import count_hooks

    set_config(_cfg(2))
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}", tmp_path / "files")
    work, arrays = _workloads(lite0, digits, chelsea, coffee)
    hooks0 = (count_hooks(lite0.model), count_hooks(digits.model))

    def session(page):
        """What a session does through run_job / live_run: queue for the device, compute,
        record in the audit trail."""
        out = []
        with jobs.heavy_job():
            results = work[page]()
        for r in results:
            store.record(RunInput(user=page, page=page, model_id="m"), summarise(r, page))
            out.append(arrays(r))
        return out

    def plain(page):
        return [arrays(r) for r in work[page]()]

    serial = {p: plain(p) for p in work}                 # also warms every code path once
    serial = {p: plain(p) for p in work}
    _trim()
    rss0 = _rss()
    with ThreadPoolExecutor(8) as pool:
        futures = {p: pool.submit(session, p) for p in work}
        parallel = {p: f.result(timeout=600) for p, f in futures.items()}
    for page in work:
        for s, p in zip(serial[page], parallel[page]):
            assert s.keys() == p.keys(), page
            for k in s:
                np.testing.assert_allclose(p[k], s[k], rtol=1e-5, atol=1e-6, err_msg=f"{page}: {k}")
    assert jobs.slots().peak <= 2
    assert (count_hooks(lite0.model), count_hooks(digits.model)) == hooks0 == (0, 0)
    for b in (lite0, digits):
        assert all(not p.requires_grad and p.grad is None for p in b.model.parameters())
    runs = store.list_runs(limit=100)
    assert {r.page for r in runs} == set(work) and store.integrity()["ok"]
    del futures, parallel
    _trim()
    grown = (_rss() - rss0) / 2**20
    assert grown < 150, f"memory grew by {grown:.0f} MiB after the sessions ended"
    store.close()
