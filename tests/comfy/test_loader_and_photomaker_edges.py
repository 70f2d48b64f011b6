"""PhotoMaker nodes and model/embeds file handling, driven the way users and API clients drive them.

Each test asserts what the project promises (a clear PuLIDError / ModelFileError naming the node,
input or file and the fix; no raw torch/numpy traceback; no silently wrong result). They come from
an adversarial review (2026-11-27): each docstring says how the code behaved before its fix, so
each test fails on that code.
"""

import importlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pulid_core.errors import ModelFileError, PuLIDError

pytestmark = pytest.mark.comfy

# Raw exceptions that must never reach the user from a loader or an encode node.
RAW = (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError, RuntimeError)


def raises_clear(exc_type, fn, *args, **kwargs):
    """Run ``fn`` and return the message of the ``exc_type`` it raises; a raw exception fails the test."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return str(exc)
    except RAW as exc:  # noqa: PERF203
        pytest.fail(f"raw {type(exc).__name__} instead of a clear {exc_type.__name__}: {exc}")
    pytest.fail(f"no error: expected a {exc_type.__name__}")


@pytest.fixture(scope="module")
def ph(pack):
    pack.nodes.node_list()  # registers the pack's model folders, as ComfyUI does on import
    return importlib.import_module("comfyui_pulid.nodes.photomaker")


@pytest.fixture(scope="module")
def loaders(pack):
    pack.nodes.node_list()
    return importlib.import_module("comfyui_pulid.nodes.loaders")


@pytest.fixture(scope="module")
def sp(pack):
    return importlib.import_module("comfy_testpack.stand_ins_pulid")


@pytest.fixture(scope="module")
def folders(model_folders):
    """models/{photomaker,pulid,eva_clip,pulid_embeds} of a fresh root, registered as ComfyUI's defaults."""
    return model_folders("review_pm_loaders", "photomaker", "pulid", "eva_clip", "pulid_embeds")


@pytest.fixture(scope="module")
def clip(tiny_sdxl):
    return tiny_sdxl[1]


@pytest.fixture(scope="module")
def pm_v1(ph, si, folders, tiny_sdxl):
    si.write_tiny_photomaker(folders / "photomaker" / "review-photomaker-v1.bin")
    return ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], "review-photomaker-v1.bin", 1.0).result[1]


@pytest.fixture(scope="module")
def pm_v2(ph, si, folders, tiny_sdxl):
    si.write_tiny_photomaker(folders / "photomaker" / "review-photomaker-v2.bin")
    return ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], "review-photomaker-v2.bin", 1.0).result[1]


def photos(n, seed=0, h=96, w=128, c=3):
    return torch.rand(n, h, w, c, generator=torch.Generator().manual_seed(seed))


def flat_photomaker(si, version="v1"):
    """The flat ``id_encoder.*`` / ``lora_weights.*`` safetensors variant of a tiny PhotoMaker file."""
    data = si.tiny_photomaker(version)
    return {f"id_encoder.{k}": v for k, v in data["id_encoder"].items()} | {
        f"lora_weights.{k}": v for k, v in data["lora_weights"].items()
    }


# ---------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------


def _truncated_zip(path, obj, size=30_000):
    """A torch.save zip checkpoint cut short inside its first 64 KiB (a download that stopped early)."""
    torch.save(obj, path)
    path.write_bytes(path.read_bytes()[:size])
    return path


@pytest.mark.parametrize("loader", ["photomaker", "pulid", "eva_clip"])
def test_checkpoint_cut_short_in_its_first_64k_is_a_clear_error(ph, loaders, si, sp, folders, tiny_sdxl, loader):
    """Was: a .bin/.pt cut short between ~5 KB and ~65 KB gives a raw ``OSError: [Errno 22] Invalid
    argument`` from torch's zip reader (torch.load with mmap=True) instead of "truncated or corrupt"."""
    if loader == "photomaker":
        path = _truncated_zip(folders / "photomaker" / "cut-photomaker-v1.bin", si.tiny_photomaker("v1"))
        call = lambda: ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], path.name, 1.0)  # noqa: E731
    elif loader == "pulid":
        sp.write_tiny_pulid(folders / "pulid" / "cut_pulid_v1.bin")
        state = torch.load(folders / "pulid" / "cut_pulid_v1.bin", weights_only=True)
        path = _truncated_zip(folders / "pulid" / "cut_pulid_v1.bin", state)
        call = lambda: loaders.PuLIDModelLoader.execute(path.name)  # noqa: E731
    else:
        path = _truncated_zip(folders / "eva_clip" / "cut_EVA02_CLIP_L_336_psz14_s6B.pt", sp.tiny_eva_state_dict())
        call = lambda: loaders.PuLIDEvaClipLoader.execute(path.name, "fp32")  # noqa: E731
    message = raises_clear(ModelFileError, call)
    assert path.name in message and "truncated or corrupt" in message


