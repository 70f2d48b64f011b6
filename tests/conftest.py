"""Shared test setup: the test tiers and where ComfyUI comes from (tests/comfy_harness.py)."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for path in (TESTS, TESTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
