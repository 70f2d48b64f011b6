"""PuLID (SDXL, FLUX) and PhotoMaker combined with ComfyUI's own sampling and conditioning nodes
(defects two reviews found on 2026-11-28, kept as regression tests; each docstring says what
happened before the fix).

Everything runs in process with the tiny SDXL / FLUX.1 of tests/comfy_testpack, sampled as ComfyUI's
executor runs a node (under ``torch.inference_mode``), through ``comfy.sample.sample`` or a guider's
``sample`` (what KSampler and SamplerCustomAdvanced call).

Root cause of the first three: ComfyUI's ``transformer_options["cond_or_uncond"]`` holds, per chunk,
the *position* of its cond list in the ``calc_cond_batch`` call (comfy/samplers.py ``_calc_cond_batch``:
``cond_or_uncond.append(o[1])``), not its kind. CFGGuider calls it with [positive, negative], so 0/1
happen to mean cond/uncond; DualCFGGuider calls it with [negative, middle, positive], PerpNegGuider with
[positive, negative, empty], SelfAttentionGuidance with [uncond] alone. The pack read 1 as uncond and
everything else as cond; it now takes each chunk's kind from the guider's prompts (nodes/run_options.py).
"""

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.comfy


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl_embeds(loaded, face_image):
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    return PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], face_image, "largest", 0,
                                   "error", "average").result[0]


@pytest.fixture(scope="module")
def ph(pack):
    import importlib

    pack.nodes.node_list()  # registers the pack's model folders
    return importlib.import_module("comfyui_pulid.nodes.photomaker")


@pytest.fixture(scope="module")
def pm(ph, si, tiny_sdxl, tmp_path_factory):
    """(MODEL with the bundled LoRA, photomaker) of a tiny PhotoMaker v1 file, through the loader node."""
    import folder_paths

    folder = tmp_path_factory.mktemp("photomaker_review")
    si.write_tiny_photomaker(folder / "photomaker-v1.bin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(folder_paths.folder_names_and_paths, "photomaker", ([str(folder)], {".bin"}))
        yield ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], "photomaker-v1.bin", 1.0).result


def images(n, seed=0, h=96, w=128):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=gen)


def pulid(model, loaded, embeds, method="fidelity", weight=1.0, attn_mask=None):
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds

    return PuLIDApplyEmbeds.execute(model, loaded["v1"], embeds, method, weight, 0.0, 1.0,
                                    attn_mask=attn_mask).result[0]


def pulid_flux(model, loaded, embeds, weight=1.0, start_at=0.0, end_at=1.0, attn_mask=None):
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds

    return PuLIDFluxApplyEmbeds.execute(model, loaded["flux"], embeds, weight, start_at, end_at, attn_mask).result[0]


def attn2(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def text(clip, prompt):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def zeroed(conditioning):
    from nodes import ConditioningZeroOut

    return ConditioningZeroOut().zero_out(conditioning)[0]


def flux_prompts(seed=5):
    gen = torch.Generator().manual_seed(seed)
    positive = [[torch.randn(1, 8, 64, generator=gen),
                 {"pooled_output": torch.randn(1, 32, generator=gen), "guidance": 3.5}]]
    negative = [[torch.randn(1, 8, 64, generator=gen),
                 {"pooled_output": torch.randn(1, 32, generator=gen), "guidance": 3.5}]]
    return positive, negative


def run_guider(guider, latent, steps=1, scheduler="normal", seed=0):
    """What SamplerCustomAdvanced does with a guider (euler, ``steps`` steps)."""
    import comfy.sample
    import comfy.samplers

    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), scheduler,
                                             steps)
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True,
                             seed=seed)


