"""Cold start: what the home page's first run imports, and the server-start preload.

Not timed (bench/cold_start.py measures the seconds): a fresh process runs the app's first
run (AppTest, the default page) and must not have imported any of the packages the home page
does not need. Before the start-up work (issue 13) it pulled in torchvision (and with it
torch._dynamo, sympy), scikit-learn and scipy (the digits data set behind the sidebar) and
skimage.io (the default image): seconds of a cold start on 2 cores.
"""
import json
import os
import subprocess
import sys

from tests.paths import REPO

#: Packages the home page's first run must not import (each costs from 0.3 s to seconds).
HEAVY = ("torchvision", "torch._dynamo", "sympy", "sklearn", "scipy", "skimage.io", "captum", "timm",
         "transformers", "ray", "umap", "numba", "pynndescent", "openTSNE", "faiss", "zennit", "cv2",
         "matplotlib")

FIRST_RUN = r"""
import json, os, sys, tempfile
tmp = tempfile.mkdtemp(prefix="convlens-cold-")
os.environ.update(CONVLENS_CACHE_DIR=tmp + "/cache", CONVLENS_DATA_DIR=tmp + "/data", CONVLENS_DEVICE="cpu")
heavy = sys.argv[1].split(",")
out = {}
if sys.argv[2] == "preload":
    from dashboard import startup
    times = startup.preload()
    out["preload_steps"] = sorted(times)
    out["preload_heavy"] = [m for m in heavy if m in sys.modules]
    import gc
    out["frozen"] = gc.get_freeze_count()
    import dashboard.state
    def refuse(*a, **k):
        raise AssertionError("the page loaded the model again after the preload")
    dashboard.state.load_bundle = refuse                 # the page must find the preloaded bundle
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("dashboard/app.py", default_timeout=300).run()
out["exceptions"] = [e.value for e in at.exception]
out["errors"] = [e.value for e in at.error]
out["top5"] = list(at.dataframe[0].value["class"]) if len(at.dataframe) else []
out["heavy"] = [m for m in heavy if m in sys.modules]
print("RESULT " + json.dumps(out))
"""


def _first_run(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", FIRST_RUN, ",".join(HEAVY), mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_home_first_run_imports_no_heavy_package():
    out = _first_run("plain")
    assert out["exceptions"] == [] and out["errors"] == []
    assert {"tiger cat", "Egyptian cat", "tabby"} <= set(out["top5"][:3])
    assert out["heavy"] == [], f"the home page's first run imported {out['heavy']}"


def test_preload_fills_what_the_home_page_reads():
    """``dashboard.startup.preload`` (run by dashboard/server.py at server start) imports the
    first run's modules and loads the default model into the same cache the page reads: the
    page then shows the top-5 without loading the model itself, and nothing heavy came in."""
    out = _first_run("preload")
    assert out["preload_steps"] == sorted(["imports", "default model", "default image", "layer table",
                                           "digits data set", "audit store", "gc freeze"])
    assert out["preload_heavy"] == []
    assert out["frozen"] > 100_000              # the start-up objects left the GC's scans
    assert out["exceptions"] == [] and out["errors"] == []
    assert {"tiger cat", "Egyptian cat", "tabby"} <= set(out["top5"][:3])
    assert out["heavy"] == []


def test_first_run_modules_follow_the_scripts(tmp_path):
    from dashboard import startup
    mods = startup.first_run_modules()
    for m in ("streamlit", "pandas", "dashboard.audit_ui", "dashboard.sidebar", "dashboard.lifecycle",
              "analysis.core.predict", "dashboard.state"):
        assert m in mods, m
    assert not [m for m in mods if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}]
    script = tmp_path / "s.py"
    script.write_text("from __future__ import annotations\nimport json\nfrom dashboard import state, text\n"
                      "from analysis.core.errors import ConvlensError\n")
    assert startup.first_run_modules([script]) == ["json", "dashboard", "dashboard.state", "dashboard.text",
                                                   "analysis.core.errors"]


def test_preload_switch():
    from dashboard import startup
    assert startup.enabled({}) and startup.enabled({"CONVLENS_PRELOAD": "1"})
    assert not any(startup.enabled({"CONVLENS_PRELOAD": v}) for v in ("0", "false", "Off", "no"))
    assert startup.start({"CONVLENS_PRELOAD": "0"}) is None


def test_share_link_code_block_only_while_its_box_is_open():
    """A code block makes the browser load Streamlit's syntax highlighter (1.5 MB of
    JavaScript, about 0.5 s of browser CPU before the top-5 showed): the sidebar's share box
    draws its link only once opened."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=300).run()
    assert not at.exception and len(at.get("code")) == 0
    at.session_state["_share_open"] = True                    # what opening the box does (on_change rerun)
    at.run()
    codes = [c.proto.code_text for c in at.get("code")]
    assert len(codes) == 1 and "sb_gallery=chelsea" in codes[0]
    assert "_share_open" not in codes[0]                        # the box's state is not a link parameter
