"""Tier 2: the pack inside a real ComfyUI 0.3.75, in this process (CPU mode)."""

import asyncio

import pytest

pytestmark = pytest.mark.comfy


def test_entry_point_is_v3_only(pack):
    # ComfyUI checks NODE_CLASS_MAPPINGS first; defining it would hide the V3 entry point.
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    ids = [n.define_schema().node_id for n in nodes]
    assert len(ids) == len(set(ids))


def test_tiny_sdxl_has_the_70_sdxl_cross_attention_layers(tiny_sdxl):
    model = tiny_sdxl[0]
    unet = model.get_model_object("diffusion_model")
    keys = []
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                for j, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    if tb.attn2 is not None:
                        keys.append((name, 0 if name == "middle" else i, j))
    assert len(keys) == 70
    assert sum(k[0] == "middle" for k in keys) == 10
    assert sum(k[0] == "input" for k in keys) == 24
