"""ComfyUI entry point of comfyui-pulid (V3 node schema)."""

import os
import sys

# The nodes import the framework-free library as ``pulid_core``. Appended, not
# prepended: our ``nodes`` package must never shadow ComfyUI's ``nodes`` module.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

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
