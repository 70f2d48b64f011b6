"""Parity with the authors' code on a second set of vectors: another detfill salt ("unseen:") and
other shapes than tests/data/golden (see tests/data/golden_extra/README.md for how each was made).

Big outputs are stored as summaries: for an output [B, N, C], ``first``/``last`` (token 0 and
N-1), ``mean`` (over the tokens) and ``projK`` (every token projected onto K fixed directions,
``input.summary.R{C}xK`` / C, whose coefficients sum in absolute value to at most 1). Each summary
is a linear map with an L1 norm of at most 1, computed here in float64 as it was for the authors'
output, so a summary differs by at most the max |diff| of the full tensors: the golden README's
tolerances apply unchanged.
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pulid_core import load_pulid
from pulid_core.attention import id_attention, id_attention_prepared, prepare_id_kv, select_rows
from pulid_layouts import official_encoder_state, pulid_shapes
from tests import detfill, fastfill
from tests.attention_paths import ATTENTION_PATHS, native_buildable

SALT = "unseen:"
DATA = Path(__file__).resolve().parents[1] / "data"
EXTRA = DATA / "golden_extra"
LAYOUTS = json.loads((DATA / "golden" / "checkpoint_layouts.json").read_text())

# golden README tolerances (float32, CPU)
TOL_ATTN = 2e-5  # attention outputs
TOL_ENC = 1e-4  # PuLID encoders, ID K/V, PerceiverAttentionCA
TOL_DEEP = 1e-3  # deep towers (EVA-CLIP, PhotoMaker fuse)


def fill(name, shape, salt=SALT):
    return torch.from_numpy(detfill.tensor(name, shape, salt))


def summaries(prefix, t, k=4):
    """The stored summaries of ``t`` [B, N, C] (see the module docstring), float64."""
    t = t.double()
    width = t.shape[-1]
    r = torch.from_numpy(detfill.tensor(f"input.summary.R{width}x{k}", (width, k), SALT).astype(np.float64)) / width
    return {f"{prefix}.first": t[:, 0], f"{prefix}.last": t[:, -1], f"{prefix}.mean": t.mean(1),
            f"{prefix}.proj{k}": t @ r}


def max_diff(golden, prefix, t, k=4):
    """max |diff| over every summary of ``t`` stored under ``prefix`` (at least one must be)."""
    got = summaries(prefix, t, k)
    keys = [key for key in got if key in golden]
    assert keys, f"no stored summary under {prefix}"
    for key in keys:
        assert got[key].shape == golden[key].shape, key
    return max((got[key] - golden[key].double()).abs().max().item() for key in keys)


# --- SDXL ID attention (IDAttnProcessor2_0) -------------------------------------------------------

# key -> (num_zero, projection, ID tokens); the authors' NUM_ZERO / ORTHO / ORTHO_v2 settings
ATTN_MODES = {
    "plain": (0, "none", 10),
    "ortho": (16, "ortho", 10),
    "ortho_v2": (8, "ortho_v2", 10),
    "ortho_v2_z20": (20, "ortho_v2", 32),
    "plain_z20": (20, "none", 32),
    "ortho_z0_T32": (0, "ortho", 32),
    "ortho_v2_z16_T15": (16, "ortho_v2", 15),
    "ortho_v2_z0_T32": (0, "ortho_v2", 32),
    "ortho_v2_z8_T4": (8, "ortho_v2", 4),
    "ortho_v2_z0_T4": (0, "ortho_v2", 4),
    "ortho_z8_T4": (8, "ortho", 4),
}
# width -> (checkpoint layer index of that width, image tokens N, text tokens, modes)
ATTN_WIDTHS = {
    1280: (9, 48, 77, ["plain", "ortho", "ortho_v2", "ortho_v2_z20", "plain_z20", "ortho_z0_T32"]),
    640: (1, 100, 154, ["plain", "ortho", "ortho_v2", "ortho_v2_z20", "ortho_v2_z16_T15", "ortho_v2_z0_T32",
                        "ortho_v2_z8_T4", "ortho_v2_z0_T4", "ortho_z8_T4"]),
}
ATTN_PATHS = ("zero_rows", "num_zero_arg", "patch_explicit", "patch_native", "patch_fused")
# "ortho_v2_z8_T4": fewer than 5 ID tokens with zero tokens appended. The authors' ortho_v2 sums the
# attention over the first 5 *columns* (attn_mean[:, :, :5]), which then include min(num_zero, 5 - T)
# zero tokens; prepare_id_kv's single zero column (the attn2 patch's path) once counted them all as
# "rest" (max |diff| 0.05 at id_scale 1.7). No official encoder makes fewer than 10 ID tokens, so
# only custom ID tokens reach this.
ATTN_CASES = [
    (c, m, s, path)
    for c, (_, _, _, modes) in ATTN_WIDTHS.items() for m in modes for s in (0.6, 1.7) for path in ATTN_PATHS
]


@pytest.fixture(scope="module")
def attn_golden():
    return load_file(EXTRA / "pulid_attention_unseen.safetensors")


@pytest.fixture(scope="module")
def attn_adapter():
    """A reduced v1 adapter (real key structure) whose layers 1 (640 wide) and 9 (1280 wide) hold
    the authors' id_to_k / id_to_v weights of the two test layers, through the checkpoint loader."""
    state = {k: fill(k, s) for k, s in pulid_shapes("v1", context_dim=2048).items()}
    for width, (layer, *_rest) in ATTN_WIDTHS.items():
        for proj in ("k", "v"):
            state[f"id_adapter_attn_layers.{layer}.id_to_{proj}.weight"] = fill(
                f"attn.c{width}.id_to_{proj}.weight", (width, 2048))
    model = load_pulid(state)
    assert model.layer_widths[1] == 640 and model.layer_widths[9] == 1280
    return model


