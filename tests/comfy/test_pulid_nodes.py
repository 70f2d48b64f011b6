"""Tier 2: the PuLID nodes inside ComfyUI (tiny SDXL, tiny adapter files with the real structure)."""

import copy

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def models_dir(pack, tmp_path_factory):
    """A models folder with tiny PuLID v1/v1.1, EVA-CLIP, InsightFace and facexlib files, registered."""
    import folder_paths

    from comfy_testpack import stand_ins_pulid as s

    root = tmp_path_factory.mktemp("models")
    for sub in ("pulid", "eva_clip", "insightface", "facexlib", "pulid_embeds"):
        (root / sub).mkdir()
        folder_paths.add_model_folder_path(sub, str(root / sub), is_default=True)
    s.write_tiny_pulid(root / "pulid" / "ip-adapter_pulid_sdxl_fp16.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_v1.1.safetensors")
    s.write_tiny_eva(root / "eva_clip" / "EVA02_CLIP_L_336_psz14_s6B.pt")
    s.write_tiny_face_models(root / "insightface" / "antelopev2")
    pack.nodes.node_list()  # registers the pack's folders (keeps the ones above)
    return root


@pytest.fixture(scope="module")
def loaded(models_dir):
    from comfyui_pulid.nodes import loaders

    return {
        "v1": loaders.PuLIDModelLoader.execute("ip-adapter_pulid_sdxl_fp16.safetensors").result[0],
        "v1.1": loaders.PuLIDModelLoader.execute("pulid_v1.1.safetensors").result[0],
        "eva": loaders.PuLIDEvaClipLoader.execute("EVA02_CLIP_L_336_psz14_s6B.pt", "fp32").result[0],
        "face": loaders.PuLIDInsightFaceLoader.execute("CPU", "antelopev2", "insightface").result[0],
    }


@pytest.fixture(scope="module")
def face_image():
    from PIL import Image

    import comfy_harness

    image = np.asarray(Image.open(comfy_harness.default_face_image()).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(image)[None]


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


def test_every_layer_fires_during_sampling_and_changes_the_image(tiny_sdxl, loaded, face_image):
    from comfyui_pulid.nodes.pulid import PuLIDApply

    model, clip, _ = tiny_sdxl
    out = PuLIDApply.execute(model, loaded["v1.1"], loaded["eva"], loaded["face"], face_image, "fidelity", 1.0,
                             0.0, 1.0).result[0]
    fired = set()
    for key, patch in attn2_patches(out).items():
        original = patch.context.kv

        def spy(index, device, dtype, _key=key, _orig=original):
            fired.add(_key)
            return _orig(index, device, dtype)

        patch.context.kv = spy
    try:
        with_id = sample(out, clip)
    finally:
        for patch in attn2_patches(out).values():
            patch.context.__dict__.pop("kv", None)
    assert len(fired) == 70
    plain = sample(model, clip)
    assert not torch.allclose(with_id, plain)
    # Same graph, same image: nothing accumulates between runs.
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
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    three = torch.cat([face_image] * 3)
    avg = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], three, "largest", 0, "error",
                                  "average").result[0]
    cat = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], three, "largest", 0, "error",
                                  "concat").result[0]
    assert avg.cond.shape[1] == 10 and cat.cond.shape[1] == 10 + 2 * 5
    assert cat.uncond.shape == cat.cond.shape
    torch.testing.assert_close(cat.cond[:, :10], avg.cond)  # identical photos


def test_no_face_errors_name_the_image(loaded, face_image):
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    from pulid_core.errors import PuLIDError

    black = torch.zeros_like(face_image)
    with pytest.raises(PuLIDError, match="Encode Face"):
        PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], black, "largest", 0, "error", "average")
    ok = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], torch.cat([black, face_image]),
                                 "largest", 0, "skip", "average").result[0]
    assert ok.images == 1