def ksample(model, positive, negative, latent, steps=1, cfg=5.0, seed=0, scheduler="normal"):
    """What KSampler does (euler)."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, positive, negative, latent,
                                   disable_pbar=True, seed=seed)


def cfg_guider(model, positive, negative, cfg):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def dual_cfg_guider(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative):
    from comfy_extras.nodes_custom_sampler import DualCFGGuider

    return DualCFGGuider.execute(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative,
                                 "regular").result[0]


def biggest(t):
    return float(t.abs().max())


# -- 1. DualCFGGuider: the negative prompt gets the positive's identity ------------------------------
def test_dual_cfg_guider_with_equal_scales_matches_cfg_guider(tiny_sdxl, loaded, sdxl_embeds):
    """DualCFGGuider (regular) predicts neg + cfg2 * (middle - neg) + cfg1 * (pos - middle); with
    cfg_conds == cfg_cond2_negative the middle cancels and it is exactly CFGGuider(pos, neg) at that
    cfg (true on the unpatched model, to the last bit). With the PuLID model it is not: ComfyUI
    batches [negative, middle, positive], so cond_or_uncond is [0, 1, 2] and the pack gives the
    NEGATIVE prompt the cond ID tokens (0 = "cond") and the middle the uncond ones: the negative side
    of the guidance carries the face's own identity, and the image differs from CFGGuider's by 1.45
    after one euler step (allowed: 0.047). Expected: the negative prompt gets the uncond ID tokens,
    and DualCFG at equal scales is CFGGuider."""
    model, clip, _ = tiny_sdxl
    positive, middle, negative = text(clip, "a portrait photo"), text(clip, "a photo"), text(clip, "blurry")
    latent = torch.zeros(1, 4, 16, 16)
    plain_cfg = run_guider(cfg_guider(model, positive, negative, 4.0), latent)
    assert torch.equal(run_guider(dual_cfg_guider(model, positive, middle, negative, 4.0, 4.0), latent), plain_cfg)

    patched = pulid(model, loaded, sdxl_embeds)
    want = run_guider(cfg_guider(patched, positive, negative, 4.0), latent)
    got = run_guider(dual_cfg_guider(patched, positive, middle, negative, 4.0, 4.0), latent)
    assert biggest(want - plain_cfg) > 1.0  # the identity is there at all
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * biggest(want),
                               msg=lambda m: f"DualCFGGuider (equal scales) != CFGGuider on the PuLID model:\n{m}")


def test_flux_dual_cfg_guider_with_equal_scales_matches_cfg_guider(tiny_flux, loaded, flux_embeds):
    """The same on PuLID-FLUX (true-CFG FLUX graphs with DualCFGGuider): pulid_core.flux.select_rows
    reads cond_or_uncond [0, 1, 2] as cond / uncond / cond, so the negative prompt gets the face's ID
    tokens and the middle the IDFormer-of-zeros ones. Today the image differs from CFGGuider's by 11.3
    after one step (allowed: 0.003); expected: equal."""
    positive, negative = flux_prompts()
    latent = torch.zeros(1, 16, 8, 8)
    plain_cfg = run_guider(cfg_guider(tiny_flux, positive, negative, 3.0), latent, scheduler="simple")
    patched = pulid_flux(tiny_flux, loaded, flux_embeds)
    want = run_guider(cfg_guider(patched, positive, negative, 3.0), latent, scheduler="simple")
    got = run_guider(dual_cfg_guider(patched, positive, positive, negative, 3.0, 3.0), latent, scheduler="simple")
    assert biggest(want - plain_cfg) > 1.0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * biggest(want),
                               msg=lambda m: f"FLUX DualCFGGuider (equal scales) != CFGGuider:\n{m}")


# -- 2. PerpNegGuider: the empty prompt (the CFG baseline) gets the cond identity --------------------
def test_perp_neg_guider_without_negative_matches_cfg_on_the_empty_prompt(tiny_sdxl, loaded, sdxl_embeds):
    """PerpNegGuider predicts empty + cfg * (pos - empty - neg_scale * perp(neg)); at neg_scale 0
    that is exactly CFGGuider(positive, empty_conditioning) (to the last bit on the unpatched model).
    ComfyUI batches [positive, negative, empty] (cond_or_uncond [0, 2] once the unused negative is
    dropped) and marks the empty prompt ``prompt_type: negative``; the pack reads 2 as "cond", so the
    CFG baseline carries the face's own ID tokens and the identity gets no CFG guidance at all (the
    image differs from CFGGuider's by 1.97 after one step, allowed 0.047). Expected: the empty prompt
    is an uncond row and PerpNeg at neg_scale 0 equals CFG on the empty prompt."""
    from comfy_extras.nodes_perpneg import PerpNegGuider

    model, clip, _ = tiny_sdxl
    positive, negative, empty = text(clip, "a portrait photo"), text(clip, "blurry"), text(clip, "")
    latent = torch.zeros(1, 4, 16, 16)

    def perp_neg(m):
        return PerpNegGuider.execute(m, positive, negative, empty, 5.0, 0.0).result[0]

    plain_cfg = run_guider(cfg_guider(model, positive, empty, 5.0), latent)
    assert torch.equal(run_guider(perp_neg(model), latent), plain_cfg)

    patched = pulid(model, loaded, sdxl_embeds)
    want = run_guider(cfg_guider(patched, positive, empty, 5.0), latent)
    got = run_guider(perp_neg(patched), latent)
    assert biggest(want - plain_cfg) > 1.0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * biggest(want),
                               msg=lambda m: f"PerpNegGuider (neg_scale 0) != CFGGuider(positive, empty):\n{m}")


# -- 3. SelfAttentionGuidance: its extra pass on the negative prompt gets the cond identity -----------
def test_self_attention_guidance_pass_on_the_negative_gets_the_uncond_identity(tiny_sdxl, loaded, sdxl_embeds,
                                                                               monkeypatch):
    """Self-Attention Guidance (comfy_extras/nodes_sag.py) runs, after CFG, one more UNet pass on the
    NEGATIVE prompt (``calc_cond_batch(model, [uncond], degraded_noised, ...)``) and adds
    (degraded - that pass) * scale. That pass arrives with cond_or_uncond [0] (the position in the
    one-element list), so every attn2 layer gives the negative prompt the face's cond ID tokens,
    while its CFG pass got the uncond ones: SAG's correction then carries cond-minus-uncond identity
    instead of the blur difference. Checked on one layer (input 8, transformer 1) with the q/k/v that
    layer really receives: every chunk of the negative prompt must get what the same layer gives
    when the cond tokens are the uncond tokens (the CFG pass does; the SAG pass does not today)."""
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    from comfyui_pulid.nodes.attn_patch import IDAttnPatch

    model, clip, _ = tiny_sdxl
    key = ("input", 8, 1)
    patched = pulid(model, loaded, sdxl_embeds)
    target = attn2(patched)[key]
    uncond_only = attn2(pulid(model, loaded, dataclasses.replace(sdxl_embeds, cond=sdxl_embeds.uncond)))[key]
    cond_only = attn2(pulid(model, loaded, dataclasses.replace(sdxl_embeds, uncond=sdxl_embeds.cond)))[key]

    calls = []
    call = IDAttnPatch.__call__

    def recording(self, q, k, v, extra_options):
        if self is target:
            calls.append((q.clone(), k.clone(), v.clone(), dict(extra_options)))
        return call(self, q, k, v, extra_options)

    monkeypatch.setattr(IDAttnPatch, "__call__", recording)
    guider = cfg_guider(SelfAttentionGuidance.execute(patched, 0.5, 2.0).result[0], text(clip, "a portrait photo"),
                        text(clip, "blurry"), 5.0)
    run_guider(guider, torch.zeros(1, 4, 16, 16))
    monkeypatch.undo()
    negative = guider.original_conds["negative"][0]["uuid"]

    seen = []
    with torch.inference_mode():
        for q, k, v, eo in calls:
            uuids = list(eo["uuids"])
            rows = q.shape[0] // len(uuids)
            got, want, other = (p(q, k, v, dict(eo)) for p in (target, uncond_only, cond_only))
            for chunk, uuid in enumerate(uuids):
                if uuid != negative:
                    continue
                part = slice(chunk * rows, (chunk + 1) * rows)
                # The two kinds of ID tokens give visibly different outputs on this chunk.
                assert biggest(want[part] - other[part]) > 1e-3 * biggest(want[part])
                seen.append((tuple(eo["cond_or_uncond"]), torch.allclose(got[part], want[part], rtol=0,
                                                                         atol=1e-6 * biggest(want[part]))))
    assert len(seen) == 2, seen  # the CFG pass and SAG's pass
    assert all(ok for _, ok in seen), f"negative-prompt chunks (cond_or_uncond, got the uncond identity): {seen}"


# -- 4. Two masked identities: the image depends on the order of the two Apply nodes ------------------
def test_two_masked_identities_do_not_depend_on_the_order_of_the_apply_nodes(tiny_sdxl, loaded, sdxl_embeds,
                                                                             face_image):
    """README "Several people in one image": chain Apply nodes with an attn_mask each. Person A on the
    left half, person B on the right half (disjoint masks, hard at every attn2 token grid). Swapping
    the two Apply nodes should not change the picture, but it does, by about as much as the identity
    itself changes it (fidelity: 6.27 after one step, allowed 0.047; "style" too; "neutral", which has
    no projection, gives exactly the same image in both orders). The second patch in the
    chain takes the first one's output as its text attention H: its ortho / ortho_v2 projection sums
    <H, I> and |H|^2 per channel over ALL tokens (pulid_core.attention.id_attention_prepared), which
    now include the other person's ID term, so whichever identity comes second is projected against
    a different H. Expected: the same image in either order (each identity projected against the
    same text attention)."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    model, clip, _ = tiny_sdxl
    other = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], face_image.flip(2), "largest", 0,
                                    "error", "average").result[0]
    left = torch.zeros(1, 128, 128)
    left[..., :64] = 1.0
    right = 1.0 - left
    a_then_b = pulid(pulid(model, loaded, sdxl_embeds, attn_mask=left), loaded, other, attn_mask=right)
    b_then_a = pulid(pulid(model, loaded, other, attn_mask=right), loaded, sdxl_embeds, attn_mask=left)
    positive = text(clip, "two people")
    negative = zeroed(positive)
    latent = torch.zeros(1, 4, 16, 16)
    first, second = ksample(a_then_b, positive, negative, latent), ksample(b_then_a, positive, negative, latent)
    assert biggest(first - ksample(model, positive, negative, latent)) > 1.0
    torch.testing.assert_close(second, first, rtol=0, atol=1e-4 * biggest(first),
                               msg=lambda m: f"two masked identities: the image depends on the Apply order:\n{m}")


