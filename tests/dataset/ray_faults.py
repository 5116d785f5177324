"""Test-only data-set job kind that kills its own worker process: the fault is injected from
the test side (no test hook in analysis/). Ray actors import this module by its
``"tests.dataset.ray_faults:KillingPredictWorker"`` path (the session's Ray cluster puts
the repository on the workers' PYTHONPATH: tests/dataset/conftest.py)."""
from __future__ import annotations

import os

from analysis.dataset.workers import PredictWorker

KIND = "test_kill"
PATH = "tests.dataset.ray_faults:KillingPredictWorker"


class KillingPredictWorker(PredictWorker):
    """``predict``, except that the process dies (``os._exit``, as an OOM kill would end it)
    on a batch holding image ``kill_index`` while the file ``marker`` exists (it is deleted
    first, so the retry succeeds), or always with ``marker="always"``."""

    kind = KIND
    defaults = {**PredictWorker.defaults, "kill_index": -1, "marker": ""}

    def compute(self, batch: dict):
        marker = self.params["marker"]
        if marker and int(self.params["kill_index"]) in {int(i) for i in batch["index"]}:
            if marker == "always":
                os._exit(1)
            if os.path.exists(marker):
                os.unlink(marker)
                os._exit(1)
        return super().compute(batch)
