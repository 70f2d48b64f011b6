"""PuLID-FLUX core: the adapter file, its cross-attention against the authors' numbers, the
injection schedule and the per-row / per-token math the ComfyUI block patches call."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pulid_core import ModelFileError, PuLIDError, flux, load_pulid
from pulid_layouts import flux_shapes, flux_state_dict, tiny_flux_sizes
from tests import detfill
from tests.memory import load_with_peak

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
FLUX_LAYOUT = next(iter(json.loads((GOLDEN / "pulid_flux_layout.json").read_text()).values()))
V11_LAYOUT = next(
    v for k, v in json.loads((GOLDEN / "checkpoint_layouts.json").read_text()).items()
    if k.startswith("pulid_v1.1.safetensors")
)
FILES = "pulid_flux_v0.9.1.safetensors"


def fill(name, shape):
    return torch.from_numpy(detfill.tensor(name, shape, "pub:"))


def assert_close(actual, expected, rel):
    """max |Δ| within ``rel`` of the values' scale."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert (actual.float() - expected.float()).abs().max().item() <= rel * max(scale, 1.0)


@pytest.fixture(scope="module")
def golden():
    return load_file(GOLDEN / "pulid_flux.safetensors")


@pytest.fixture(scope="module")
def tiny():
    return load_pulid(flux_state_dict(**tiny_flux_sizes()))


def full_size_with_ca0(dtype=torch.float32):
    """The released layout: CA module 0 filled as the golden README says, the rest zeros that
    cost no memory (the golden only runs module 0)."""
    state = flux_state_dict(salt=None, dtype=dtype)
    for key, shape in FLUX_LAYOUT.items():
        if key.startswith("pulid_ca.0."):
            state[key] = fill(key, shape).to(dtype)
    return state


# --- the file ---------------------------------------------------------------------------------------


def test_builder_matches_the_released_layout():
    assert {k: list(s) for k, s in flux_shapes().items()} == FLUX_LAYOUT


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_full_size_layout_loads_in_every_dtype(dtype):
    state = flux_state_dict(salt=None, dtype=dtype)
    state["pulid_ca.19.to_out.weight"] = torch.ones(3072, 2048, dtype=dtype)
    model = load_pulid(state)
    assert (model.version, model.num_tokens, model.context_dim) == ("flux", 32, 2048)
    assert (model.ca_dim, model.num_ca, len(model.pulid_ca)) == (3072, 20, 20)
    assert all(ca.heads == 16 for ca in model.pulid_ca)
    assert {p.dtype for p in model.parameters()} == {dtype}
    # Used as given (no copy), under the checkpoint's own names.
    assert model.pulid_ca[19].to_out.weight.data_ptr() == state["pulid_ca.19.to_out.weight"].data_ptr()
    assert set(model.state_dict()) == set(FLUX_LAYOUT)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tiny_files_keep_their_dtype(tmp_path, dtype):
    path = tmp_path / FILES
    save_file(flux_state_dict(dtype=dtype, **tiny_flux_sizes()), path)
    model = load_pulid(path)
    assert (model.version, model.ca_dim, model.pulid_ca[0].heads) == ("flux", 128, 2)
    assert {p.dtype for p in model.parameters()} == {dtype}
    img = torch.linspace(-2, 2, 2 * 5 * 128).reshape(2, 5, 128)
    ids = torch.linspace(-1, 1, 32 * 2048).reshape(1, 32, 2048)
    reference = load_pulid({k: v.to(dtype).float() for k, v in flux_state_dict(**tiny_flux_sizes()).items()})
    with torch.no_grad():
        # fp32 input: computed in fp32 from the stored (rounded) weights
        assert torch.allclose(model.pulid_ca(3, ids, img), reference.pulid_ca(3, ids, img), atol=1e-6)
        assert model.pulid_ca(3, ids.to(dtype), img.to(dtype)).dtype == dtype


@pytest.mark.slow
def test_full_size_16_bit_file_loads(tmp_path):
    path = tmp_path / FILES
    state = {k: torch.zeros(s, dtype=torch.bfloat16) for k, s in FLUX_LAYOUT.items()}
    state["pulid_ca.19.to_out.weight"].fill_(1.0)
    save_file(state, path)
    del state
    model, rise = load_with_peak(load_pulid, path)
    if rise is not None:
        # At most one transient extra copy of the file while loading.
        assert rise <= 2.2 * path.stat().st_size
    assert (model.version, model.ca_dim, model.num_ca) == ("flux", 3072, 20)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.pulid_ca[19].to_out.weight, torch.ones(3072, 2048, dtype=torch.bfloat16))


