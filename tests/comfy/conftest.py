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


@pytest.fixture(scope="session")
def face_image(pack):
    """The bundled test face photo as a ComfyUI IMAGE [1, H, W, 3]."""
    import numpy as np
    import torch
    from PIL import Image

    image = np.asarray(Image.open(comfy_harness.default_face_image()).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(image)[None]


@pytest.fixture(scope="session")
def tiny_flux(pack):
    from comfy_testpack.tiny_flux import tiny_flux_model

    return tiny_flux_model()


@pytest.fixture(scope="module")
def models_dir(pack, model_folders):
    """A models folder with tiny PuLID v1 / v1.1 / FLUX, EVA-CLIP, InsightFace and facexlib files, registered."""
    from comfy_testpack import stand_ins_pulid as s

    root = model_folders("models", "pulid", "eva_clip", "insightface", "facexlib", "pulid_embeds")
    s.write_tiny_pulid(root / "pulid" / "ip-adapter_pulid_sdxl_fp16.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_v1.1.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_flux_v0.9.1.safetensors")
    s.write_tiny_eva(root / "eva_clip" / "EVA02_CLIP_L_336_psz14_s6B.pt")
    s.write_tiny_face_models(root / "insightface" / "antelopev2")
    pack.nodes.node_list()  # registers the pack's folders (keeps the ones above)
    return root


@pytest.fixture(scope="module")
def loaded(models_dir):
    """The loader nodes' outputs for the files of ``models_dir``."""
    from comfyui_pulid.nodes import loaders

    return {
        "v1": loaders.PuLIDModelLoader.execute("ip-adapter_pulid_sdxl_fp16.safetensors").result[0],
        "v1.1": loaders.PuLIDModelLoader.execute("pulid_v1.1.safetensors").result[0],
        "flux": loaders.PuLIDModelLoader.execute("pulid_flux_v0.9.1.safetensors").result[0],
        "eva": loaders.PuLIDEvaClipLoader.execute("EVA02_CLIP_L_336_psz14_s6B.pt", "fp32").result[0],
        "face": loaders.PuLIDInsightFaceLoader.execute("CPU", "antelopev2", "insightface").result[0],
    }


@pytest.fixture(scope="session")
def si(pack):
    """The PhotoMaker stand-in writer module (imports ComfyUI, so only after the pack fixture)."""
    import importlib

    return importlib.import_module("comfy_testpack.stand_ins_photomaker")


@pytest.fixture(scope="module")
def flux_embeds(loaded, face_image):
    """PuLID-FLUX ID embeddings of the test face, through 'Encode Face (PuLID)'."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    return PuLIDEncodeFace.execute(loaded["flux"], loaded["eva"], loaded["face"], face_image, "largest", 0,
                                   "error", "average").result[0]
