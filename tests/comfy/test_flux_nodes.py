"""Tier 2: PuLID-FLUX inside ComfyUI: a tiny FLUX.1 through ComfyUI's own FLUX class, golden parity."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfy

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "pulid_flux.safetensors"
SALT = "pub:"


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN))


def _input(name, shape):
    import detfill

    return torch.from_numpy(detfill.tensor(name, shape, SALT))


@pytest.fixture(scope="module")
def flux_inputs(golden):
    """The golden forward's inputs in ComfyUI's terms: the patchified img back to a [1,16,2h,2w] latent."""
    from einops import rearrange

    rows, cols = (int(v) for v in golden["tiny.grid"])
    img = _input("input.flux.img", (1, rows * cols, 64))
    x = rearrange(img, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=rows, w=cols, ph=2, pw=2)
    return {"x": x, "context": _input("input.flux.txt", (1, 8, 64)), "y": _input("input.flux.y", (1, 32)),
            "grid": (rows, cols)}


def flux_forward(model, inputs, **options):
    """ComfyUI's FLUX forward with the model's patches and wrappers, at timestep 0.7, guidance 3.5,
    returned patchified like the authors' ``Flux.forward`` output [B, h*w, 64]."""
    from einops import rearrange

    transformer_options = dict(model.model_options.get("transformer_options", {}))
    transformer_options["wrappers"] = model.wrappers
    transformer_options.update(options)
    with torch.no_grad():
        out = model.model.diffusion_model(inputs["x"], torch.tensor([0.7]), inputs["context"], y=inputs["y"],
                                          guidance=torch.tensor([3.5]), transformer_options=transformer_options)
    return rearrange(out, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def test_tiny_flux_unpatched_forward_equals_the_authors(tiny_flux, flux_inputs, golden):
    out = flux_forward(tiny_flux, flux_inputs)
    assert out.shape == golden["tiny.no_id"].shape
    torch.testing.assert_close(out, golden["tiny.no_id"], atol=1e-4, rtol=0)


# -- the pack's FLUX apply code on the tiny FLUX --------------------------------------------------
@pytest.fixture(scope="module")
def flux_models_dir(pack, model_folders):
    """models/ with the golden tiny PuLID-FLUX adapter, the FLUX stand-ins and the SDXL ones."""
    from safetensors.torch import save_file

    from comfy_testpack import stand_ins_pulid as s
    from pulid_layouts import flux_state_dict, tiny_flux_sizes

    root = model_folders("flux_models", "pulid", "eva_clip", "insightface", "facexlib")
    # The golden CA weights are tiny_ca.{i}.<key>; the file has them as pulid_ca.{i}.<key>.
    golden_ca = flux_state_dict(salt=SALT, rename=lambda k: k.replace("pulid_ca.", "tiny_ca."), **tiny_flux_sizes())
    save_file(golden_ca, str(root / "pulid" / "pulid_flux_golden_tiny.safetensors"))
    s.write_tiny_pulid(root / "pulid" / "pulid_flux_v0.9.1.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_v1.1.safetensors")
    s.write_tiny_eva(root / "eva_clip" / "EVA02_CLIP_L_336_psz14_s6B.pt")
    s.write_tiny_face_models(root / "insightface" / "antelopev2")
    pack.nodes.node_list()
    return root


@pytest.fixture(scope="module")
def adapters(flux_models_dir):
    from comfyui_pulid.nodes import loaders

    def load(name):
        return loaders.PuLIDModelLoader.execute(name).result[0]

    return {"golden": load("pulid_flux_golden_tiny.safetensors"), "flux": load("pulid_flux_v0.9.1.safetensors"),
            "sdxl": load("pulid_v1.1.safetensors")}


def golden_embeds(golden_id, uncond=None):
    from comfyui_pulid.nodes.pulid import IDEmbeds

    if uncond is None:
        uncond = torch.zeros_like(golden_id)
    return IDEmbeds("flux", golden_id, uncond, 1, "idformer")


@pytest.fixture(scope="module")
def golden_id():
    return _input("input.flux.id_tiny", (1, 32, 2048))


def apply_embeds(model, adapter, embeds, weight=1.0, start_at=0.0, end_at=1.0, attn_mask=None):
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds

    return PuLIDFluxApplyEmbeds.execute(model, adapter, embeds, weight, start_at, end_at, attn_mask).result[0]


def dit_patches(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


@pytest.mark.parametrize("weight", [1.0, 0.6])
def test_patched_tiny_flux_equals_the_authors(tiny_flux, flux_inputs, golden, adapters, golden_id, weight):
    out_model = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), weight)
    torch.testing.assert_close(flux_forward(out_model, flux_inputs), golden[f"tiny.id_w{weight}"], atol=1e-4, rtol=0)
    # The input MODEL is untouched: no identity left when the node is removed.
    assert dit_patches(tiny_flux) == {}
    torch.testing.assert_close(flux_forward(tiny_flux, flux_inputs), golden["tiny.no_id"], atol=1e-4, rtol=0)


