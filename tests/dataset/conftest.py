"""Fixtures of the data-set job tests: one local Ray cluster per test session (started on
first use, shut down at the end, and no Ray process of ours left behind) and a manifest of
digits written as PNG files."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _descendants(pid: int) -> list[int]:
    """Pids of all descendants of ``pid`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 2 CPUs for the whole session (own temp dir, small object
    store, the repository on its workers' PYTHONPATH); at the end the warm actor pools and
    Ray are shut down and every process it started must be gone."""
    import ray

    from analysis.dataset.ray_backend import shutdown_pools
    from tests.paths import REPO
    before = set(_descendants(os.getpid()))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")        # short: Ray's socket paths
    # Ray's worker processes import test-only worker kinds (tests/dataset/ray_faults.py) by path
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([path] if path else []))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20,
                 _temp_dir=temp)
    finally:
        if path:
            os.environ["PYTHONPATH"] = path
        else:
            os.environ.pop("PYTHONPATH", None)
    yield ray
    shutdown_pools()                   # the warm actor pools of analysis.dataset.ray_backend
    ray.shutdown()
    deadline = time.time() + 15
    left = [p for p in _descendants(os.getpid()) if p not in before]
    while left and time.time() < deadline:
        time.sleep(0.3)
        left = [p for p in _descendants(os.getpid()) if p not in before]
    for p in left:                     # ours, started by ray.init above
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"Ray processes survived ray.shutdown(): {left}"


def write_digits_manifest(folder: Path, n: int, *, corrupt: dict[int, bytes] | None = None,
                          fmt: str = "csv", masks: bool = False) -> Path:
    """The first ``n`` digits as PNG files plus a manifest (relative paths, class names as
    labels). ``corrupt`` replaces image k's bytes. Returns the manifest path."""
    from analysis.core.datasets import load_digits_dataset
    ds = load_digits_dataset()
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        rel = f"img/{k:04d}.png"
        if corrupt and k in corrupt:
            (folder / rel).write_bytes(corrupt[k])
        else:
            Image.fromarray(np.ascontiguousarray(ds.get(k))).save(folder / rel)
        row = {"path": rel, "label": str(int(ds.labels[k]))}
        if masks:
            m = np.zeros((8, 8, 3), np.uint8)
            m[:, :4] = 255                               # the left half
            (folder / "mask").mkdir(exist_ok=True)
            Image.fromarray(m).save(folder / f"mask/{k:04d}.png")
            row["mask"] = f"mask/{k:04d}.png"
        rows.append(row)
    import pandas as pd
    df = pd.DataFrame(rows)
    path = folder / f"manifest.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def assert_same_result(a, b) -> None:
    """Every column of two job results equal, bit for bit (NaN == NaN)."""
    ta, tb = a.table(), b.table()
    assert ta.column_names == tb.column_names
    for c in ta.column_names:
        x, y = a.array(c), b.array(c)
        assert x.shape == y.shape, c
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"column {c} differs"
