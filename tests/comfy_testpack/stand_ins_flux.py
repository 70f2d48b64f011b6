"""Tiny stand-ins for a FLUX.1 graph's loaders (importable without ComfyUI).

ComfyUI's FLUX loaders (UNETLoader, DualCLIPLoader, VAELoader) detect their models
from the real files' sizes, so a FLUX graph runs on tiny models by swapping these
three nodes for the test pack's tiny FLUX loaders (tiny_flux.py); the links stay, as
each tiny loader gives the same type at output 0.
"""

from __future__ import annotations

# Nodes that make a graph a FLUX.1 graph.
FLUX_NODES = {"PuLIDFluxApply", "PuLIDFluxApplyEmbeds", "FluxGuidance"}
# loader -> (tiny loader, its inputs)
SWAPS = {
    "UNETLoader": ("PuLIDTestTinyFluxLoader", {"variant": "dev"}),
    "DualCLIPLoader": ("PuLIDTestTinyFluxCLIPLoader", {}),
    "VAELoader": ("PuLIDTestTinyFluxVAELoader", {}),
}
# loader -> [(model folder, API input name, UI widget index)] of the files it reads
FILES = {
    "UNETLoader": [("diffusion_models", "unet_name", 0)],
    "DualCLIPLoader": [("text_encoders", "clip_name1", 0), ("text_encoders", "clip_name2", 1)],
    "VAELoader": [("vae", "vae_name", 0)],
}


def is_flux_graph(prompt: dict) -> bool:
    return any(node["class_type"] in FLUX_NODES
               or (node["class_type"] == "DualCLIPLoader" and node["inputs"].get("type") == "flux")
               for node in prompt.values())


def tiny_flux_swaps(prompt: dict) -> dict:
    """{node id: (tiny class_type, inputs)} for the FLUX loaders of a FLUX graph (API format), else {}."""
    if not is_flux_graph(prompt):
        return {}
    return {node_id: (SWAPS[node["class_type"]][0], dict(SWAPS[node["class_type"]][1]))
            for node_id, node in prompt.items() if node["class_type"] in SWAPS}


def ui_files(node: dict) -> list[tuple[str, str]]:
    """(folder, file name) a UI-format FLUX loader node names."""
    values = node.get("widgets_values") or []
    return [(folder, values[index]) for folder, _, index in FILES.get(node["type"], []) if index < len(values)]