def test_patches_sit_on_the_authors_20_blocks_and_are_shared_by_clones(tiny_flux, adapters, golden_id):
    import copy

    from comfyui_pulid.nodes.flux_patch import FluxBlockPatch

    out = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id))
    patches = dit_patches(out)
    assert sorted(patches) == sorted([("double_block", i) for i in range(0, 19, 2)]
                                     + [("single_block", i) for i in range(0, 38, 4)])
    assert sorted(p.ca for p in patches.values()) == list(range(20))
    assert all(isinstance(p, FluxBlockPatch) and p.upstream is None for p in patches.values())
    # ComfyUI loads and offloads the adapter (its CA modules) with the model: an additional model
    # of the patched ModelPatcher (a clone of the adapter's, as ComfyUI clones them with the model).
    assert [m.model for m in out.get_nested_additional_models()] == [adapters["golden"].patcher.model]
    assert all(p.models() == [] for p in patches.values())
    clone = out.clone()
    for key, patch in patches.items():
        assert dit_patches(clone)[key] is patch and copy.deepcopy(patch) is patch


def test_reapplying_replaces_the_identity_instead_of_stacking(tiny_flux, flux_inputs, golden, adapters, golden_id):
    once = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), 1.0)
    twice = apply_embeds(once, adapters["golden"], golden_embeds(golden_id), 0.6)
    assert all(p.upstream is None for p in dit_patches(twice).values())
    torch.testing.assert_close(flux_forward(twice, flux_inputs), golden["tiny.id_w0.6"], atol=1e-4, rtol=0)
    # The first application's model still has its own identity.
    torch.testing.assert_close(flux_forward(once, flux_inputs), golden["tiny.id_w1.0"], atol=1e-4, rtol=0)


def test_reapplying_replaces_an_identity_held_inside_another_packs_patch(tiny_flux, flux_inputs, golden, adapters,
                                                                          golden_id, caplog):
    once = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), 1.0)
    wrapped = once.clone()
    for (kind, index), patch in dit_patches(once).items():
        # Another pack's patch that holds whatever occupied the block (no chain to follow).
        wrapped.set_model_patch_replace(lambda args, extra, inner=patch: inner(args, extra), "dit", kind, index)
    with caplog.at_level(logging.INFO):
        twice = apply_embeds(wrapped, adapters["golden"], golden_embeds(golden_id), 0.6)
    assert "replaces 1 earlier PuLID-FLUX identity" in caplog.text
    torch.testing.assert_close(flux_forward(twice, flux_inputs), golden["tiny.id_w0.6"], atol=1e-4, rtol=0)
    # Only on the new model: the wrapped one keeps the first identity, through the other pack's patch.
    torch.testing.assert_close(flux_forward(wrapped, flux_inputs), golden["tiny.id_w1.0"], atol=1e-4, rtol=0)
    # A third application replaces the second and keeps the first out.
    thrice = apply_embeds(twice, adapters["golden"], golden_embeds(golden_id), 1.0)
    torch.testing.assert_close(flux_forward(thrice, flux_inputs), golden["tiny.id_w1.0"], atol=1e-4, rtol=0)


