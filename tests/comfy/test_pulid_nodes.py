"""Tier 2: the PuLID nodes inside ComfyUI (tiny SDXL, tiny adapter files with the real structure)."""

import copy

import pytest
import torch

pytestmark = pytest.mark.comfy


def attn2_patches(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def sample(model, clip, steps=1, cfg=5.0, seed=0):
    import comfy.sample

    tokens = clip.tokenize("a portrait photo")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    positive = [[cond, {"pooled_output": pooled}]]
    negative = [[torch.zeros_like(cond), {"pooled_output": torch.zeros_like(pooled)}]]
    latent = torch.zeros(1, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               disable_pbar=True)


def test_loaders_detect_versions(loaded):
    assert loaded["v1"].version == "v1"
    assert loaded["v1.1"].version == "v1.1"


def test_apply_patches_all_70_layers_including_the_middle_block(tiny_sdxl, loaded, face_image):
    from comfyui_pulid.nodes.attn_patch import IDAttnPatch
    from comfyui_pulid.nodes.pulid import PuLIDApply

    model = tiny_sdxl[0]
    out = PuLIDApply.execute(model, loaded["v1"], loaded["eva"], loaded["face"], face_image, "fidelity", 0.8,
                             0.0, 1.0).result[0]
    patches = attn2_patches(out)
    assert len(patches) == 70
    assert sum(k[0] == "middle" for k in patches) == 10
    assert all(k[1] == 0 for k in patches if k[0] == "middle")
    assert all(isinstance(p, IDAttnPatch) for p in patches.values())
    # The adapter is not handed to ComfyUI for loading with the UNet (only its cached K/V are used).
    assert all(p.models() == [] for p in patches.values())
    ctx = next(iter(patches.values())).context
    assert (ctx.projection, ctx.num_zero) == ("ortho_v2", 8)
    # The input model is untouched.
    assert "attn2" not in model.model_options.get("transformer_options", {}).get("patches_replace", {})


def _unpatched_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"])


def _cross_attn_keys(model):
    """ComfyUI's attn2 keys (block, index, transformer) of every cross-attention layer, found by walking the UNet.

    Walked here on purpose, independently of the pack's layer table (pulid_core.layers) and of the
    benchmarks' walker: the tests check the table against what the UNet really has."""
    unet = model.get_model_object("diffusion_model")
    keys = []
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]),
                         ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                for j, _ in enumerate(getattr(layer, "transformer_blocks", [])):
                    keys.append((name, 0 if name == "middle" else i, j))
    return keys


@pytest.fixture(scope="module")
def layer_calls(tiny_sdxl):
    """Each of the 70 layers' real (q, k, v, extra_options) from one sampling step (cfg: both rows)."""
    model, clip, _ = tiny_sdxl
    calls = {}

    def recorder(key):
        def record(q, k, v, extra_options):
            calls.setdefault(key, (q.clone(), k.clone(), v.clone(), dict(extra_options)))
            return _unpatched_attention(q, k, v, extra_options)
        return record

    probe = model.clone()
    for key in _cross_attn_keys(model):
        probe.set_model_attn2_replace(recorder(key), *key)
    sample(probe, clip)
    assert len(calls) == 70 and all(c[3]["cond_or_uncond"] for c in calls.values())
    return calls


def _id_term_size(patch, call):
    """How far the patch's output is from the unpatched attention, relative to that attention."""
    q, k, v, eo = call
    base = _unpatched_attention(q, k, v, eo)
    return float((patch(q, k, v, dict(eo)) - base).abs().max() / base.abs().max())


def test_every_one_of_the_70_layers_adds_the_id_term(tiny_sdxl, loaded, face_image, layer_calls):
    from comfyui_pulid.nodes.pulid import PuLIDApply

    model, clip, _ = tiny_sdxl
    out = PuLIDApply.execute(model, loaded["v1.1"], loaded["eva"], loaded["face"], face_image, "fidelity", 1.0,
                             0.0, 1.0).result[0]
    patches = attn2_patches(out)
    assert set(patches) == set(layer_calls)
    # Each layer on its own, in a shuffled order, with the q/k/v it gets during sampling.
    keys = sorted(patches, key=lambda k: hash((k, 7)) % 1009)
    sizes = {key: _id_term_size(patches[key], layer_calls[key]) for key in keys}
    missing = sorted(k for k, size in sizes.items() if not size > 1e-3)
    assert not missing, f"no ID term in {len(missing)} layers: {missing[:5]}"
    # And during sampling: the image changes; the same graph gives the same image again.
    with_id = sample(out, clip)
    plain = sample(model, clip)
    assert not torch.allclose(with_id, plain)
    assert torch.equal(sample(out, clip), with_id)


