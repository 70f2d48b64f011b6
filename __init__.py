"""ComfyUI entry point of comfyui-pulid (V3 node schema).

ComfyUI imports this folder as a package, so every module of the pack is imported
relative to it (``nodes`` -> ``..pulid_core``) and nothing is added to ``sys.path``.
"""

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (test collection, scripts): nothing to register
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import node_list

    class PuLIDExtension(ComfyExtension):
        async def get_node_list(self):
            return node_list()

    async def comfy_entrypoint():
        return PuLIDExtension()
