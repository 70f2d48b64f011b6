"""pulid_core.identity: several photos, the negative tokens and the method presets, against the authors' rules.

The references below are written from the authors' code, independently of encode_identity:
- v1 app (ToTheBeginning/PuLID app.py, the extra-image loop): the 10 tokens of photo 1, then
  ``id_embedding[:, :5]`` of each extra photo, each photo encoded on its own, concatenated along
  the tokens; the negative tokens are built the same way.
- v1.1 (pulid/pipeline_v1_1.py, get_id_embedding): id_cond stacked to [1, N, 1280], each hidden
  state concatenated along the tokens, one IDFormer pass; the negative from one zero photo.
"""

import pytest
import torch

from pulid_core import load_pulid
from pulid_core.errors import PuLIDError
from pulid_core.identity import (
    COMBINES,
    METHOD_PRESETS,
    encode_identity,
    method_settings,
    stored_combine,
)


def photos(model, n, seed=0):
    """N different photos' features: id_cond [N, C] and 5 hidden states [N, tokens, C]."""
    gen = torch.Generator().manual_seed(seed)
    enc = model.id_adapter
    id_cond = torch.randn(n, enc.width, generator=gen)
    hidden = [torch.randn(n, 7, enc.vit_dim, generator=gen) for _ in range(5)]
    return id_cond, hidden


@pytest.fixture(scope="module")
def v1(tiny_pulid_state_dict):
    return load_pulid(tiny_pulid_state_dict("v1"))


@pytest.fixture(scope="module")
def v11(tiny_pulid_state_dict):
    return load_pulid(tiny_pulid_state_dict("v1.1"))


def one(model, id_cond, hidden, i):
    with torch.no_grad():
        return model.encode(id_cond[i:i + 1], [h[i:i + 1] for h in hidden])


def zero_uncond(model, id_cond, hidden):
    with torch.no_grad():
        return model.encode_uncond(id_cond[:1], [h[:1] for h in hidden])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_v1_concat_is_photo_one_then_the_first_five_tokens_of_each_extra_photo(v1, n):
    id_cond, hidden = photos(v1, n)
    cond, uncond = encode_identity(v1, id_cond, hidden, combine="concat")
    each = [one(v1, id_cond, hidden, i) for i in range(n)]
    want = torch.cat([each[0]] + [e[:, :5] for e in each[1:]], dim=1)
    assert cond.shape == (1, 10 + 5 * (n - 1), v1.context_dim)
    torch.testing.assert_close(cond, want, rtol=1e-5, atol=1e-6)
    u = zero_uncond(v1, id_cond, hidden)
    torch.testing.assert_close(uncond, torch.cat([u] + [u[:, :5]] * (n - 1), dim=1), rtol=1e-5, atol=1e-6)
    # The tokens of the extra photos really are the first five (the last five differ on these weights).
    assert not torch.allclose(each[1][:, :5], each[1][:, 5:])


def test_v1_average_is_the_mean_of_the_photos_tokens(v1):
    id_cond, hidden = photos(v1, 3, seed=1)
    cond, uncond = encode_identity(v1, id_cond, hidden, combine="average")
    want = torch.stack([one(v1, id_cond, hidden, i)[0] for i in range(3)]).mean(0, keepdim=True)
    torch.testing.assert_close(cond, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(uncond, zero_uncond(v1, id_cond, hidden))
    assert cond.shape == uncond.shape == (1, 10, v1.context_dim)


@pytest.mark.parametrize("combine", COMBINES)
def test_one_photo_is_that_photos_tokens(v1, combine):
    id_cond, hidden = photos(v1, 1, seed=2)
    cond, _ = encode_identity(v1, id_cond, hidden, combine=combine)
    torch.testing.assert_close(cond, one(v1, id_cond, hidden, 0))


class FluxLike:
    """An encoder reporting version "flux": PuLID-FLUX's encoder is v1.1's IDFormer."""

    def __init__(self, model):
        self.model, self.version = model, "flux"

    def encode(self, *args):
        return self.model.encode(*args)

    def encode_uncond(self, *args):
        return self.model.encode_uncond(*args)


@pytest.mark.parametrize("flux", [False, True])
@pytest.mark.parametrize("combine", COMBINES)
def test_idformer_versions_encode_all_photos_in_one_pass(v11, flux, combine):
    id_cond, hidden = photos(v11, 3, seed=3)
    model = FluxLike(v11) if flux else v11
    cond, uncond = encode_identity(model, id_cond, hidden, combine=combine)
    stacked = torch.stack([id_cond[i] for i in range(3)])[None]  # [1, N, 1280]
    joined = [torch.cat([h[i:i + 1] for i in range(3)], dim=1) for h in hidden]  # [1, tokens N, 1024]
    with torch.no_grad():
        want = v11.encode(stacked, joined)
    assert cond.shape == (1, v11.num_tokens, v11.context_dim)
    torch.testing.assert_close(cond, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(uncond, zero_uncond(v11, id_cond, hidden))
    assert stored_combine(model.version, combine) == "idformer"


def test_photo_order_matters_for_v1_1_and_concat(v1, v11):
    # Guards against a rule that averages or sorts the photos away.
    for model, combine in ((v1, "concat"), (v11, "average")):
        id_cond, hidden = photos(model, 2, seed=4)
        flipped = id_cond.flip(0), [h.flip(0) for h in hidden]
        a, _ = encode_identity(model, id_cond, hidden, combine=combine)
        b, _ = encode_identity(model, *flipped, combine=combine)
        assert not torch.allclose(a, b)


def test_uncond_noise_is_seeded_uniform_noise_through_the_encoder(v1):
    id_cond, hidden = photos(v1, 2, seed=5)
    _, u1 = encode_identity(v1, id_cond, hidden, uncond_noise=0.5, seed=7)
    _, u2 = encode_identity(v1, id_cond, hidden, uncond_noise=0.5, seed=7)
    _, u3 = encode_identity(v1, id_cond, hidden, uncond_noise=0.5, seed=8)
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)
    assert not torch.allclose(u1, u3)
    gen = torch.Generator().manual_seed(7)
    noise_cond = torch.rand(1, id_cond.shape[1], generator=gen) * 0.5
    noise_hidden = [torch.rand(1, *h.shape[1:], generator=gen) * 0.5 for h in hidden]
    with torch.no_grad():
        want = v1.encode(noise_cond, noise_hidden)
    torch.testing.assert_close(u1, want)
    assert not torch.allclose(u1, zero_uncond(v1, id_cond, hidden))


def test_method_table_is_the_authors_settings():
    assert method_settings("v1", "fidelity") == ("ortho_v2", 8)
    assert method_settings("v1", "style") == ("ortho", 16)
    assert method_settings("v1.1", "fidelity") == ("ortho_v2", 20)
    assert method_settings("v1.1", "neutral") == ("none", 0)
    assert set(METHOD_PRESETS) == {"v1", "v1.1"}
    with pytest.raises(PuLIDError, match="fidelity, style, neutral"):
        method_settings("v1", "custom")
    with pytest.raises(PuLIDError, match="no method presets"):
        method_settings("flux", "fidelity")


def test_bad_arguments_are_refused(v1):
    id_cond, hidden = photos(v1, 2)
    with pytest.raises(PuLIDError, match="average, concat"):
        encode_identity(v1, id_cond, hidden, combine="sum")
    with pytest.raises(PuLIDError, match="one row per photo"):
        encode_identity(v1, id_cond[None], hidden)
    with pytest.raises(PuLIDError, match="one row per photo"):
        encode_identity(v1, id_cond, [h[:1] for h in hidden])
