"""Tier 2: the PhotoMaker nodes in a real ComfyUI 0.3.75 (CPU), with the tiny SDXL and tiny PhotoMaker files.

The math (fuse, QFormer, preprocessing, LoRA names) is parity-tested against the golden
vectors in tests/unit/test_photomaker_*.py; here the ComfyUI side is checked: ComfyUI's
own tokenizer, LoRA loader, model management and samplers around it.
"""

import copy
import importlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pulid_core.errors import FaceNotFoundError, ModelFileError, PuLIDError
from pulid_core.photomaker import load_photomaker
from pulid_core.photomaker.preprocess import preprocess_id_images
from pulid_layouts import photomaker_shapes

pytestmark = pytest.mark.comfy

LAYOUTS = json.loads((Path(__file__).resolve().parents[1] / "data" / "golden" / "checkpoint_layouts.json").read_text())
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def ph(pack):
    return importlib.import_module("comfyui_pulid.nodes.photomaker")


@pytest.fixture(scope="module")
def pm_dir(si, tmp_path_factory):
    """models/photomaker with tiny v1 and v2 files, registered in ComfyUI's folder_paths."""
    import folder_paths

    folder = tmp_path_factory.mktemp("photomaker")
    si.write_tiny_photomaker(folder / "photomaker-v1.bin")
    si.write_tiny_photomaker(folder / "photomaker-v2.bin")
    torch.save({"model.diffusion_model.x.weight": torch.zeros(2)}, folder / "not-photomaker.bin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(folder_paths.folder_names_and_paths, "photomaker", ([str(folder)], {".bin"}))
        yield folder


@pytest.fixture(scope="module")
def loaded(ph, pm_dir, tiny_sdxl):
    """(MODEL with LoRA, photomaker) for v1 and v2, through the loader node."""
    model = tiny_sdxl[0]
    return {v: ph.PuLIDPhotoMakerLoader.execute(model, f"photomaker-{v}.bin", 1.0).result for v in ("v1", "v2")}


@pytest.fixture(scope="module")
def clip(tiny_sdxl):
    return tiny_sdxl[1]


def ids(clip, text):
    """The CLIP-L token ids of ``text`` as ComfyUI's tokenizer gives them (all chunks)."""
    return [t for chunk in clip.tokenize(text)["l"] for t, _ in chunk]


def structure(keys):
    return {re.sub(r"\.layers\.\d+\.", ".layers.*.", k) for k in keys}


def content(clip, text):
    """The CLIP-L token ids of ``text`` between BOS and EOS (one chunk)."""
    first = ids(clip, text)
    return first[1 : first.index(EOS)]


def images(n, seed=0, h=96, w=128):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=gen)


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------

TAKEN = {
    "PhotoMakerLoader",
    "PhotoMakerEncode",
    "PhotoMakerLoaderPlus",
    "PhotoMakerEncodePlus",
    "PhotoMakerLoraLoaderPlus",
    "PhotoMakerInsightFaceLoader",
    "PhotoMakerStyles",
}


def test_nodes_are_registered_with_their_own_ids(pack, ph):
    import asyncio

    ids_ = [n.define_schema().node_id for n in asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())]
    for node in ph.NODES:
        schema = node.define_schema()
        assert schema.node_id.startswith("PuLIDPhotoMaker") and schema.node_id not in TAKEN
        assert schema.node_id in ids_
        assert schema.category == "pulid/photomaker" and schema.display_name.endswith("(PuLID pack)")
    # Our socket type is not core's PHOTOMAKER (core's v1 encoder class).
    assert ph.PhotoMaker.io_type == "PULID_PHOTOMAKER"