def test_clones_share_the_immutable_patches(tiny_sdxl, loaded, face_image):
    from comfyui_pulid.nodes.pulid import PuLIDApply

    out = PuLIDApply.execute(tiny_sdxl[0], loaded["v1"], loaded["eva"], loaded["face"], face_image, "style", 0.8,
                             0.0, 1.0).result[0]
    clone = out.clone()
    for key, patch in attn2_patches(out).items():
        assert attn2_patches(clone)[key] is patch
        assert copy.deepcopy(patch) is patch
    ctx = next(iter(attn2_patches(out).values())).context
    assert (ctx.projection, ctx.num_zero) == ("ortho", 16)
    # Applying again from the same upstream model does not stack on the first application.
    again = PuLIDApply.execute(tiny_sdxl[0], loaded["v1"], loaded["eva"], loaded["face"], face_image, "style", 0.8,
                               0.0, 1.0).result[0]
    assert all(p.upstream is None for p in attn2_patches(again).values())


def test_chains_onto_an_existing_patch(tiny_sdxl, loaded, face_image):
    from comfyui_pulid.nodes.pulid import PuLIDApply

    calls = []

    def upstream(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return torch.full_like(q, 0.5)

    base = tiny_sdxl[0].clone()
    base.set_model_attn2_replace(upstream, "input", 4, 0)
    base.set_model_attn2_replace(upstream, "output", 5)  # a 2-tuple key (IPAdapter SD1.5 style)
    out = PuLIDApply.execute(base, loaded["v1"], loaded["eva"], loaded["face"], face_image, "neutral", 0.0,
                             0.0, 1.0).result[0]
    patches = attn2_patches(out)
    assert patches[("input", 4, 0)].upstream is upstream
    assert patches[("output", 5, 1)].upstream is upstream
    q = torch.randn(2, 64, 64)
    eo = {"n_heads": 4, "dim_head": 16, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0]),
          "activations_shape": [2, 64, 8, 8], "block": ("input", 4)}
    # weight 0: exactly the upstream's output.
    assert torch.equal(patches[("input", 4, 0)](q, q, q, eo), torch.full_like(q, 0.5))
    assert calls


def test_chained_patch_keeps_both_terms_at_nonzero_weight(tiny_sdxl, loaded, face_image, layer_calls):
    from comfyui_pulid.nodes.pulid import PuLIDApply

    calls = []

    def same_as_unpatched(q, k, v, extra_options):
        calls.append(1)
        return _unpatched_attention(q, k, v, extra_options)

    def constant(q, k, v, extra_options):
        return torch.full_like(q, 0.25)

    args = (loaded["v1"], loaded["eva"], loaded["face"], face_image, "fidelity", 0.8, 0.0, 1.0)
    alone = attn2_patches(PuLIDApply.execute(tiny_sdxl[0], *args).result[0])
    over = {}
    for name, upstream in (("unpatched", same_as_unpatched), ("constant", constant)):
        base = tiny_sdxl[0].clone()
        for key in alone:
            base.set_model_attn2_replace(upstream, *key)
        over[name] = attn2_patches(PuLIDApply.execute(base, *args).result[0])
    for key in alone:
        q, k, v, eo = layer_calls[key]
        calls.clear()
        want = alone[key](q, k, v, dict(eo))
        # An upstream that returns the unpatched attention: the same output as PuLID alone.
        got = over["unpatched"][key](q, k, v, dict(eo))
        assert calls, key
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
        # An upstream with its own output: that output plus an ID term (not the upstream's alone).
        chained = over["constant"][key](q, k, v, dict(eo))
        assert (chained - 0.25).abs().max() > 1e-3 * float(want.abs().max()), key
        assert not torch.allclose(chained, want), key


