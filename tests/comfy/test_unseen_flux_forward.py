"""Tier 2: the tiny FLUX.1 forward with PuLID-FLUX against the authors' ``Flux.forward`` on a second set
of vectors: salt "unseen:", a non-square 3 x 5 patch grid, 11 text tokens, timestep 0.35, guidance 2.0,
id_weight 0.8 and 1.0, and a batch of two whose rows get the cond and the negative ID tokens
(tests/data/golden_extra/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfy

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_extra" / "pulid_flux_unseen.safetensors"
SALT = "unseen:"
TXT = 11


def _input(name, shape):
    import detfill

    return torch.from_numpy(detfill.tensor(name, shape, SALT))


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN))


@pytest.fixture(scope="module")
def flux_unseen(pack):
    """The tiny FLUX at the golden sizes, its weights re-filled with this file's salt."""
    from comfy_testpack.tiny_flux import flux_state_dict, tiny_flux_model

    model = tiny_flux_model()
    model.model.load_model_weights(flux_state_dict(model.model.diffusion_model, salt=SALT), "")
    return model


@pytest.fixture(scope="module")
def adapter(pack, model_folders):
    """A tiny PuLID-FLUX file whose CA modules hold the golden ``tiny_ca.{i}`` weights, through the loader node."""
    from comfyui_pulid.nodes import loaders
    from safetensors.torch import save_file

    from pulid_layouts import flux_state_dict, tiny_flux_sizes

    root = model_folders("flux_unseen", "pulid")
    state = flux_state_dict(salt=SALT, rename=lambda k: k.replace("pulid_ca.", "tiny_ca."), **tiny_flux_sizes())
    save_file(state, str(root / "pulid" / "pulid_flux_unseen_tiny.safetensors"))
    pack.nodes.node_list()
    return loaders.PuLIDModelLoader.execute("pulid_flux_unseen_tiny.safetensors").result[0]


def inputs(golden, rows):
    """The authors' patchified img [B, h*w, 64] as ComfyUI's latent [B, 16, 2h, 2w], text, y."""
    from einops import rearrange

    h, w = (int(v) for v in golden["tiny.grid"])
    img = _input("input.flux.img", (2, h * w, 64))[:rows]
    x = rearrange(img, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)
    return x, _input("input.flux.txt", (2, TXT, 64))[:rows], _input("input.flux.y", (2, 32))[:rows]


def forward(model, golden, rows=1, **options):
    from einops import rearrange

    x, context, y = inputs(golden, rows)
    transformer_options = dict(model.model_options.get("transformer_options", {}))
    transformer_options["wrappers"] = model.wrappers
    transformer_options.update(options)
    with torch.no_grad():
        out = model.model.diffusion_model(x, torch.full((rows,), 0.35), context, y=y,
                                          guidance=torch.full((rows,), 2.0), transformer_options=transformer_options)
    return rearrange(out, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def apply(model, adapter, weight, uncond=None):
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds
    from comfyui_pulid.nodes.pulid import IDEmbeds

    cond = _input("input.flux.id_tiny", (1, 32, 2048))
    embeds = IDEmbeds("flux", cond, torch.zeros_like(cond) if uncond is None else uncond, 1, "idformer")
    return PuLIDFluxApplyEmbeds.execute(model, adapter, embeds, weight, 0.0, 1.0, None).result[0]


def test_unpatched_forward_on_a_non_square_grid(flux_unseen, golden):
    out = forward(flux_unseen, golden)
    assert out.shape == golden["tiny.no_id"].shape == (1, 15, 64)
    torch.testing.assert_close(out, golden["tiny.no_id"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("weight", [0.8, 1.0])
def test_patched_forward_on_a_non_square_grid(flux_unseen, adapter, golden, weight):
    out = forward(apply(flux_unseen, adapter, weight), golden)
    torch.testing.assert_close(out, golden[f"tiny.id_w{weight}"], atol=1e-4, rtol=0)


def test_batch_rows_get_cond_and_negative_tokens(flux_unseen, adapter, golden):
    neg = _input("input.flux.id_tiny_neg", (1, 32, 2048))
    out = forward(apply(flux_unseen, adapter, 0.8, uncond=neg), golden, rows=2, cond_or_uncond=[0, 1])
    torch.testing.assert_close(out, golden["tiny.b2_cond_neg_w0.8"], atol=1e-4, rtol=0)
