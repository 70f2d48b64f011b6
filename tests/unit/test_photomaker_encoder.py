"""PhotoMaker v1/v2 ID encoder: parity with the authors' code and loader behaviour."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pulid_core.errors import ModelFileError, PuLIDError
from pulid_core.photomaker import PhotoMakerModel, load_photomaker
from pulid_layouts import photomaker_shapes
from tests import detfill, fastfill

DATA = Path(__file__).resolve().parents[1] / "data" / "golden"

SALT = "pub:"
LAYOUTS = json.loads((DATA / "checkpoint_layouts.json").read_text())


def _layout(version):
    (name,) = [k for k in LAYOUTS if k.startswith(f"photomaker-{version}.bin")]
    return LAYOUTS[name]


def fill(name, shape, salt=SALT):
    """detfill.tensor(name, shape, salt) as a torch tensor, computed faster (tests/fastfill.py)."""
    return fastfill.fill(name, shape, salt)


@pytest.mark.parametrize(
    "name,shape",
    [
        ("id_encoder.vision_model.embeddings.class_embedding", (1024,)),
        ("id_encoder.visual_projection.weight", (768, 1024)),
        ("id_encoder.fuse_module.mlp1.layernorm.weight", (4096,)),
        ("id_encoder.fuse_module.mlp1.fc1.bias", (2048,)),
        ("input.pm.id_embeds", (2, 512)),
        ("x", (70000,)),
    ],
)
def test_fast_fill_matches_detfill(name, shape):
    assert np.array_equal(fill(name, shape).numpy(), detfill.tensor(name, shape, SALT))


# --- layouts for encoders of any size ---------------------------------------------


# Key -> shape of a PhotoMaker id_encoder with the real key structure and the given sizes (the stand-in
# files use the same builder; the test below checks it against the released files' layouts).
layout = photomaker_shapes


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_layout_builder_reproduces_the_real_checkpoint(version):
    assert {k: list(s) for k, s in layout(version).items()} == _layout(version)


TINY = {
    "hidden": 64,
    "depth": 2,
    "mlp": 96,
    "patch": 4,
    "grid": 3,
    "proj": (48, 80),
    "id_dim": 32,
    "q_depth": 2,
    "q_inner": 256,
}


def tiny_sd(version, **sizes):
    return {k: fill("id_encoder." + k, s) for k, s in layout(version, **{**TINY, **sizes}).items()}


def tiny_inputs(n=2, b=1, seq=77, width=128, size=12):
    pixels = fill("input.pm.pixels", (b, n, 3, size, size)) * 2.0
    prompt = fill("input.pm.prompt_embeds", (b, seq, width))
    id_embeds = fill("input.pm.id_embeds", (b, n, 32)) * 20.0
    return pixels, prompt, id_embeds


def mask_at(start, count, b=1, seq=77):
    mask = torch.zeros(b, seq, dtype=torch.bool)
    mask[:, start : start + count] = True
    return mask


# --- parity with the official code (full-size ViT-L/14 encoders) ------------------


@pytest.fixture(scope="module")
def full_v2_sd():
    # v1's keys are a subset of v2's and are filled from the same names.
    return {k: fill("id_encoder." + k, s) for k, s in _layout("v2").items()}


@pytest.fixture(scope="module")
def golden():
    return load_file(DATA / "photomaker.safetensors")


def _golden_inputs(n=2):
    pixels = torch.from_numpy(detfill.tensor("input.pm.pixels", (1, n, 3, 224, 224), SALT)) * 2.0
    prompt = torch.from_numpy(detfill.tensor("input.pm.prompt_embeds", (1, 77, 2048), SALT))
    id_embeds = torch.from_numpy(detfill.tensor("input.pm.id_embeds", (n, 512), SALT)) * 20.0
    return pixels, prompt, id_embeds


@pytest.mark.slow
def test_v1_matches_official_through_the_bin_container(full_v2_sd, golden, tmp_path):
    v1_sd = {k: full_v2_sd[k] for k in _layout("v1")}
    lora = {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.ones(
            2, 1
        )
    }
    path = tmp_path / "photomaker-v1.bin"
    torch.save({"id_encoder": v1_sd, "lora_weights": lora}, path)
    model = load_photomaker(path)
    assert (model.version, model.num_tokens) == ("v1", 1)
    assert list(model.lora_weights) == list(lora)
    pixels, prompt, _ = _golden_inputs()
    start = int(golden["mask_start"].item())
    before = prompt.clone()
    with torch.no_grad():
        out = model.fuse(pixels, prompt, mask_at(start, 2))
    assert torch.equal(prompt, before), "fuse must not modify its input"
    assert (out - golden["v1.out"]).abs().max().item() <= 1e-3


@pytest.mark.slow
def test_v2_matches_official(full_v2_sd, golden):
    model = load_photomaker({"id_encoder": full_v2_sd, "lora_weights": {}})
    assert (model.version, model.num_tokens) == ("v2", 2)
    pixels, prompt, id_embeds = _golden_inputs()
    start = int(golden["mask_start"].item())
    with torch.no_grad():
        out = model.fuse(pixels, prompt, mask_at(start, 4), id_embeds)
    assert (out - golden["v2.out"]).abs().max().item() <= 1e-3
    # Only the 2N class positions change.
    changed = (out != prompt).any(-1)[0].nonzero().flatten().tolist()
    assert changed == list(range(start, start + 4))


# --- fuse semantics ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_v1():
    return load_photomaker(tiny_sd("v1"))


@pytest.fixture(scope="module")
def tiny_v2():
    return load_photomaker(tiny_sd("v2"))


def test_sizes_are_read_from_the_state_dict(tiny_v1, tiny_v2):
    assert tiny_v1.image_size == 12 and len(tiny_v1.vision_model.encoder.layers) == 2
    assert tiny_v2.qformer_perceiver.num_tokens == 2
    assert tiny_v2.qformer_perceiver.perceiver_resampler.layers[0][0].heads == 2
    three = load_photomaker(tiny_sd("v2", tokens=3))
    assert three.num_tokens == 3


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pairing_is_image_major_in_ascending_positions(version, tiny_v1, tiny_v2):
    model = tiny_v1 if version == "v1" else tiny_v2
    t = model.num_tokens
    pixels, prompt, id_embeds = tiny_inputs(n=2)
    mask = mask_at(5, 2 * t)
    with torch.no_grad():
        out = model.fuse(pixels, prompt, mask, id_embeds)
        swapped = model.fuse(pixels.flip(1), prompt, mask, id_embeds.flip(1))
        tokens = model.id_tokens(pixels, id_embeds)[0]
        expected = model.fuse_module(prompt[0, 5 : 5 + 2 * t], tokens)
    torch.testing.assert_close(out[0, 5 : 5 + 2 * t], expected)
    assert torch.equal(out[0, :5], prompt[0, :5]) and torch.equal(out[0, 5 + 2 * t :], prompt[0, 5 + 2 * t :])
    # Swapping the images pairs each image's tokens with the other image's class positions.
    tok_a = model.fuse_module(prompt[0, 5 : 5 + t], tokens[t:])
    torch.testing.assert_close(swapped[0, 5 : 5 + t], tok_a)


def test_multichunk_prompt_and_scattered_positions(tiny_v2):
    pixels, prompt, id_embeds = tiny_inputs(n=2, seq=154)
    mask = torch.zeros(1, 154, dtype=torch.bool)
    positions = [3, 80, 81, 150]
    mask[0, positions] = True
    with torch.no_grad():
        out = tiny_v2.fuse(pixels, prompt, mask, id_embeds)
        expected = tiny_v2.fuse_module(prompt[0, positions], tiny_v2.id_tokens(pixels, id_embeds)[0])
    torch.testing.assert_close(out[0, positions], expected)
    keep = torch.ones(154, dtype=torch.bool)
    keep[positions] = False
    assert torch.equal(out[0, keep], prompt[0, keep])


def test_only_the_first_mask_sum_tokens_are_used(tiny_v1):
    pixels, prompt, _ = tiny_inputs(n=3)
    with torch.no_grad():
        out = tiny_v1.fuse(pixels, prompt, mask_at(5, 2))
        first_two = tiny_v1.fuse(pixels[:, :2], prompt, mask_at(5, 2))
    torch.testing.assert_close(out, first_two)
    with pytest.raises(PuLIDError, match="4 class-token positions"):
        tiny_v1.fuse(pixels, prompt, mask_at(5, 4))


def test_batches_pair_rows_and_share_one_image_set(tiny_v2):
    pixels, prompt, id_embeds = tiny_inputs(n=2, b=2)
    mask = mask_at(5, 4, b=2)
    with torch.no_grad():
        both = tiny_v2.fuse(pixels, prompt, mask, id_embeds)
        row1 = tiny_v2.fuse(pixels[1:], prompt[1:], mask[1:], id_embeds[1:])
        shared = tiny_v2.fuse(pixels[:1], prompt, mask, id_embeds[0])
        row0 = tiny_v2.fuse(pixels[:1], prompt[:1], mask[:1], id_embeds[:1])
    torch.testing.assert_close(both[1:], row1)
    # One image set for a batch of prompts: every row is fused with the same ID tokens.
    torch.testing.assert_close(shared[:1], row0)
    tokens = tiny_v2.id_tokens(pixels[:1], id_embeds[:1])[0]
    torch.testing.assert_close(shared[1, 5:9], tiny_v2.fuse_module(prompt[1, 5:9], tokens))


def test_v2_without_face_embeddings_is_a_clear_error(tiny_v2):
    pixels, prompt, _ = tiny_inputs()
    with pytest.raises(PuLIDError, match="v2.*InsightFace"):
        tiny_v2.fuse(pixels, prompt, mask_at(5, 4))
    with pytest.raises(PuLIDError, match="one 32-d face embedding per ID image"):
        tiny_v2.fuse(pixels, prompt, mask_at(5, 4), torch.zeros(1, 32))


def test_bad_image_size_is_a_clear_error(tiny_v1):
    _, prompt, _ = tiny_inputs()
    with pytest.raises(PuLIDError, match="12x12"):
        tiny_v1.fuse(torch.zeros(1, 1, 3, 16, 16), prompt, mask_at(5, 1))


def test_weights_keep_their_dtype_and_compute_in_the_input_dtype():
    sd = {k: v.to(torch.bfloat16) for k, v in tiny_sd("v1").items()}
    model = load_photomaker(sd)
    assert model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert model.fuse_module.layer_norm.weight.data_ptr() == sd["fuse_module.layer_norm.weight"].data_ptr()
    pixels, prompt, _ = tiny_inputs(n=1)
    with torch.no_grad():
        out = model.fuse(pixels, prompt, mask_at(5, 1))
        ref = load_photomaker({k: v.float() for k, v in sd.items()}).fuse(pixels, prompt, mask_at(5, 1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# --- containers, version detection, strict loading ------------------------------------


@pytest.mark.parametrize("container", ["bin", "safetensors", "bare"])
def test_containers_load_the_same_model(container, tmp_path, tiny_v2):
    sd = tiny_sd("v2")
    lora = {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.ones(
            4, 2
        )
    }
    if container == "bin":
        source = tmp_path / "pm.bin"
        torch.save({"id_encoder": sd, "lora_weights": lora}, source)
    elif container == "safetensors":
        source = tmp_path / "pm.safetensors"
        flat = {f"id_encoder.{k}": v for k, v in sd.items()}
        flat.update({f"lora_weights.{k}": v for k, v in lora.items()})
        save_file(flat, source)
    else:
        source = sd
    model = load_photomaker(source)
    assert isinstance(model, PhotoMakerModel) and model.version == "v2"
    assert set(model.lora_weights) == (set() if container == "bare" else set(lora))
    pixels, prompt, id_embeds = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.fuse(pixels, prompt, mask_at(5, 4), id_embeds),
            tiny_v2.fuse(pixels, prompt, mask_at(5, 4), id_embeds),
        )


def test_version_detection_and_expected_version(tmp_path):
    assert load_photomaker(tiny_sd("v1")).version == "v1"
    path = tmp_path / "photomaker-v1.bin"
    torch.save({"id_encoder": tiny_sd("v1"), "lora_weights": {}}, path)
    with pytest.raises(ModelFileError, match=r"photomaker-v1\.bin is a PhotoMaker v1 file.*v2 is needed"):
        load_photomaker(path, expect_version="v2")
    with pytest.raises(ModelFileError, match="is a PhotoMaker v2 file.*v1 is needed"):
        load_photomaker(tiny_sd("v2"), expect_version="v1")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = tiny_sd("v2")
    del sd["qformer_perceiver.perceiver_resampler.layers.0.0.to_out.weight"]
    sd["fuse_module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.bin"
    torch.save({"id_encoder": sd, "lora_weights": {}}, path)
    with pytest.raises(ModelFileError) as err:
        load_photomaker(path)
    text = str(err.value)
    assert "broken.bin" in text and "PhotoMaker v2" in text
    assert "1 missing key (qformer_perceiver.perceiver_resampler.layers.0.0.to_out.weight)" in text
    assert "1 unexpected key (fuse_module.extra.weight)" in text


def test_shape_mismatch_is_a_model_file_error():
    sd = tiny_sd("v1")
    sd["vision_model.encoder.layers.1.mlp.fc2.weight"] = torch.zeros(64, 95)
    with pytest.raises(ModelFileError, match="unexpected shapes"):
        load_photomaker(sd)


def test_a_file_of_another_kind_is_named(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "conditioner.embedders.0.transformer.text_model.x": torch.zeros(1),
        },
        path,
    )
    with pytest.raises(
        ModelFileError, match="sdxl.safetensors is not a PhotoMaker file: it looks like an SDXL checkpoint"
    ):
        load_photomaker(path)
    with pytest.raises(ModelFileError, match="only 'id_encoder' and 'lora_weights'"):
        load_photomaker({"id_encoder": tiny_sd("v1"), "lora_weights": {}, "extra": {}})


def test_mask_as_a_list_is_shared_by_all_prompt_rows(tiny_v1):
    pixels, prompt, _ = tiny_inputs(n=2, b=1)
    prompt2 = torch.cat([prompt, prompt.flip(1)])
    mask = [5 <= i < 7 for i in range(77)]  # what pulid_core.photomaker.prompt returns
    with torch.no_grad():
        out = tiny_v1.fuse(pixels, prompt2, mask)
        row1 = tiny_v1.fuse(pixels, prompt2[1:], mask_at(5, 2))
    torch.testing.assert_close(out[1:], row1)
    with pytest.raises(PuLIDError, match="does not match the prompt embeddings"):
        tiny_v1.fuse(pixels, prompt2, mask[:76])


def test_operations_argument_builds_every_layer():
    from types import SimpleNamespace

    from pulid_core import ops

    calls = []

    class Linear(ops.Linear):
        def forward(self, x):
            calls.append(self.weight.shape)
            return super().forward(x)

    custom = SimpleNamespace(Linear=Linear, LayerNorm=ops.LayerNorm, Conv2d=ops.Conv2d)
    model = load_photomaker(tiny_sd("v2"), operations=custom)
    pixels, prompt, id_embeds = tiny_inputs(n=1)
    with torch.no_grad():
        model.fuse(pixels, prompt, mask_at(5, 2), id_embeds)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert all(isinstance(m, Linear) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert len(calls) == linears - 2  # everything but the v1-only visual projections runs