def test_reapplying_on_a_patched_model_never_stacks(tiny_sdxl, loaded, face_image, layer_calls):
    """Apply PuLID on a MODEL that already carries this pack's patches (two identities, or a graph
    re-run): the input MODEL keeps exactly its one identity, and re-running gives the same model
    (the archived port appended each run to the shared patch object)."""
    from comfyui_pulid.nodes.pulid import PuLIDApply

    model, clip, _ = tiny_sdxl
    first = PuLIDApply.execute(model, loaded["v1"], loaded["eva"], loaded["face"], face_image, "fidelity", 0.8,
                               0.0, 1.0).result[0]
    key = ("output", 1, 3)
    q, k, v, eo = layer_calls[key]
    first_out = attn2_patches(first)[key](q, k, v, dict(eo))
    first_image = sample(first, clip)
    flipped = face_image.flip(2)
    outs = []
    for _ in range(3):  # the second Apply node re-executed (a downstream widget changed)
        again = PuLIDApply.execute(first, loaded["v1"], loaded["eva"], loaded["face"], flipped, "style", 0.8,
                                   0.0, 1.0).result[0]
        outs.append(attn2_patches(again)[key](q, k, v, dict(eo)))
    # The second identity is added once on top of the first...
    assert not torch.allclose(outs[0], first_out)
    assert torch.equal(outs[1], outs[0]) and torch.equal(outs[2], outs[0])
    # ...and the first MODEL is untouched: same layer output, same image.
    assert torch.equal(attn2_patches(first)[key](q, k, v, dict(eo)), first_out)
    assert torch.equal(sample(first, clip), first_image)


def _direct_patch(loaded, projection="ortho_v2", num_zero=8, weight=0.8, mask=None, start=1e9, end=0.0):
    from comfyui_pulid.nodes.attn_patch import IDAttnPatch, IDContext

    adapter = loaded["v1"]
    gen = torch.Generator().manual_seed(3)
    cond = torch.randn(1, 10, adapter.model.context_dim, generator=gen)
    uncond = torch.randn(1, 10, adapter.model.context_dim, generator=gen)
    ctx = IDContext(adapter.patcher, cond, uncond, weight=weight, projection=projection, num_zero=num_zero,
                    sigma_start=start, sigma_end=end, mask=mask)
    return IDAttnPatch(ctx, 1), cond, uncond


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0], [0, 0, 1]])
def test_rows_follow_cond_or_uncond(loaded, order):
    from pulid_core.attention import id_attention

    patch, cond, uncond = _direct_patch(loaded)
    model = loaded["v1"].model
    per_chunk, tokens, width, heads = 2, 64, 64, 4
    q = torch.randn(per_chunk * len(order), tokens, width)
    k = torch.randn(per_chunk * len(order), 77, width)
    eo = {"n_heads": heads, "dim_head": 16, "cond_or_uncond": order, "sigmas": torch.tensor([1.0]),
          "activations_shape": [q.shape[0], width, 8, 8]}
    out = patch(q, k, k, eo)
    base = torch.nn.functional.scaled_dot_product_attention(
        q.view(q.shape[0], tokens, heads, 16).transpose(1, 2), k.view(k.shape[0], 77, heads, 16).transpose(1, 2),
        k.view(k.shape[0], 77, heads, 16).transpose(1, 2)).transpose(1, 2).reshape(q.shape)
    for c, kind in enumerate(order):
        rows = slice(c * per_chunk, (c + 1) * per_chunk)
        id_k, id_v = model.id_kv(1, uncond if kind == 1 else cond, 8)
        want = id_attention(base[rows], q[rows], id_k, id_v, heads, 0.8, "ortho_v2")
        torch.testing.assert_close(out[rows], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0, 0, 1], [1, 1, 0]])
def test_uncond_rows_get_the_uncond_tokens_in_any_order(tiny_sdxl, loaded, face_image, layer_calls, order):
    """Every row gets the same q/k/v; only its cond_or_uncond entry differs. Models whose uncond
    tokens are the cond tokens (and the reverse) say what each kind of row must show."""
    import dataclasses

    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds, PuLIDEncodeFace

    embeds = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], face_image, "largest", 0,
                                     "error", "average").result[0]
    variants = {"real": embeds, "cond everywhere": dataclasses.replace(embeds, uncond=embeds.cond),
                "uncond everywhere": dataclasses.replace(embeds, cond=embeds.uncond)}
    patches = {name: attn2_patches(PuLIDApplyEmbeds.execute(tiny_sdxl[0], loaded["v1"], e, "fidelity", 0.8, 0.0,
                                                            1.0).result[0]) for name, e in variants.items()}
    key = ("input", 8, 1)
    q, k, v, eo = layer_calls[key]
    q, k, v = (t[:1].repeat(len(order), 1, 1) for t in (q, k, v))
    eo = dict(eo, cond_or_uncond=list(order), activations_shape=[len(order), *eo["activations_shape"][1:]])
    outs = {name: p[key](q, k, v, dict(eo)) for name, p in patches.items()}
    scale = float(outs["real"].abs().max())
    # The two kinds of rows really differ (else this test could not tell them apart).
    assert (outs["cond everywhere"][0] - outs["uncond everywhere"][0]).abs().max() > 1e-3 * scale
    for row, kind in enumerate(order):
        want = outs["uncond everywhere" if kind == 1 else "cond everywhere"][row]
        torch.testing.assert_close(outs["real"][row], want, rtol=0, atol=1e-6 * scale)


