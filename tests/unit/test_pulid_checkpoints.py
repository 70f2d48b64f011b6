"""PuLID checkpoint loading: the four real layouts at full size, the layer table, and wrong files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pulid_core import ModelFileError, load_pulid
from pulid_core.layers import (
    COMFY_KEY_BY_MODULE_INDEX,
    LAYER_BY_MODULE_INDEX,
    MODULE_INDEX_BY_COMFY_KEY,
    SDXL_CROSS_ATTN_LAYERS,
    module_index_for,
)
from pulid_layouts import to_ipadapter_layout
from tests import pickles
from tests.memory import load_with_peak

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = json.loads((ROOT / "tests" / "data" / "golden" / "checkpoint_layouts.json").read_text())
PULID_LAYOUTS = {k.split(" ")[0]: v for k, v in LAYOUTS.items() if "pulid" in k.split(" ")[0]}


# --- the SDXL layer table (diffusers attn processor order -> ComfyUI block keys) ------------------


def test_layer_table_order_and_keys():
    assert len(SDXL_CROSS_ATTN_LAYERS) == 70
    assert [layer.module_index for layer in SDXL_CROSS_ATTN_LAYERS] == list(range(1, 140, 2))
    expected = {
        1: (("input", 4, 0), "down_blocks.1.attentions.0.transformer_blocks.0.attn2"),
        7: (("input", 5, 1), "down_blocks.1.attentions.1.transformer_blocks.1.attn2"),
        9: (("input", 7, 0), "down_blocks.2.attentions.0.transformer_blocks.0.attn2"),
        47: (("input", 8, 9), "down_blocks.2.attentions.1.transformer_blocks.9.attn2"),
        49: (("output", 0, 0), "up_blocks.0.attentions.0.transformer_blocks.0.attn2"),
        107: (("output", 2, 9), "up_blocks.0.attentions.2.transformer_blocks.9.attn2"),
        109: (("output", 3, 0), "up_blocks.1.attentions.0.transformer_blocks.0.attn2"),
        119: (("output", 5, 1), "up_blocks.1.attentions.2.transformer_blocks.1.attn2"),
        121: (("middle", 0, 0), "mid_block.attentions.0.transformer_blocks.0.attn2"),
        139: (("middle", 0, 9), "mid_block.attentions.0.transformer_blocks.9.attn2"),
    }
    for index, (key, name) in expected.items():
        layer = LAYER_BY_MODULE_INDEX[index]
        assert (layer.comfy_key, layer.diffusers_name, layer.n) == (key, name, (index - 1) // 2)
        assert COMFY_KEY_BY_MODULE_INDEX[index] == key
        assert MODULE_INDEX_BY_COMFY_KEY[key] == index == module_index_for(list(key))
    assert len(MODULE_INDEX_BY_COMFY_KEY) == 70
    assert module_index_for(("middle", 1, 0)) is None  # cubiq's key that never fires


@pytest.mark.parametrize("layout", sorted(PULID_LAYOUTS))
def test_layer_table_widths_match_real_checkpoints(layout):
    for key, shape in PULID_LAYOUTS[layout].items():
        parts = key.split(".")
        if parts[0] in ("id_adapter_attn_layers", "ip_adapter"):
            layer = LAYER_BY_MODULE_INDEX[int(parts[1])]
            assert (layer.sdxl_width, layer.sdxl_heads) == (shape[0], shape[0] // 64)


# --- full-size synthesized files in their real formats --------------------------------------------

FULL_SIZE = {
    # file name: (layout, dtype, version, tokens)
    "pulid_v1.bin": ("pulid_v1.bin", torch.float32, "v1", 10),
    "ip-adapter_pulid_sdxl_fp16.safetensors": (
        "ip-adapter_pulid_sdxl_fp16.safetensors",
        torch.float16,
        "v1",
        10,
    ),
    "pulid_v1.1.safetensors": ("pulid_v1.1.safetensors", torch.float16, "v1.1", 32),
    "ip-adapter_pulidv1.1_sdxl_fp16.safetensors": (
        "ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
        torch.float16,
        "v1.1",
        32,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("filename", sorted(FULL_SIZE))
def test_full_size_file_loads(tmp_path, filename):
    layout, dtype, version, tokens = FULL_SIZE[filename]
    state = {k: torch.zeros(s, dtype=dtype) for k, s in PULID_LAYOUTS[layout].items()}
    ipa = "ip-adapter" in filename
    state["ip_adapter.139.to_v_ip.weight" if ipa else "id_adapter_attn_layers.139.id_to_v.weight"].fill_(1.0)
    path = tmp_path / filename
    if filename.endswith(".bin"):
        torch.save(state, path)
    else:
        save_file(state, path)
    del state
    model, rise = load_with_peak(load_pulid, path)
    if rise is not None:
        # At most one transient extra copy of the file while loading.
        assert rise <= 2.2 * path.stat().st_size
    assert (model.version, model.num_tokens, model.context_dim) == (version, tokens, 2048)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model.layer_widths == {layer.module_index: layer.sdxl_width for layer in SDXL_CROSS_ATTN_LAYERS}
    assert torch.equal(
        model.id_adapter_attn_layers["139"].id_to_v.weight, torch.ones(1280, 2048, dtype=dtype)
    )
    assert torch.count_nonzero(model.id_adapter_attn_layers["137"].id_to_v.weight) == 0


# --- small files: formats, no copies, dtype kept --------------------------------------------------


def test_tiny_files_in_every_format(tmp_path, tiny_pulid_state_dict):
    official = tiny_pulid_state_dict("v1")
    ipa = to_ipadapter_layout(official)
    nested = {
        g: {k[len(g) + 1 :]: v for k, v in ipa.items() if k.startswith(g + ".")}
        for g in ("image_proj", "ip_adapter")
    }
    torch.save(official, tmp_path / "pulid_v1.bin")
    torch.save(nested, tmp_path / "ip-adapter_pulid.bin")
    save_file({k: v.half() for k, v in ipa.items()}, tmp_path / "ip-adapter_pulid_fp16.safetensors")
    reference = load_pulid(official)
    for name in ("pulid_v1.bin", "ip-adapter_pulid.bin"):
        model = load_pulid(tmp_path / name)
        assert model.version == "v1"
        for (key, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(a, b), key
    half = load_pulid(str(tmp_path / "ip-adapter_pulid_fp16.safetensors"))
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert torch.equal(half.id_adapter.mapping_4[6].weight, official["id_adapter.mapping_4.6.weight"].half())


def test_state_dict_is_used_without_copy(tiny_pulid_state_dict):
    state = tiny_pulid_state_dict("v1.1", dtype=torch.float16)
    model = load_pulid(state)
    assert model.id_adapter.latents.data_ptr() == state["id_adapter.latents"].data_ptr()
    assert model.id_adapter_attn_layers["1"].id_to_k.weight.data_ptr() == (
        state["id_adapter_attn_layers.1.id_to_k.weight"].data_ptr()
    )
    assert not any(p.requires_grad for p in model.parameters())
    assert load_pulid(state, dtype=torch.float32).id_adapter.latents.dtype == torch.float32


def test_layer_widths_are_read_from_the_weights(tiny_pulid_state_dict):
    model = load_pulid(tiny_pulid_state_dict("v1", layer_width=lambda k: k + 1))
    assert model.layer_widths == {k: k + 1 for k in range(1, 140, 2)}
    k, v = model.id_kv(139, torch.ones(2, 3, 24), num_zero=4)
    assert k.shape == v.shape == (2, 7, 140)


# --- wrong and damaged files ----------------------------------------------------------------------


def write(path, state):
    if str(path).endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def small(*shape):
    return torch.zeros(shape or (2, 2))


@pytest.mark.parametrize(
    "filename, state, kind",
    [
        (
            "sd_xl_base_1.0.safetensors",
            {
                "model.diffusion_model.input_blocks.0.0.weight": small(),
                "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": small(),
            },
            "an SDXL checkpoint",
        ),
        (
            "detail_lora.safetensors",
            {
                "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": small(),
                "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": small(),
            },
            "a LoRA",
        ),
        (
            "photomaker-v1.bin",
            {
                "id_encoder": {
                    "vision_model.embeddings.class_embedding": small(),
                    "fuse_module.mlp1.fc1.weight": small(),
                },
                "lora_weights": {"unet.down_blocks.1.lora.up.weight": small()},
            },
            "a PhotoMaker file",
        ),
        (
            "ip-adapter-faceid-plusv2_sdxl.bin",
            {
                "image_proj": {"proj.0.weight": small(), "perceiver_resampler.proj_in.weight": small()},
                "ip_adapter": {"1.to_k_ip.weight": small(), "1.to_v_ip.weight": small()},
            },
            "IPAdapter FaceID",
        ),
        (
            "EVA02_CLIP_L_336_psz14_s6B.safetensors",
            {"visual.blocks.0.attn.q_bias": small(), "visual.cls_token": small()},
            "EVA-CLIP",
        ),
    ],
)
def test_wrong_kind_of_file(tmp_path, filename, state, kind):
    path = write(tmp_path / filename, state)
    with pytest.raises(ModelFileError) as err:
        load_pulid(path)
    message = str(err.value)
    assert filename in message and "is not a PuLID model" in message and kind in message


@pytest.mark.parametrize(
    "suffix, phrase", [(".safetensors", "incomplete download"), (".bin", "truncated or corrupt")]
)
def test_truncated_file(tmp_path, tiny_pulid_state_dict, suffix, phrase):
    path = write(tmp_path / f"pulid_v1{suffix}", tiny_pulid_state_dict("v1"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=phrase) as err:
        load_pulid(path)
    assert path.name in str(err.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "pulid_v1.bin"
    pickles.write(path, {"id_adapter.body.0.weight": pickles.RunsCode(marker)}, writer)
    with pytest.raises(ModelFileError, match="Refused to load pulid_v1.bin"):
        load_pulid(path)
    assert not marker.exists()


def drop(state, *keys):
    return {k: v for k, v in state.items() if k not in keys}


def test_missing_layer_keys(tiny_pulid_state_dict):
    state = drop(
        tiny_pulid_state_dict("v1"),
        "id_adapter_attn_layers.5.id_to_k.weight",
        "id_adapter_attn_layers.5.id_to_v.weight",
        "id_adapter_attn_layers.139.id_to_v.weight",
    )
    with pytest.raises(
        ModelFileError, match=r"for 68 of the 70 SDXL cross-attention layers \(missing layer 5, 139\)"
    ):
        load_pulid(state)


def test_only_encoder_or_only_layers(tiny_pulid_state_dict):
    state = tiny_pulid_state_dict("v1")
    with pytest.raises(ModelFileError, match="only a PuLID ID encoder"):
        load_pulid({k: v for k, v in state.items() if k.startswith("id_adapter.")})
    with pytest.raises(ModelFileError, match="only PuLID's ID attention weights"):
        load_pulid({k: v for k, v in state.items() if k.startswith("id_adapter_attn_layers.")})


def test_mixed_layouts(tiny_pulid_state_dict):
    v1 = tiny_pulid_state_dict("v1")
    mixed = {k: v for k, v in v1.items() if k.startswith("id_adapter.")}
    mixed.update({k: v for k, v in to_ipadapter_layout(v1).items() if k.startswith("ip_adapter.")})
    with pytest.raises(ModelFileError, match="mixes the official"):
        load_pulid(mixed)
    v11 = tiny_pulid_state_dict("v1.1")
    both = {**v1, **{k: v for k, v in v11.items() if k.startswith("id_adapter.layers.")}}
    with pytest.raises(ModelFileError, match="mixes v1 IDEncoder keys"):
        load_pulid(both)


@pytest.mark.parametrize("layout, prefix", [("official", "id_adapter."), ("ipadapter", "image_proj.")])
def test_key_differences_are_listed_in_the_files_naming(tiny_pulid_state_dict, layout, prefix):
    state = tiny_pulid_state_dict("v1.1", layout=layout)
    state = drop(state, f"{prefix}mapping_3.4.bias")
    state[f"{prefix}extra.weight"] = small()
    with pytest.raises(ModelFileError) as err:
        load_pulid(state)
    message = str(err.value)
    assert "PuLID v1.1" in message
    assert f"1 missing key ({prefix}mapping_3.4.bias)" in message
    assert f"1 unexpected key ({prefix}extra.weight)" in message


def test_even_layer_index_is_unexpected(tiny_pulid_state_dict):
    state = tiny_pulid_state_dict("v1")
    state["id_adapter_attn_layers.2.id_to_k.weight"] = small(8, 24)
    with pytest.raises(ModelFileError, match=r"unexpected key \(id_adapter_attn_layers.2.id_to_k.weight\)"):
        load_pulid(state)


def test_wrong_shapes(tiny_pulid_state_dict):
    state = tiny_pulid_state_dict("v1")
    state["id_adapter_attn_layers.9.id_to_v.weight"] = small(16, 30)
    with pytest.raises(ModelFileError, match="unexpected shapes.*id_adapter_attn_layers.9.id_to_v.weight"):
        load_pulid(state)
    v11 = tiny_pulid_state_dict("v1.1")
    v11 = drop(v11, *[k for k in v11 if k.startswith("id_adapter.layers.9.")])
    with pytest.raises(ModelFileError, match="IDFormer has 9 layers"):
        load_pulid(v11)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_pulid(tmp_path / "pulid_v1.1.safetensors")


def test_imports_without_comfy():
    code = (
        "import sys, pulid_core, pulid_core.adapter, pulid_core.encoders, pulid_core.attention, pulid_core.layers\n"
        "import pulid_core.blocks, pulid_core.flux\n"
        "from pulid_core import load_pulid, PuLIDModel, PuLIDFluxModel, id_attention\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'comfy_extras', 'nodes')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_idformer_without_layers_lists_them(tiny_pulid_state_dict):
    state = {k: v for k, v in tiny_pulid_state_dict("v1.1").items() if ".layers." not in k}
    with pytest.raises(
        ModelFileError, match=r"PuLID v1.1 file .* missing keys \(id_adapter.layers.0.0.norm1.bias"
    ):
        load_pulid(state)


def test_file_without_a_state_dict(tmp_path):
    path = tmp_path / "pulid_v1.bin"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelFileError, match="pulid_v1.bin does not hold a state dict"):
        load_pulid(path)