# --- the authors' numbers -------------------------------------------------------------------------


def golden_inputs():
    return fill("input.flux.id", (1, 32, 2048)), fill("input.flux.img_full", (1, 64, 3072)) * 4.0


def test_ca0_matches_official(golden):
    model = load_pulid(full_size_with_ca0())
    ids, img = golden_inputs()
    with torch.no_grad():
        out = model.pulid_ca(0, ids, img)
    assert out.dtype == torch.float32
    assert_close(out, golden["ca0.out"], 2e-5)


@pytest.mark.parametrize("dtype, rel", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_ca0_in_16_bit(golden, dtype, rel):
    model = load_pulid(full_size_with_ca0(dtype))
    ids, img = golden_inputs()
    with torch.no_grad():
        out = model.pulid_ca(0, ids.to(dtype), img.to(dtype))
    assert out.dtype == dtype
    assert_close(out, golden["ca0.out"], rel)


def test_softmax_runs_in_fp32(tiny, monkeypatch):
    seen = []
    softmax = torch.softmax

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return softmax(x, *args, **kwargs)

    monkeypatch.setattr(torch, "softmax", spy)
    img = torch.ones(1, 4, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        tiny.pulid_ca(0, torch.ones(1, 32, 2048, dtype=torch.bfloat16), img)
    assert seen == [torch.float32]


def test_ca_batch_rows_are_independent(tiny):
    img = torch.linspace(-3, 3, 3 * 6 * 128).reshape(3, 6, 128)
    ids = torch.linspace(-1, 1, 3 * 32 * 2048).reshape(3, 32, 2048)
    with torch.no_grad():
        out = tiny.pulid_ca(12, ids, img)
        row = tiny.pulid_ca(12, ids[1:2], img[1:2])
        shared = tiny.pulid_ca(12, ids[:1], img)
    assert out.shape == (3, 6, 128)
    assert torch.allclose(out[1:2], row, atol=1e-6)
    assert torch.equal(tiny.pulid_ca(torch.tensor(12), ids, img), out)  # any integer index
    assert torch.allclose(shared[0], out[0], atol=1e-6) and not torch.allclose(shared[1], out[1])


@pytest.fixture(scope="module")
def v11_as_flux():
    """The v1.1 golden encoder weights under the FLUX file's names; CA modules zero."""
    state = flux_state_dict(salt=None)
    for key, shape in V11_LAYOUT.items():
        if key.startswith("id_adapter."):
            state["pulid_encoder." + key[len("id_adapter.") :]] = fill(key, shape)
    return load_pulid(state)


def test_encoder_is_v11_idformer(v11_as_flux):
    encoders = load_file(GOLDEN / "pulid_encoders.safetensors")
    a = fill("input.id_cond", (1, 1280)), [fill(f"input.id_vit_hidden.{i}", (1, 577, 1024)) for i in range(5)]
    b = fill("input.id_cond_b", (1, 1280)), [fill(f"input.id_vit_hidden_b.{i}", (1, 577, 1024)) for i in range(5)]
    two_cond = torch.stack([a[0], b[0]], dim=1)
    two_hidden = [torch.cat(pair, dim=1) for pair in zip(a[1], b[1])]
    with torch.no_grad():
        assert_close(v11_as_flux.encode(*a), encoders["v11.cond"], 1e-4)
        assert_close(v11_as_flux.encode(two_cond, two_hidden), encoders["v11.cond_2img"], 1e-4)
        assert_close(v11_as_flux.encode_uncond(two_cond, two_hidden), encoders["v11.uncond"], 1e-4)


# --- wrong files and wrong calls --------------------------------------------------------------------


def tiny_state(**changes):
    return flux_state_dict(**{**tiny_flux_sizes(), **changes})


def drop(state, *prefixes):
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def test_sdxl_only_methods_refuse_on_flux(tiny, tiny_pulid_state_dict):
    with pytest.raises(PuLIDError, match="PuLID-FLUX adapter.*only on FLUX.1"):
        tiny.id_kv(1, torch.zeros(1, 32, 2048))
    with pytest.raises(PuLIDError, match="PuLID-FLUX adapter"):
        tiny.layer_widths  # noqa: B018
    sdxl = load_pulid(tiny_pulid_state_dict("v1.1"))
    with pytest.raises(PuLIDError, match="SDXL PuLID v1.1 adapter.*pulid_flux_v0.9.1"):
        sdxl.pulid_ca(0, torch.zeros(1, 8, 24), torch.zeros(1, 4, 3072))


def test_missing_modules_are_named(tmp_path):
    state = drop(tiny_state(), "pulid_ca.7.", "pulid_ca.19.")
    path = tmp_path / FILES
    save_file(state, path)
    with pytest.raises(ModelFileError, match=r"has 18 of PuLID-FLUX's 20 cross-attention modules \(missing pulid_ca.7, 19\)") as err:
        load_pulid(path)
    assert FILES in str(err.value)


def test_only_encoder_or_only_ca():
    with pytest.raises(ModelFileError, match=r"only a PuLID-FLUX ID encoder .*pulid_flux_v0.9.1"):
        load_pulid(drop(tiny_state(), "pulid_ca."))
    with pytest.raises(ModelFileError, match=r"only PuLID-FLUX's cross-attention modules .*no ID encoder"):
        load_pulid(drop(tiny_state(), "pulid_encoder."))


def test_key_differences_are_listed():
    state = drop(tiny_state(), "pulid_ca.4.norm2.bias", "pulid_encoder.mapping_2.4.bias")
    state["pulid_ca.20.to_q.weight"] = torch.zeros(256, 128)
    with pytest.raises(ModelFileError) as err:
        load_pulid(state)
    message = str(err.value)
    assert "looks like a PuLID-FLUX file but its keys do not match" in message
    assert "2 missing keys (pulid_ca.4.norm2.bias, pulid_encoder.mapping_2.4.bias)" in message
    assert "1 unexpected key (pulid_ca.20.to_q.weight)" in message


def test_mixed_with_sdxl_keys(tiny_pulid_state_dict):
    state = {**tiny_state(), "id_adapter_attn_layers.1.id_to_k.weight": torch.zeros(8, 24)}
    with pytest.raises(ModelFileError, match="mixes PuLID-FLUX keys .* with SDXL PuLID keys"):
        load_pulid(state)


def test_wrong_shapes():
    state = tiny_state()
    state["pulid_ca.5.to_q.weight"] = torch.zeros(256, 96)
    with pytest.raises(ModelFileError, match=r"PuLID-FLUX keys but tensors of unexpected shapes.*pulid_ca.5.to_q"):
        load_pulid(state)
    with pytest.raises(ModelFileError, match="take 1024-wide ID tokens but its encoder makes 2048-wide"):
        load_pulid({k: (torch.zeros(1024) if ".norm1." in k and "pulid_ca.0." in k else v) for k, v in state.items()})
    with pytest.raises(ModelFileError, match="not a usable PuLID-FLUX file.*200 wide, not a multiple of its 128"):
        load_pulid(tiny_state(ca_inner=200))


def test_flux_diffusion_model_is_not_pulid(tmp_path):
    path = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2), "img_in.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelFileError, match="flux1-dev.safetensors is not a PuLID model.*pulid_flux_v0.9.1"):
        load_pulid(path)


def test_pulid_ca_rejects_bad_calls(tiny):
    ids, img = torch.zeros(1, 32, 2048), torch.zeros(2, 4, 128)
    for index in (20, -1, True, 1.0, "0"):
        with pytest.raises(PuLIDError, match="modules 0..19"):
            tiny.pulid_ca(index, ids, img)
    with pytest.raises(PuLIDError, match=r"image tokens \[batch, tokens, 128\].*FLUX.1"):
        tiny.pulid_ca(0, ids, torch.zeros(2, 4, 3072))
    with pytest.raises(PuLIDError, match=r"ID tokens must be \[1 or 2, tokens, 2048\]"):
        tiny.pulid_ca(0, torch.zeros(3, 32, 2048), img)
    with pytest.raises(PuLIDError, match="ID tokens"):
        tiny.pulid_ca(0, torch.zeros(1, 32, 24), img)


# --- schedule -----------------------------------------------------------------------------------------


def authors_schedule():
    """Walk the blocks as the authors' Flux.forward does, counting CA modules as it inserts."""
    order, ca = {}, 0
    for i in range(19):
        if i % 2 == 0:
            order[("double", i)] = ca
            ca += 1
    for i in range(38):
        if i % 4 == 0:
            order[("single", i)] = ca
            ca += 1
    return order, ca


def test_ca_index_follows_the_authors():
    order, count = authors_schedule()
    assert count == flux.NUM_CA == 20
    got = {
        (kind, i): flux.ca_index(kind, i)
        for kind, n in (("double", flux.DOUBLE_BLOCKS), ("single", flux.SINGLE_BLOCKS))
        for i in range(n)
    }
    assert {k: v for k, v in got.items() if v is not None} == order
    assert flux.ca_index("single", 38) is None and flux.ca_index("double", -2) is None
    assert (flux.FLUX_HIDDEN, flux.DOUBLE_BLOCKS, flux.SINGLE_BLOCKS) == (3072, 19, 38)
    with pytest.raises(PuLIDError, match="'double' and 'single'"):
        flux.ca_index("triple", 0)


def test_check_flux_model():
    flux.check_flux_model(3072, 19, 38, node="Apply PuLID (FLUX)")
    flux.check_flux_model(128, 19, 38, node="Apply PuLID (FLUX)", ca_dim=128)  # tiny model + tiny adapter
    cases = [
        (dict(hidden_size=6144, n_double=8, n_single=48), "6144 wide with 8 double and 48 single.*FLUX.2"),
        (dict(hidden_size=3072, n_double=19, n_single=38, global_modulation=True), "is FLUX.2, not FLUX.1"),
        (dict(hidden_size=3072, n_double=19, n_single=38, model_class="Chroma"), "is Chroma"),
        (dict(hidden_size=1536, n_double=24, n_single=0, model_class="MMDiT"), "SD3"),
        (dict(hidden_size=2048, n_double=19, n_single=38), "2048 wide.*FLUX.1 is 3072 wide"),
        (dict(hidden_size=128, n_double=19, n_single=38), "128 wide"),
        (dict(hidden_size=3072, n_double=19, n_single=38, ca_dim=128), "adapter's cross-attention is 128 wide"),
    ]
    for kwargs, phrase in cases:
        with pytest.raises(PuLIDError, match=f"^Apply PuLID \\(FLUX\\): .*{phrase}"):
            flux.check_flux_model(node="Apply PuLID (FLUX)", **kwargs)


def test_token_grid():
    assert flux.token_grid(128, 96) == (64, 48)
    assert flux.token_grid(5, 7) == (3, 4)  # ComfyUI pads the latent to even sizes


# --- per-row ID tokens --------------------------------------------------------------------------------


def tokens(value, rows=1):
    return torch.full((rows, 3, 4), float(value))


@pytest.mark.parametrize(
    "order, batch, expected",
    [
        ([0, 1], 4, [1, 1, -1, -1]),
        ([1, 0], 4, [-1, -1, 1, 1]),
        ([0], 3, [1, 1, 1]),
        ([1], 2, [-1, -1]),
        ([1, 0, 1], 3, [-1, 1, -1]),
    ],
)
def test_select_rows(order, batch, expected):
    rows = flux.select_rows(order, batch, tokens(1), tokens(-1))
    assert rows.shape == (batch, 3, 4)
    assert rows[:, 0, 0].tolist() == expected


def test_select_rows_per_latent_tokens():
    cond = torch.arange(2.0)[:, None, None].expand(2, 3, 4)
    rows = flux.select_rows([1, 0], 4, tokens(-1), cond)  # roles swapped on purpose: uncond chunk first
    assert rows[:, 0, 0].tolist() == [0, 1, -1, -1]
    rows = flux.select_rows([0, 1], 4, cond, tokens(-1))
    assert rows[:, 0, 0].tolist() == [0, 1, -1, -1]


def test_select_rows_rejects():
    with pytest.raises(PuLIDError, match="batch of 3 rows into the 2 chunk"):
        flux.select_rows([0, 1], 3, tokens(1), tokens(-1))
    with pytest.raises(PuLIDError, match="no uncond ID tokens"):
        flux.select_rows([0, 1], 2, tokens(1), None)
    with pytest.raises(PuLIDError, match=r"\[1 or 2, tokens, width\]"):
        flux.select_rows([0, 1], 4, tokens(1, rows=3), tokens(-1))
    assert flux.select_rows([0], 2, tokens(1), None).shape == (2, 3, 4)


# --- masks and the identity term ----------------------------------------------------------------------


def test_mask_to_tokens_is_row_major_on_the_token_grid():
    mask = torch.zeros(1, 32, 64)
    mask[:, :16, 16:32] = 1.0  # a wide image: token (row 0, column 1) of a 2 x 4 grid
    mask[:, 16:, 48:] = 0.5  # token (row 1, column 3)
    out = flux.mask_to_tokens(mask, 2, 4, 3, torch.float16, "cpu")
    assert out.shape == (3, 8, 1) and out.dtype == torch.float16
    assert out[0, :, 0].tolist() == [0, 1, 0, 0, 0, 0, 0, 0.5]
    assert torch.equal(out[2], out[0])


def test_mask_to_tokens_averages_each_tokens_area():
    mask = torch.zeros(2, 16, 16)
    mask[0, 0, 0] = 1.0
    mask[1] = 0.5
    out = flux.mask_to_tokens(mask, 4, 4, 2, torch.float32, "cpu")
    assert out[0, 0, 0].item() == 1 / 16 and out[0, 1:].sum() == 0
    assert torch.all(out[1] == 0.5)
    assert flux.mask_to_tokens(mask[0], 4, 4, 2, torch.float32, "cpu").shape == (2, 16, 1)


def test_mask_to_tokens_on_an_odd_latent_follows_the_images_last_pixels():
    """A 9 x 13 latent is padded to a 5 x 7 token grid: the last token row holds one real latent row. A
    mask that leaves out the image's last latent row gives that token row 0 (resized straight onto the
    grid it got 0.44: the mask was stretched over the padding), and a full mask stays 1 everywhere."""
    mask = torch.ones(1, 9 * 8, 13 * 8)
    mask[:, 8 * 8 :] = 0.0  # the last latent row (8 pixels of the image) is outside
    out = flux.mask_to_tokens(mask, 5, 7, 1, torch.float32, "cpu", latent_hw=(9, 13)).reshape(5, 7)
    assert torch.all(out[4] == 0) and torch.all(out[:4] == 1)
    full = flux.mask_to_tokens(torch.ones(1, 72, 104), 5, 7, 1, torch.float32, "cpu", latent_hw=(9, 13))
    assert torch.all(full == 1)
    # An even latent: the same as resizing onto the grid.
    even = torch.rand(1, 64, 96, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(flux.mask_to_tokens(even, 4, 6, 1, torch.float32, "cpu", latent_hw=(8, 12)),
                          flux.mask_to_tokens(even, 4, 6, 1, torch.float32, "cpu"))


def test_mask_to_tokens_rejects():
    with pytest.raises(PuLIDError, match="2 masks for a batch of 3"):
        flux.mask_to_tokens(torch.zeros(2, 8, 8), 4, 4, 3, torch.float32, "cpu")
    with pytest.raises(PuLIDError, match="MASK"):
        flux.mask_to_tokens(torch.zeros(1, 1, 8, 8), 4, 4, 1, torch.float32, "cpu")


def test_add_identity(tiny):
    img = torch.linspace(-2, 2, 2 * 8 * 128).reshape(2, 8, 128)
    before = img.clone()
    ids = torch.linspace(-1, 1, 32 * 2048).reshape(1, 32, 2048)
    with torch.no_grad():
        term = tiny.pulid_ca(10, ids, img)
        zero = flux.add_identity(img, tiny, 10, ids, 0.0)
        out = flux.add_identity(img, tiny, 10, ids, 0.6)
        mask = torch.zeros(1, 8, 1)
        mask[:, 5:] = 1.0
        masked = flux.add_identity(img, tiny, 10, ids, 0.6, mask=mask)
    assert torch.equal(img, before)  # never in place
    assert torch.equal(zero, img) and zero.data_ptr() != img.data_ptr()
    assert torch.allclose(out, img + 0.6 * term, atol=1e-6) and not torch.allclose(out, img)
    assert torch.equal(masked[:, :5], img[:, :5]) and torch.allclose(masked[:, 5:], out[:, 5:], atol=1e-6)


def test_add_identity_in_the_image_dtype(tiny):
    img = torch.linspace(-2, 2, 8 * 128).reshape(1, 8, 128).to(torch.bfloat16)
    out = flux.add_identity(img, tiny, 0, torch.ones(1, 32, 2048), 1.0, mask=torch.ones(1, 8, 1))
    assert out.dtype == torch.bfloat16
    with pytest.raises(PuLIDError, match="finite"):
        flux.add_identity(img, tiny, 0, torch.ones(1, 32, 2048), float("nan"))
    with pytest.raises(PuLIDError, match=r"mask must be \[1 or 1, 8, 1\]"):
        flux.add_identity(img, tiny, 0, torch.ones(1, 32, 2048), 1.0, mask=torch.ones(1, 1, 8))
