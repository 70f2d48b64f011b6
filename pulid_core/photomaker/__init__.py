"""PhotoMaker v1/v2 for SDXL: ID encoder, bundled LoRA mapping, prompt expansion, preprocessing.

``encoder`` needs torch; ``prompt`` and ``lora`` are plain list/tensor work for the nodes.
"""

from importlib import import_module

__all__ = ["PhotoMakerModel", "load_photomaker"]

_EXPORTS = {
    "load_photomaker": "pulid_core.photomaker.encoder",
    "PhotoMakerModel": "pulid_core.photomaker.encoder",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pulid_core.photomaker' has no attribute {name!r}")
    # Relative to this package (the pack imports it as ``<pack>.pulid_core.photomaker``).
    return getattr(import_module(module.replace("pulid_core.photomaker", __name__, 1)), name)