@functools.lru_cache(maxsize=None)
def layer_inputs(width, scale=1.0):
    """q and H (text attention output, before to_out) as ComfyUI hands them to an attn2 patch."""
    _, n, text, _ = ATTN_WIDTHS[width]
    heads = width // 64
    x = fill(f"input.attn.c{width}.x", (2, n, width)) * scale
    ctx = fill(f"input.attn.c{width}.ctx", (2, text, 2048))
    q = F.linear(x, fill(f"attn.c{width}.to_q.weight", (width, width)))
    k = F.linear(ctx, fill(f"attn.c{width}.to_k.weight", (width, 2048)))
    v = F.linear(ctx, fill(f"attn.c{width}.to_v.weight", (width, 2048)))
    split = [t.view(2, -1, heads, 64).transpose(1, 2) for t in (q, k, v)]
    base = F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(2, n, width)
    return q, base


@pytest.mark.parametrize("width", [1280, 640])
def test_attention_inputs_are_the_authors(attn_golden, width):
    q, base = layer_inputs(width)
    assert max_diff(attn_golden, f"c{width}.q", q) <= TOL_ATTN
    assert max_diff(attn_golden, f"c{width}.base", base) <= TOL_ATTN


@functools.lru_cache(maxsize=None)
def attention_paths(model, width, mode, scale, x_scale=1.0):
    """The ID attention of the test layer, by path: the public call with the zero rows passed as
    rows (``zero_rows``) or counted in ``num_zero`` (``num_zero_arg``), and the path the attn2 patch
    takes (prepare_id_kv + select_rows + id_attention_prepared, explicit and fused)."""
    layer, *_ = ATTN_WIDTHS[width]
    num_zero, projection, tokens = ATTN_MODES[mode]
    heads = width // 64
    q, base = layer_inputs(width, x_scale)  # cached: read only
    ids = fill(f"input.attn.c{width}.id_T{tokens}", (2, tokens, 2048))  # row 0 uncond, row 1 cond
    with torch.no_grad():
        k, v = model.id_kv(layer, ids, num_zero=num_zero)
        assert torch.count_nonzero(k[:, tokens:]) == 0 and torch.count_nonzero(v[:, tokens:]) == 0
        out = {
            "zero_rows": id_attention(base, q, k, v, heads, scale, projection),
            "num_zero_arg": id_attention(base, q, k[:, :tokens], v[:, :tokens], heads, scale, projection,
                                         num_zero=num_zero),
        }
        # The patch's three paths (tests/unit/conftest.py ATTENTION_PATHS).
        for path in ("explicit", "native", "fused") if native_buildable() else ("explicit", "fused"):
            kv = prepare_id_kv(k[:, :tokens], v[:, :tokens], heads, scale, num_zero=num_zero)
            kv = select_rows(kv, rows=[0, 1])
            out[f"patch_{path}"] = id_attention_prepared(base.clone(), q, kv, projection, workspace={}, inplace=True,
                                                         **ATTENTION_PATHS[path])
    return out


