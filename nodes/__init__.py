"""ComfyUI adapters: one module per node family; the math lives in pulid_core."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LEGACY_IDS = ("PulidModelLoader", "PulidInsightFaceLoader", "PulidEvaClipLoader", "ApplyPulid", "ApplyPulidAdvanced")


def cubiq_pack_installed() -> bool:
    """True when cubiq/PuLID_ComfyUI is installed (enabled) next to this pack."""
    import folder_paths

    import nodes as comfy_nodes

    if any(node_id in comfy_nodes.NODE_CLASS_MAPPINGS for node_id in LEGACY_IDS):
        return True
    for root in folder_paths.get_folder_paths("custom_nodes"):
        for name in os.listdir(root) if os.path.isdir(root) else []:
            path = os.path.join(root, name, "pulid.py")
            if name.endswith(".disabled") or not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                if "class PulidModelLoader" in f.read():
                    return True
    return False


def node_list() -> list:
    """Every node class this pack registers (only nodes that really work)."""
    from . import embeds, flux, folders, legacy, loaders, photomaker, pulid

    folders.register_folders()
    embeds.register_embeds_folder()
    nodes = loaders.NODES + pulid.NODES + flux.NODES + embeds.NODES + photomaker.NODES
    if cubiq_pack_installed():
        log.info("cubiq/PuLID_ComfyUI is installed: its node ids (ApplyPulid, ...) stay with it")
    else:
        nodes += legacy.NODES
    return nodes
