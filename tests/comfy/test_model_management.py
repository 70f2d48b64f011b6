"""Model management and memory of the pack inside ComfyUI, from an adversarial review (2026-11-27).

Each test asserts the behaviour the pack should have and fails on the code it was written
against; each docstring says what happened there. Everything runs in-process on the CPU with
the tiny models of tests/comfy_testpack (fixtures in tests/comfy/conftest.py).
"""

import importlib

import pytest
import torch

pytestmark = pytest.mark.comfy


# -- helpers --------------------------------------------------------------------------------------
def loaded_models():
    """The torch modules ComfyUI holds as loaded models (current_loaded_models)."""
    import comfy.model_management as mm

    return [lm.model.model for lm in mm.current_loaded_models if lm.model is not None]


def is_loaded(module) -> bool:
    return any(m is module for m in loaded_models())


def nbytes(obj) -> int:
    """Bytes of every tensor in a (nested) cache."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(v) for v in obj)
    return 0


def cache_bytes(ctx) -> int:
    return nbytes(ctx._kv) + nbytes(ctx._rows) + nbytes(ctx._masks) + nbytes(ctx._workspaces)


def sample(model, clip, h, w, batch, cfg, steps=1, seed=0):
    import comfy.sample

    tokens = clip.tokenize("a portrait photo")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    positive = [[cond, {"pooled_output": pooled}]]
    negative = [[torch.zeros_like(cond), {"pooled_output": torch.zeros_like(pooled)}]]
    latent = torch.zeros(batch, 4, h, w)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               disable_pbar=True)


@pytest.fixture(scope="module")
def sdxl_embeds(loaded, face_image):
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    return PuLIDEncodeFace.execute(loaded["v1.1"], loaded["eva"], loaded["face"], face_image, "largest", 0, "error",
                                   "average").result[0]


def applied(tiny_sdxl, loaded, embeds, attn_mask=None):
    """(patched MODEL, its IDContext) through Apply PuLID Embeds."""
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds

    out = PuLIDApplyEmbeds.execute(tiny_sdxl[0], loaded["v1.1"], embeds, "fidelity", 0.8, 0.0, 1.0,
                                   attn_mask=attn_mask).result[0]
    patches = out.model_options["transformer_options"]["patches_replace"]["attn2"]
    return out, next(iter(patches.values())).context


# 20 queue runs of one graph whose Apply node output ComfyUI keeps cached: only the latent size,
# the batch size and cfg change (EmptyLatentImage / KSampler widgets).
RUNS = [(h, w, 1 + (i % 3), 5.0 if i % 2 == 0 else 1.0)
        for i, (h, w) in enumerate([(8, 8), (8, 16), (16, 8), (16, 16), (8, 24), (24, 8), (16, 24), (24, 16),
                                    (24, 24), (8, 32), (32, 8), (16, 32), (32, 16), (24, 32), (32, 24), (32, 32),
                                    (8, 40), (40, 8), (16, 40), (40, 16)])]


# -- 1. IDContext caches grow with every latent size / batch pattern ------------------------------
def test_sdxl_id_caches_stay_bounded_over_20_queue_runs(tiny_sdxl, loaded, sdxl_embeds):
    """One Apply PuLID Embeds output (with an attn_mask) sampled 20 times, each run with another latent
    size, batch 1-3 and cfg 5 / 1, as ComfyUI re-runs a graph whose Apply node output is cached.

    IDContext._rows (per batch / cond_or_uncond pattern, 70 layers each) and IDContext._masks (per
    latent size) are never evicted: on the CPU, ComfyUI's only lifecycle call between runs is
    model_patches_to(cpu), and drop_device_caches(keep_cpu=True) keeps every CPU entry. After 20 runs
    the context held 420 row sets (6 patterns x 70 layers) and 39 masks, about 91 MiB with the tiny
    adapter, against 70 / 2 and 16 MiB after the first run, and it keeps growing with each new size.

    Correct: caches of shapes no longer sampled are dropped (or bounded): a few shapes' worth."""
    model, clip, _ = tiny_sdxl
    out, ctx = applied(tiny_sdxl, loaded, sdxl_embeds, attn_mask=torch.ones(1, 64, 64))
    history = []
    for h, w, batch, cfg in RUNS:
        sample(out, clip, h, w, batch, cfg)
        history.append((len(ctx._rows), len(ctx._masks), cache_bytes(ctx)))
    rows, masks, size = history[-1]
    summary = (f"after 20 runs: {rows} row sets, {masks} masks, {size / 2**20:.0f} MiB "
               f"(after the first: {history[0][0]}, {history[0][1]}, {history[0][2] / 2**20:.0f} MiB)")
    assert masks <= 8, summary
    assert rows <= 4 * 70, summary


