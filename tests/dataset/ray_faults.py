"""Test-only data-set job kinds: one that kills its own worker process (the fault is injected
from the test side, no test hook in analysis/) and one that reports the settings its worker
process ran with. Ray workers import this module by its
``"tests.dataset.ray_faults:<Class>"`` paths (the session's Ray cluster puts
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


SETTINGS_KIND = "test_settings"
SETTINGS_PATH = "tests.dataset.ray_faults:SettingsPredictWorker"
MARK_ENV = "CONVLENS_TEST_MARK"


class SettingsPredictWorker(PredictWorker):
    """``predict`` plus two columns that show the settings the worker process ran the batch
    with: ``data_dir`` (the configuration's) and ``mark`` (the ``CONVLENS_TEST_MARK``
    environment variable, "" when unset)."""

    kind = SETTINGS_KIND

    def compute(self, batch: dict):
        import numpy as np

        from analysis.core.config import get_config
        out = super().compute(batch)
        cols = out["batch"]                       # the columns finish() passes through
        n = len(cols["index"])
        cols["data_dir"] = np.asarray([str(get_config().data_dir)] * n, dtype=object)
        cols["mark"] = np.asarray([os.environ.get(MARK_ENV, "")] * n, dtype=object)
        return out