def test_masked_applications_chain_for_two_people(tiny_flux, adapters, golden_id):
    left, right = torch.zeros(1, 16, 16), torch.zeros(1, 16, 16)
    left[..., :8], right[..., 8:] = 1.0, 1.0
    first = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), attn_mask=left)
    second = apply_embeds(first, adapters["golden"], golden_embeds(-golden_id), attn_mask=right)
    for key, patch in dit_patches(second).items():
        assert patch.upstream is dit_patches(first)[key]
    # An unmasked application replaces both.
    third = apply_embeds(second, adapters["golden"], golden_embeds(golden_id))
    assert all(p.upstream is None for p in dit_patches(third).values())


def test_two_soft_masked_identities_do_not_depend_on_the_order_of_the_apply_nodes(tiny_flux, flux_inputs, adapters,
                                                                                 golden_id):
    """Two people with feathered masks that overlap in the middle. Before: the second Apply's CA read the
    image stream with the first's addition in it where both masks are non-zero, so swapping the two
    Apply nodes changed the image. Now every identity of a chain reads the block's own output."""
    ramp = torch.linspace(0.0, 1.0, 16)
    left, right = (1 - ramp).expand(1, 16, 16).clone(), ramp.expand(1, 16, 16).clone()
    a, b = golden_embeds(golden_id), golden_embeds(golden_id.flip(1) * 1.5)

    def chained(first, second):
        model = apply_embeds(tiny_flux, adapters["golden"], first[0], attn_mask=first[1])
        return flux_forward(apply_embeds(model, adapters["golden"], second[0], attn_mask=second[1]), flux_inputs)

    one_way, other_way = chained((a, left), (b, right)), chained((b, right), (a, left))
    alone = flux_forward(apply_embeds(tiny_flux, adapters["golden"], a, attn_mask=left), flux_inputs)
    assert (one_way - alone).abs().max() > 1e-3  # the second identity is there
    torch.testing.assert_close(one_way, other_way, atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"two soft-masked identities: the image depends on the Apply order:\n{m}")


def test_chains_onto_another_packs_block_patch(tiny_flux, flux_inputs, golden, adapters, golden_id):
    calls = []

    def passthrough(args, extra):
        calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    def shift(args, extra):
        out = extra["original_block"](args)
        # Not a constant: the next block's LayerNorm would remove that.
        return {**out, "img": out["img"] + 0.05 * torch.linspace(-1, 1, out["img"].shape[-1])}

    base = tiny_flux.clone()
    base.set_model_patch_replace(passthrough, "dit", "double_block", 0)
    base.set_model_patch_replace(passthrough, "dit", "single_block", 4)
    out = apply_embeds(base, adapters["golden"], golden_embeds(golden_id), 1.0)
    assert dit_patches(out)[("double_block", 0)].upstream is passthrough
    torch.testing.assert_close(flux_forward(out, flux_inputs), golden["tiny.id_w1.0"], atol=1e-4, rtol=0)
    assert calls == [0, 4]
    # The other patch's own effect stays too: different from PuLID alone and from it alone.
    shifted = tiny_flux.clone()
    shifted.set_model_patch_replace(shift, "dit", "double_block", 2)
    both = flux_forward(apply_embeds(shifted, adapters["golden"], golden_embeds(golden_id), 1.0), flux_inputs)
    assert (both - golden["tiny.id_w1.0"]).abs().max() > 1e-3
    assert (both - flux_forward(shifted, flux_inputs)).abs().max() > 1e-3
    assert dit_patches(shifted)[("double_block", 2)] is shift


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0, 0, 1]])
def test_uncond_rows_get_the_uncond_identity(tiny_flux, flux_inputs, golden, adapters, golden_id, order):
    uncond = _input("input.test.uncond_id", (1, 32, 2048))
    out_model = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id, uncond), 1.0)
    n = len(order)
    batch = {"x": flux_inputs["x"].repeat(n, 1, 1, 1), "context": flux_inputs["context"].repeat(n, 1, 1),
             "y": flux_inputs["y"].repeat(n, 1)}
    out = flux_forward(out_model, batch, cond_or_uncond=order)
    as_uncond = flux_forward(apply_embeds(tiny_flux, adapters["golden"], golden_embeds(uncond), 1.0), flux_inputs)
    for row, kind in enumerate(order):
        want = as_uncond[0] if kind == 1 else golden["tiny.id_w1.0"][0]
        torch.testing.assert_close(out[row], want, atol=1e-4, rtol=0)
    assert (as_uncond - golden["tiny.id_w1.0"]).abs().max() > 1e-3