def _wrong_rank(si, sp, case):
    if case.startswith("pm-"):
        sd = flat_photomaker(si)
        key = {
            "pm-patch_embedding-2d": "id_encoder.vision_model.embeddings.patch_embedding.weight",
            "pm-position_embedding-0d": "id_encoder.vision_model.embeddings.position_embedding.weight",
            "pm-fuse_layer_norm-0d": "id_encoder.fuse_module.layer_norm.weight",
        }[case]
        sd[key] = sd[key].flatten(1) if case.endswith("2d") else torch.zeros(())
        return "photomaker", sd, key.removeprefix("id_encoder.")
    version = "v1" if case == "pulid-v1-body-1d" else "v1.1"
    state = {k: v.half() for k, v in sp._random(sp.tiny_pulid_shapes(version), seed=1).items()}
    key = {
        "pulid-v1.1-latents-2d": "id_adapter.latents",
        "pulid-v1.1-proj_out-1d": "id_adapter.proj_out",
        "pulid-v1-body-1d": "id_adapter.body.0.weight",
    }[case]
    state[key] = state[key][0].contiguous()  # one dimension dropped, as a careless conversion does
    return "pulid", state, key


@pytest.mark.parametrize("case", [
    "pm-patch_embedding-2d",  # ValueError: not enough values to unpack (expected 4, got 2)
    "pm-position_embedding-0d",  # IndexError: tuple index out of range
    "pm-fuse_layer_norm-0d",  # IndexError: tuple index out of range
    "pulid-v1.1-latents-2d",  # ValueError: not enough values to unpack (expected 3, got 2)
    "pulid-v1.1-proj_out-1d",  # IndexError: tuple index out of range
    "pulid-v1-body-1d",  # IndexError: tuple index out of range
])
def test_a_tensor_of_the_wrong_rank_is_a_clear_error(ph, loaders, si, sp, folders, tiny_sdxl, case):
    """Was: the PhotoMaker and PuLID loaders read their sizes from shapes without checking the rank,
    so a key with one dimension too many/few (a damaged or badly converted file) is a raw ValueError /
    IndexError. (The EVA-CLIP loader gets this right: 'has EVA-CLIP tensors of the wrong shape ...'.)"""
    kind, sd, key = _wrong_rank(si, sp, case)
    name = f"rank_{case}.safetensors"
    save_file(sd, str(folders / kind / name))
    if kind == "photomaker":
        message = raises_clear(ModelFileError, ph.PuLIDPhotoMakerLoader.execute, tiny_sdxl[0], name, 1.0)
    else:
        message = raises_clear(ModelFileError, loaders.PuLIDModelLoader.execute, name)
    assert name in message and key in message


def test_eva_clip_file_with_int8_tensors_is_refused(loaders, sp, folders):
    """Was: an int8 EVA-CLIP .safetensors loads without a word: the integers are cast to fp32 and
    used as weights, so every face encodes to garbage (a silently wrong image)."""
    name = "eva_int8.safetensors"
    save_file({k: (v * 100).to(torch.int8) for k, v in sp.tiny_eva_state_dict().items()}, str(folders / "eva_clip" / name))
    message = raises_clear(ModelFileError, loaders.PuLIDEvaClipLoader.execute, name, "fp32")
    assert name in message and "int8" in message