def test_stand_in_writer_has_the_real_key_structure(si, tmp_path):
    writers = importlib.import_module("comfy_testpack.stand_ins").WRITERS
    folder, write = writers[("PuLIDPhotoMakerLoader", "photomaker_file")]
    assert folder == "photomaker"
    for version in ("v1", "v2"):
        write(tmp_path / f"photomaker-{version}.bin")
        data = torch.load(tmp_path / f"photomaker-{version}.bin", weights_only=True)
        assert list(data) == ["id_encoder", "lora_weights"]
        (name,) = [k for k in LAYOUTS if k.startswith(f"photomaker-{version}.bin")]
        # The same keys up to the (smaller) number of layers.
        assert structure(data["id_encoder"]) == structure(LAYOUTS[name])
        assert set(data["lora_weights"]) == set(si.lora_shapes())
        assert len(data["lora_weights"]) == 1120
    # At the official sizes the builders give the official shapes (1120 LoRA tensors of 92,897,280 values).
    assert {
        k: list(s)
        for k, s in photomaker_shapes("v2").items()
    } == LAYOUTS[name]
    real = si.lora_shapes({1: 640, 2: 1280}, 2048, 64)
    assert sum(torch.Size(s).numel() for s in real.values()) == 92_897_280


# ---------------------------------------------------------------------------
# Loader: version, ComfyUI-managed encoder, LoRA
# ---------------------------------------------------------------------------


def test_loader_detects_the_version_and_manages_the_encoder(ph, loaded):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops

    for version, (model, photomaker) in loaded.items():
        assert isinstance(photomaker, comfy.model_patcher.ModelPatcher)
        encoder = photomaker.model
        assert encoder.version == version and encoder.num_tokens == (1 if version == "v1" else 2)
        assert photomaker.load_device == mm.text_encoder_device()
        assert photomaker.offload_device == mm.text_encoder_offload_device()
        assert isinstance(encoder.visual_projection, comfy.ops.manual_cast.Linear)
        # The file's dtypes are kept (the vision tower is bf16 in the stand-in, as parts of the real file).
        assert encoder.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
        assert encoder.fuse_module.mlp1.fc1.weight.dtype == torch.float32


def _expected_lora_targets(si):
    """(official key, LDM weight) for every LoRA tensor, from the diffusers -> LDM SDXL block table."""
    ldm = {
        "down_blocks.1.attentions.0": "input_blocks.4.1",
        "down_blocks.1.attentions.1": "input_blocks.5.1",
        "down_blocks.2.attentions.0": "input_blocks.7.1",
        "down_blocks.2.attentions.1": "input_blocks.8.1",
        "mid_block.attentions.0": "middle_block.1",
    }
    ldm.update({f"up_blocks.0.attentions.{a}": f"output_blocks.{a}.1" for a in range(3)})
    ldm.update({f"up_blocks.1.attentions.{a}": f"output_blocks.{3 + a}.1" for a in range(3)})
    rows = {}
    for block, depth, _ in si.LORA_BLOCKS:
        for t in range(depth):
            for attn in ("attn1", "attn2"):
                for proj, target in (
                    ("to_q", "to_q"),
                    ("to_k", "to_k"),
                    ("to_v", "to_v"),
                    ("to_out", "to_out.0"),
                ):
                    for half in ("up", "down"):
                        key = f"unet.{block}.transformer_blocks.{t}.{attn}.processor.{proj}_lora.{half}.weight"
                        rows[key] = f"diffusion_model.{ldm[block]}.transformer_blocks.{t}.{attn}.{target}.weight"
    return rows


def _check_patches(si, patched, lora, strength):
    """Every LoRA tensor reached its LDM weight in ComfyUI's patches, as (up, down) at ``strength``."""
    expected = _expected_lora_targets(si)
    assert len(expected) == 1120 and set(patched.patches) == set(expected.values())
    for key, target in expected.items():
        (patch,) = patched.patches[target]
        assert patch[0] == strength
        up, down = patch[1].weights[:2]
        assert (up if ".up." in key else down) is lora[key]