@pytest.mark.parametrize("width, mode, scale, path", ATTN_CASES)
def test_id_attention_matches_official(attn_adapter, attn_golden, width, mode, scale, path):
    if path == "patch_native" and not native_buildable():
        pytest.skip("no C compiler: the compiled ID-branch kernel is not built here")
    out = attention_paths(attn_adapter, width, mode, scale)[path]
    assert out.shape == (2, ATTN_WIDTHS[width][1], width) and out.dtype == torch.float32
    diff = max_diff(attn_golden, f"c{width}.{mode}.s{scale}", out)
    assert diff <= TOL_ATTN, diff


def test_id_attention_large_logits(attn_adapter, attn_golden):
    # Image tokens x 4: logits 16x as spread; ortho_v2's attention mass on the first 5 ID tokens.
    q, base = layer_inputs(640, 4.0)
    assert max_diff(attn_golden, "c640.x4.base", base) <= TOL_ATTN
    for path, out in attention_paths(attn_adapter, 640, "ortho_v2_z20", 1.7, x_scale=4.0).items():
        diff = max_diff(attn_golden, "c640.x4.ortho_v2_z20.s1.7", out)
        assert diff <= TOL_ATTN * 4, (path, diff)


# --- ID encoders: v1 IDEncoder, v1.1 IDFormer (and the same IDFormer in a PuLID-FLUX file) ---------


def official_state_dict(layout_prefix: str) -> dict:
    return official_encoder_state(next(v for k, v in LAYOUTS.items() if k.startswith(layout_prefix)), fill)


@pytest.fixture(scope="module")
def enc_golden():
    return load_file(EXTRA / "pulid_encoders_unseen.safetensors")


@pytest.fixture(scope="module")
def v1_model():
    return load_pulid(official_state_dict("pulid_v1.bin"))


@pytest.fixture(scope="module")
def v11_state():
    return official_state_dict("pulid_v1.1.safetensors")


@pytest.fixture(scope="module")
def v11_model(v11_state):
    return load_pulid(v11_state)


def enc_image(tag, batch, tokens=577, cond_scale=1.0, hidden_scale=1.0):
    return (fill(f"input.enc.{tag}.id_cond", (batch, 1280)) * cond_scale,
            [fill(f"input.enc.{tag}.hidden.{i}", (batch, tokens, 1024)) * hidden_scale for i in range(5)])


def three_images():
    """id_cond [1, 3, 1280] and hidden states [1, 3 * 577, 1024], as the v1.1 pipeline stacks them."""
    imgs = [enc_image(t, 1, cond_scale=0.5, hidden_scale=1.5) for t in ("a3_0", "a3_1", "a3_2")]
    return torch.stack([c for c, _ in imgs], dim=1), [torch.cat([h[i] for _, h in imgs], dim=1) for i in range(5)]


def enc_check(golden, key, out):
    diff = max_diff(golden, key, out, k=8)
    assert diff <= TOL_ENC, (key, diff)
    return diff


def test_v1_batch_of_two_and_uncond(v1_model, enc_golden):
    assert (v1_model.version, v1_model.num_tokens) == ("v1", 10)
    c, h = enc_image("a", 2, cond_scale=0.5, hidden_scale=1.5)
    with torch.no_grad():
        enc_check(enc_golden, "v1.b2.cond", v1_model.encode(c, h))
        enc_check(enc_golden, "v1.uncond", v1_model.encode_uncond(c[:1], [x[:1] for x in h]))


