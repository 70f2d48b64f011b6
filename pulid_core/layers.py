"""The 70 SDXL cross-attention (attn2) layers PuLID patches, as data.

PuLID checkpoints index their ID K/V projections by the position of the layer's
processor in diffusers' ``unet.attn_processors``: down blocks, then up blocks,
then the mid block (registered last), attn1 then attn2 inside each transformer
block. The attn2 of transformer block n therefore sits at odd index 2n+1.
ComfyUI looks attn2 replace patches up by ``(block, number, transformer_index)``;
its middle block is tagged ``("middle", 0)``.

``sdxl_width``/``sdxl_heads`` describe the real SDXL UNet; the widths a loaded
adapter uses are read from its weights (``PuLIDModel.layer_widths``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class CrossAttnLayer:
    n: int  # transformer block number in diffusers order, 0..69
    module_index: int  # key index in the checkpoint: 2n+1
    comfy_key: tuple  # ComfyUI attn2 patch key
    diffusers_name: str
    sdxl_width: int
    sdxl_heads: int


# (ComfyUI block, diffusers attention module, transformer blocks, width), in diffusers order.
_SDXL_BLOCKS = (
    (("input", 4), "down_blocks.1.attentions.0", 2, 640),
    (("input", 5), "down_blocks.1.attentions.1", 2, 640),
    (("input", 7), "down_blocks.2.attentions.0", 10, 1280),
    (("input", 8), "down_blocks.2.attentions.1", 10, 1280),
    (("output", 0), "up_blocks.0.attentions.0", 10, 1280),
    (("output", 1), "up_blocks.0.attentions.1", 10, 1280),
    (("output", 2), "up_blocks.0.attentions.2", 10, 1280),
    (("output", 3), "up_blocks.1.attentions.0", 2, 640),
    (("output", 4), "up_blocks.1.attentions.1", 2, 640),
    (("output", 5), "up_blocks.1.attentions.2", 2, 640),
    (("middle", 0), "mid_block.attentions.0", 10, 1280),
)
SDXL_HEAD_DIM = 64


def _build_table():
    rows = []
    for block, module, depth, width in _SDXL_BLOCKS:
        for j in range(depth):
            n = len(rows)
            rows.append(
                CrossAttnLayer(
                    n=n,
                    module_index=2 * n + 1,
                    comfy_key=(block[0], block[1], j),
                    diffusers_name=f"{module}.transformer_blocks.{j}.attn2",
                    sdxl_width=width,
                    sdxl_heads=width // SDXL_HEAD_DIM,
                )
            )
    return tuple(rows)


SDXL_CROSS_ATTN_LAYERS: tuple[CrossAttnLayer, ...] = _build_table()
NUM_LAYERS = len(SDXL_CROSS_ATTN_LAYERS)
MODULE_INDICES: tuple[int, ...] = tuple(layer.module_index for layer in SDXL_CROSS_ATTN_LAYERS)

LAYER_BY_MODULE_INDEX = MappingProxyType({layer.module_index: layer for layer in SDXL_CROSS_ATTN_LAYERS})
COMFY_KEY_BY_MODULE_INDEX = MappingProxyType(
    {layer.module_index: layer.comfy_key for layer in SDXL_CROSS_ATTN_LAYERS}
)
MODULE_INDEX_BY_COMFY_KEY = MappingProxyType(
    {layer.comfy_key: layer.module_index for layer in SDXL_CROSS_ATTN_LAYERS}
)


def module_index_for(comfy_key) -> int | None:
    """The checkpoint layer index for a ComfyUI attn2 key, or None if PuLID does not patch it."""
    return MODULE_INDEX_BY_COMFY_KEY.get(tuple(comfy_key))