# -- 5. PhotoMaker drops SetClipHooks' conditioning hooks ------------------------------------------
def test_photomaker_encode_keeps_the_clip_hooks_on_its_conditioning(ph, pm, tiny_sdxl):
    """ComfyUI's hook LoRAs: CreateHookLora -> SetClipHooks (apply_to_conds=True) on the CLIP, then any
    text encode. CLIPTextEncode (``clip.encode_from_tokens_scheduled``) puts the CLIP's hook group on
    every conditioning entry ("hooks"), and the sampler applies the hook's MODEL-side LoRA weights
    while that prompt is sampled (comfy/samplers.py, hooks per cond). PhotoMaker Encode calls
    ``clip.encode_from_tokens(..., return_pooled=True)``, which never adds the hooks, so its
    conditioning has no "hooks" key: the UNet half of the hooked LoRA silently does nothing for the
    PhotoMaker prompt (CLIP half applied, model half not). A user expects the same hooks on the
    PhotoMaker conditioning as CLIPTextEncode gives, on both the text-only and the ID entry."""
    import comfy.hooks
    from comfy_extras.nodes_hooks import SetClipHooks

    from nodes import CLIPTextEncode

    hooks = comfy.hooks.create_hook_lora({}, 1.0, 1.0)
    clip = SetClipHooks().apply_hooks(tiny_sdxl[1], False, True, hooks)[0]
    reference = CLIPTextEncode().encode(clip, "a photo of a man, colorful")[0]
    assert all("hooks" in entry[1] for entry in reference)  # ComfyUI's own encode carries them
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(clip, pm[1], images(1), "a photo of a man img, colorful", "img",
                                                20.0).result
    assert [entry[1].get("hooks") for entry in conds] == [reference[0][1]["hooks"]] * len(conds)


