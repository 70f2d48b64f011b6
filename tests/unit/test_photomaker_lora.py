"""The LoRA bundled in photomaker-*.bin: diffusers attention-processor keys -> ComfyUI SDXL UNet keys."""

import re

import pytest
import torch

from pulid_core.errors import ModelFileError
from pulid_core.photomaker.lora import comfy_lora_state_dict, ldm_weight_name, lora_patches

RANK = 64
# (diffusers attention block, transformer blocks, width, LDM prefix) for the SDXL UNet.
BLOCKS = [
    ("down_blocks.1.attentions.0", 2, 640, "input_blocks.4.1"),
    ("down_blocks.1.attentions.1", 2, 640, "input_blocks.5.1"),
    ("down_blocks.2.attentions.0", 10, 1280, "input_blocks.7.1"),
    ("down_blocks.2.attentions.1", 10, 1280, "input_blocks.8.1"),
    ("mid_block.attentions.0", 10, 1280, "middle_block.1"),
    ("up_blocks.0.attentions.0", 10, 1280, "output_blocks.0.1"),
    ("up_blocks.0.attentions.1", 10, 1280, "output_blocks.1.1"),
    ("up_blocks.0.attentions.2", 10, 1280, "output_blocks.2.1"),
    ("up_blocks.1.attentions.0", 2, 640, "output_blocks.3.1"),
    ("up_blocks.1.attentions.1", 2, 640, "output_blocks.4.1"),
    ("up_blocks.1.attentions.2", 2, 640, "output_blocks.5.1"),
]
PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def real_layout():
    """(diffusers key, shape, expected LDM weight) for all 1120 tensors of the official LoRA."""
    rows = []
    for block, depth, d, ldm in BLOCKS:
        for t in range(depth):
            for attn in ("attn1", "attn2"):
                for proj, ldm_proj in PROJ.items():
                    in_features = 2048 if attn == "attn2" and proj in ("to_k", "to_v") else d
                    base = f"unet.{block}.transformer_blocks.{t}.{attn}.processor.{proj}_lora"
                    target = f"diffusion_model.{ldm}.transformer_blocks.{t}.{attn}.{ldm_proj}.weight"
                    rows.append((f"{base}.down.weight", (RANK, in_features), target))
                    rows.append((f"{base}.up.weight", (d, RANK), target))
    return rows


@pytest.fixture(scope="module")
def lora():
    # Exact shapes at no memory cost: each tensor is one distinct value broadcast to its shape.
    rows = real_layout()
    return {key: torch.tensor(float(i)).expand(shape) for i, (key, shape, _) in enumerate(rows)}, rows


def test_layout_has_1120_tensors_in_70_blocks(lora):
    sd, _ = lora
    assert len(sd) == 1120
    assert sum(depth for _, depth, _, _ in BLOCKS) == 70
    assert sum(sd_t.numel() for sd_t in sd.values()) == 92_897_280


def test_every_key_maps_to_its_ldm_weight(lora):
    sd, rows = lora
    patches = lora_patches(sd)
    assert len(patches) == 560  # 70 blocks x 2 attentions x 4 projections
    for key, _, target in rows:
        assert ldm_weight_name(key) == target
        up, down = patches[target]
        half = up if key.endswith(".up.weight") else down
        assert half is sd[key]
    # 1:1: every (block, t) lands on a distinct LDM transformer block.
    blocks = {re.match(r"(.*\.transformer_blocks\.\d+)\.", t).group(1) for t in patches}
    assert len(blocks) == 70


def test_comfy_format(lora):
    sd, rows = lora
    comfy = comfy_lora_state_dict(sd)
    assert len(comfy) == 1120
    for key, shape, target in rows:
        suffix = ".lora_up.weight" if key.endswith(".up.weight") else ".lora_down.weight"
        assert comfy[target[: -len(".weight")] + suffix] is sd[key]
    assert not any(k.endswith(".alpha") for k in comfy)
    key = "diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k"
    assert comfy[key + ".lora_down.weight"].shape == (64, 2048)
    assert comfy[key + ".lora_up.weight"].shape == (1280, 64)
    assert "diffusion_model.output_blocks.5.1.transformer_blocks.1.attn1.to_out.0.lora_up.weight" in comfy


def test_patch_semantics_is_up_at_down():
    up, down = torch.randn(8, 4), torch.randn(4, 6)
    sd = {
        "unet.mid_block.attentions.0.transformer_blocks.3.attn1.processor.to_out_lora.up.weight": up,
        "unet.mid_block.attentions.0.transformer_blocks.3.attn1.processor.to_out_lora.down.weight": down,
    }
    ((target, (u, d)),) = lora_patches(sd).items()
    assert target == "diffusion_model.middle_block.1.transformer_blocks.3.attn1.to_out.0.weight"
    torch.testing.assert_close(u @ d, up @ down)


@pytest.mark.parametrize(
    "sd,message",
    [
        ({}, "no LoRA weights"),
        (
            {
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(
                    1, 1
                )
            },
            "Unknown key",
        ),
        (
            {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight": torch.zeros(1, 1)},
            "Unknown key",
        ),
        (
            {
                "unet.mid_block.attentions.1.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(
                    1, 1
                )
            },
            "Unknown key",
        ),
        (
            {
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(
                    4, 2
                )
            },
            "lacks the 'down' half",
        ),
        (
            {
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(
                    4, 2
                ),
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.zeros(
                    3, 4
                ),
            },
            "common rank",
        ),
    ],
)
def test_bad_lora_is_a_clear_error(sd, message):
    with pytest.raises(ModelFileError, match=message):
        comfy_lora_state_dict(sd)