def test_lora_is_applied_key_by_key_to_the_tiny_unet(ph, si, loaded, tiny_sdxl, caplog):
    import comfy.lora

    base = tiny_sdxl[0]
    model, photomaker = loaded["v1"]
    lora = photomaker.model.lora_weights
    _check_patches(si, model, lora, 1.0)
    assert not base.patches, "the input MODEL must not be modified"
    # ComfyUI's own weight calculation gives W + strength * up @ down.
    target = "diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight"
    key = "unet.mid_block.attentions.0.transformer_blocks.9.attn2.processor.to_k_lora"
    weight = base.model.state_dict()[target].clone()
    for strength in (1.0, 0.5):
        with caplog.at_level(logging.WARNING):
            half = ph.apply_lora(base, lora, strength, "photomaker-v1.bin")
        assert "not loaded" not in caplog.text.lower()
        got = comfy.lora.calculate_weight(half.patches[target], weight.clone(), target)
        want = weight + strength * lora[f"{key}.up.weight"] @ lora[f"{key}.down.weight"]
        torch.testing.assert_close(got, want)
    assert ph.apply_lora(base, lora, 0.0, "photomaker-v1.bin") is base


def test_all_1120_lora_tensors_load_on_a_real_size_sdxl_unet(ph, si, caplog):
    """The official layout (rank 64, widths 640/1280, context 2048) on the real SDXL UNet (meta device)."""
    import comfy.model_patcher
    import comfy.supported_models

    config = {
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "in_channels": 4,
        "model_channels": 320,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10,
        "use_linear_in_transformer": True,
        "context_dim": 2048,
        "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    model_config = comfy.supported_models.SDXL(config)
    model_config.set_inference_dtype(torch.float16, None)
    with torch.device("meta"):
        unet = model_config.get_model({}, "", device=torch.device("meta"))
    base = comfy.model_patcher.ModelPatcher(unet, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    lora = {k: torch.empty(s, device="meta") for k, s in si.lora_shapes({1: 640, 2: 1280}, 2048, 64).items()}
    with caplog.at_level(logging.WARNING):
        patched = ph.apply_lora(base, lora, 1.0, "photomaker-v2.bin")
    assert "not loaded" not in caplog.text.lower()
    _check_patches(si, patched, lora, 1.0)


def test_lora_on_a_non_sdxl_unet_is_a_clear_error(ph, loaded, pack):
    from comfy_testpack.tiny_models import tiny_sdxl_model

    ssd1b = tiny_sdxl_model("ssd1b")
    with pytest.raises(PuLIDError, match=r"does not fit this MODEL: .* made for SDXL"):
        ph.apply_lora(ssd1b, loaded["v1"][1].model.lora_weights, 1.0, "photomaker-v1.bin")
    assert not ssd1b.patches


def test_loader_file_errors(ph, pm_dir, tiny_sdxl):
    with pytest.raises(ModelFileError, match="not-photomaker.bin is not a PhotoMaker file"):
        ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], "not-photomaker.bin", 1.0)
    with pytest.raises(ModelFileError, match="photomaker-v3.bin"):
        ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], "photomaker-v3.bin", 1.0)


# ---------------------------------------------------------------------------
# Tokenisation with ComfyUI's SDXL tokenizer: the class word repeated, the trigger dropped
# (TencentARC/PhotoMaker pipeline.py, encode_prompt_with_trigger_word)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("copies", [1, 2, 4, 8])  # v1 N = 1, 2, 4; v2 2N = 2, 4, 8
@pytest.mark.parametrize(
    "text,expanded,text_only",
    [
        (
            "a photo of a man img wearing sunglasses",
            "a photo of a {} wearing sunglasses",
            "a photo of a man wearing sunglasses",
        ),
        ("a photo of a man img, colorful", "a photo of a {}, colorful", "a photo of a man, colorful"),
        ("portrait of a woman img", "portrait of a {}", "portrait of a woman"),
        ("a photo of a Woman IMG.", "a photo of a {}.", "a photo of a woman."),
    ],
)
def test_class_word_is_repeated_and_the_trigger_removed(ph, clip, text, expanded, text_only, copies):
    id_tokens, mask, text_tokens = ph.expand_prompt(clip, text, "img", copies)
    cls = "woman" if "woman" in text.lower() else "man"
    for key in ("l", "g"):
        got = [t for chunk in id_tokens[key] for t, _ in chunk]
        want = [t for chunk in clip.tokenize(expanded.format(" ".join([cls] * copies)))[key] for t, _ in chunk]
        assert got == want
        got = [t for chunk in text_tokens[key] for t, _ in chunk]
        assert got == [t for chunk in clip.tokenize(text_only)[key] for t, _ in chunk]
    start = 1 + len(content(clip, expanded.split("{}")[0]))  # BOS + the words before the class word
    assert [i for i, m in enumerate(mask) if m] == list(range(start, start + copies))