def test_sdxl_workspaces_stay_bounded_on_a_gpu_lifecycle(tiny_sdxl, loaded, sdxl_embeds):
    """The same 20 runs, with the lifecycle ComfyUI gives a patched SDXL on a GPU: before each sampling
    LoadedModel.model_load calls model_patches_to(cuda) and model_patches_to(fp16), and the model stays
    loaded between queue runs, so IDAttnPatch.to never sees the CPU and drop_device_caches never runs
    (it runs only when the model is detached; with --highvram, where the offload device is the GPU,
    never). One layer's patch is called directly with fp16 queries of each run's shape (the fused
    path, as on a GPU; no CUDA is needed: the patch only looks at the device's type).

    IDContext._workspaces keeps one fp32 "scratch" buffer [B, N, C] per activation shape ever seen:
    17 buffers, 4.6x the largest run's, after 20 runs here; on a real SDXL at 1024x1024 with cfg that
    is about 30 MB of VRAM per new latent size / batch, held outside ComfyUI's memory accounting for as
    long as the model stays loaded (plus the _rows / _masks growth of the test above, on the GPU).

    Correct: buffers of shapes no longer used are released; the workspace stays a few shapes' worth."""
    out, ctx = applied(tiny_sdxl, loaded, sdxl_embeds)
    patches = out.model_options["transformer_options"]["patches_replace"]["attn2"]
    key = ("input", 4, 0)
    patch = patches[key]
    width = ctx.adapter.model.layer_widths[patch.module_index]
    history = []
    for h, w, batch, cfg in sorted(RUNS, key=lambda r: -r[0] * r[1] * r[2]):
        # What LoadedModel.model_load does before every sampling on a GPU (the model stays loaded).
        out.model_patches_to(torch.device("cuda"))
        out.model_patches_to(torch.float16)
        chunks = [1, 0] if cfg > 1 else [0]
        b = batch * len(chunks)
        n = (h // 2) * (w // 2)
        q = torch.randn(b, n, width, dtype=torch.float16)  # fp16: the fused path, as on a GPU
        kv = torch.randn(b, 77, width, dtype=torch.float16)
        patch(q, kv, kv, {"n_heads": 4, "cond_or_uncond": chunks, "activations_shape": [b, width, h // 2, w // 2],
                          "attn_precision": None})
        buffers = [b for ws in ctx._workspaces.values() for b in ws.values()]
        history.append((len(buffers), nbytes(buffers)))
    assert history[-1][1] <= 2 * history[0][1], (
        f"{history[-1][0]} workspace buffers, {history[-1][1]} bytes after 20 runs; the largest run alone: "
        f"{history[0][0]}, {history[0][1]} bytes")


# -- 3. an error inside the EVA-CLIP or IDFormer forward leaves that model loaded ------------------
def _fail(module, message):
    def hook(*_):
        raise RuntimeError(message)
    return module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("stage", ["eva_clip", "adapter"])
def test_encode_error_leaves_no_encoder_loaded(loaded, face_image, stage):
    """Encode Face where the EVA-CLIP forward (or the IDFormer's) raises a RuntimeError, as a CUDA/cuDNN
    failure does (injected with a forward pre-hook; the pack's code runs unchanged).

    encode_faces loads the model with load_models_gpu and offloads it only on success (no try/finally
    around id_cond_from / encode_identity), so EvaClip (or PuLIDModel) stays in
    comfy.model_management.current_loaded_models on the GPU after the failed run. ComfyUI itself
    unloads everything only for OOM exceptions (execution.py); facexlib's device_scope does use
    finally, so the face models are offloaded after an error.

    Correct: after any error in the encode, neither EVA-CLIP nor the adapter is left loaded."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    eva, adapter = loaded["eva"].patcher.model, loaded["v1.1"].patcher.model
    target = eva if stage == "eva_clip" else adapter.id_adapter
    handle = _fail(target, "CUDA error: an illegal memory access was encountered")
    try:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            PuLIDEncodeFace.execute(loaded["v1.1"], loaded["eva"], loaded["face"], face_image, "largest", 0, "error",
                                    "average")
    finally:
        handle.remove()
    left = [type(m).__name__ for m in (eva, adapter) if is_loaded(m)]
    try:
        assert not left, f"still loaded after the error: {left}"
    finally:
        from comfyui_pulid.nodes.comfy_compat import offload_model

        offload_model(loaded["eva"].patcher)
        offload_model(loaded["v1.1"].patcher)


# -- 4. the PhotoMaker ID encoder is never offloaded after the encode -----------------------------
def test_photomaker_encoder_is_offloaded_after_the_encode(si, tiny_sdxl, models_dir, tmp_path_factory):
    """PhotoMaker Encode (PuLID pack) with the tiny v1 file: fuse_prompt loads the ID encoder with
    load_models_gpu and never offloads it, unlike every other run-once encoder of the pack (EVA-CLIP,
    the adapter during the encode, RetinaFace/BiSeNet: nodes/comfy_compat.py). PhotoMakerModel stays
    in current_loaded_models (on the GPU: the CLIP ViT-L vision tower and fuse module, hundreds of MB)
    until ComfyUI happens to need the memory.

    Correct: loaded for the fuse, offloaded right after it (offload_model), as EVA-CLIP is."""
    import folder_paths

    ph = importlib.import_module("comfyui_pulid.nodes.photomaker")
    folder = tmp_path_factory.mktemp("photomaker_review")
    si.write_tiny_photomaker(folder / "photomaker-v1.bin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(folder_paths.folder_names_and_paths, "photomaker", ([str(folder)], {".bin"}))
        _, photomaker = ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], "photomaker-v1.bin", 1.0).result
    used = []
    real_fuse = type(photomaker.model).fuse

    def fuse(self, *args, **kwargs):
        used.append(is_loaded(self))  # loaded by ComfyUI while it runs
        return real_fuse(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(photomaker.model), "fuse", fuse)
        ph.PuLIDPhotoMakerEncode.execute(tiny_sdxl[1], photomaker, torch.rand(2, 96, 128, 3), "a photo of a man img",
                                         "img", 20.0)
    assert used == [True]
    assert not is_loaded(photomaker.model), "PhotoMakerModel stays in current_loaded_models after the encode"