def _one_block(adapters, golden_id, *, mask=None, sigma_range=(1e9, 0.0), block="double"):
    """A PuLID block patch over an identity block, and the image tokens it gets."""
    from comfyui_pulid.nodes.flux_patch import GRID, STREAMS, FluxBlockPatch, FluxIDContext

    ctx = FluxIDContext(adapters["golden"].patcher, golden_id, torch.zeros_like(golden_id), weight=1.0,
                        sigma_start=sigma_range[0], sigma_end=sigma_range[1], mask=mask)
    patch = FluxBlockPatch(ctx, block, 0 if block == "double" else 10)
    gen = torch.Generator().manual_seed(0)
    txt, img, ref = (torch.randn(1, n, 128, generator=gen) for n in (8, 16, 4))  # ref: Kontext tokens
    options = {"cond_or_uncond": [0], GRID: (4, 4), STREAMS: {"txt": 8}}

    def run(sigma=None):
        opts = dict(options, sigmas=torch.tensor([sigma])) if sigma is not None else options
        full = torch.cat([img, ref], 1)
        if block == "double":
            args = {"img": full, "txt": txt, "transformer_options": opts}
            return patch(args, {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}})["img"]
        args = {"img": torch.cat([txt, full], 1), "transformer_options": opts}
        return patch(args, {"original_block": lambda a: {"img": a["img"]}})["img"][:, 8:]

    return run, torch.cat([img, ref], 1)


@pytest.mark.parametrize("block", ["double", "single"])
def test_mask_restricts_the_identity_to_its_region_and_kontext_tokens_get_none(adapters, golden_id, block):
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0  # left half of the image
    run, before = _one_block(adapters, golden_id, mask=mask, block=block)
    changed = (run() - before).abs().sum(-1)[0]
    grid = changed[:16].reshape(4, 4)
    assert (grid[:, :2] > 0).all() and (grid[:, 2:] == 0).all()
    assert (changed[16:] == 0).all()  # reference tokens after the grid
    unmasked, _ = _one_block(adapters, golden_id, block=block)
    assert ((unmasked() - before).abs().sum(-1)[0, :16] > 0).all()


def test_single_blocks_leave_the_text_tokens_alone(adapters, golden_id):
    from comfyui_pulid.nodes.flux_patch import FluxBlockPatch, FluxIDContext

    ctx = FluxIDContext(adapters["golden"].patcher, golden_id, golden_id, weight=1.0, sigma_start=1e9, sigma_end=0.0)
    patch = FluxBlockPatch(ctx, "single", 12)
    joint = torch.randn(1, 8 + 16, 128)
    for options in ({"img_slice": [8, 24]}, {"pulid_flux_streams": {"txt": 8}}):  # newer ComfyUI / 0.3.75
        out = patch({"img": joint, "transformer_options": options}, {"original_block": lambda a: {"img": a["img"]}})
        assert torch.equal(out["img"][:, :8], joint[:, :8])
        assert not torch.allclose(out["img"][:, 8:], joint[:, 8:])