def test_prompt_weights_are_kept_on_every_copy(ph, clip):
    id_tokens, mask, _ = ph.expand_prompt(clip, "a photo of a (man:1.3) img, (smiling:0.8)", "img", 3)
    positions = [i for i, m in enumerate(mask) if m]
    assert positions == [5, 6, 7]
    chunk = id_tokens["g"][0]
    assert [w for _, w in chunk[5:8]] == pytest.approx([1.3] * 3)
    assert chunk[8][1] == pytest.approx(1.0) and chunk[9][1] == pytest.approx(0.8)  # "," and "smiling"


def test_configurable_multi_token_trigger(ph, clip):
    id_tokens, mask, _ = ph.expand_prompt(clip, "a photo of a man photomaker in a park", "photomaker", 2)
    assert [t for t, _ in id_tokens["l"][0][:10]] == ids(clip, "a photo of a man man in a park")[:10]
    assert [i for i, m in enumerate(mask) if m] == [5, 6]


def test_long_prompt_is_rechunked_and_the_mask_follows(ph, clip):
    head = ", ".join(f"detail{i}" for i in range(30))  # 30 x 3 tokens
    text = f"{head}, a photo of a man img wearing a red scarf"
    id_tokens, mask, _ = ph.expand_prompt(clip, text, "img", 4)
    assert len(id_tokens["l"]) == len(id_tokens["g"]) == 2 and len(mask) == 154
    positions = [i for i, m in enumerate(mask) if m]
    flat = [t for chunk in id_tokens["l"] for t, _ in chunk]
    man = ids(clip, "man")[1]
    assert len(positions) == 4 and all(flat[p] == man for p in positions)
    assert positions == list(range(positions[0], positions[0] + 4))
    content = [t for t in flat if t not in (BOS, EOS)]
    assert content == [
        t for t in ids(clip, f"{head}, a photo of a man man man man wearing a red scarf") if t not in (BOS, EOS)
    ]


@pytest.mark.parametrize(
    "text,copies,message",
    [
        ("a photo of a man", 1, "no trigger word: add 'img' right after the class word"),
        ("a man img and a woman img", 1, "appears 2 times"),  # more triggers than images
        ("a man img and a woman img", 2, "appears 2 times"),
        ("a man img from imgur", 1, "part of the word 'imgur'"),
        ("a photo of a manimg", 1, "part of the word 'manimg'"),
        ("img of a man", 1, "no class word right before 'img'"),
        ("a photo of a man img", 76, "76 class-token copies do not fit"),
    ],
)
def test_bad_prompts_are_clear_errors(ph, clip, text, copies, message):
    with pytest.raises(PuLIDError, match=message):
        ph.expand_prompt(clip, text, "img", copies)


def test_empty_trigger_word(ph, clip):
    with pytest.raises(PuLIDError, match="trigger word is empty"):
        ph.expand_prompt(clip, "a man img", "  ", 1)


# ---------------------------------------------------------------------------
# Encode
# ---------------------------------------------------------------------------


def _reference(pm_dir, version, clip, text_expanded, pixels, mask, id_embeds=None):
    """The prompt fused by pulid_core's model (default ops) from the same file, outside ComfyUI."""
    model = load_photomaker(str(pm_dir / f"photomaker-{version}.bin"))
    cond, pooled = clip.encode_from_tokens(text_expanded, return_pooled=True)
    with torch.no_grad():
        return model.fuse(pixels.unsqueeze(0), cond, torch.tensor(mask), id_embeds), cond, pooled


