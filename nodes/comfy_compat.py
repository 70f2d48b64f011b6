"""The one place this pack reaches into ComfyUI internals that differ between versions.

Unloading one run-once encoder (EVA-CLIP, the PuLID adapter during the encode, facexlib's
RetinaFace/BiSeNet) right after use: ComfyUI would otherwise keep it on the GPU until
something else needs the memory. Newer ComfyUI has a public call for this
(``model_management.unload_model_and_clones``); 0.3.x has none, so there the model's entry
in ``model_management.current_loaded_models`` (the list ``free_memory`` walks) is unloaded
and removed, as ``free_memory`` itself does.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm

log = logging.getLogger(__name__)


def comfyui_version() -> tuple[int, ...]:
    """ComfyUI's version as a tuple of ints, (0,) when it does not say."""
    try:
        from comfyui_version import __version__
    except ImportError:
        return (0,)
    return tuple(int(p) for p in __version__.split(".")[:3] if p.isdigit())


def offload_model(patcher) -> bool:
    """Move one ModelPatcher's weights back to its offload device now. True if it was loaded."""
    public = getattr(mm, "unload_model_and_clones", None)
    if public is not None:
        was_loaded = any(loaded.model is patcher for loaded in mm.current_loaded_models)
        public(patcher, unload_additional_models=False)
        return was_loaded
    loaded_list = getattr(mm, "current_loaded_models", None)
    if loaded_list is None:
        log.warning("ComfyUI %s has neither unload_model_and_clones nor current_loaded_models: %s stays loaded "
                    "until ComfyUI needs the memory.", ".".join(map(str, comfyui_version())),
                    type(patcher.model).__name__)
        return False
    for i, loaded in enumerate(list(loaded_list)):
        if loaded.model is patcher:
            loaded.model_unload()
            loaded_list.pop(i)
            return True
    return False