def test_start_and_end_gate_through_the_models_sigmas(tiny_flux, adapters, golden_id):
    run, before = _one_block(adapters, golden_id, sigma_range=(0.8, 0.3))
    assert torch.equal(run(0.9), before) and torch.equal(run(0.1), before)
    assert not torch.equal(run(0.5), before)
    out = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), 1.0, 0.25, 0.75)
    ctx = dit_patches(out)[("double_block", 0)].context
    sampling = tiny_flux.get_model_object("model_sampling")
    assert ctx.sigma_start == pytest.approx(float(sampling.percent_to_sigma(0.25)))
    assert ctx.sigma_end == pytest.approx(float(sampling.percent_to_sigma(0.75)))


def test_a_mask_batch_that_fits_no_latent_batch_is_refused_at_sampling(adapters, golden_id):
    from pulid_core.errors import PuLIDError

    # Two masks for one latent: never a silent mask[0] for every row.
    run, _ = _one_block(adapters, golden_id, mask=torch.ones(2, 64, 64))
    with pytest.raises(PuLIDError, match=r"Apply PuLID \(FLUX\): attn_mask holds 2 masks but the latent batch is 1"):
        run()


def test_the_sigma_gate_reads_the_step_once(adapters, golden_id, monkeypatch):
    from comfyui_pulid.nodes.flux_patch import GRID, STREAMS, FluxBlockPatch, FluxIDContext

    reads = []
    real = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real(t))
    img = torch.randn(1, 16, 128)

    def step(patch, sigmas):
        options = {"cond_or_uncond": [0], GRID: (4, 4), STREAMS: {"txt": 8}, "sigmas": sigmas}
        return patch({"img": img, "txt": img[:, :8], "transformer_options": options},
                     {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}})

    ranged = FluxIDContext(adapters["golden"].patcher, golden_id, golden_id, weight=1.0, sigma_start=0.8,
                           sigma_end=0.3)
    patches = [FluxBlockPatch(ranged, "double", k) for k in range(3)]
    sigmas = torch.tensor([0.5])
    for patch in patches:  # the blocks of one step share its sigmas tensor
        step(patch, sigmas)
    assert len(reads) == 1
    whole = FluxIDContext(adapters["golden"].patcher, golden_id, golden_id, weight=1.0, sigma_start=1e9,
                          sigma_end=0.0)
    step(FluxBlockPatch(whole, "double", 0), torch.tensor([0.5]))
    assert len(reads) == 1  # the whole schedule: nothing read


# -- the whole node with a face, sampling, refusals --------------------------------------------
@pytest.fixture(scope="module")
def face_tools(adapters):
    from comfyui_pulid.nodes import loaders

    return (loaders.PuLIDEvaClipLoader.execute("EVA02_CLIP_L_336_psz14_s6B.pt", "fp32").result[0],
            loaders.PuLIDInsightFaceLoader.execute("CPU", "antelopev2", "insightface").result[0])


def sample_flux(model, inputs, cfg=1.0, steps=2, seed=0):
    import comfy.sample

    positive = [[inputs["context"], {"pooled_output": inputs["y"], "guidance": 3.5}]]
    negative = [[torch.zeros_like(inputs["context"]), {"pooled_output": torch.zeros_like(inputs["y"]),
                                                        "guidance": 3.5}]]
    latent = torch.zeros_like(inputs["x"])
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True)


