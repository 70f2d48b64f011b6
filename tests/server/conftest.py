import pytest

import comfy_harness


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    if comfy_harness.comfyui_dir() is None:
        pytest.fail("ComfyUI not found: run scripts/setup_env.sh (or set COMFYUI_DIR)")
    models = tmp_path_factory.mktemp("models")
    server = comfy_harness.ComfyServer(models_dir=models)
    try:
        server.wait_ready()
        server.info = server.object_info()
        yield server
    finally:
        server.cleanup()
