"""Tiny stand-in model files with the real key structure and random weights.

When a graph names a model file that is not there (the test server, or
scripts/run_workflow.py on a machine without the real weights), the file is
written here at the size of the tiny test SDXL, so the pack's real loader nodes
load it through the same code as the real file.

WRITERS maps (node class_type, input name) to (model folder key, writer(path)).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

WRITERS: dict[tuple[str, str], tuple[str, Callable[[Path], None]]] = {}


def writer(class_types: tuple[str, ...], input_name: str, folder: str):
    """Register ``fn(path)`` as the stand-in writer for that loader input."""

    def register(fn):
        for class_type in class_types:
            WRITERS[(class_type, input_name)] = (folder, fn)
        return fn

    return register


# Writers of each model family register themselves on import.
from . import stand_ins_photomaker, stand_ins_pulid  # noqa: E402, F401