def test_encode_v1_fuses_every_image_and_schedules_the_text_prompt(ph, loaded, pm_dir, clip):
    text = "a photo of a man img, colorful"
    refs = images(3)
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v1"][1], refs, text, "img", 20.0).result
    (id_cond, id_opts), (text_cond, text_opts) = conds  # the ID entry first (ConditioningAverage's 'from')

    id_tokens, mask, _ = ph.expand_prompt(clip, text, "img", 3)
    pixels = preprocess_id_images(list(refs), size=224)
    want, plain, pooled = _reference(pm_dir, "v1", clip, id_tokens, pixels, mask)
    torch.testing.assert_close(id_cond, want, atol=1e-5, rtol=1e-5)
    changed = (id_cond - plain).abs().amax(-1)[0] > 0
    assert changed.tolist() == mask and sum(mask) == 3  # all three images, at the three copies
    torch.testing.assert_close(id_opts["pooled_output"], pooled)  # pooled is never ID-modified
    want_text, want_pooled = clip.encode_from_tokens(clip.tokenize("a photo of a man, colorful"), return_pooled=True)
    torch.testing.assert_close(text_cond, want_text)
    torch.testing.assert_close(text_opts["pooled_output"], want_pooled)
    assert (text_opts["clip_start_percent"], text_opts["clip_end_percent"]) == (0.0, id_opts["clip_start_percent"])
    assert id_opts["clip_end_percent"] == 1.0 and id_opts["clip_start_percent"] == pytest.approx(0.2, abs=2e-3)

    # Style strength 0: the ID prompt on every step.
    (single,) = ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v1"][1], refs, text, "img", 0.0).result
    assert len(single) == 1 and set(single[0][1]) == {"pooled_output"}
    torch.testing.assert_close(single[0][0], id_cond)


@pytest.mark.slow
def test_golden_v1_through_the_comfyui_managed_encoder(ph):
    """The official vectors, with the full-size encoder built from comfy.ops.manual_cast in a ModelPatcher
    (v1: every layer type of v2 at 60 % of its size; the v2-only math is golden-tested in tests/unit)."""
    import comfy.model_management
    from safetensors.torch import load_file

    from tests.unit.test_photomaker_encoder import DATA, _golden_inputs, _layout, fill

    sd = {k: fill("id_encoder." + k, s) for k, s in _layout("v1").items()}
    photomaker = ph.load_photomaker_patcher({"id_encoder": sd, "lora_weights": {}})
    del sd
    golden = load_file(DATA / "photomaker.safetensors")
    pixels, prompt, _ = _golden_inputs()
    start = int(golden["mask_start"].item())
    mask = [start <= i < start + 2 for i in range(77)]
    out = ph.fuse_prompt(photomaker, pixels[0], prompt, mask)
    comfy.model_management.unload_all_models()  # drop the 1.3 GB encoder before the next tests
    assert (out - golden["v1.out"]).abs().max().item() <= 1e-3
    assert (out != prompt).any(-1)[0].nonzero().flatten().tolist() == [start, start + 1]