def test_apply_with_a_face_changes_sampling_and_nothing_accumulates(tiny_flux, flux_inputs, adapters, face_tools,
                                                                    face_image):
    from comfyui_pulid.nodes.flux import PuLIDFluxApply

    eva, face = face_tools
    two = torch.cat([face_image, face_image.flip(2)])
    out = PuLIDFluxApply.execute(tiny_flux, adapters["flux"], eva, face, two, 1.0, 0.0, 1.0, "largest", 0,
                                 "error").result[0]
    ctx = dit_patches(out)[("double_block", 0)].context
    # Both photos went through the IDFormer together (the authors' way): 32 tokens, not an average.
    assert ctx.cond.shape[:2] == (1, 32) and not torch.equal(ctx.cond, ctx.uncond)
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    one = [PuLIDEncodeFace.execute(adapters["flux"], eva, face, img[None], "largest", 0, "error", "average").result[0]
           for img in two]
    assert one[0].version == "flux"
    assert (ctx.cond - (one[0].cond + one[1].cond) / 2).abs().max() > 1e-4
    plain = sample_flux(tiny_flux, flux_inputs, cfg=2.0)
    with_id = sample_flux(out, flux_inputs, cfg=2.0)
    assert torch.isfinite(with_id).all() and (with_id - plain).abs().max() > 1e-4
    import comfy.model_management as mm

    # ComfyUI loaded the adapter (its CA modules) with the model for sampling.
    assert any(loaded.model is adapters["flux"].patcher for loaded in mm.current_loaded_models)
    assert torch.equal(sample_flux(out, flux_inputs, cfg=2.0), with_id)  # same graph, same image
    assert torch.equal(sample_flux(tiny_flux, flux_inputs, cfg=2.0), plain)  # the input model kept no identity
    # Starting after the last step: no identity at all.
    late = PuLIDFluxApply.execute(tiny_flux, adapters["flux"], eva, face, face_image, 1.0, 1.0, 1.0).result[0]
    torch.testing.assert_close(sample_flux(late, flux_inputs, cfg=2.0), plain)


