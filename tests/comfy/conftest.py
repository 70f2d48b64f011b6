import pytest

import comfy_harness


@pytest.fixture(scope="session")
def pack():
    """This repository imported as a ComfyUI pack, ComfyUI in CPU mode in this process."""
    if comfy_harness.comfyui_dir() is None:
        pytest.fail("ComfyUI not found: run scripts/setup_env.sh (or set COMFYUI_DIR)")
    return comfy_harness.load_pack_inprocess()


@pytest.fixture(scope="session")
def tiny_sdxl(pack):
    from comfy_testpack.tiny_models import tiny_clip, tiny_sdxl_model, tiny_vae

    return tiny_sdxl_model(), tiny_clip(), tiny_vae()
