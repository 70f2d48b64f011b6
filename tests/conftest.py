"""Shared test setup: the test tiers and where ComfyUI comes from (tests/comfy_harness.py)."""

import sys
from pathlib import Path

# Tests only: the test helpers (tests/) and the repository root, so ``pulid_core`` imports on its
# own. The pack itself adds nothing to sys.path; comfy_harness makes its ``pulid_core`` this one.
TESTS = Path(__file__).resolve().parent
for path in (TESTS, TESTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Bind the name ``tests`` to this directory now: the in-process tier later puts
# ComfyUI on sys.path, whose own ``tests`` package would otherwise win.
import pytest  # noqa: E402

import comfy_harness  # noqa: E402
import tests  # noqa: E402, F401


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One headless ComfyUI for the server and browser tiers, with stand-in model files."""
    if comfy_harness.comfyui_dir() is None:
        pytest.fail("ComfyUI not found: run scripts/setup_env.sh (or set COMFYUI_DIR)")
    models = tmp_path_factory.mktemp("models")
    comfy_harness.prepare_models_dir(models)
    server = comfy_harness.ComfyServer(models_dirs=[models])
    try:
        server.wait_ready()
        # Tiny stand-ins for every model file the shipped workflows name.
        info = server.object_info()
        for path in comfy_harness.workflow_files() + comfy_harness.legacy_workflow_files():
            prompt = comfy_harness.to_api(comfy_harness.load_workflow(path), info)
            comfy_harness.stand_in_missing_models(prompt, models, models)
        server.info = server.object_info()
        yield server
    finally:
        server.cleanup()