class _ForeignWrapper:
    """Another pack's dit patch wrapped around whatever occupied the block, with no models()."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, args, extra):
        return self.inner(args, extra)


def test_adapter_is_loaded_under_another_packs_patch_without_models(tiny_flux, flux_inputs, adapters, golden_id):
    """Before: ComfyUI found the adapter only through our patches' models(); another pack's patch
    wrapped around ours without a models() of its own hid it, so ComfyUI never loaded the CA
    modules onto the sampling device (on a GPU: weights left on the CPU). Now it is an additional
    model of the patched ModelPatcher, found whichever patch occupies the blocks."""
    import comfy.model_management as mm

    out = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), 1.0)
    wrapped = out.clone()
    for (kind, index), patch in dit_patches(out).items():
        wrapped.set_model_patch_replace(_ForeignWrapper(patch), "dit", kind, index)
    mm.unload_all_models()
    assert not any(loaded.model.model is adapters["golden"].patcher.model for loaded in mm.current_loaded_models)
    image = sample_flux(wrapped, flux_inputs)
    assert any(loaded.model.model is adapters["golden"].patcher.model for loaded in mm.current_loaded_models)
    torch.testing.assert_close(image, sample_flux(out, flux_inputs))  # the wrapper changed nothing else
    # Replaced by a second application: only that one's adapter is registered.
    from comfyui_pulid.nodes.flux_patch import ADAPTER_KEY

    again = apply_embeds(out, adapters["golden"], golden_embeds(golden_id), 0.6)
    token = dit_patches(again)[("double_block", 0)].context.token
    assert [k for k in again.additional_models if k.startswith(ADAPTER_KEY)] == [ADAPTER_KEY + token]


def test_the_flux_file_on_the_sdxl_photo_nodes_is_named_before_the_presets(adapters, face_tools, face_image):
    """Before: 'Apply PuLID', 'Apply PuLID (Advanced)' with a preset and the legacy 'Apply PuLID'
    looked up the method presets first and answered "A PuLID-FLUX adapter has no method presets":
    neither the node nor the loaded file named. Now the model/adapter check comes first."""
    from comfyui_pulid.nodes.legacy import ApplyPulid
    from comfyui_pulid.nodes.pulid import PuLIDApply, PuLIDApplyAdvanced

    from comfy_testpack.tiny_models import tiny_sdxl_model
    from pulid_core.errors import PuLIDError

    eva, face = face_tools
    sdxl, flux = tiny_sdxl_model(), adapters["flux"]
    calls = [
        ("Apply PuLID", lambda: PuLIDApply.execute(sdxl, flux, eva, face, face_image, "fidelity", 0.8, 0.0, 1.0)),
        ("Apply PuLID (Advanced)", lambda: PuLIDApplyAdvanced.execute(
            sdxl, flux, eva, face, face_image, "style", 0.8, 0.0, 1.0, "ortho_v2", 8, 0.0, "largest", 0, "error",
            "average")),
        ("Apply PuLID (legacy id)",
         lambda: ApplyPulid.execute(sdxl, flux, eva, face, face_image, "fidelity", 0.8, 0.0, 1.0)),
    ]
    for node, call in calls:
        with pytest.raises(PuLIDError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{node}") and flux.filename in message and "Apply PuLID (FLUX)" in message, message


def test_fp16_and_bf16_models_run_the_ca_in_their_dtype(adapters, golden_id, flux_inputs):
    from comfy_testpack.tiny_flux import tiny_flux_model

    for dtype in (torch.bfloat16, torch.float16):
        model = tiny_flux_model(dtype=dtype)
        out_model = apply_embeds(model, adapters["golden"], golden_embeds(golden_id), 1.0)
        inputs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in flux_inputs.items()}
        out = flux_forward(out_model, inputs)
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_refusals_name_what_was_found(pack, tiny_flux, adapters, golden_id, face_tools, face_image):
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds
    from comfyui_pulid.nodes.flux import PuLIDFluxApply
    from comfyui_pulid.nodes.pulid import IDEmbeds, PuLIDApply

    from comfy_testpack.tiny_flux import tiny_flux_model
    from comfy_testpack.tiny_models import tiny_sdxl_model
    from pulid_core.errors import PuLIDError

    eva, face = face_tools
    embeds = golden_embeds(golden_id)
    sdxl = tiny_sdxl_model()
    with pytest.raises(PuLIDError, match=r"Apply PuLID Embeds \(FLUX\): the model is a UNet.*Apply PuLID"):
        apply_embeds(sdxl, adapters["golden"], embeds)
    with pytest.raises(PuLIDError, match=r"Apply PuLID \(FLUX\): pulid_v1.1.safetensors is a PuLID v1.1 adapter"):
        PuLIDFluxApply.execute(tiny_flux, adapters["sdxl"], eva, face, face_image, 1.0, 0.0, 1.0)
    with pytest.raises(PuLIDError, match="made with PuLID v1.1"):
        apply_embeds(tiny_flux, adapters["flux"], IDEmbeds("v1.1", golden_id, golden_id, 1, "idformer"))
    with pytest.raises(PuLIDError, match="PuLID-FLUX (adapter|file).*Apply PuLID \\(FLUX\\)"):
        PuLIDApply.execute(sdxl, adapters["flux"], eva, face, face_image, "fidelity", 0.8, 0.0, 1.0)
    with pytest.raises(PuLIDError, match="^Apply PuLID Embeds: .*DiT.*'Apply PuLID Embeds \\(FLUX\\)'"):
        PuLIDApplyEmbeds.execute(tiny_flux, adapters["sdxl"], IDEmbeds("v1.1", golden_id, golden_id, 1, "idformer"),
                                 "fidelity", 0.8, 0.0, 1.0)
    # The golden adapter is 128 wide like the tiny FLUX; the stand-in FLUX.1 checks: FLUX.2-like and
    # other block counts are refused.
    with pytest.raises(PuLIDError, match="FLUX.2"):
        apply_embeds(tiny_flux_model({"global_modulation": True, "vec_in_dim": None}), adapters["golden"], embeds)
    with pytest.raises(PuLIDError, match="8 single blocks"):
        apply_embeds(tiny_flux_model({"depth_single_blocks": 8}), adapters["golden"], embeds)
    for bad in (float("nan"), 7.0):
        with pytest.raises(PuLIDError, match="weight must be"):
            apply_embeds(tiny_flux, adapters["golden"], embeds, weight=bad)
    with pytest.raises(PuLIDError, match="start_at"):
        apply_embeds(tiny_flux, adapters["golden"], embeds, 1.0, 0.8, 0.2)
    with pytest.raises(PuLIDError, match="attn_mask must be a MASK"):
        apply_embeds(tiny_flux, adapters["golden"], embeds, attn_mask=torch.ones(1, 1, 8, 8))


def test_forward_gives_the_patches_the_latents_grid_and_skips_kontext_tokens(tiny_flux, adapters, golden_id,
                                                                            monkeypatch):
    from comfyui_pulid.nodes import flux_patch

    seen = {"grid": set(), "tokens": set()}
    real_mask, real_add = flux_patch.core_flux.mask_to_tokens, flux_patch.core_flux.identity_delta

    def mask_to_tokens(mask, grid_h, grid_w, *args):
        seen["grid"].add((grid_h, grid_w))
        return real_mask(mask, grid_h, grid_w, *args)

    def identity_delta(img, *args, **kwargs):
        seen["tokens"].add(img.shape[1])
        return real_add(img, *args, **kwargs)

    monkeypatch.setattr(flux_patch.core_flux, "mask_to_tokens", mask_to_tokens)
    monkeypatch.setattr(flux_patch.core_flux, "identity_delta", identity_delta)
    out_model = apply_embeds(tiny_flux, adapters["golden"], golden_embeds(golden_id), attn_mask=torch.ones(48, 72))
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 16, 8, 11, generator=gen)  # odd width: ComfyUI pads to 8x12 -> a 4x6 token grid
    reference = torch.randn(1, 16, 4, 4, generator=gen)  # FLUX Kontext: 4 more tokens after the grid
    inputs = {"x": latent, "context": _input("input.flux.txt", (1, 8, 64)), "y": _input("input.flux.y", (1, 32))}
    options = dict(out_model.model_options["transformer_options"], wrappers=out_model.wrappers)
    with torch.no_grad():
        out = out_model.model.diffusion_model(inputs["x"], torch.tensor([0.7]), inputs["context"], y=inputs["y"],
                                              guidance=torch.tensor([3.5]), ref_latents=[reference],
                                              transformer_options=options)
    assert out.shape == latent.shape
    assert seen == {"grid": {(4, 6)}, "tokens": {24}}


def test_gradients_flow_through_the_identity_when_autograd_records(adapters, golden_id):
    """ComfyUI's Train LoRA node records gradients through the model. Before: the CA ran under no_grad,
    so the identity was a constant and the image stream's gradient missed the path through the CA.
    Now it is img + weight * CA(img) to autograd too (the adapter's weights stay frozen)."""
    from comfyui_pulid.nodes.flux_patch import GRID, STREAMS, FluxBlockPatch, FluxIDContext
    from comfyui_pulid.pulid_core import flux as core_flux

    adapter = adapters["golden"].patcher
    ctx = FluxIDContext(adapter, golden_id, torch.zeros_like(golden_id), weight=0.7, sigma_start=1e9,
                        sigma_end=0.0)
    patch = FluxBlockPatch(ctx, "double", 0)
    img = torch.randn(1, 16, 128, generator=torch.Generator().manual_seed(4), requires_grad=True)
    options = {"cond_or_uncond": [0], GRID: (4, 4), STREAMS: {"txt": 8}}
    args = {"img": img, "txt": torch.zeros(1, 8, 128), "transformer_options": options}
    with torch.enable_grad():
        out = patch(args, {"original_block": lambda a: {"img": a["img"] * 1.0, "txt": a["txt"]}})["img"]
        out.square().sum().backward()
        ref_img = img.detach().clone().requires_grad_()
        core_flux.add_identity(ref_img, adapter.model, 0, golden_id, 0.7).square().sum().backward()
    torch.testing.assert_close(img.grad, ref_img.grad, atol=1e-5, rtol=1e-5)
    assert not any(p.grad is not None for p in adapter.model.parameters())