def test_photomaker_lora_with_int8_tensors_is_refused(ph, si, folders, tiny_sdxl):
    """Was: int8 LoRA tensors in a PhotoMaker file are accepted and handed to ComfyUI's LoRA patcher,
    which adds up @ down of the raw integers to the UNet (a silently wrong image)."""
    sd = {k: (v * 1000).to(torch.int8) if k.startswith("lora_weights.") else v for k, v in flat_photomaker(si).items()}
    name = "pm_lora_int8.safetensors"
    save_file(sd, str(folders / "photomaker" / name))
    message = raises_clear(ModelFileError, ph.PuLIDPhotoMakerLoader.execute, tiny_sdxl[0], name, 1.0)
    assert name in message and "int8" in message


@pytest.mark.parametrize("kind", ["photomaker", "pulid"])
def test_int8_weights_are_named_as_a_dtype_problem_not_a_shape_problem(ph, loaders, si, sp, folders, tiny_sdxl, kind):
    """Was: int8 weights are refused as 'tensors of unexpected shapes', quoting torch's
    "dimensions in the model are torch.Size([64]) and ... in the checkpoint are torch.Size([64])":
    the shapes are right, the dtype is what is wrong."""
    name = f"{kind}_int8.safetensors"
    if kind == "photomaker":
        save_file({k: (v * 100).to(torch.int8) for k, v in flat_photomaker(si).items()},
                  str(folders / "photomaker" / name))
        message = raises_clear(ModelFileError, ph.PuLIDPhotoMakerLoader.execute, tiny_sdxl[0], name, 1.0)
    else:
        state = sp._random(sp.tiny_pulid_shapes("v1"), seed=1)
        save_file({k: (v * 100).to(torch.int8) for k, v in state.items()}, str(folders / "pulid" / name))
        message = raises_clear(ModelFileError, loaders.PuLIDModelLoader.execute, name)
    assert name in message and "int8" in message
    assert "unexpected shapes" not in message


def test_photomaker_bin_whose_lora_weights_is_not_a_dict(ph, si, folders, tiny_sdxl):
    """Was: a .bin whose 'lora_weights' entry is not a dict gives a raw ``TypeError: 'int' object is
    not iterable`` (dict(7) in _split_container)."""
    path = folders / "photomaker" / "pm_lora_not_dict.bin"
    torch.save({"id_encoder": si.tiny_photomaker("v1")["id_encoder"], "lora_weights": 7}, path)
    message = raises_clear(ModelFileError, ph.PuLIDPhotoMakerLoader.execute, tiny_sdxl[0], path.name, 1.0)
    assert path.name in message and "lora_weights" in message


def test_id_encoder_only_file_loads_with_lora_strength_zero(ph, si, folders, tiny_sdxl):
    """Was: load_photomaker accepts a file without the LoRA ('a bare id_encoder state dict' /
    id_encoder.* only) and the README / tooltip say lora_strength 0 skips the LoRA, but the loader node
    still refuses it at 0: "has no LoRA weights ('lora_weights'): load the official photomaker-v1.bin"."""
    name = "pm_id_encoder_only.safetensors"
    save_file({k: v for k, v in flat_photomaker(si).items() if k.startswith("id_encoder.")},
              str(folders / "photomaker" / name))
    model, photomaker = ph.PuLIDPhotoMakerLoader.execute(tiny_sdxl[0], name, 0.0).result
    assert model is tiny_sdxl[0] and photomaker.model.version == "v1"


# ---------------------------------------------------------------------------
# PhotoMaker Encode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a photo of a man (img:1.2), colorful", "a photo of a man (img), colorful"])
def test_prompt_weight_on_the_trigger_word(ph, clip, text):
    """Was: ComfyUI's weight syntax around the trigger ('a man (img:1.2)') tokenizes to '... man img'
    exactly like the plain prompt, yet check_trigger refuses it with "There is no class word right
    before 'img'" although 'man' is right before it."""
    id_tokens, mask, _ = ph.expand_prompt(clip, text, "img", 2)
    _, plain_mask, _ = ph.expand_prompt(clip, "a photo of a man img, colorful", "img", 2)
    assert mask == plain_mask
    ids = [t for t, *_ in id_tokens["l"][0]]
    man = [t for t, *_ in clip.tokenize("man")["l"][0]][1]
    assert [ids[i] for i, m in enumerate(mask) if m] == [man, man]


