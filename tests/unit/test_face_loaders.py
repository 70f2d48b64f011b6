"""Model folders and files: InsightFace packs (ONNX) and facexlib weights (.pth)."""

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms.functional import normalize

from pulid_core.errors import ModelFileError, PuLIDError
from pulid_core.face import (
    FacePipeline,
    eva_input,
    load_face_analysis,
    load_facexlib,
    model_task,
    resolve_provider,
)
from tests.unit.face_models import (
    T1_FACES,
    arcface_model,
    bisenet_state_dict,
    insightface_image,
    kps_for_box,
    letterbox_scale,
    make_pack,
    retinaface_state_dict,
    scrfd_model,
    square_model,
)

FACE = ([200.0, 150.0, 320.0, 300.0], kps_for_box([200.0, 150.0, 320.0, 300.0])[0], 0.9)


@pytest.fixture(scope="module")
def pack_files(tmp_path_factory):
    folder = make_pack(str(tmp_path_factory.mktemp("pack") / "antelopev2"), [FACE])
    return {f: os.path.join(folder, f) for f in os.listdir(folder)}


def _copy(pack_files, folder, names=None):
    os.makedirs(folder, exist_ok=True)
    for name, path in pack_files.items():
        if names is None or name in names:
            shutil.copy(path, os.path.join(folder, names[name] if isinstance(names, dict) else name))
    return folder


def test_standard_layout(pack_files, tmp_path):
    _copy(pack_files, tmp_path / "models" / "antelopev2")
    fa = load_face_analysis(str(tmp_path))
    assert fa.folder == str(tmp_path / "models" / "antelopev2")
    assert os.path.basename(fa.detector.path) == "scrfd_10g_bnkps.onnx"
    assert os.path.basename(fa.recognizer.path) == "glintr100.onnx"
    assert fa.detector.input_size == (640, 640) and fa.recognizer.input_size == 112
    assert (fa.recognizer.mean, fa.recognizer.std) == (127.5, 127.5)


def test_nested_unzip_mistake_is_found_and_logged(pack_files, tmp_path, caplog):
    _copy(pack_files, tmp_path / "models" / "antelopev2" / "antelopev2")
    with caplog.at_level(logging.INFO):
        fa = load_face_analysis(str(tmp_path))
    assert fa.folder == str(tmp_path / "models" / "antelopev2" / "antelopev2")
    assert "nested folder" in caplog.text


def test_models_folder_or_pack_folder_given_directly(pack_files, tmp_path):
    _copy(pack_files, tmp_path / "antelopev2")
    assert load_face_analysis(str(tmp_path)).folder == str(tmp_path / "antelopev2")
    assert load_face_analysis(str(tmp_path / "antelopev2")).folder == str(tmp_path / "antelopev2")


def test_models_are_identified_by_signature_not_name(pack_files, tmp_path):
    names = {
        "scrfd_10g_bnkps.onnx": "zz_detector.onnx",
        "glintr100.onnx": "aa_recognition.onnx",
        "genderage.onnx": "genderage.onnx",
        "1k3d68.onnx": "1k3d68.onnx",
    }
    folder = _copy(pack_files, tmp_path / "models" / "buffalo_l", names)
    square_model(os.path.join(folder, "unrelated_64.onnx"), 64)
    fa = load_face_analysis(str(tmp_path), pack="buffalo_l")
    assert os.path.basename(fa.detector.path) == "zz_detector.onnx"
    assert os.path.basename(fa.recognizer.path) == "aa_recognition.onnx"
    assert fa.pack == "buffalo_l"


def test_model_task_routing(pack_files):
    import onnx

    tasks = {n: model_task(onnx.load(p)) for n, p in pack_files.items()}
    assert tasks == {
        "scrfd_10g_bnkps.onnx": "detection",
        "glintr100.onnx": "recognition",
        "1k3d68.onnx": "landmark",
        "2d106det.onnx": "landmark",
        "genderage.onnx": "genderage",
    }