# -- 6. PhotoMaker's style-strength split is destroyed by ConditioningSetTimestepRange -------------
def _active_at(model, conditioning, percent):
    """Indexes of the conditioning entries ComfyUI samples at ``percent`` of the schedule (the
    comparisons of comfy/samplers.py get_area_and_mult after calculate_start_end_timesteps)."""
    import comfy.sampler_helpers
    import comfy.samplers

    conds = comfy.sampler_helpers.convert_cond(conditioning)
    comfy.samplers.calculate_start_end_timesteps(model.model, conds)
    sigma = model.get_model_object("model_sampling").percent_to_sigma(percent)
    active = []
    for i, c in enumerate(conds):
        if "timestep_start" in c and sigma > c["timestep_start"]:
            continue
        if "timestep_end" in c and sigma < c["timestep_end"]:
            continue
        active.append(i)
    return active


def test_photomaker_style_steps_survive_conditioning_set_timestep_range(ph, pm, tiny_sdxl):
    """PhotoMaker Encode with style_strength 20 returns two entries, the text-only prompt on 0..0.2 and
    the ID prompt on 0.2..1, as start_percent/end_percent. A common graph restricts a prompt to part
    of the schedule with ComfyUI's ConditioningSetTimestepRange (e.g. the PhotoMaker prompt on 0..0.5,
    another prompt after it). That node overwrites start/end_percent on every entry, so today both
    entries get 0..0.5 and ComfyUI samples the text-only AND the ID prompt together on every step of
    that range (their predictions averaged): the style-strength steps are gone and the identity is
    diluted, silently. A user expects the range to narrow the PhotoMaker schedule: text-only on
    0..0.2, ID on 0.2..0.5. ComfyUI has keys for exactly this, the ones SetClipHooks' scheduled
    encodes use: ``clip_start_percent``/``clip_end_percent`` are intersected with start/end_percent
    (comfy/samplers.py calculate_start_end_timesteps)."""
    from nodes import ConditioningSetTimestepRange

    model = tiny_sdxl[0]
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(tiny_sdxl[1], pm[1], images(1), "a photo of a man img", "img",
                                                20.0).result
    text_only, with_id = 1, 0  # the entries' order
    assert _active_at(model, conds, 0.1) == [text_only] and _active_at(model, conds, 0.4) == [with_id]  # as encoded
    ranged = ConditioningSetTimestepRange().set_range(conds, 0.0, 0.5)[0]
    assert _active_at(model, ranged, 0.1) == [text_only], "text-only steps: only the text-only prompt"
    assert _active_at(model, ranged, 0.4) == [with_id], "ID steps: only the ID prompt"
    assert _active_at(model, ranged, 0.8) == [], "outside the range: neither"


