"""analysis/core/allocator.py: importing analysis tunes glibc's malloc so that the activation
buffers of batched forwards are reused instead of being faulted in again every time (the
page-fault count of a forward drops), and CONVLENS_MALLOC_TUNING=0 keeps the defaults."""
import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO

CHILD = """
import json, resource, torch
import analysis
from analysis.core.models.loaders import default_bundle
m = default_bundle(torch.device("cpu")).model
x = torch.randn(8, 3, 224, 224)
with torch.inference_mode():
    for _ in range(2):
        m(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        y = m(x)
print(json.dumps({"tuned": analysis.core.allocator._done, "top1": int(y[0].argmax()),
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 4}))
"""


def _child(**env) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuning_cuts_the_page_faults_of_batched_forwards():
    off, on = _child(CONVLENS_MALLOC_TUNING="0"), _child()
    assert off["tuned"] is False and on["tuned"] is True
    assert off["top1"] == on["top1"]                              # same results
    assert off["faults"] > 10_000, off                            # glibc's defaults: fresh pages every forward
    assert on["faults"] < off["faults"] / 10, (on, off)


def test_tune_is_idempotent_and_reports():
    import analysis.core.allocator as allocator
    first = allocator.tune()
    assert allocator.tune() is first
    if sys.platform.startswith("linux"):
        assert first is True
