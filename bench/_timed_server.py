"""``streamlit run`` with every script run timed: ``python bench/_timed_server.py SCRIPT [streamlit options]``.

Wraps Streamlit's ``ScriptRunner._run_script`` (one call per run of the app's script, on the
server) and appends one line per run to the file named by ``CONVLENS_RUN_LOG``:
``run <n> <wall s> <script-thread CPU s> <process CPU s>``. Used by bench/saliency_rerun.py to
read the server time of a rerun that the browser triggered.
"""
from __future__ import annotations

import os
import sys
import time

from streamlit.runtime.scriptrunner import script_runner

_LOG = os.environ["CONVLENS_RUN_LOG"]
_orig = script_runner.ScriptRunner._run_script
_n = [0]


def _timed(self, *args, **kwargs):
    w0, c0 = time.perf_counter(), time.thread_time()
    try:
        return _orig(self, *args, **kwargs)
    finally:
        _n[0] += 1
        with open(_LOG, "a") as f:
            f.write(f"run {_n[0]} {time.perf_counter() - w0:.4f} {time.thread_time() - c0:.4f} "
                    f"{time.process_time():.3f}\n")


script_runner.ScriptRunner._run_script = _timed

if __name__ == "__main__":
    from streamlit.web.cli import main
    sys.argv = ["streamlit", "run"] + sys.argv[1:]
    sys.exit(main())