def test_v1_257_token_hidden_states(v1_model, enc_golden):
    c, h = enc_image("c", 1, tokens=257)
    with torch.no_grad():
        enc_check(enc_golden, "v1.t257", v1_model.encode(c, h))


def test_v11_three_images_and_uncond(v11_model, enc_golden):
    assert (v11_model.version, v11_model.num_tokens) == ("v1.1", 32)
    c3, h3 = three_images()
    with torch.no_grad():
        enc_check(enc_golden, "v11.cond_3img", v11_model.encode(c3, h3))
        # Uncond: one zero image, whatever the number of cond images (official v1.1 pipeline).
        enc_check(enc_golden, "v11.uncond", v11_model.encode_uncond(c3, h3))


def test_v11_batches(v11_model, enc_golden):
    c, h = enc_image("a", 2, cond_scale=0.5, hidden_scale=1.5)
    cb, hb = enc_image("b", 2)
    with torch.no_grad():
        enc_check(enc_golden, "v11.b2", v11_model.encode(c, h))
        two = v11_model.encode(torch.stack([c, cb], dim=1), [torch.cat([x, y], dim=1) for x, y in zip(h, hb)])
    enc_check(enc_golden, "v11.b2_2img", two)


def test_flux_file_encoder_is_the_v11_idformer(v11_state, enc_golden):
    from pulid_layouts import flux_state_dict

    state = flux_state_dict(salt=None)
    for key, value in v11_state.items():
        if key.startswith("id_adapter."):
            state["pulid_encoder." + key[len("id_adapter."):]] = value
    model = load_pulid(state)
    assert model.version == "flux"
    c3, h3 = three_images()
    with torch.no_grad():
        enc_check(enc_golden, "v11.cond_3img", model.encode(c3, h3))


# --- PuLID-FLUX PerceiverAttentionCA --------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_golden():
    return load_file(EXTRA / "pulid_flux_unseen.safetensors")


def test_flux_ca_released_size_batch_of_two(flux_golden):
    from pulid_layouts import flux_shapes, flux_state_dict

    state = flux_state_dict(salt=None)
    for key, shape in flux_shapes().items():
        if key.startswith("pulid_ca.5."):
            state[key] = fill(key, shape)
    model = load_pulid(state)
    ids = fill("input.ca.id_b2", (2, 32, 2048))
    img = fill("input.ca.img_b2", (2, 40, 3072)) * 3.0
    with torch.no_grad():
        both = model.pulid_ca(5, ids, img)
        shared = model.pulid_ca(5, ids[1:], img)  # one ID row for the whole batch
    for key, out in (("ca5.b2", both), ("ca5.id1_b2", shared)):
        diff = max_diff(flux_golden, key, out, k=8)
        assert diff <= TOL_ENC, (key, diff)


def test_flux_ca_other_widths(flux_golden):
    """A 192-wide CA with 3 heads of 128 on 64-wide ID tokens (module 7 of a small adapter)."""
    from pulid_layouts import flux_state_dict, tiny_flux_sizes

    sizes = {**tiny_flux_sizes(), "ca_dim": 192, "ca_inner": 384, "context_dim": 64}
    model = load_pulid(flux_state_dict(salt=SALT, rename=lambda k: k.replace("pulid_ca.", "small_ca."), **sizes))
    assert (model.ca_dim, model.pulid_ca[7].heads) == (192, 3)
    ids = fill("input.ca.id_small", (2, 32, 64)) * 2.0
    img = fill("input.ca.img_small", (2, 21, 192)) * 5.0
    with torch.no_grad():
        both = model.pulid_ca(7, ids, img)
        four = model.pulid_ca(7, ids[:1], torch.cat([img, img.flip(1)]))
    for key, out in (("ca7small.b2", both), ("ca7small.id1_b4", four)):
        diff = max_diff(flux_golden, key, out, k=8)
        assert diff <= TOL_ENC, (key, diff)


