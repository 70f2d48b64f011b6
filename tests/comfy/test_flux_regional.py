"""PuLID-FLUX masks with regional prompts and odd latent sizes, from an adversarial review (2026-11-27).

Each test asserts the behaviour the project promises (README: PuLID-FLUX, Several people) and
fails on the code it was written against; each docstring says what happened there.
Sampling goes through ``comfy.sample.sample`` with the tiny FLUX.1 of tests/comfy_testpack, as
the other in-process FLUX tests do.
"""

import pytest
import torch

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def embeds(flux_embeds):
    return flux_embeds


def apply(model, loaded, embeds, weight=1.0, start_at=0.0, end_at=1.0, attn_mask=None):
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds

    return PuLIDFluxApplyEmbeds.execute(model, loaded["flux"], embeds, weight, start_at, end_at, attn_mask).result[0]


def prompts(seed=5):
    gen = torch.Generator().manual_seed(seed)
    context, pooled = torch.randn(1, 8, 64, generator=gen), torch.randn(1, 32, generator=gen)
    positive = [[context, {"pooled_output": pooled, "guidance": 3.5}]]
    negative = [[torch.zeros_like(context), {"pooled_output": torch.zeros_like(pooled), "guidance": 3.5}]]
    return positive, negative


def sample(model, latent, positive, negative, steps=1, cfg=1.0, seed=0):
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True)


# -- 1. attn_mask with a regional prompt that ComfyUI samples on a crop -----------------------------
def _regional(kind, positive, region):
    from nodes import ConditioningSetArea, ConditioningSetMask

    if kind == "ConditioningSetMask-mask-bounds":
        return ConditioningSetMask().append(positive, region, "mask bounds", 1.0)[0]
    return ConditioningSetArea().append(positive, 64, 128, 0, 0, 1.0)[0]  # the left half of 128x128


@pytest.mark.parametrize("kind", ["ConditioningSetMask-mask-bounds", "ConditioningSetArea"])
def test_attn_mask_lines_up_with_a_regional_prompts_crop(tiny_flux, loaded, embeds, monkeypatch, kind):
    """Two people in one FLUX image, the README way: each person's Apply PuLID (FLUX) gets an
    attn_mask, and each person's prompt is restricted to the same region, with ConditioningSetMask
    (set_cond_area: mask bounds) or ConditioningSetArea. ComfyUI then runs that prompt's forward on
    the *crop* of the latent inside the region (comfy/samplers.py get_area_and_mult), and the pack
    resizes the whole-image attn_mask onto the crop's token grid: the left-half mask is squeezed
    into the left-half crop, so the identity lands on the left quarter of the image only and the
    person's right half (inside the mask) silently got no identity (mask tokens 1, 1, 0, 0 in
    every token row of the 8x4 crop instead of all 1).

    Correct: the mask tokens of a cropped forward are the mask over the crop (here all 1)."""
    from comfyui_pulid.nodes import flux_patch

    seen = []
    real_add = flux_patch.core_flux.identity_delta

    def identity_delta(img, *args, mask=None, **kwargs):
        seen.append((img.shape[1], None if mask is None else mask.detach().clone()))
        return real_add(img, *args, mask=mask, **kwargs)

    monkeypatch.setattr(flux_patch.core_flux, "identity_delta", identity_delta)
    left = torch.zeros(1, 128, 128)
    left[..., :64] = 1.0  # the person on the left half of a 128x128 image (latent 16x16)
    model = apply(tiny_flux, loaded, embeds, attn_mask=left)
    positive, negative = prompts()
    positive = _regional(kind, positive, left)
    sample(model, torch.zeros(1, 16, 16, 16), positive, negative, cfg=1.0)
    # cfg 1: the only forward is the regional prompt's, on the left-half crop (16x8 latent -> 8x4 tokens).
    assert seen and {tokens for tokens, _ in seen} == {32}
    for _, mask in seen:
        grid = mask[0, :, 0].reshape(8, 4)
        assert torch.allclose(grid, torch.ones_like(grid)), f"identity mask on the crop:\n{grid}"


def test_each_chunk_gets_the_area_of_its_own_cond(pack):
    """Conds of one size batch together (comfy.samplers.can_concat_cond) whatever their offsets: the
    areas are looked up per cond/uncond chunk by the cond's uuid, in the call's order."""
    from comfyui_pulid.nodes.run_options import COND_AREAS, chunk_areas

    options = {"uuids": ["b", "full", "a"], COND_AREAS: ((16, 16), {"a": (0, 0, 16, 8), "b": (0, 8, 16, 8)})}
    assert chunk_areas(options, 3) == ((16, 16), ((0, 8, 16, 8), None, (0, 0, 16, 8)))
    assert chunk_areas({"uuids": ["full"], COND_AREAS: ((16, 16), {"a": (0, 0, 16, 8)})}, 1) is None
    assert chunk_areas({"uuids": ["a", "b"], COND_AREAS: ((16, 16), {"a": (0, 0, 16, 8)})}, 3) is None


def test_attn_mask_on_an_odd_latent_follows_its_last_pixels(tiny_flux, loaded, embeds, monkeypatch):
    """A 9 x 13 latent runs as a 5 x 7 token grid (ComfyUI pads it): a mask that leaves out the image's
    last latent row must leave out the last token row, which holds only that row (the mask used to be
    stretched over the padding: 0.44 there)."""
    from comfyui_pulid.nodes import flux_patch

    seen = []
    real_add = flux_patch.core_flux.identity_delta

    def identity_delta(img, *args, mask=None, **kwargs):
        seen.append(mask.detach().clone())
        return real_add(img, *args, mask=mask, **kwargs)

    monkeypatch.setattr(flux_patch.core_flux, "identity_delta", identity_delta)
    person = torch.ones(1, 72, 104)
    person[:, 64:] = 0.0
    positive, negative = prompts()
    sample(apply(tiny_flux, loaded, embeds, attn_mask=person), torch.zeros(1, 16, 9, 13), positive, negative)
    assert seen
    for mask in seen:
        grid = mask[0, :, 0].reshape(5, 7)
        assert torch.all(grid[4] == 0) and torch.all(grid[:4] == 1), grid