def test_clip_branch_uses_the_official_preprocessing(ph, loaded, monkeypatch, clip):
    seen = {}
    original = ph.fuse_prompt

    def spy(photomaker, pixels, cond, mask, id_embeds=None):
        seen["pixels"] = pixels
        return original(photomaker, pixels, cond, mask, id_embeds)

    monkeypatch.setattr(ph, "fuse_prompt", spy)
    refs = images(2, h=300, w=200)
    ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v1"][1], refs, "a man img", "img", 0.0)
    # Whole image, shortest side 224 (PIL bicubic on uint8), centre crop: preprocess_id_images, golden-tested.
    torch.testing.assert_close(seen["pixels"], preprocess_id_images(list(refs), size=224), atol=0, rtol=0)


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory):
    """A synthetic buffalo_l pack whose detector reports two faces, the higher score second and smaller."""
    from pulid_core.face import FacePipeline, load_face_analysis
    from tests.unit.face_models import kps_for_box, letterbox_scale, make_pack

    h, w = 256, 256
    s = letterbox_scale(h, w)
    faces = []
    for box, score in (([20, 30, 140, 170], 0.7), ([150, 60, 230, 150], 0.95)):
        kps, _ = kps_for_box(np.array(box, np.float64))
        faces.append((np.array(box, np.float64) * s, kps * s, score))
    root = tmp_path_factory.mktemp("insightface")
    make_pack(os.path.join(root, "models", "buffalo_l"), faces, extra=False)
    analyzer = load_face_analysis(str(root), pack="buffalo_l")
    return FacePipeline(analyzer, None, alignment="insightface")


def test_encode_v2_uses_the_best_face_in_bgr_raw(ph, loaded, pm_dir, clip, buffalo):
    refs = images(2, seed=3, h=256, w=256)
    text = "a photo of a woman img"
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v2"][1], refs, text, "img", 0.0, buffalo).result
    ((cond, _),) = conds

    analyzer = buffalo.analyzer
    want_embeds = []
    for img in refs:
        rgb = np.round(img.numpy() * 255).astype(np.uint8)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        faces = analyzer.detect(bgr)
        assert [f.det_score for f in faces] == pytest.approx([0.95, 0.7])
        best = faces[0]
        assert best.area < faces[1].area  # highest score, not largest
        other = analyzer.detect(np.ascontiguousarray(rgb))[0].embedding
        assert not np.allclose(best.embedding, other)  # BGR vs RGB input matters
        want_embeds.append(best.embedding)
    id_embeds = torch.from_numpy(np.stack(want_embeds))

    id_tokens, mask, _ = ph.expand_prompt(clip, text, "img", 4)
    assert sum(mask) == 4  # 2 images x 2 tokens
    want, _, _ = _reference(pm_dir, "v2", clip, id_tokens, preprocess_id_images(list(refs), 224), mask, id_embeds)
    torch.testing.assert_close(cond, want, atol=1e-4, rtol=1e-4)


def test_v2_detection_falls_back_to_smaller_sizes_as_the_official_app(ph, buffalo, monkeypatch):
    from pulid_core.face.insight import SCRFD

    analyzer = buffalo.analyzer
    at_640 = copy.copy(analyzer.detector)
    real = SCRFD.detect
    sizes = []

    def detect(self, image):  # finds the faces only when letterboxing into 400 px or less
        sizes.append(self.input_size)
        if self.input_size[0] > 400:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return real(at_640, image)

    monkeypatch.setattr(SCRFD, "detect", detect)
    refs = images(2, seed=5, h=256, w=256)
    got = ph.face_embeddings(buffalo, list(refs))
    # 640 .. 448 fail, 384 works; the next image starts at 384, as the official persistent detector.
    assert sizes == [(s, s) for s in (640, 576, 512, 448, 384, 384)]
    assert analyzer.detector.input_size == (640, 640)  # the loader's shared object is untouched
    monkeypatch.setattr(SCRFD, "detect", real)
    bgr = np.ascontiguousarray(np.round(refs[0].numpy() * 255).astype(np.uint8)[:, :, ::-1])
    np.testing.assert_allclose(got[0].numpy(), analyzer.detect(bgr)[0].embedding, rtol=1e-6)


def test_v2_image_without_a_face_is_named(ph, loaded, clip, buffalo):
    refs = images(3, seed=4, h=256, w=256)
    refs[1] = 0.0  # the synthetic detector finds nothing in a black image
    with pytest.raises(FaceNotFoundError, match="no face found in reference image 2 of 3"):
        ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v2"][1], refs, "a man img", "img", 20.0, buffalo)


