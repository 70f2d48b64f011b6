"""EVA02-CLIP-L-14-336 loader: parity with the official tower, both file layouts, and bad files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pulid_core import ModelFileError, load_eva_clip
from pulid_core.errors import PuLIDError
from tests import detfill

DATA = Path(__file__).resolve().parents[1] / "data" / "golden"
LAYOUTS = json.loads((DATA / "checkpoint_layouts.json").read_text())
OFFICIAL = next(v for k, v in LAYOUTS.items() if k.startswith("EVA02_CLIP_L_336"))
OPEN_CLIP = next(v for k, v in LAYOUTS.items() if k.startswith("open_clip EVA02-L-14-336"))
TOL = 1e-3  # golden README: deep towers, values of order 1-30

# Official EVA-CLIP (QuanSun/EVA-CLIP) -> timm eva02_large_patch14_clip_336 names, written out here
# independently of the loader.
RENAME = [
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".mlp.w3.", ".mlp.fc2."),
]


def to_open_clip(official: dict) -> dict:
    out = {}
    for key, value in official.items():
        if not key.startswith("visual."):
            continue
        key = "visual.trunk." + key[len("visual."):]
        for a, b in RENAME:
            key = key.replace(a, b)
        out[key] = value
    return out


def fill(layout: dict, dtype=torch.float32) -> dict:
    return {k: torch.from_numpy(detfill.tensor(k, s, "pub:")).to(dtype) for k, s in layout.items()}


def extras(rope_tokens: int, head_dim: int, depth: int) -> dict:
    """What else the official .pt holds: text tower, logit scale, and RoPE buffers (here garbage,
    so that using them instead of recomputing them would break parity)."""
    table = (rope_tokens, head_dim)
    rope = {"visual.rope.freqs_cos": table, "visual.rope.freqs_sin": table}
    for i in range(depth):
        rope[f"visual.blocks.{i}.attn.rope.freqs_cos"] = table
        rope[f"visual.blocks.{i}.attn.rope.freqs_sin"] = table
    out = {k: torch.full(s, 7.0) for k, s in rope.items()}
    out.update(
        {
            "logit_scale": torch.tensor(4.6),
            "text.positional_embedding": torch.zeros(77, 16),
            "text.transformer.resblocks.0.ln_1.weight": torch.ones(16),
            "text.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(48, 16),
            "text.text_projection": torch.zeros(16, 8),
        }
    )
    return out


def assert_golden(model, golden):
    pixels = torch.from_numpy(detfill.tensor("input.eva.image", (1, 3, 336, 336), "pub:")) * 2.0
    pooled, hidden = model.features(pixels)
    assert pooled.dtype == torch.float32 and pooled.shape == golden["pooled"].shape
    assert (pooled - golden["pooled"]).abs().max() <= TOL
    assert len(hidden) == 5
    for i, h in enumerate(hidden):
        assert h.shape == (1, 577, 1024) and h.dtype == torch.float32
        assert (h[:, :16] - golden[f"hidden.{i}.head16"]).abs().max() <= TOL, i
        assert (h.mean(dim=1) - golden[f"hidden.{i}.mean"]).abs().max() <= TOL, i


# ---------------------------------------------------------------- full size, golden vectors


@pytest.fixture(scope="module")
def golden():
    return load_file(DATA / "eva_clip.safetensors")


@pytest.fixture(scope="module")
def full_official():
    """EVA02-CLIP-L weights filled from their official names (~1.2 GB fp32), built once."""
    return fill(OFFICIAL)


@pytest.mark.slow
def test_golden_official_layout(full_official, golden):
    sd = {**full_official, **extras(576, 64, 24)}
    model = load_eva_clip(sd)
    assert model.image_size == 336
    assert model.trunk.pos_embed.data_ptr() == full_official["visual.pos_embed"].data_ptr()  # no copy
    assert_golden(model, golden)


@pytest.mark.slow
def test_open_clip_layout_builds_the_same_tower(full_official):
    """The renamed file yields the very same tensors in the very same network as the official one,
    so the golden check above covers it (a tiny tower runs both layouts end to end below)."""
    sd = to_open_clip(full_official)
    assert {k: list(v.shape) for k, v in sd.items()} == OPEN_CLIP
    sd["text.token_embedding.weight"] = torch.zeros(10, 16)  # a full open_clip file has its text tower
    a, b = load_eva_clip(full_official).trunk, load_eva_clip(sd).trunk
    assert repr(a) == repr(b)
    pa, pb = a.state_dict(), b.state_dict()
    assert list(pa) == list(pb) and len(pa) == len(OFFICIAL)
    assert all(pa[k] is pb[k] or pa[k].data_ptr() == pb[k].data_ptr() for k in pa)
    assert torch.equal(a.rope.get_embed(), b.rope.get_embed())


def test_open_clip_layout_is_the_renamed_official_layout():
    renamed = to_open_clip({k: torch.empty(s, device="meta") for k, s in OFFICIAL.items()})
    assert {k: list(v.shape) for k, v in renamed.items()} == OPEN_CLIP


# ---------------------------------------------------------------- tiny towers, same key structure


def tiny_layout(layout: dict, width=64, depth=24, grid=2, hidden=96, out=32, patch=14) -> dict:
    """The real key structure with small sizes: each full-size dimension maps to a small one."""
    dims = {1024: width, 2730: hidden, 768: out, 577: grid * grid + 1, 14: patch}
    shapes = {}
    for key, shape in layout.items():
        parts = key.split(".")
        if "blocks" in parts and int(parts[parts.index("blocks") + 1]) >= depth:
            continue
        shapes[key] = [dims.get(s, s) for s in shape]
    return shapes


def tiny_official(**kw) -> dict:
    return fill(tiny_layout(OFFICIAL, **kw))


def tiny_pixels(batch=2, size=28):
    return torch.from_numpy(detfill.tensor("input.tiny.image", (batch, 3, size, size), "pub:")) * 2.0


def run(model, pixels):
    with torch.no_grad():
        return model.features(pixels)


def assert_close_to_scale(actual, expected, rel=2e-5):
    """Equal up to ``rel`` of the largest magnitude in ``expected`` (a deep tower's rounding scales with it)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * float(expected.abs().max()))


def assert_same(a, b, label=""):
    assert torch.equal(a[0], b[0]), label
    assert len(a[1]) == len(b[1]) == 5, label
    for x, y in zip(a[1], b[1]):
        assert torch.equal(x, y), label


@pytest.fixture(scope="module")
def tiny():
    sd = tiny_official()
    return sd, run(load_eva_clip(sd), tiny_pixels())


def test_tiny_shapes_and_constants(tiny):
    sd, (pooled, hidden) = tiny
    model = load_eva_clip(sd)
    assert model.image_size == 28
    assert model.mean == (0.48145466, 0.4578275, 0.40821073)
    assert model.std == (0.26862954, 0.26130258, 0.27577711)
    assert model.trunk.blocks[0].attn.num_heads == 1  # width 64 / 64-wide heads
    assert pooled.shape == (2, 32) and pooled.dtype == torch.float32
    assert [tuple(h.shape) for h in hidden] == [(2, 5, 64)] * 5
    assert not any(p.requires_grad for p in model.parameters())


def test_tiny_sizes_are_read_from_the_file():
    sd = tiny_official(width=128, depth=21, grid=3, hidden=341, out=48, patch=7)
    model = load_eva_clip(sd)
    assert model.image_size == 21
    assert model.trunk.blocks[0].attn.num_heads == 2
    assert model.trunk.blocks[0].mlp.fc1_g.out_features == 341
    pooled, hidden = run(model, tiny_pixels(batch=3, size=21))
    assert pooled.shape == (3, 48)
    assert [tuple(h.shape) for h in hidden] == [(3, 10, 128)] * 5


def test_batch_rows_are_independent(tiny):
    sd, (pooled, hidden) = tiny
    model = load_eva_clip(sd)
    one_p, one_h = run(model, tiny_pixels()[1:])
    # A batch of one takes other BLAS paths than a batch of two (and with 2 threads, other
    # splits): the rows agree to float32 rounding accumulated over 24 blocks, measured up to
    # 1.5e-6 of the largest value on an AMD EPYC; a leak between rows would be of order 1.
    assert_close_to_scale(one_p, pooled[1:])
    for a, b in zip(one_h, hidden):
        assert_close_to_scale(a, b[1:])


def test_hidden_states_are_block_outputs_before_the_final_norm(tiny):
    """hidden[i] is the residual stream after block 4i+3; pooled = head(norm(final)[:, 0])."""
    sd, (pooled, hidden) = tiny
    trunk = load_eva_clip(sd).trunk
    with torch.no_grad():
        x, rope = trunk._pos_embed(trunk.patch_embed(tiny_pixels()))
        outputs = []
        for block in trunk.blocks:
            x = block(x, rope=rope)
            outputs.append(x)
        expected_pooled = trunk.head(trunk.norm(x)[:, 0])
    for i, h in enumerate(hidden):
        assert torch.equal(h, outputs[4 * i + 3])
    assert torch.equal(pooled, expected_pooled)


def test_all_layouts_give_the_same_tower(tiny):
    sd, reference = tiny
    pixels = tiny_pixels()
    trunk_only = {k[len("visual."):]: v for k, v in sd.items()}
    open_clip = to_open_clip(sd)
    timm_only = {k[len("visual.trunk."):]: v for k, v in open_clip.items()}
    variants = {
        "official + text tower + rope buffers": {**sd, **extras(4, 64, 24)},
        "official without 'visual.'": trunk_only,
        "nested {'state_dict': ...}, 'module.' prefix": {
            "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "epoch": 3,
        },
        "open_clip": {**open_clip, "text.token_embedding.weight": torch.zeros(3, 4)},
        "timm names without prefix": timm_only,
    }
    for label, variant in variants.items():
        assert_same(run(load_eva_clip(variant), pixels), reference, label)


def test_loads_from_files(tmp_path, tiny):
    sd, reference = tiny
    pixels = tiny_pixels()
    pt = tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"
    torch.save({k: v.half() for k, v in {**sd, **extras(4, 64, 24)}.items()}, pt)
    st = tmp_path / "open_clip_model.safetensors"
    save_file(to_open_clip(sd), st)
    assert_same(run(load_eva_clip(st), pixels), reference)
    fp16 = load_eva_clip(pt)
    assert fp16.dtype == torch.float16
    assert_same(run(load_eva_clip(pt, dtype=torch.float32), pixels), run(load_eva_clip(
        {k: v.half().float() for k, v in sd.items()}), pixels))


def test_fp16_weights_stay_fp16(tiny):
    sd, (pooled32, _) = tiny
    half = {k: v.half() for k, v in sd.items()}
    model = load_eva_clip(half)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert model.trunk.pos_embed.data_ptr() == half["visual.pos_embed"].data_ptr()
    pooled, hidden = run(model, tiny_pixels())  # fp32 pixels are cast to the weights' dtype
    assert pooled.dtype == torch.float16 and all(h.dtype == torch.float16 for h in hidden)
    torch.testing.assert_close(pooled.float(), pooled32, rtol=0, atol=5e-2)

    upcast = load_eva_clip(half, dtype=torch.float32)
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    assert half["visual.pos_embed"].dtype == torch.float16  # the caller's dict is untouched


def test_depth_twenty_is_enough():
    pooled, hidden = run(load_eva_clip(tiny_official(depth=20)), tiny_pixels())
    assert len(hidden) == 5 and pooled.shape == (2, 32)


# ---------------------------------------------------------------- wrong files


def dummy(keys) -> dict:
    return {k: torch.zeros(1) for k in keys}


def test_pulid_file_is_refused():
    sd = dummy(list(LAYOUTS["pulid_v1.bin (official, flat dict, fp32)"])[:40])
    with pytest.raises(ModelFileError, match="not an EVA02-CLIP vision tower.*official PuLID file"):
        load_eva_clip(sd)


def test_sdxl_checkpoint_is_refused():
    sd = dummy(
        [
            "model.diffusion_model.input_blocks.0.0.weight",
            "model.diffusion_model.out.2.weight",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "first_stage_model.decoder.conv_in.weight",
        ]
    )
    with pytest.raises(ModelFileError, match="SDXL checkpoint"):
        load_eva_clip(sd)


def test_shallow_tower_is_refused():
    sd = tiny_official(depth=12)
    with pytest.raises(ModelFileError, match="12 transformer blocks.*block 20"):
        load_eva_clip(sd)


def test_missing_and_unexpected_keys_are_named(tiny):
    sd, _ = tiny
    broken = {k: v for k, v in sd.items() if not k.startswith("visual.blocks.5.mlp.")}
    with pytest.raises(ModelFileError, match=r"8 missing keys \(blocks\.5\.mlp\.fc1_g\.bias"):
        load_eva_clip(broken)
    extra = {**sd, "visual.blocks.0.attn.k_bias": torch.zeros(64)}
    with pytest.raises(ModelFileError, match=r"1 unexpected key \(blocks\.0\.attn\.k_bias\)"):
        load_eva_clip(extra)
    no_head = {k: v for k, v in sd.items() if not k.startswith("visual.head.")}
    with pytest.raises(ModelFileError, match="head.weight"):
        load_eva_clip(no_head)


def test_projection_beside_the_open_clip_trunk_is_refused(tiny):
    sd = to_open_clip(tiny[0])
    sd["visual.head.proj.weight"] = torch.zeros(16, 32)
    with pytest.raises(ModelFileError, match=r"visual\.head\.proj\.weight"):
        load_eva_clip(sd)


def test_wrong_shape_is_refused(tiny):
    sd = dict(tiny[0])
    sd["visual.blocks.3.attn.proj.weight"] = torch.zeros(64, 32)
    expected = r"wrong shape.*blocks\.3\.attn\.proj\.weight is \[64, 32\], expected \[64, 64\]"
    with pytest.raises(ModelFileError, match=expected):
        load_eva_clip(sd)


def test_truncated_file_is_refused(tmp_path, tiny):
    path = tmp_path / "eva.safetensors"
    save_file(tiny[0], path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="eva.safetensors.*download it again"):
        load_eva_clip(path)


def test_file_without_a_dict_is_refused(tmp_path):
    path = tmp_path / "eva.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelFileError, match="eva.pt holds a Tensor, not a dict of weights"):
        load_eva_clip(path)


def test_wrong_pixel_size_is_refused(tiny):
    model = load_eva_clip(tiny[0])
    with pytest.raises(PuLIDError, match=r"\[B, 3, 28, 28\]"):
        model.features(torch.zeros(1, 3, 336, 336))


def test_imports_without_comfy():
    code = (
        "import sys\n"
        "import pulid_core\n"
        "from pulid_core import load_eva_clip, EvaClip\n"
        "assert not [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.')]\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