# --- EVA02-CLIP-L-14-336 (the PuLID repository's eva_clip) ---------------------------------------


@pytest.mark.slow
def test_eva_clip_another_image():
    from pulid_core import load_eva_clip

    golden = load_file(EXTRA / "eva_clip_unseen.safetensors")
    layout = next(v for k, v in LAYOUTS.items() if k.startswith("EVA02_CLIP_L_336"))
    model = load_eva_clip({k: fast_fill(k, s) for k, s in layout.items()})
    pixels = fill("input.eva.image_u", (1, 3, 336, 336)) * 2.5
    with torch.no_grad():
        pooled, hidden = model.features(pixels)
    diffs = [(pooled - golden["pooled"]).abs().max().item()]
    assert len(hidden) == 5
    diffs += [max_diff(golden, f"hidden.{i}", h) for i, h in enumerate(hidden)]
    assert max(diffs) <= TOL_DEEP, diffs


# --- PhotoMaker v1 / v2 ID encoders (full size) --------------------------------------------------

def fast_fill(name, shape):
    return fastfill.fill(name, shape, SALT)


def pm_layout(version):
    return next(v for k, v in LAYOUTS.items() if k.startswith(f"photomaker-{version}.bin"))


@pytest.fixture(scope="module")
def pm_v2_state():
    # v1's keys are a subset of v2's, filled from the same names.
    return {k: fast_fill("id_encoder." + k, s) for k, s in pm_layout("v2").items()}


@pytest.fixture(scope="module")
def pm_golden():
    return load_file(EXTRA / "photomaker_unseen.safetensors")


def pm_inputs(n):
    name = "input.pm.pixels_u" if n == 3 else "input.pm.pixels_u1"
    pixels = fill(name, (1, n, 3, 224, 224)) * 1.5
    ids = fill("input.pm.id_embeds_u" if n == 3 else "input.pm.id_embeds_u1", (n, 512)) * 20.0
    return pixels, fill("input.pm.prompt_embeds_u", (1, 77, 2048)), ids


def pm_check(golden, key, out, prompt):
    start = int(golden[f"{key}.start"])
    rows = golden[f"{key}.rows"]
    count = rows.shape[1]
    keep = torch.ones(77, dtype=torch.bool)
    keep[start: start + count] = False
    assert torch.equal(out[:, keep], prompt[:, keep])
    diff = (out[:, start: start + count] - rows).abs().max().item()
    assert diff <= TOL_DEEP, (key, diff)


def class_mask(start, count):
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[:, start: start + count] = True
    return mask


@pytest.mark.slow
@pytest.mark.parametrize("key, n, start, count", [("v2.n1", 1, 3, 2), ("v2.n3", 3, 20, 6)])
def test_photomaker_v2(pm_v2_state, pm_golden, key, n, start, count):
    from pulid_core.photomaker import load_photomaker

    model = load_photomaker({"id_encoder": pm_v2_state, "lora_weights": {}})
    assert model.version == "v2"
    pixels, prompt, ids = pm_inputs(n)
    assert int(pm_golden[f"{key}.start"]) == start
    with torch.no_grad():
        out = model.fuse(pixels, prompt, class_mask(start, count), ids)
    pm_check(pm_golden, key, out, prompt)


@pytest.mark.slow
@pytest.mark.parametrize("key, n, start, count", [("v1.n1", 1, 9, 1), ("v1.n3", 3, 12, 3), ("v1.n3_mask2", 3, 30, 2)])
def test_photomaker_v1(pm_v2_state, pm_golden, key, n, start, count):
    from pulid_core.photomaker import load_photomaker

    model = load_photomaker({"id_encoder": {k: pm_v2_state[k] for k in pm_layout("v1")}, "lora_weights": {}})
    assert model.version == "v1"
    pixels, prompt, _ = pm_inputs(n)
    assert int(pm_golden[f"{key}.start"]) == start
    with torch.no_grad():
        out = model.fuse(pixels, prompt, class_mask(start, count))
    pm_check(pm_golden, key, out, prompt)