def test_sigma_range_gates_the_id_term(loaded):
    patch, _, _ = _direct_patch(loaded, start=5.0, end=2.0)
    q = torch.randn(2, 64, 64)
    eo = {"n_heads": 4, "cond_or_uncond": [1, 0], "activations_shape": [2, 64, 8, 8]}
    outside = patch(q, q, q, dict(eo, sigmas=torch.tensor([9.0])))
    inside = patch(q, q, q, dict(eo, sigmas=torch.tensor([3.0])))
    plain, _, _ = _direct_patch(loaded, weight=0.0)
    base = plain(q, q, q, dict(eo, sigmas=torch.tensor([3.0])))
    assert torch.equal(outside, base)
    assert not torch.allclose(inside, base)


@pytest.mark.parametrize("order", ["apply_then_schedule", "schedule_then_apply"])
def test_start_end_at_follow_the_schedule_of_the_sampled_model(tiny_sdxl, loaded, face_image, monkeypatch, order):
    """start_at/end_at are fractions of the schedule that is sampled, as ComfyUI's own timestep ranges:
    a model-sampling node after Apply PuLID moves the sigmas they mean (EDM 120..0.002: end_at 0.5 is
    sigma 0.49 there, 1.62 on SDXL's discrete schedule). The steps where the ID term runs are exactly
    those whose sigma lies in the range on the sampled model, whichever node comes first."""
    from comfy_extras.nodes_model_advanced import ModelSamplingContinuousEDM
    from comfyui_pulid.nodes import sigma_gate
    from comfyui_pulid.nodes.pulid import PuLIDApply

    def schedule(model):
        return ModelSamplingContinuousEDM().patch(model, "eps", 120.0, 0.002)[0]

    def pulid(model):
        return PuLIDApply.execute(model, loaded["v1"], loaded["eva"], loaded["face"], face_image, "fidelity", 0.8,
                                  0.25, 0.5).result[0]

    applied = pulid(tiny_sdxl[0])
    model = schedule(applied) if order == "apply_then_schedule" else pulid(schedule(tiny_sdxl[0]))
    gate_call = sigma_gate.SigmaGate.__call__
    seen = {}

    def recording(self, options):
        decision = gate_call(self, options)
        seen[round(float(options["sigmas"].reshape(-1)[0]), 5)] = decision
        return decision

    monkeypatch.setattr(sigma_gate.SigmaGate, "__call__", recording)
    # The same application sampled on its own schedule (discrete) after the other one: each run converts anew.
    for sampled in (model, applied):
        seen.clear()
        sample(sampled, tiny_sdxl[1], steps=8)
        ms = sampled.get_model_object("model_sampling")
        start, end = ms.percent_to_sigma(0.25), ms.percent_to_sigma(0.5)
        assert len(seen) == 8 and 0 < sum(seen.values()) < 8
        assert seen == {s: end <= s <= start for s in seen}