def test_missing_pack_names_folder_and_files(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_face_analysis(str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "models" / "antelopev2") in msg
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg
    with pytest.raises(ModelFileError, match="det_10g.onnx, w600k_r50.onnx"):
        load_face_analysis(str(tmp_path), pack="buffalo_l")


def test_incomplete_pack(pack_files, tmp_path):
    _copy(pack_files, tmp_path / "models" / "antelopev2", ["scrfd_10g_bnkps.onnx", "genderage.onnx"])
    with pytest.raises(ModelFileError) as err:
        load_face_analysis(str(tmp_path))
    msg = str(err.value)
    assert "no recognition model" in msg and "glintr100.onnx" in msg and "found: genderage.onnx" in msg


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "pickle"])
def test_corrupt_onnx_names_the_file(pack_files, tmp_path, damage):
    folder = _copy(pack_files, tmp_path / "models" / "antelopev2")
    path = os.path.join(folder, "glintr100.onnx")
    data = Path(path).read_bytes()
    if damage == "random":
        data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    if damage == "pickle":
        torch.save({"w": torch.zeros(3)}, path)
    else:
        Path(path).write_bytes(data)
    with pytest.raises(ModelFileError, match="glintr100.onnx"):
        load_face_analysis(str(tmp_path))


def test_providers(caplog):
    assert resolve_provider("CPU") == ["CPUExecutionProvider"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with caplog.at_level(logging.WARNING):
            assert resolve_provider("CUDA") == ["CPUExecutionProvider"]
        assert "provider CUDA is not available" in caplog.text
    for name in ("ROCm", "CoreML", "DirectML", "cudaexecutionprovider"):
        assert resolve_provider(name)[-1] == "CPUExecutionProvider"
    with pytest.raises(PuLIDError, match="Unknown ONNX provider"):
        resolve_provider("TPU")


def test_fixed_size_detector_ignores_det_size(tmp_path):
    # A detector exported at 320x320 keeps its size, as insightface does.
    folder = tmp_path / "models" / "antelopev2"
    folder.mkdir(parents=True)
    scrfd_model(str(folder / "det.onnx"), [], size=320)
    arcface_model(str(folder / "rec.onnx"))
    fa = load_face_analysis(str(tmp_path), det_size=320)
    assert fa.detector.input_size == (320, 320)


# --- facexlib ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xlib_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("facexlib")
    torch.save(retinaface_state_dict(), folder / "detection_Resnet50_Final.pth")
    torch.save(bisenet_state_dict(), folder / "parsing_bisenet.pth")
    return folder


@pytest.fixture(scope="module")
def xlib(xlib_folder):
    return load_facexlib(str(xlib_folder))


def test_parse_matches_bisenet_run_the_official_way(xlib, xlib_folder):
    from facexlib.parsing.bisenet import BiSeNet

    net = BiSeNet(num_class=19)
    net.load_state_dict(torch.load(xlib_folder / "parsing_bisenet.pth", weights_only=True))
    net.eval()
    crop = cv2.resize(cv2.imread(insightface_image("Tom_Hanks_54745.png")), (512, 512))
    labels = xlib.parse(crop)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8 and labels.max() < 19
    x = torch.from_numpy(crop[:, :, ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = net(normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))[0].argmax(dim=1)[0]
    np.testing.assert_array_equal(labels, ref.numpy())


def test_landmarks_match_retinaface_loaded_the_official_way(xlib, xlib_folder):
    import warnings

    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    sd = torch.load(xlib_folder / "detection_Resnet50_Final.pth", weights_only=True)
    net.load_state_dict({k[7:]: v for k, v in sd.items()})
    net.eval()
    image = cv2.resize(cv2.imread(insightface_image("Tom_Hanks_54745.png")), (96, 96))
    with torch.no_grad():
        rows = net.detect_faces(image, 0.0)
    marks = xlib.landmarks(image, conf_threshold=0.0)
    assert len(marks) == len(rows) > 0
    for (bbox, kps, score), row in zip(marks[:5], rows):
        np.testing.assert_allclose(bbox, row[:4], atol=1e-3)
        np.testing.assert_allclose(kps, row[5:15].reshape(5, 2), atol=1e-3)
        assert score == pytest.approx(row[4], abs=1e-5)
    # the official 0.97 threshold is the default
    assert all(s > 0.97 for _, _, s in xlib.landmarks(image))


def test_pipeline_with_real_facexlib(xlib, tmp_path, monkeypatch):
    bgr = cv2.resize(cv2.imread(insightface_image("t1.jpg")), (640, 443))
    box = T1_FACES[2] * 0.5
    kps = kps_for_box(box)[0]
    s = letterbox_scale(443, 640)
    make_pack(str(tmp_path / "models" / "antelopev2"), [(box * s, kps * s, 0.9)], extra=False)
    # random-weight RetinaFace finds nothing useful: give it the face's landmarks
    monkeypatch.setattr(xlib, "landmarks", lambda image: [(box + 2, kps + 1.0, 0.99)])
    face = FacePipeline(load_face_analysis(str(tmp_path)), xlib).prepare(bgr[:, :, ::-1].copy())
    assert face.alignment == "retinaface"
    np.testing.assert_allclose(face.kps, kps + 1.0, atol=1e-5)
    assert (face.eva_pixels - eva_input(face.crop_bgr, xlib.parse(face.crop_bgr))).abs().max() == 0


def test_facexlib_missing_folder_and_files(tmp_path, xlib_folder):
    with pytest.raises(ModelFileError) as err:
        load_facexlib(str(tmp_path / "nope"))
    msg = str(err.value)
    assert (
        "detection_Resnet50_Final.pth" in msg and "parsing_bisenet.pth" in msg and "github.com/xinntao" in msg
    )
    shutil.copy(xlib_folder / "detection_Resnet50_Final.pth", tmp_path)
    with pytest.raises(
        ModelFileError, match=r"parsing_bisenet.pth not found in .*v0.2.0/parsing_bisenet.pth"
    ):
        load_facexlib(str(tmp_path))


def test_facexlib_weights_subfolder(tmp_path, xlib_folder):
    (tmp_path / "weights").mkdir()
    for name in ("detection_Resnet50_Final.pth", "parsing_bisenet.pth"):
        os.symlink(xlib_folder / name, tmp_path / "weights" / name)
    assert load_facexlib(str(tmp_path)).folder == str(tmp_path)


def test_facexlib_wrong_and_corrupt_files(tmp_path, xlib_folder):
    shutil.copy(xlib_folder / "parsing_bisenet.pth", tmp_path / "detection_Resnet50_Final.pth")
    shutil.copy(xlib_folder / "parsing_bisenet.pth", tmp_path / "parsing_bisenet.pth")
    with pytest.raises(
        ModelFileError,
        match="detection_Resnet50_Final.pth does not look like a RetinaFace.*"
        "looks like a BiSeNet face-parsing model",
    ):
        load_facexlib(str(tmp_path))
    data = (xlib_folder / "detection_Resnet50_Final.pth").read_bytes()
    (tmp_path / "detection_Resnet50_Final.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="detection_Resnet50_Final.pth"):
        load_facexlib(str(tmp_path))


def test_keypoint_alignment_needs_only_the_parsing_weights(tmp_path):
    import torch

    from pulid_core.errors import PuLIDError
    from pulid_core.face import load_facexlib
    from tests.unit.face_models import bisenet_state_dict

    torch.save(bisenet_state_dict(), tmp_path / "parsing_bisenet.pth")
    xlib = load_facexlib(tmp_path, detection=False)
    assert xlib.parse(np.zeros((512, 512, 3), np.uint8)).shape == (512, 512)
    with pytest.raises(PuLIDError, match="RetinaFace was not loaded"):
        xlib.landmarks(np.zeros((64, 64, 3), np.uint8))


def test_a_missing_onnxruntime_says_how_to_install_one_build(monkeypatch):
    """onnxruntime is installed by install.py, not requirements.txt: without any build, loading says
    which to install (and only one), never a bare ModuleNotFoundError."""
    import sys

    from pulid_core.face import insight

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(PuLIDError, match="onnxruntime is not installed.*install.py.*onnxruntime-gpu.*only one"):
        insight.resolve_provider("CPU")
