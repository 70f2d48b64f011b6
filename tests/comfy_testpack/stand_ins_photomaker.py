"""Tiny photomaker-v1/v2.bin stand-ins: the real container and key structure, sized for the tiny SDXL.

The id_encoder has the official key names with small widths (CLIP tower 64 wide, two
projections of 32 each = the tiny CLIP-L and CLIP-G widths, fuse width 64; v2 adds the
QFormer with 512-d face embeddings and 2 tokens per image). The LoRA has the official
diffusers attention-processor keys for all 70 transformer blocks, shaped for the tiny
UNet's attention layers (64 and 128 wide, context 64). As in the real file, part of the
encoder is stored in bf16 and the rest in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pulid_layouts import photomaker_shapes

from .stand_ins import writer
from .tiny_sizes import TINY_CONTEXT_DIM

# (diffusers attention block, transformer depth, UNet level) of SDXL; the level picks the width.
LORA_BLOCKS = (
    [(f"down_blocks.1.attentions.{a}", 2, 1) for a in range(2)]
    + [(f"down_blocks.2.attentions.{a}", 10, 2) for a in range(2)]
    + [("mid_block.attentions.0", 10, 2)]
    + [(f"up_blocks.0.attentions.{a}", 10, 2) for a in range(3)]
    + [(f"up_blocks.1.attentions.{a}", 2, 1) for a in range(3)]
)
# Tiny SDXL: model_channels 32, channel_mult [1, 2, 4] -> attention widths 64 and 128.
TINY_WIDTHS = {1: 64, 2: 128}
TINY_LORA_RANK = 4


# Tiny id_encoder sizes: a CLIP tower 64 wide, projections of the tiny CLIP-L and CLIP-G widths.
TINY_ID_ENCODER = dict(hidden=64, depth=2, mlp=128, patch=14, grid=16,
                       proj=(TINY_CONTEXT_DIM // 2, TINY_CONTEXT_DIM // 2), id_dim=512, id_inner=128, tokens=2,
                       q_depth=2, q_inner=128)


def id_encoder_shapes(version: str) -> dict:
    """{key: shape} of the tiny PhotoMaker id_encoder (official key names)."""
    return photomaker_shapes(version, **TINY_ID_ENCODER)


def lora_shapes(widths=TINY_WIDTHS, context_dim=TINY_CONTEXT_DIM, rank=TINY_LORA_RANK) -> dict:
    """{key: shape} of the bundled LoRA: official keys, all 70 SDXL transformer blocks (1120 tensors)."""
    shapes = {}
    for block, depth, level in LORA_BLOCKS:
        d = widths[level]
        for t in range(depth):
            for attn in ("attn1", "attn2"):
                for proj in ("to_q", "to_k", "to_v", "to_out"):
                    d_in = context_dim if attn == "attn2" and proj in ("to_k", "to_v") else d
                    base = f"unet.{block}.transformer_blocks.{t}.{attn}.processor.{proj}_lora"
                    shapes[f"{base}.down.weight"] = (rank, d_in)
                    shapes[f"{base}.up.weight"] = (d, rank)
    return shapes


def _fill(shapes: dict, seed: int, lora: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        if lora:
            x = x * 0.02
        elif len(shape) == 1 and name.endswith("weight"):
            x = 1.0 + 0.05 * x  # norm scales
        elif len(shape) == 1:
            x = 0.02 * x  # biases, class embedding
        else:
            x = x / max(1, int(torch.tensor(shape[1:]).prod())) ** 0.5
        out[name] = x
    return out


def tiny_photomaker(version: str, seed: int = 0) -> dict:
    """The file's content: {"id_encoder": ..., "lora_weights": ...}; the vision tower in bf16."""
    id_encoder = _fill(id_encoder_shapes(version), seed)
    id_encoder = {
        k: v.to(torch.bfloat16) if k.startswith("vision_model.") else v for k, v in id_encoder.items()
    }
    return {"id_encoder": id_encoder, "lora_weights": _fill(lora_shapes(), seed + 1, lora=True)}


def write_tiny_photomaker(path: Path, version: str | None = None) -> None:
    """v2 when the file name says so (photomaker-v2.bin), else v1."""
    path = Path(path)
    version = version or ("v2" if "v2" in path.name.lower() else "v1")
    torch.save(tiny_photomaker(version), path)


writer(("PuLIDPhotoMakerLoader",), "photomaker_file", "photomaker")(write_tiny_photomaker)
