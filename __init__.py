"""ComfyUI entry point of comfyui-pulid (V3 node schema).

ComfyUI imports this folder as a package, so every module of the pack is imported
relative to it (``nodes`` -> ``..pulid_core``) and nothing is added to ``sys.path``.
"""

import logging

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (test collection, scripts): nothing to register
    ComfyExtension = None
    try:
        import comfy  # noqa: F401 - importable: inside a ComfyUI older than the V3 node API
    except ImportError:
        pass
    else:
        logging.getLogger(__name__).warning(
            "comfyui-pulid needs ComfyUI 0.3.75 or newer (its V3 node API, comfy_api.latest, is missing "
            "here): update ComfyUI. None of the pack's nodes are loaded."
        )

if ComfyExtension is not None:
    from .nodes import node_list

    class PuLIDExtension(ComfyExtension):
        async def get_node_list(self):
            return node_list()

    async def comfy_entrypoint():
        return PuLIDExtension()
