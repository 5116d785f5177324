"""Background warm-ups at server start: work whose first call in a process is slow for
reasons unrelated to the user's data, done once in a daemon thread so that no page pays it.

* The packages other pages' first computations import (torchvision.models ~1.5 s, captum
  ~0.5 s, scipy.stats ~0.9 s on 2 cores): kept off the home page's first run so that the top-5
  shows fast (tests/ui/test_cold_start.py), and imported here right after it, so that the
  first Saliency or trust computation does not pay them either.
* UMAP: ``import umap`` and numba's compilation of its kernels take ~20-40 s on 2 cores
  (bench/embeddings.py, "UMAP (app), first call"); ``analysis.embeddings.projection.warm_up_umap``
  does both on a tiny input. A map requested meanwhile simply waits on numba's compile
  lock for the rest of it instead of paying all of it.

Started once per server process (``st.cache_resource``) from dashboard/app.py; the thread
runs at a lower CPU priority (Linux: ``nice`` +10 for that thread only). Skipped when
``CONVLENS_WARMUP`` is ``0`` / ``false`` / ``off`` / ``no`` (the browser test sets it: its
pages never draw a UMAP map, and the compile would compete with them for 2 cores) and under
Streamlit's AppTest (the test process runs many apps; nothing there needs it).
"""
from __future__ import annotations

import logging
import os
import sys
import threading

import streamlit as st

log = logging.getLogger("convlens")

ENV = "CONVLENS_WARMUP"
PAGE_IMPORTS = ("torchvision.models", "captum.attr", "scipy.stats", "sklearn.cluster")
_NICE = 10


def enabled(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    if environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    return "streamlit.testing.v1.app_test" not in sys.modules


def _umap() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)   # this thread only (Linux)
    except (AttributeError, OSError):
        pass
    import importlib
    import time
    t0 = time.perf_counter()
    for name in PAGE_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:                         # a page that needs it reports it
            log.exception("warm-up import of %s failed", name)
    log.info("page imports warmed up in %.1f s", time.perf_counter() - t0)
    try:
        from analysis.embeddings.projection import warm_up_umap
        seconds = warm_up_umap()
        log.info("UMAP warm-up (import + numba compile) done in %.1f s", seconds)
    except Exception:
        log.exception("UMAP warm-up failed; the first UMAP map will compile instead")


def start(environ=None) -> threading.Thread | None:
    """Start the warm-up thread (once per call: use ``start_once``). None when disabled."""
    if not enabled(environ):
        log.info("background warm-ups skipped (%s=0 or AppTest)", ENV)
        return None
    t = threading.Thread(target=_umap, name="convlens-warmup", daemon=True)
    t.start()
    return t


@st.cache_resource(show_spinner=False)
def start_once() -> threading.Thread | None:
    """Start the warm-ups the first time any session runs the app; later calls (every
    rerun of every session) return the same thread at once."""
    return start()
