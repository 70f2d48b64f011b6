"""PuLID ID encoders (v1 IDEncoder, v1.1 IDFormer) against the official code's outputs.

Full-size encoder weights are re-created by detfill from their official key names and go
through the public loader in both the official and the IPAdapter-format layouts.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pulid_core import load_pulid
from pulid_core.errors import PuLIDError
from pulid_layouts import official_encoder_state, to_ipadapter_layout
from tests import detfill

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
LAYOUTS = json.loads((GOLDEN / "checkpoint_layouts.json").read_text())
TOL = 1e-4  # golden README: PuLID encoders and ID K/V


def fill(name, shape):
    return torch.from_numpy(detfill.tensor(name, shape, "pub:"))


def official_state_dict(layout_prefix: str) -> dict:
    return official_encoder_state(next(v for k, v in LAYOUTS.items() if k.startswith(layout_prefix)), fill)


@pytest.fixture(scope="module")
def golden():
    return load_file(GOLDEN / "pulid_encoders.safetensors")


@pytest.fixture(scope="module")
def image_a():
    return fill("input.id_cond", (1, 1280)), [
        fill(f"input.id_vit_hidden.{i}", (1, 577, 1024)) for i in range(5)
    ]


@pytest.fixture(scope="module")
def image_b():
    return fill("input.id_cond_b", (1, 1280)), [
        fill(f"input.id_vit_hidden_b.{i}", (1, 577, 1024)) for i in range(5)
    ]


@pytest.fixture(scope="module")
def v1_state():
    return official_state_dict("pulid_v1.bin")


@pytest.fixture(scope="module")
def v11_state():
    return official_state_dict("pulid_v1.1.safetensors")


def small_inputs(id_dim=1280, vit_dim=1024, tokens=9, images=1):
    """Cheap inputs for comparing two loads of the same weights."""
    id_cond = torch.linspace(-1, 1, id_dim * images).reshape(1, images, id_dim).squeeze(1)
    hidden = [
        torch.linspace(-1, 1, tokens * images * vit_dim).reshape(1, -1, vit_dim) * (i + 1) for i in range(5)
    ]
    return id_cond, hidden


def assert_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= tol


def test_v1_matches_official(v1_state, golden, image_a):
    model = load_pulid(v1_state)
    assert (model.version, model.num_tokens, model.context_dim) == ("v1", 10, 2048)
    id_cond, hidden = image_a
    # One batch holding a face row and an all-zero row: the zero row is the official uncond.
    batch_cond = torch.cat([id_cond, torch.zeros_like(id_cond)])
    batch_hidden = [torch.cat([h, torch.zeros_like(h)]) for h in hidden]
    with torch.no_grad():
        out = model.encode(batch_cond, batch_hidden)
        uncond = model.encode_uncond(id_cond, hidden)
    assert out.dtype == torch.float32
    assert_close(out[:1], golden["v1.cond"])
    assert_close(out[1:], golden["v1.uncond"])
    assert_close(uncond, golden["v1.uncond"])
    assert uncond.abs().mean() > 0.1  # biases: the negative embedding is not zero


def test_v1_ipadapter_layouts_give_identical_numbers(v1_state):
    ipa = to_ipadapter_layout(v1_state)
    nested = {
        "image_proj": {k[len("image_proj.") :]: v for k, v in ipa.items() if k.startswith("image_proj.")},
        "ip_adapter": {k[len("ip_adapter.") :]: v for k, v in ipa.items() if k.startswith("ip_adapter.")},
    }
    id_cond, hidden = small_inputs()
    tokens = torch.linspace(-1, 1, 2 * 3 * 2048).reshape(2, 3, 2048)
    models = [load_pulid(s) for s in (v1_state, ipa, nested)]
    with torch.no_grad():
        outs = [m.encode(id_cond, hidden) for m in models]
        kvs = [m.id_kv(121, tokens, num_zero=2) for m in models]
    for out, (k, v) in zip(outs[1:], kvs[1:]):
        assert torch.equal(out, outs[0])
        assert torch.equal(k, kvs[0][0]) and torch.equal(v, kvs[0][1])


def test_fp16_weights_stay_fp16_and_compute_in_input_dtype(v1_state):
    half = load_pulid(v1_state, dtype=torch.float16)
    assert half.id_adapter.body[0].weight.dtype == torch.float16
    assert half.id_adapter_attn_layers["1"].id_to_k.weight.dtype == torch.float16
    # Same numbers as fp32 weights holding the fp16-rounded values: the math runs in fp32.
    rounded = load_pulid({k: v.half().float() for k, v in v1_state.items()})
    id_cond, hidden = small_inputs()
    with torch.no_grad():
        out = half.encode(id_cond, hidden)
        assert out.dtype == torch.float32
        assert torch.equal(out, rounded.encode(id_cond, hidden))
        k, _ = half.id_kv(1, out)
        assert k.dtype == torch.float32
        assert torch.equal(k, rounded.id_kv(1, out)[0])


def test_v11_matches_official(v11_state, golden, image_a, image_b):
    model = load_pulid(v11_state)
    assert (model.version, model.num_tokens, model.context_dim) == ("v1.1", 32, 2048)
    (cond_a, hidden_a), (cond_b, hidden_b) = image_a, image_b
    two_cond = torch.stack([cond_a, cond_b], dim=1)  # [1, 2, 1280]
    two_hidden = [torch.cat([a, b], dim=1) for a, b in zip(hidden_a, hidden_b)]  # [1, 1154, 1024]
    with torch.no_grad():
        assert_close(model.encode(cond_a, hidden_a), golden["v11.cond"])
        assert_close(model.encode(two_cond, two_hidden), golden["v11.cond_2img"])
        # Uncond is a single zero image even when the cond used two (official v1.1 pipeline).
        assert_close(model.encode_uncond(two_cond, two_hidden), golden["v11.uncond"])


def test_v11_ipadapter_layout_gives_identical_numbers(v11_state):
    id_cond, hidden = small_inputs(images=2)
    ipa = load_pulid(to_ipadapter_layout(v11_state))
    official = load_pulid(v11_state)
    assert ipa.version == "v1.1"
    with torch.no_grad():
        assert torch.equal(ipa.encode(id_cond, hidden), official.encode(id_cond, hidden))


@pytest.mark.parametrize("version, tokens", [("v1", 10), ("v1.1", 8)])
def test_tiny_adapters_encode(tiny_pulid_state_dict, version, tokens):
    # 16-wide perceiver (narrower than one official head), context 24, 12-wide ViT, 20-wide id_cond
    model = load_pulid(tiny_pulid_state_dict(version))
    assert (model.version, model.num_tokens, model.context_dim) == (version, tokens, 24)
    id_cond, hidden = small_inputs(id_dim=20, vit_dim=12, tokens=5)
    batch = torch.cat([id_cond, -id_cond, id_cond])
    hidden = [torch.cat([h, h, h]) for h in hidden]
    with torch.no_grad():
        out = model.encode(batch, hidden)
        single = model.encode(id_cond, [h[:1] for h in hidden])
    assert out.shape == (3, tokens, 24)
    assert torch.allclose(out[2:], single, atol=1e-6)
    assert not torch.allclose(out[1:2], single)


def test_encode_rejects_bad_inputs(tiny_pulid_state_dict):
    v1 = load_pulid(tiny_pulid_state_dict("v1"))
    id_cond, hidden = small_inputs(id_dim=20, vit_dim=12, tokens=5)
    with pytest.raises(PuLIDError, match="one image at a time"):
        v1.encode(torch.zeros(1, 2, 20), hidden)
    with pytest.raises(PuLIDError, match="list of 5"):
        v1.encode(id_cond, hidden[:4])
    with pytest.raises(PuLIDError, match=r"id_cond must be \[batch, 20\]"):
        v1.encode(torch.zeros(1, 1280), hidden)
    with pytest.raises(PuLIDError, match=r"id_vit_hidden\[0\]"):
        v1.encode(id_cond, [torch.zeros(1, 5, 1024)] + hidden[1:])