def test_conditioning_average_and_concat_from_photomaker_keep_the_identity(ph, pm, tiny_sdxl):
    """ConditioningAverage and ConditioningConcat take only the first entry of their ``from`` input
    (ComfyUI warns). PhotoMaker Encode listed its text-only entry first, so a style prompt averaged or
    concatenated with PhotoMaker's output as ``from`` silently lost the identity; the ID entry is first
    now."""
    from nodes import ConditioningAverage, ConditioningConcat

    clip = tiny_sdxl[1]
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(clip, pm[1], images(1), "a photo of a man img", "img", 20.0).result
    with_id = next(c for c in conds if c[1]["clip_start_percent"] > 0)[0]
    style = text(clip, "oil painting")
    averaged = ConditioningAverage().addWeighted(style, conds, 0.0)[0]  # 0: all "from"
    torch.testing.assert_close(averaged[0][0], with_id)
    concatenated = ConditioningConcat().concat(style, conds)[0]
    torch.testing.assert_close(concatenated[0][0][:, -with_id.shape[1]:], with_id)


# -- 7. PuLID-FLUX single blocks refuse a pass in which no PuLID double block ran ------------------
def test_flux_single_blocks_work_when_skip_layer_guidance_skips_the_pulid_double_blocks(tiny_flux, loaded,
                                                                                       flux_embeds):
    """SkipLayerGuidanceDiTSimple (core, advanced/guidance) replaces the listed blocks in the uncond pass
    with a pass-through, on top of whatever occupies them, the PuLID patches included. The PuLID
    single-block patches learn where the image starts in ``cat(txt, img)`` only from the PuLID
    *double*-block patches of the same forward (flux_patch STREAMS); when the skipped layers cover
    the ten PuLID double blocks (0, 2, ..., 18), every single-block patch raises "the text length of
    this forward is unknown ... apply PuLID-FLUX with the pack's Apply node", which the user did, and
    the whole sampling fails. A user expects the skip pass to sample (the single-block identity added
    at the image tokens as in any other pass): the text length is known without the double blocks,
    e.g. from the forward's context in grid_wrapper or as the sequence length minus the grid and
    reference tokens."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiTSimple

    positive, negative = flux_prompts()
    model = pulid_flux(tiny_flux, loaded, flux_embeds)
    slg = SkipLayerGuidanceDiTSimple.execute(model, 0.0, 1.0, ", ".join(str(i) for i in range(0, 19, 2)),
                                             "7, 8, 9").result[0]
    out = ksample(slg, positive, negative, torch.zeros(1, 16, 8, 8), steps=1, cfg=2.0, scheduler="simple")
    assert torch.isfinite(out).all()


# -- ComfyUI's TorchCompileModel on a PuLID model ------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["compiled-kernel", "torch-ops"])
def test_torch_compile_model_runs_the_patches_and_gives_the_same_image(tiny_sdxl, loaded, sdxl_embeds, native,
                                                                      monkeypatch):
    """TorchCompileModel compiles the diffusion model with torch.compile; the attn2 patches run inside the
    traced forward (dynamo traces the torch ops, the compiled kernel's library call is a graph break).
    The 'eager' backend traces exactly as inductor does, without generating code (minutes on this CPU)."""
    import functools

    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfyui_pulid.nodes import attn_patch

    monkeypatch.setattr(attn_patch, "id_attention_prepared",
                        functools.partial(attn_patch.id_attention_prepared, native=None if native else False))
    torch._dynamo.reset()
    model, clip, _ = tiny_sdxl
    positive, negative = text(clip, "a portrait photo"), text(clip, "blurry")
    latent = torch.zeros(1, 4, 16, 16)
    patched = pulid(model, loaded, sdxl_embeds)
    want = ksample(patched, positive, negative, latent, steps=2)
    compiled = patched.clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    try:
        got = ksample(compiled, positive, negative, latent, steps=2)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - ksample(model, positive, negative, latent, steps=2)).abs().max() > 1e-3  # PuLID acted
