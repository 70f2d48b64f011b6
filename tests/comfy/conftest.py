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


@pytest.fixture(scope="session")
def model_folders(pack, tmp_path_factory):
    """Factory: ``model_folders(name, *folders)`` makes a fresh models root with those sub-folders and
    registers each as ComfyUI's default folder of that kind; returns the root."""
    import folder_paths

    def make(name, *folders):
        root = tmp_path_factory.mktemp(name)
        for sub in folders:
            (root / sub).mkdir()
            folder_paths.add_model_folder_path(sub, str(root / sub), is_default=True)
        return root

    return make
