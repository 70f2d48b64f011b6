"""Socket types of the pack, and the two schema helpers every node uses.

PULID, EVA_CLIP and FACEANALYSIS keep the names the archived cubiq/PuLID_ComfyUI
used, so its saved workflows connect; the nodes check what they receive and say
so when an object comes from another pack.
"""

from __future__ import annotations

import functools

from comfy_api.latest import io

from ..pulid_core.errors import PuLIDError
from ..pulid_core.options import check_choice, check_finite, check_image, check_mask

PuLID = io.Custom("PULID")
EvaClip = io.Custom("EVA_CLIP")
FaceAnalysis = io.Custom("FACEANALYSIS")
PuLIDEmbeds = io.Custom("PULID_EMBEDS")


# cubiq/PuLID_ComfyUI (archived) shows these names in the same "pulid" category; next to it, the
# pack's nodes of the same name get a suffix, so that the node library and search tell them apart.
CUBIQ_NAMES = ("Load PuLID Model", "Apply PuLID")


@functools.cache
def _beside_cubiq() -> bool:
    from . import cubiq_pack_installed  # fixed for a ComfyUI process: custom nodes load at start-up

    return cubiq_pack_installed()


def shown_name(name: str) -> str:
    """``name``, or ``name (comfyui-pulid)`` where cubiq's pack, installed beside, shows the same name."""
    return f"{name} (comfyui-pulid)" if name in CUBIQ_NAMES and _beside_cubiq() else name


@functools.cache
def display_name(node_cls) -> str:
    """The name the user sees on a node, from its schema (error messages use it)."""
    schema = node_cls.define_schema()
    return schema.display_name or schema.node_id


def check_inputs(node_cls, files: dict | None = None, **values) -> str:
    """Check widget values against ``node_cls``'s own schema; returns the node's display name.

    ComfyUI 0.3.75 does not check a V3 COMBO value against its options for API clients and
    its FLOAT range check lets NaN through, so each node checks what it receives: a COMBO value
    must be one of its options (null included, unless the input is optional), a FLOAT/INT a finite
    number within its min..max, a MASK finite and in 0..1, an IMAGE a batch [B, H, W, C]. Only the
    values passed are checked.
    ``files`` ({input: value}): file-list COMBOs, which must be a file name; whether the file exists
    is left to the loaders, whose messages say where a missing file comes from.
    """
    schema = node_cls.define_schema()
    node = schema.display_name or schema.node_id
    for name, value in (files or {}).items():
        if not isinstance(value, str) or not value.strip():
            raise PuLIDError(
                f"{node}: {name} is {value!r}, not a file name: choose one of the files its list offers (a "
                "hand-edited workflow or an API client sent none)."
            )
    for spec in schema.inputs:
        if spec.id not in values or (values[spec.id] is None and (spec.optional or not isinstance(spec, io.Combo.Input))):
            continue
        value = values[spec.id]
        if isinstance(spec, io.Combo.Input):
            check_choice(value, spec.options, node=node, input_name=spec.id)
        elif isinstance(spec, (io.Float.Input, io.Int.Input)):
            number = check_finite(value, node=node, input_name=spec.id, lo=spec.min, hi=spec.max)
            if isinstance(spec, io.Int.Input) and number != int(number):
                raise PuLIDError(f"{node}: {spec.id} must be a whole number; got {value!r}.")
        elif isinstance(spec, io.Mask.Input):
            check_mask(value, node=node, input_name=spec.id)
        elif isinstance(spec, io.Image.Input):
            check_image(value, node=node, input_name=spec.id)
    return node
