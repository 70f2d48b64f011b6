"""The UNet LoRA bundled in photomaker-v1/v2.bin, renamed for ComfyUI's SDXL UNet.

The file stores it in the old diffusers attention-processor format
(``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight``),
rank 64, no alpha (so scale 1.0). ComfyUI's UNet uses the LDM layout
(``diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight``). The official
pipeline fuses it at strength 1.0: W' = W + up @ down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ModelFileError

_KEY_RE = re.compile(
    r"^(?:unet\.)?(?P<block>down_blocks\.(?P<db>\d+)\.attentions\.(?P<da>\d+)"
    r"|mid_block\.attentions\.(?P<ma>\d+)"
    r"|up_blocks\.(?P<ub>\d+)\.attentions\.(?P<ua>\d+))"
    r"\.transformer_blocks\.(?P<t>\d+)\.(?P<attn>attn[12])\.processor\."
    r"(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<kind>up|down)\.weight$"
)

# SDXL UNet: 2 attention blocks per down level and 3 per up level (level 0 has none on the way down).
_LAYERS_PER_DOWN = 2
_LAYERS_PER_UP = 3


def _ldm_prefix(m: re.Match) -> str | None:
    """Diffusers attention block -> LDM transformer prefix (the `.1` is the block's SpatialTransformer)."""
    if m["db"] is not None:
        level, index = int(m["db"]), int(m["da"])
        if index >= _LAYERS_PER_DOWN:
            return None
        return f"input_blocks.{level * (_LAYERS_PER_DOWN + 1) + index + 1}.1"
    if m["ma"] is not None:
        return "middle_block.1" if m["ma"] == "0" else None
    level, index = int(m["ub"]), int(m["ua"])
    if index >= _LAYERS_PER_UP:
        return None
    return f"output_blocks.{level * _LAYERS_PER_UP + index}.1"


def ldm_weight_name(diffusers_key: str) -> str:
    """``unet.<diffusers>.processor.to_q_lora.up.weight`` -> ``diffusion_model.<ldm>.to_q.weight``."""
    m = _KEY_RE.match(diffusers_key)
    prefix = _ldm_prefix(m) if m else None
    if prefix is None:
        raise ModelFileError(
            f"Unknown key {diffusers_key!r} in the PhotoMaker LoRA: expected SDXL UNet attention keys such as "
            "'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight'."
        )
    proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
    return f"diffusion_model.{prefix}.transformer_blocks.{m['t']}.{m['attn']}.{proj}.weight"


def lora_patches(lora_weights: Mapping, name: str = "the PhotoMaker file") -> dict:
    """``{"diffusion_model.<ldm path>.weight": (up, down)}``; patch as W + strength * up @ down."""
    if not lora_weights:
        raise ModelFileError(
            f"{name} has no LoRA weights ('lora_weights'): load the official photomaker-v1.bin or -v2.bin, "
            "or set lora_strength to 0 to use its ID encoder without the LoRA."
        )
    halves: dict[str, dict[str, object]] = {}
    for key, tensor in lora_weights.items():
        target = ldm_weight_name(key)
        kind = _KEY_RE.match(key)["kind"]
        if kind in halves.setdefault(target, {}):
            raise ModelFileError(f"{name}: the LoRA has two '{kind}' tensors for {target}.")
        halves[target][kind] = tensor
    out = {}
    for target, pair in halves.items():
        if len(pair) != 2:
            missing = "down" if "up" in pair else "up"
            raise ModelFileError(
                f"{name}: the LoRA lacks the '{missing}' half for {target}; the file is incomplete, "
                "download it again."
            )
        up, down = pair["up"], pair["down"]
        if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
            raise ModelFileError(
                f"{name}: LoRA shapes up {tuple(up.shape)} / down {tuple(down.shape)} for {target} do not "
                "have a common rank."
            )
        out[target] = (up, down)
    return out


def comfy_lora_state_dict(lora_weights: Mapping, name: str = "the PhotoMaker file") -> dict:
    """The LoRA in ComfyUI's generic key format, for ``comfy.sd.load_lora_for_models``.

    Keys are ``diffusion_model.<ldm path>.lora_up.weight`` / ``.lora_down.weight``; there is no
    ``.alpha``, so ComfyUI applies up @ down at the strength given (1.0 = official).
    """
    out = {}
    for target, (up, down) in lora_patches(lora_weights, name).items():
        base = target[: -len(".weight")]
        out[f"{base}.lora_up.weight"] = up
        out[f"{base}.lora_down.weight"] = down
    return out
