"""Server start: get the home page's work done while the server boots and the browser loads.

``streamlit run dashboard/server.py`` (``make run``) imports dashboard/server.py once, when
the server starts, before any browser connects. ``start()`` then runs ``preload`` in a
daemon thread: it imports the modules the first run of the app needs (dashboard/app.py's
and the default page's imports: torch, pandas, the analysis core) and fills the
process-wide caches the home page reads (the default model with its first forward, the
default image, the digits data set behind the sidebar, the default model's layer table,
and the audit store), then freezes the objects alive at that point for the garbage collector
(``gc.freeze``). The first browser to connect finds them ready, or waits on the same import
and cache locks for whatever is left; nothing is computed twice.

This moves work to server start, which happens before anyone visits a page, never into a
page visit: a page that needs something the home page does not (captum, scikit-learn,
UMAP) imports it on its first visit, as before. Off with ``CONVLENS_PRELOAD=0`` (or
``false`` / ``off`` / ``no``). ``streamlit run dashboard/app.py`` and AppTest do not preload.
"""
from __future__ import annotations

import ast
import importlib
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("convlens")

ENV = "CONVLENS_PRELOAD"
ROOT = Path(__file__).resolve().parent.parent
#: The scripts whose imports the first run executes: the entry and the default page.
FIRST_RUN_SCRIPTS = (ROOT / "dashboard" / "app.py", ROOT / "pages" / "home.py")


def enabled(environ=None) -> bool:
    """False when ``CONVLENS_PRELOAD`` says 0 / false / off / no. Args: environ (default os.environ)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def first_run_modules(scripts=FIRST_RUN_SCRIPTS) -> list[str]:
    """The modules that ``scripts`` import at their top level, in order (``from x import y``
    gives ``x``, and ``x.y`` too when ``y`` is a submodule of package ``x`` in this
    repository). Read from the source, so the list follows the scripts. Args: scripts."""
    names: list[str] = []
    for path in scripts:
        for node in ast.parse(Path(path).read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
                pkg = ROOT.joinpath(*node.module.split("."))
                names += [f"{node.module}.{a.name}" for a in node.names
                          if (pkg / f"{a.name}.py").is_file() or (pkg / a.name / "__init__.py").is_file()]
    return list(dict.fromkeys(n for n in names if n != "__future__"))


def preload(log_each: bool = False) -> dict[str, float]:
    """Import the first run's modules and fill the caches the home page reads. Returns the
    seconds of each step. A failing step is logged and skipped: the page then does (and
    reports) that work itself. Args: log_each: log every step's time."""
    times: dict[str, float] = {}

    def step(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # noqa: BLE001 - the page that needs it reports the error itself
            log.warning("start-up preload: %s failed; the first page will do it", name, exc_info=True)
        times[name] = time.perf_counter() - t0
        if log_each:
            log.info("start-up preload: %s %.2f s", name, times[name])

    step("imports", lambda: [importlib.import_module(m) for m in first_run_modules()])

    from analysis.core.models.registry import ModelSpec
    from dashboard import audit_ui, state

    step("default model", lambda: state.bundle_for(ModelSpec()))
    step("default image", lambda: state.image_for(state.ImageRef()))
    step("layer table", lambda: state.layers_for(ModelSpec()))
    step("digits data set", lambda: state.dataset_for(state.DatasetRef()))
    step("audit store", audit_ui.open_at_startup)
    step("gc freeze", _freeze)
    return times


def _freeze() -> None:
    """Move every object alive now (modules, the default model, caches: kept for the
    process's life) into the GC's permanent generation, so that later full collections skip
    them (a full collection with them took 0.4-0.8 s on 2 loaded cores). Instant; no
    collection first: at this point one would free about 20 objects, and hold the GIL for
    that long while the first page may be running."""
    import gc
    gc.freeze()


_THREAD = "convlens-preload"
_started: threading.Thread | None = None
_lock = threading.Lock()


def start(environ=None) -> threading.Thread | None:
    """Start ``preload`` in a daemon thread, once per process; None when disabled.
    Args: environ (default os.environ)."""
    global _started
    if not enabled(environ):
        log.info("start-up preload off (%s=0)", ENV)
        return None
    with _lock:
        if _started is None:
            def run() -> None:
                t0 = time.perf_counter()
                times = preload()
                log.info("start-up preload done in %.1f s (%s)", time.perf_counter() - t0,
                         ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
            # Streamlit warns "missing ScriptRunContext" when a cached function runs outside a
            # script: expected here, so not logged for this thread
            logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(
                lambda record: threading.current_thread().name != _THREAD)
            _started = threading.Thread(target=run, name=_THREAD, daemon=True)
            _started.start()
    return _started