@pytest.mark.parametrize("regional", ["ConditioningSetArea", "ConditioningSetMask-mask-bounds"])
def test_attn_mask_follows_a_regional_prompts_crop(tiny_sdxl, loaded, face_image, monkeypatch, regional):
    """A prompt restricted to a region (ConditioningSetArea, or ConditioningSetMask with "mask bounds")
    runs on the crop of the latent inside it (comfy.samplers.get_area_and_mult): the whole-image
    attn_mask must then be cut to that area, not squeezed onto the crop. Here the prompt covers the
    right half of a 128x128 image and the person's mask its right quarter: on the crop's token grid
    the ID term must cover the crop's right half (before the fix, the right half of the mask, i.e.
    the image's right eighth)."""
    from comfyui_pulid.nodes.attn_patch import IDContext
    from comfyui_pulid.nodes.pulid import PuLIDApply

    from nodes import ConditioningSetArea, ConditioningSetMask

    person = torch.zeros(1, 128, 128)
    person[..., 96:] = 1.0
    model = PuLIDApply.execute(tiny_sdxl[0], loaded["v1"], loaded["eva"], loaded["face"], face_image, "fidelity",
                               0.8, 0.0, 1.0, attn_mask=person).result[0]
    seen = []
    mask_rows = IDContext.mask_rows

    def recording(self, extra_options, *args):
        rows = mask_rows(self, extra_options, *args)
        seen.append((tuple(extra_options["activations_shape"][2:]), rows))
        return rows

    monkeypatch.setattr(IDContext, "mask_rows", recording)
    clip = tiny_sdxl[1]
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a portrait photo"), return_pooled=True)
    positive = [[cond, {"pooled_output": pooled}]]
    if regional == "ConditioningSetArea":
        positive = ConditioningSetArea().append(positive, 64, 128, 64, 0, 1.0)[0]
    else:
        right = torch.zeros(1, 128, 128)
        right[..., 64:] = 1.0
        positive = ConditioningSetMask().append(positive, right, "mask bounds", 1.0)[0]
    negative = [[torch.zeros_like(cond), {"pooled_output": torch.zeros_like(pooled)}]]
    import comfy.sample

    latent = torch.zeros(1, 4, 16, 16)
    comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 1, 1.0, "euler", "normal", positive,
                        negative, latent, disable_pbar=True)
    # cfg 1: only the regional prompt runs, on its 16x8 crop: attn2 grids 8x4 and 4x2 (the whole latent's: 8x8, 4x4).
    assert {hw for hw, _ in seen} == {(8, 4), (4, 2)}
    for (h, w), rows in seen:
        grid = rows[0, :, 0].reshape(h, w)
        torch.testing.assert_close(grid[:, : w // 2], torch.zeros(h, w // 2))
        torch.testing.assert_close(grid[:, w // 2 :], torch.ones(h, w // 2))


def test_mask_is_resized_to_each_layers_token_grid(loaded):
    mask = torch.zeros(1, 32, 48)
    mask[:, :, :24] = 1.0  # left half
    patch, _, _ = _direct_patch(loaded, mask=mask)
    plain, _, _ = _direct_patch(loaded, weight=0.0)
    q = torch.randn(2, 4 * 6, 64)  # a 4x6 token grid
    eo = {"n_heads": 4, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0]), "activations_shape": [2, 64, 4, 6]}
    diff = (patch(q, q, q, eo) - plain(q, q, q, eo)).abs().sum(-1).reshape(2, 4, 6)
    assert (diff[:, :, :3] > 0).all() and torch.all(diff[:, :, 3:] == 0)


def test_fp16_queries_get_fp16_output(loaded):
    patch, _, _ = _direct_patch(loaded)
    q = torch.randn(2, 16, 64).half()
    eo = {"n_heads": 4, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([1.0]), "activations_shape": [2, 64, 4, 4]}
    out = patch(q, q, q, eo)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["fidelity", "style", "neutral"])
def test_fp16_layer_output_matches_fp32(tiny_sdxl, loaded, face_image, layer_calls, method):
    """A UNet in fp16 gets the same layer output as in fp32, up to fp16 rounding: q/k/v and the
    text attention rounded to 11 bits (eps 2^-11) and the ID term added in fp32 then rounded.
    Measured (1 and 2 threads): neutral 1.9, fidelity 5.4, style 7.3 eps of the output's largest
    value (ortho subtracts a projection: cancellation); 16 eps leaves a margin of 2, while the ID
    term is ~2000 eps here: an fp16-only error of 2 % in the ID term is ~40 eps."""
    from comfyui_pulid.nodes.pulid import PuLIDApply

    out = PuLIDApply.execute(tiny_sdxl[0], loaded["v1"], loaded["eva"], loaded["face"], face_image, method, 0.8,
                             0.0, 1.0).result[0]
    key = ("output", 3, 1)
    patch = attn2_patches(out)[key]
    q, k, v, eo = layer_calls[key]
    want = patch(q, k, v, dict(eo))
    got = patch(q.half(), k.half(), v.half(), dict(eo))
    assert got.dtype == torch.float16
    scale = float(want.abs().max())
    torch.testing.assert_close(got.float(), want, rtol=0, atol=16 * 2.0**-11 * scale)
    # The ID term is far above that tolerance (the check can see a wrong term).
    assert (want - _unpatched_attention(q, k, v, eo)).abs().max() > 200 * 2.0**-11 * scale


def test_distilled_unet_is_refused(pack, loaded, face_image):
    from comfyui_pulid.nodes.pulid import PuLIDApply

    from comfy_testpack.tiny_models import tiny_sdxl_model
    from pulid_core.errors import PuLIDError

    with pytest.raises(PuLIDError, match="70 cross-attention layers"):
        PuLIDApply.execute(tiny_sdxl_model("ssd1b"), loaded["v1"], loaded["eva"], loaded["face"], face_image,
                           "fidelity", 0.8, 0.0, 1.0)


def test_encode_save_load_apply_roundtrip(tiny_sdxl, loaded, face_image, models_dir):
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds, PuLIDEncodeFace, PuLIDLoadEmbeds, PuLIDSaveEmbeds

    two = torch.cat([face_image, face_image.flip(2)])
    embeds, preview = PuLIDEncodeFace.execute(loaded["v1.1"], loaded["eva"], loaded["face"], two, "largest", 0,
                                              "error", "average").result
    assert embeds.version == "v1.1" and embeds.images == 2 and embeds.cond.shape[1] == 32
    assert preview.shape == (2, 512, 1024, 3)
    ui = PuLIDSaveEmbeds.execute(embeds, "face").ui
    assert "PuLID v1.1" in ui["text"][0]
    saved = sorted(p.name for p in (models_dir / "pulid_embeds").glob("face_*.safetensors"))
    loaded_embeds = PuLIDLoadEmbeds.execute(saved[-1]).result[0]
    assert torch.equal(loaded_embeds.cond, embeds.cond) and torch.equal(loaded_embeds.uncond, embeds.uncond)
    out = PuLIDApplyEmbeds.execute(tiny_sdxl[0], loaded["v1.1"], loaded_embeds, "fidelity", 0.8, 0.0, 1.0).result[0]
    assert len(attn2_patches(out)) == 70
    from pulid_core.errors import PuLIDError

    with pytest.raises(PuLIDError, match="made with PuLID v1.1"):
        PuLIDApplyEmbeds.execute(tiny_sdxl[0], loaded["v1"], loaded_embeds, "fidelity", 0.8, 0.0, 1.0)


def test_v1_concat_follows_the_official_app(loaded, face_image):
    """concat: all 10 tokens of the first photo, then the FIRST 5 of each other photo (the official
    v1 app); the uncond tokens are extended the same way from the one uncond encoding."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    photos = [face_image, face_image.flip(2), (face_image * 0.8 + 0.1).clamp(0, 1)]

    def encode(images, combine):
        return PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], images, "largest", 0, "error",
                                       combine).result[0]

    cat = encode(torch.cat(photos), "concat")
    single = [encode(p, "average") for p in photos]
    assert cat.cond.shape[1] == 10 + 2 * 5 and cat.uncond.shape == cat.cond.shape
    scale = float(cat.cond.abs().max())

    def same(a, b):  # one photo at a time vs three in a batch: float rounding only
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * scale)

    same(cat.cond[:, :10], single[0].cond)
    for n in (1, 2):
        tokens = single[n].cond
        # Each photo's first 5 tokens differ from its last 5 and from the other photos'.
        assert (tokens[:, :5] - tokens[:, 5:]).abs().max() > 1e-2 * scale
        assert (tokens - single[0].cond).abs().max() > 1e-2 * scale
        same(cat.cond[:, 5 + 5 * n:10 + 5 * n], tokens[:, :5])
        same(cat.uncond[:, 5 + 5 * n:10 + 5 * n], cat.uncond[:, :5])
    same(cat.uncond[:, :10], single[0].uncond)


def test_no_face_errors_name_the_image(loaded, face_image):
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    from pulid_core.errors import PuLIDError

    black = torch.zeros_like(face_image)
    with pytest.raises(PuLIDError, match="Encode Face"):
        PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], black, "largest", 0, "error", "average")
    ok = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], torch.cat([black, face_image]),
                                 "largest", 0, "skip", "average").result[0]
    assert ok.images == 1
