"""nodes/comfy_compat.py: unloading one run-once model, on this ComfyUI and through the public call
newer ComfyUI versions have; facexlib's models go through ComfyUI's model management."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _patcher():
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(torch.nn.Linear(4, 4), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _loaded(patcher) -> bool:
    import comfy.model_management as mm

    return any(loaded.model is patcher for loaded in mm.current_loaded_models)


def test_offload_unloads_only_that_model(pack):
    import comfy.model_management as mm
    from comfyui_pulid.nodes.comfy_compat import offload_model

    first, second = _patcher(), _patcher()
    mm.load_models_gpu([first, second], force_full_load=True)
    assert _loaded(first) and _loaded(second)
    assert offload_model(first) is True
    assert not _loaded(first) and _loaded(second)
    assert offload_model(first) is False  # not loaded any more: nothing to do
    offload_model(second)


def test_offload_prefers_the_public_call(pack, monkeypatch):
    import comfy.model_management as mm
    from comfyui_pulid.nodes.comfy_compat import offload_model

    calls = []
    monkeypatch.setattr(mm, "unload_model_and_clones", lambda model, **kw: calls.append((model, kw)), raising=False)
    patcher = _patcher()
    offload_model(patcher)
    assert calls == [(patcher, {"unload_additional_models": False})]


def test_version_is_read(pack):
    from comfyui_pulid.nodes.comfy_compat import comfyui_version

    version = comfyui_version()
    assert len(version) >= 2 and all(isinstance(v, int) for v in version)


@pytest.fixture(scope="module")
def face_pipeline(pack, model_folders):
    from comfy_testpack import stand_ins_pulid as s

    root = model_folders("facemodels", "insightface", "facexlib")
    s.write_tiny_face_models(root / "insightface" / "antelopev2")
    pack.nodes.node_list()
    from comfyui_pulid.nodes import loaders

    return loaders.load_face_pipeline("CPU", "antelopev2", "retinaface")


def test_facexlib_runs_inside_model_management(face_pipeline):
    import comfy.model_management as mm
    from PIL import Image

    import comfy_harness

    seen = []
    facexlib = face_pipeline.facexlib
    original = facexlib.landmarks

    def spy(image_bgr, *args, **kwargs):
        # During the encode both modules are loaded models of ComfyUI, on its device.
        loaded = [lm.model.model for lm in mm.current_loaded_models]
        seen.append((all(any(m is x for x in loaded) for m in facexlib.modules()), facexlib.device))
        return original(image_bgr, *args, **kwargs)

    facexlib.landmarks = spy
    try:
        image = np.asarray(Image.open(comfy_harness.default_face_image()).convert("RGB"), dtype=np.float32) / 255.0
        face_pipeline.prepare_batch(torch.from_numpy(image)[None])
    finally:
        del facexlib.landmarks
    assert seen == [(True, mm.get_torch_device())]
    # ... and offloaded after it.
    loaded = [lm.model.model for lm in mm.current_loaded_models]
    assert not any(m is x for m in facexlib.modules() for x in loaded)
