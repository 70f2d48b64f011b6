"""Model files that are not what their name says: failed downloads, unsafe pickles, damaged pack files."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pulid_core.io as pio
from pulid_core.errors import ModelFileError
from pulid_core.face import load_face_analysis
from tests import pickles
from tests.unit.face_models import kps_for_box, make_pack

NOT_A_CHECKPOINT = "not a PyTorch checkpoint (an HTML page? a failed download?)"


# -- not a checkpoint at all -------------------------------------------------------------------

JUNK = {
    "html": b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n",
    "html_error_page": b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>",
    "json_error": b'{"error":"Repository not found"}',
    "git_lfs_pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1000\n",
    "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
}


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
@pytest.mark.parametrize("content", sorted(JUNK))
def test_junk_saved_as_a_checkpoint_is_called_a_failed_download(tmp_path, suffix, content):
    path = tmp_path / f"pulid_v1{suffix}"
    path.write_bytes(JUNK[content])
    with pytest.raises(ModelFileError) as err:
        pio.read_state_dict(path)
    message = str(err.value)
    assert path.name in message and NOT_A_CHECKPOINT in message
    # Junk is not an attack: no talk of code or refusal.
    assert "Refused" not in message and "code" not in message


def test_the_message_shows_how_the_file_starts(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(JUNK["html"])
    with pytest.raises(ModelFileError, match=r"starts with .<!DOCTYPE html> <html><head>"):
        pio.read_state_dict(path)


# -- real pickles ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", pickles.WRITERS)
def test_only_a_code_running_global_is_called_unsafe(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    pickles.write(path, {"weight": pickles.RunsCode(marker)}, writer)
    with pytest.raises(ModelFileError, match=r"Refused to load model.pth: .*asks to import and call \w+\.system"):
        pio.read_state_dict(path)
    assert not marker.exists()


def test_pickled_objects_that_are_not_code_are_named_not_called_malicious(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ModelFileError) as err:
        pio.read_state_dict(path)
    message = str(err.value)
    assert "torch.nn.modules.linear.Linear objects" in message and "run on loading" not in message
    np_path = tmp_path / "numpy.pth"
    torch.save({"w": np.zeros(3)}, np_path)
    with pytest.raises(ModelFileError) as err:
        pio.read_state_dict(np_path)
    assert "numpy" in str(err.value) and "run on loading" not in str(err.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_weights_still_load(tmp_path, legacy):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.arange(3.0), "b": torch.ones(2, dtype=torch.float16)}, path,
               _use_new_zipfile_serialization=not legacy)
    state = pio.read_state_dict(path)
    assert torch.equal(state["a"], torch.arange(3.0)) and state["b"].dtype == torch.float16
    assert all(g.split(" ")[0].startswith(("torch", "collections")) for g in pio.pickle_globals(str(path)))


def test_a_truncated_pickle_is_corrupt_not_malicious(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.arange(3000.0)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFileError) as err:
        pio.read_state_dict(path)
    assert "w.pt" in str(err.value) and "Refused" not in str(err.value)


@pytest.mark.parametrize("size", [3_000, 30_000, 70_000])
def test_a_zip_checkpoint_cut_short_is_truncated_or_corrupt(tmp_path, size):
    """torch's zip reader raises a bare OSError ("Invalid argument") for an archive cut inside its first
    64 KiB (a download that stopped almost at once); every cut is named, never a raw OSError."""
    path = tmp_path / "pulid_v1.bin"
    torch.save({"w": torch.randn(64, 1024)}, path)
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(ModelFileError, match="truncated or corrupt") as err:
        pio.read_state_dict(path)
    assert path.name in str(err.value)


def test_a_file_that_cannot_be_memory_mapped_is_read_plainly(tmp_path, monkeypatch):
    """Some filesystems refuse mmap (an OSError): the file is then read without it."""
    path = tmp_path / "pulid_v1.bin"
    torch.save({"w": torch.arange(4.0)}, path)
    real = torch.load

    def no_mmap(*args, mmap=None, **kwargs):
        if mmap:
            raise OSError(19, "No such device")
        return real(*args, **kwargs)

    monkeypatch.setattr(pio.torch, "load", no_mmap)
    assert torch.equal(pio.read_state_dict(path)["w"], torch.arange(4.0))


def test_an_unreadable_file_names_the_permission_fix(tmp_path, monkeypatch):
    path = tmp_path / "pulid_v1.bin"
    torch.save({"w": torch.arange(4.0)}, path)
    monkeypatch.setattr(pio.os, "access", lambda p, mode: False)  # tests may run as root, which reads anything
    with pytest.raises(ModelFileError, match="permission denied.*readable by the user that runs ComfyUI"):
        pio.read_state_dict(path)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.bool])
def test_integer_weights_are_refused_naming_the_dtype_and_key(dtype):
    expected = {"w": torch.empty(2, 2), "steps": torch.zeros((), dtype=torch.long)}
    sd = {"w": torch.ones(2, 2).to(dtype), "steps": torch.zeros((), dtype=torch.long)}
    with pytest.raises(ModelFileError, match=f"f.bin stores weights as {str(dtype)[6:]} \\(w\\)"):
        pio.check_float_weights(sd, "f.bin", expected)
    # Integer buffers the module itself keeps as integers (BatchNorm's num_batches_tracked) pass.
    pio.check_float_weights({"w": torch.ones(2, 2), "steps": sd["steps"]}, "f.bin", expected)
    with pytest.raises(ModelFileError, match="steps"):
        pio.check_float_weights({"steps": sd["steps"]}, "f.bin")


def test_a_safetensors_file_saved_as_bin_is_read_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.bin"
    save_file({"w": torch.arange(4.0)}, str(path))
    assert torch.equal(pio.read_state_dict(path)["w"], torch.arange(4.0))


# -- safetensors with metadata (the embeddings reader) ----------------------------------------


def test_read_safetensors_returns_metadata_and_names_the_fix(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "e.safetensors"
    save_file({"x": torch.ones(2, 3)}, str(path), metadata={"k": "v"})
    tensors, metadata = pio.read_safetensors(path)
    assert metadata == {"k": "v"} and torch.equal(tensors["x"], torch.ones(2, 3))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty.safetensors is empty .0 bytes.: save it again"):
        pio.read_safetensors(empty, fix="save it again")
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ModelFileError, match="e.safetensors .* not a readable safetensors file"):
        pio.read_safetensors(path)
    with pytest.raises(ModelFileError, match="more than such a file holds"):
        pio.read_safetensors(tmp_path / "e.safetensors", max_bytes=10)


# -- InsightFace packs: only the files used are opened ----------------------------------------

FACE = ([200.0, 150.0, 320.0, 300.0], kps_for_box([200.0, 150.0, 320.0, 300.0])[0], 0.9)


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    return Path(make_pack(str(tmp_path_factory.mktemp("pack") / "models" / "antelopev2"), [FACE]))


def _pack_copy(pack_dir, tmp_path):
    folder = tmp_path / "models" / "antelopev2"
    folder.mkdir(parents=True)
    for f in pack_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize("unused", ["1k3d68.onnx", "2d106det.onnx", "genderage.onnx"])
@pytest.mark.parametrize("damage", ["html", "truncated", "empty"])
def test_a_damaged_file_the_pack_never_uses_does_not_block(pack_dir, tmp_path, unused, damage, caplog):
    folder = _pack_copy(pack_dir, tmp_path)
    data = (folder / unused).read_bytes()
    (folder / unused).write_bytes({"html": JUNK["html"], "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        fa = load_face_analysis(str(tmp_path))
    assert os.path.basename(fa.detector.path) == "scrfd_10g_bnkps.onnx"
    assert os.path.basename(fa.recognizer.path) == "glintr100.onnx"
    if damage == "empty":
        assert unused in caplog.text


@pytest.mark.parametrize("detector", ["scrfd_10g_bnkps.onnx", "zz_detector.onnx"])
def test_the_unused_models_are_never_opened(pack_dir, tmp_path, monkeypatch, detector):
    import pulid_core.face.insight as insight

    folder = _pack_copy(pack_dir, tmp_path)
    os.rename(folder / "scrfd_10g_bnkps.onnx", folder / detector)  # a renamed one is found by signature
    opened = []
    real = insight._read_onnx
    monkeypatch.setattr(insight, "_read_onnx", lambda path: opened.append(os.path.basename(path)) or real(path))
    fa = load_face_analysis(str(tmp_path))
    assert os.path.basename(fa.detector.path) == detector
    assert sorted(opened) == sorted(["glintr100.onnx", detector])
    assert {"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"} <= set(os.listdir(folder))


def test_an_unreadable_extra_file_warns_and_is_skipped(pack_dir, tmp_path, caplog):
    folder = _pack_copy(pack_dir, tmp_path)
    (folder / "aaa_notes.onnx").write_bytes(JUNK["html"])
    os.rename(folder / "glintr100.onnx", folder / "zz_recognition.onnx")  # found by signature, after the junk
    with caplog.at_level(logging.WARNING):
        fa = load_face_analysis(str(tmp_path))
    assert os.path.basename(fa.recognizer.path) == "zz_recognition.onnx"
    assert "aaa_notes.onnx" in caplog.text and "not readable" in caplog.text


def test_an_unreadable_file_is_the_error_when_a_model_is_missing(pack_dir, tmp_path):
    folder = _pack_copy(pack_dir, tmp_path)
    os.remove(folder / "glintr100.onnx")
    (folder / "my_recognition.onnx").write_bytes(JUNK["random"])
    with pytest.raises(ModelFileError, match="my_recognition.onnx .* not a readable ONNX model"):
        load_face_analysis(str(tmp_path))


def test_a_damaged_used_file_is_still_an_error(pack_dir, tmp_path):
    folder = _pack_copy(pack_dir, tmp_path)
    (folder / "scrfd_10g_bnkps.onnx").write_bytes(JUNK["html"])
    with pytest.raises(ModelFileError, match="scrfd_10g_bnkps.onnx"):
        load_face_analysis(str(tmp_path))


# -- a file for another loader is named: PuLID-FLUX and FLUX.1 ---------------------------------

# FLUX.1's transformer keys as BFL / ComfyUI name them (a few of each kind are enough to be recognised).
FLUX_UNET_KEYS = ["img_in.weight", "txt_in.weight", "double_blocks.0.img_attn.qkv.weight",
                  "double_blocks.18.txt_mlp.2.weight", "single_blocks.0.linear1.weight",
                  "single_blocks.37.linear2.weight", "final_layer.linear.weight"]


def _flux_adapter_keys():
    from pulid_layouts import flux_shapes

    return list(flux_shapes())


@pytest.mark.parametrize(
    "keys, kind",
    [
        (_flux_adapter_keys(), "a PuLID-FLUX file"),
        ([k for k in _flux_adapter_keys() if k.startswith("pulid_ca.")], "a PuLID-FLUX file"),
        (FLUX_UNET_KEYS, "a FLUX diffusion model"),
        (["model.diffusion_model." + k for k in FLUX_UNET_KEYS] + ["text_encoders.t5xxl.x"], "a FLUX checkpoint"),
        (["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.proj_mlp.weight"],
         "a FLUX diffusion model (diffusers format)"),
        (FLUX_UNET_KEYS + ["distilled_guidance_layer.in_proj.weight"], "a Chroma diffusion model"),
        # Not taken for FLUX: SDXL's UNet has neither kind of block.
        (["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.x"], "an SDXL checkpoint"),
    ],
)
def test_guess_kind_names_flux_files(keys, kind):
    assert pio.guess_kind(keys) == kind


def _save(path, keys):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


def test_a_pulid_flux_file_in_the_eva_clip_or_photomaker_loader_is_named(tmp_path):
    from pulid_core import load_eva_clip
    from pulid_core.photomaker import load_photomaker

    path = _save(tmp_path / "pulid_flux_v0.9.1.safetensors", _flux_adapter_keys())
    with pytest.raises(ModelFileError, match="pulid_flux_v0.9.1.safetensors is not an EVA02-CLIP vision tower: "
                                             "it looks like a PuLID-FLUX file"):
        load_eva_clip(path)
    with pytest.raises(ModelFileError, match="pulid_flux_v0.9.1.safetensors is not a PhotoMaker file: it looks "
                                             "like a PuLID-FLUX file"):
        load_photomaker(path)


def test_a_flux_diffusion_model_in_load_pulid_is_named_with_its_loader(tmp_path):
    from pulid_core import load_pulid

    path = _save(tmp_path / "flux1-dev.safetensors", FLUX_UNET_KEYS)
    with pytest.raises(ModelFileError, match=r"flux1-dev.safetensors is not a PuLID model: it looks like a FLUX "
                                             r"diffusion model \(load it with Load Diffusion Model"):
        load_pulid(path)
