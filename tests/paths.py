"""Paths shared by test modules (import this, never conftest)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUT_DIR = REPO / "test-output"
