"""Shared fixtures. The whole suite runs offline on CPU; caches and uploads go to a
temporary folder for the session (set before anything reads the configuration).
``CONVLENS_TEST_DEVICE=cuda`` puts the shared models (``lite0``, ``digits``) on a GPU, to
run the model tests there on a GPU machine (CI has none)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One folder per test session, created once even if this module were imported twice.
if "CONVLENS_TEST_SESSION_DIR" not in os.environ:
    os.environ["CONVLENS_TEST_SESSION_DIR"] = tempfile.mkdtemp(prefix="convlens-test-")
_SESSION_DIR = Path(os.environ["CONVLENS_TEST_SESSION_DIR"])
os.environ["CONVLENS_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ["CONVLENS_DATA_DIR"] = str(_SESSION_DIR / "data")
os.environ.setdefault("CONVLENS_DEVICE", "cpu")

import torch  # noqa: E402

from analysis.core.config import set_config  # noqa: E402
from tests.paths import OUTPUT_DIR, REPO  # noqa: E402,F401

TEST_DEVICE = torch.device(os.environ.get("CONVLENS_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def lite0():
    """The embedded default model, on CPU (shared; tests must not mutate it)."""
    from analysis.core.models.loaders import default_bundle
    return default_bundle(TEST_DEVICE)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits CNN, trained once per session into the session cache."""
    from analysis.core.models.digits import digits_bundle
    return digits_bundle(TEST_DEVICE)


@pytest.fixture(scope="session")
def chelsea():
    from analysis.core.images import gallery_image
    return gallery_image("chelsea")


@pytest.fixture(scope="session")
def coffee():
    from analysis.core.images import gallery_image
    return gallery_image("coffee")


@pytest.fixture(autouse=True)
def _fresh_config():
    set_config(None)
    yield
    set_config(None)


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for this test session (tests/pg_server.py); skipped
    when PostgreSQL is not installed, unless CONVLENS_REQUIRE_POSTGRES=1 (set by make test)."""
    from tests.pg_server import PgServer
    try:
        import psycopg  # noqa: F401
        server = PgServer()
    except (FileNotFoundError, ImportError) as e:
        if os.environ.get("CONVLENS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (CONVLENS_REQUIRE_POSTGRES=1): {e}")
        pytest.skip(f"no PostgreSQL: {e}")
    yield server
    server.stop()