@pytest.mark.parametrize("text", ["photo taken in İzmir, a man img", "İSTANBUL street, a woman img smiling"])
def test_turkish_dotted_capital_i_before_the_trigger(ph, clip, text):
    """Was: 'İ'.lower() is two characters, so _occurrences' offsets (found in text.lower()) point one
    character off in the original text: a prompt with 'İ' before the trigger is refused with the
    nonsense message "The trigger word 'img' is part of the word 'img'"."""
    _, mask, _ = ph.expand_prompt(clip, text, "img", 2)
    assert sum(mask) == 2


def test_a_flux_clip_is_named_as_the_wrong_clip(ph, pm_v1):
    """Was: a FLUX CLIP (CLIP-L + T5) on PhotoMaker Encode gives "trigger_word 'img' does not tokenize
    to the same words for every text encoder: use a plain word such as 'img'" -- the word already is
    'img'; the problem is the CLIP, which must be an SDXL one."""
    from comfy_testpack.tiny_flux import tiny_flux_clip

    message = raises_clear(PuLIDError, ph.PuLIDPhotoMakerEncode.execute, tiny_flux_clip(), pm_v1, photos(1),
                           "a photo of a man img", "img", 20.0)
    assert "SDXL" in message and "such as 'img'" not in message


def test_nan_pixels_are_refused_not_turned_black(ph, clip, pm_v1):
    """Was: PhotoMaker's CLIP branch casts NaN pixels to uint8 (0: black) and encodes the photo without
    a word, where the PuLID nodes and PhotoMaker v2's face branch refuse "contains NaN or infinite values"."""
    bad = photos(2, seed=1)
    bad[1, :48] = float("nan")
    message = raises_clear(PuLIDError, ph.PuLIDPhotoMakerEncode.execute, clip, pm_v1, bad, "a man img", "img", 20.0)
    assert "NaN" in message


def test_v2_face_and_clip_branches_see_the_same_rgba_photo(ph):
    """Was: for an RGBA photo (e.g. a background-removed cut-out) PhotoMaker v2's CLIP branch drops the
    alpha channel (as the official pipeline's PIL .convert('RGB')), but its face branch composites it on
    white (to_uint8_rgb): the ArcFace embedding and the CLIP features come from two different pictures."""
    from pulid_core.photomaker.preprocess import _to_uint8

    seen = []

    class Face:
        det_score = 0.9

    class Analyzer:
        pack = "buffalo_l"

        def detect(self, bgr, embed=True):
            seen.append(bgr.copy())
            return [Face()]

        def embed(self, bgr, face):
            return np.zeros(512, np.float32)

    rgba = photos(1, seed=2, h=96, w=96, c=4)
    rgba[0, :, :48, 3] = 0.0  # left half transparent
    ph.face_embeddings(Analyzer(), list(rgba))
    face_rgb = seen[0][:, :, ::-1]
    clip_rgb = _to_uint8(rgba[0])
    assert np.array_equal(face_rgb, clip_rgb)


# ---------------------------------------------------------------------------
# Embeddings files
# ---------------------------------------------------------------------------


def test_embeds_file_of_a_newer_format_is_not_called_foreign(pack, folders):
    """Was (minor): a file written by a later 'Save PuLID Embeds' (format tag comfyui-pulid/id-embeds/2)
    is refused as "not a PuLID embeddings file saved by 'Save PuLID Embeds'", which is false; the message
    should name the format version and say to update the pack."""
    from comfyui_pulid.nodes.embeds import PuLIDLoadEmbeds

    meta = {"format": "comfyui-pulid/id-embeds/2", "pulid_version": "v1.1", "images": "1", "combine": "idformer",
            "extra": "{}"}
    name = "review_newer_format.safetensors"
    save_file({"cond": torch.zeros(1, 32, 48), "uncond": torch.zeros(1, 32, 48)}, str(folders / "pulid_embeds" / name),
              metadata=meta)
    message = raises_clear(PuLIDError, PuLIDLoadEmbeds.execute, name)
    assert name in message and "id-embeds/2" in message
    assert "not a PuLID embeddings file" not in message
