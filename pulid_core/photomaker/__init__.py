"""PhotoMaker v1/v2 for SDXL: ID encoder, bundled LoRA mapping, prompt expansion, preprocessing.

``encoder`` needs torch; ``prompt`` and ``lora`` are plain list/tensor work for the nodes.
"""

from ..lazy import lazy_getattr

__all__ = ["PhotoMakerModel", "load_photomaker"]

_EXPORTS = {
    "load_photomaker": ".encoder",
    "PhotoMakerModel": ".encoder",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)