def test_version_mismatch_errors(ph, loaded, clip, buffalo):
    with pytest.raises(PuLIDError, match="photomaker-v2.bin is PhotoMaker v2.*connect face_analysis"):
        ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v2"][1], images(1), "a man img", "img", 20.0)
    with pytest.raises(PuLIDError, match="photomaker-v1.bin is PhotoMaker v1.*load photomaker-v2.bin"):
        ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v1"][1], images(1), "a man img", "img", 20.0, buffalo)
    with pytest.raises(PuLIDError, match="must come from 'Load PhotoMaker"):
        ph.PuLIDPhotoMakerEncode.execute(clip, object(), images(1), "a man img", "img", 20.0)


def test_non_buffalo_pack_warns(ph, caplog):
    class Analyzer:
        pack = "antelopev2"

        def detect(self, bgr, embed=True):
            return []

        def embed(self, bgr, face):
            raise AssertionError

    with caplog.at_level(logging.WARNING), pytest.raises(FaceNotFoundError):
        ph.face_embeddings(Analyzer(), list(images(1)))
    assert "buffalo_l" in caplog.text and "antelopev2" in caplog.text


# ---------------------------------------------------------------------------
# Sampling with the standard samplers
# ---------------------------------------------------------------------------


def _record_phases(model, conds, scheduler, steps):
    """Which prompt ComfyUI's sampler used at each step: 'text', 'id' or 'both' (cfg 1: one call a step)."""
    import comfy.sample

    names = ["id", "text"] if len(conds) == 2 else ["id"]
    phases = []

    def unet(apply_model, args):
        used = {names[j] for r in args["c"]["c_crossattn"] for j, c in enumerate(conds) if torch.equal(r, c[0][0])}
        phases.append(used.pop() if len(used) == 1 else "both")
        return torch.zeros_like(args["input"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(unet)
    latent = torch.zeros(1, 4, 8, 8)
    comfy.sample.sample(
        patched,
        torch.zeros_like(latent),
        steps,
        1.0,
        "euler",
        scheduler,
        conds,
        [],
        latent,
        disable_pbar=True,
    )
    return phases


@pytest.mark.parametrize("steps,strength", [(10, 20.0), (4, 20.0), (5, 40.0), (20, 50.0), (8, 0.0)])
@pytest.mark.parametrize("scheduler", ["sgm_uniform", "simple"])
def test_style_strength_follows_the_official_inclusive_rule(ph, loaded, clip, steps, strength, scheduler):
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v1"][1], images(1), "a man img", "img", strength).result
    phases = _record_phases(loaded["v1"][0], conds, scheduler, steps)
    text_steps = int(strength / 100 * steps) + 1 if strength else 0  # official: i <= S, S = int(ratio * steps)
    assert phases == ["text"] * text_steps + ["id"] * (steps - text_steps)


def test_normal_scheduler_never_mixes_or_drops_a_step(ph, loaded, clip):
    (conds,) = ph.PuLIDPhotoMakerEncode.execute(clip, loaded["v1"][1], images(1), "a man img", "img", 20.0).result
    phases = _record_phases(loaded["v1"][0], conds, "normal", 10)
    # normal spaces steps by 1/(steps - 1): one text-only step fewer than the official 3 here.
    assert phases == ["text"] * 2 + ["id"] * 8


def test_conditioning_samples_with_the_lora_model(ph, loaded, clip, tiny_sdxl):
    import comfy.sample

    model, photomaker = loaded["v1"]
    (positive,) = ph.PuLIDPhotoMakerEncode.execute(clip, photomaker, images(2), "a man img", "img", 20.0).result
    negative = [[torch.zeros(1, 77, 64), {"pooled_output": torch.zeros(1, 32)}]]
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    plain = comfy.sample.sample(
        tiny_sdxl[0], noise, 2, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True
    )
    assert not torch.equal(out, plain)  # the LoRA changes the UNet


def test_tiny_files_load_outside_comfyui_too(si):
    for version in ("v1", "v2"):
        assert load_photomaker(si.tiny_photomaker(version)).version == version
