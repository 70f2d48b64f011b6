"""Detection, embedding, face selection, RetinaFace matching, fallback and batches.

The InsightFace pack is synthetic (tests/unit/face_models.py) but has the real ONNX
signatures; facexlib is a stub with the FaceXLib interface here (the real classes are
exercised in test_face_loaders.py).
"""

import logging
import os

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import normalize, resize

from pulid_core.errors import FaceNotFoundError, PuLIDError
from pulid_core.face import (
    FaceCancelled,
    FacePipeline,
    align_ffhq,
    face_features,
    id_cond_from,
    load_face_analysis,
)
from tests.unit.face_models import (
    T1_FACES,
    arcface_reference,
    insightface_image,
    kps_for_box,
    letterbox_scale,
    make_pack,
)

W, H = 1024, 708  # t1.jpg (1280x886) with its long side at 1024, as the pipeline would make it
SCORES = (0.6, 0.9, 0.7, 0.8, 0.65, 0.75)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def t1():
    bgr = cv2.resize(cv2.imread(insightface_image("t1.jpg")), (W, H), interpolation=cv2.INTER_AREA)
    boxes = T1_FACES * np.array([W / 1280, H / 886, W / 1280, H / 886])
    kps, inv = zip(*(kps_for_box(b, angle=0.08 * (i - 2)) for i, b in enumerate(boxes)))
    return bgr, boxes, np.array(kps), list(inv)


def _pack(root, t1, faces=True, batched=False):
    _, boxes, kps, _ = t1
    s = letterbox_scale(H, W)
    spec = [(b * s, k * s, sc) for b, k, sc in zip(boxes, kps, SCORES)] if faces else []
    make_pack(os.path.join(root, "models", "antelopev2"), spec, batched=batched)
    return load_face_analysis(root)


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory, t1):
    return _pack(str(tmp_path_factory.mktemp("if")), t1)


@pytest.fixture(scope="module")
def empty_analyzer(tmp_path_factory, t1):
    return _pack(str(tmp_path_factory.mktemp("if0")), t1, faces=False)


class StubXLib:
    """FaceXLib's interface: fixed RetinaFace results and a label map derived from the crop."""

    def __init__(self, marks=()):
        self.marks = list(marks)
        self.parsed = 0

    def landmarks(self, image_bgr):
        return list(self.marks) if image_bgr.any() else []  # nothing in a black image

    def parse(self, crop_bgr):
        self.parsed += 1
        labels = np.ones(crop_bgr.shape[:2], np.uint8)  # skin
        labels[:100] = 0  # background
        labels[450:] = 16  # cloth
        return labels


def _rgb_float(bgr):
    return torch.from_numpy(bgr[:, :, ::-1].copy()).float() / 255.0


def assert_embedding(actual, expected):
    """Measured: at most 3.3e-5 of the largest value (float32 crops and sums); a pixel normalisation
    off by half a grey level ((x - 127.5) / 128, SCRFD's, instead of ArcFace's / 127.5) is 4e-3."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=5e-4 * scale)


def _expected_embedding(bgr, inv):
    return arcface_reference(cv2.warpAffine(bgr, inv, (112, 112), borderValue=0.0))


def test_detect_decodes_boxes_keypoints_and_embeddings(analyzer, t1):
    bgr, boxes, kps, inv = t1
    faces = analyzer.detect(bgr)
    assert analyzer.pack == "antelopev2" and analyzer.provider == "CPUExecutionProvider"
    assert [round(f.det_score, 4) for f in faces] == sorted(SCORES, reverse=True)
    for f in faces:
        i = SCORES.index(round(f.det_score, 4))
        np.testing.assert_allclose(f.bbox, boxes[i], atol=0.02)
        np.testing.assert_allclose(f.kps, kps[i], atol=0.02)
        assert f.embedding.shape == (512,) and f.embedding.dtype == np.float32
        assert_embedding(f.embedding, _expected_embedding(bgr, inv[i]))


def test_batched_detector_outputs(tmp_path, t1):
    faces = _pack(str(tmp_path), t1, batched=True).detect(t1[0], embed=False)
    assert len(faces) == 6
    np.testing.assert_allclose(sorted(f.bbox[0] for f in faces), sorted(t1[1][:, 0]), atol=0.02)


def _expected_index(boxes, selection):
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if selection == "largest":
        return int(np.argmax(areas))
    if selection == "center":
        return int(np.argmin(np.hypot(centres[:, 0] - W / 2, centres[:, 1] - H / 2)))
    order, i = selection
    key = {"left_to_right": centres[:, 0], "top_to_bottom": centres[:, 1], "large_to_small": -areas}[order]
    return int(np.argsort(key)[i])


@pytest.mark.parametrize(
    "selection",
    [
        "largest",
        "center",
        ("left_to_right", 0),
        ("left_to_right", 4),
        ("top_to_bottom", 0),
        ("top_to_bottom", 5),
        ("large_to_small", 1),
    ],
)
def test_selection_picks_the_right_face(analyzer, t1, selection):
    bgr, boxes, _, inv = t1
    pipe = FacePipeline(analyzer, StubXLib(), alignment="insightface")
    face = pipe.prepare(_rgb_float(bgr), selection=selection, index=2)
    i = _expected_index(boxes, selection)
    np.testing.assert_allclose(face.bbox, boxes[i], atol=0.02)
    assert_embedding(face.embedding, _expected_embedding(bgr, inv[i]))
    assert face.image_index == 2 and face.alignment == "insightface" and not face.used_fallback
    assert face.image_size == (W, H)


def test_largest_is_not_the_centre_face_here(t1):
    # Guards the two tests above from agreeing by accident.
    assert _expected_index(t1[1], "largest") != _expected_index(t1[1], "center")


def test_selection_errors(analyzer, t1):
    pipe = FacePipeline(analyzer, StubXLib(), alignment="insightface")
    with pytest.raises(PuLIDError, match=r"Reference image 1 has 6 faces; face 6 in left to right order"):
        pipe.prepare(t1[0][:, :, ::-1].copy(), selection=("left_to_right", 6), index=1)
    for bad in ("smallest", ("left_to_right", -1), ("sideways", 0), 3):
        with pytest.raises(PuLIDError, match="Unknown face selection"):
            pipe.prepare(t1[0], selection=bad)


def _marks(t1, skip=None):
    """RetinaFace-like results: same faces, shuffled, boxes jittered, landmarks slightly different."""
    _, boxes, kps, _ = t1
    order = [3, 0, 5, 1, 4, 2]
    return [(boxes[i] + [3, -2, -1, 4], kps[i] + [1.5, -0.5], 0.99) for i in order if i != skip]


def test_retinaface_landmarks_come_from_the_same_face(analyzer, t1):
    bgr, boxes, kps, inv = t1
    pipe = FacePipeline(analyzer, StubXLib(_marks(t1)), alignment="retinaface")
    face = pipe.prepare(bgr[:, :, ::-1].copy(), selection=("left_to_right", 4))
    i = _expected_index(boxes, ("left_to_right", 4))
    assert face.alignment == "retinaface"
    np.testing.assert_allclose(face.kps, kps[i] + [1.5, -0.5], atol=1e-4)
    expected_crop, _ = align_ffhq(bgr, kps[i] + [1.5, -0.5])
    np.testing.assert_array_equal(face.crop_bgr, expected_crop)
    # the embedding is InsightFace's own for that face, from its own keypoints
    assert_embedding(face.embedding, _expected_embedding(bgr, inv[i]))
    np.testing.assert_allclose(face.bbox, boxes[i], atol=0.02)


def test_retinaface_missing_the_selected_face_falls_back_to_keypoints(analyzer, t1, caplog):
    bgr, boxes, kps, _ = t1
    i = _expected_index(boxes, "largest")
    pipe = FacePipeline(analyzer, StubXLib(_marks(t1, skip=i)), alignment="retinaface")
    with caplog.at_level(logging.WARNING):
        face = pipe.prepare(bgr[:, :, ::-1].copy(), index=0)
    assert face.alignment == "insightface"
    np.testing.assert_allclose(face.kps, kps[i], atol=0.02)
    assert "RetinaFace did not find the selected face" in caplog.text


def test_features_and_eva_pixels(analyzer, t1):
    xlib = StubXLib(_marks(t1))
    face = FacePipeline(analyzer, xlib).prepare(t1[0][:, :, ::-1].copy())
    labels = xlib.parse(face.crop_bgr)
    assert face.crop_bgr.shape == (512, 512, 3) and face.crop_bgr.dtype == np.uint8
    assert face.features_rgb.shape == (512, 512, 3) and face.features_rgb.dtype == np.float32
    ref = face_features(face.crop_bgr, labels)
    np.testing.assert_array_equal(face.features_rgb, ref.permute(1, 2, 0).numpy())
    assert (face.features_rgb[:100] == 1.0).all() and (face.features_rgb[450:] == 1.0).all()
    expected = normalize(
        resize(ref[None], 336, InterpolationMode.BICUBIC, antialias=False), CLIP_MEAN, CLIP_STD
    )[0]
    assert face.eva_pixels.shape == (3, 336, 336)
    assert (face.eva_pixels - expected).abs().max() <= 1e-5


def test_no_insightface_face_uses_the_official_fallback(empty_analyzer, t1):
    bgr, boxes, kps, _ = t1
    marks = [(boxes[0], kps[0], 0.99), (boxes[2], kps[2], 0.98)]
    face = FacePipeline(empty_analyzer, StubXLib(marks)).prepare(bgr[:, :, ::-1].copy(), index=0)
    assert face.used_fallback and face.alignment == "retinaface"
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b, _, _ in marks]
    j = int(np.argmax(areas))
    np.testing.assert_allclose(face.bbox, marks[j][0], atol=1e-4)
    crop, _ = align_ffhq(bgr, marks[j][1])
    np.testing.assert_array_equal(face.crop_bgr, crop)
    # glintr100.get_feat on the 512 crop, resized to 112 without re-alignment
    expected = arcface_reference(cv2.resize(crop, (112, 112), interpolation=cv2.INTER_LINEAR))
    assert_embedding(face.embedding, expected)


def test_no_face_anywhere(empty_analyzer, t1):
    for alignment, xlib in (("retinaface", StubXLib()), ("insightface", None)):
        pipe = FacePipeline(empty_analyzer, xlib, alignment=alignment)
        with pytest.raises(FaceNotFoundError, match=r"No face found in reference image 4 .*closer crop"):
            pipe.prepare(t1[0], index=4)


def test_without_facexlib_only_embedding_and_crop(analyzer, t1):
    bgr, boxes, kps, _ = t1
    face = FacePipeline(analyzer, None, alignment="insightface").prepare(bgr[:, :, ::-1].copy())
    i = _expected_index(boxes, "largest")
    assert face.features_rgb is None and face.eva_pixels is None
    np.testing.assert_array_equal(face.crop_bgr, align_ffhq(bgr, face.kps)[0])
    np.testing.assert_allclose(face.kps, kps[i], atol=0.02)
    with pytest.raises(PuLIDError, match="RetinaFace alignment needs the facexlib models"):
        FacePipeline(analyzer, None)
    with pytest.raises(PuLIDError, match="no EVA input"):
        id_cond_from([face], object())


def test_gray_and_rgba_inputs_are_processed(analyzer, t1):
    pipe = FacePipeline(analyzer, StubXLib(), alignment="insightface")
    gray = cv2.cvtColor(t1[0], cv2.COLOR_BGR2GRAY)[:, :, None]
    assert pipe.prepare(gray).crop_bgr.shape == (512, 512, 3)
    rgba = np.concatenate([_rgb_float(t1[0]).numpy(), np.ones((H, W, 1), np.float32)], axis=2)
    face = pipe.prepare(rgba)
    assert face.source_size == face.image_size == (W, H)
    np.testing.assert_array_equal(face.crop_bgr, pipe.prepare(t1[0][:, :, ::-1].copy()).crop_bgr)


def test_large_image_boxes_refer_to_the_resized_image(analyzer, t1):
    # 2048 wide: capped to 1024, where the synthetic detector's faces are.
    big = cv2.resize(t1[0], (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    face = FacePipeline(analyzer, None, alignment="insightface").prepare(big[:, :, ::-1].copy())
    assert face.image_size == (W, H) and face.source_size == (2 * W, 2 * H)
    np.testing.assert_allclose(face.bbox, t1[1][_expected_index(t1[1], "largest")], atol=0.02)


def test_batch_progress_skip_and_errors(analyzer, t1, caplog):
    pipe = FacePipeline(analyzer, StubXLib(_marks(t1)))
    rgb = _rgb_float(t1[0])
    black = torch.zeros_like(rgb)
    batch = torch.stack([rgb, black, rgb])  # a ComfyUI IMAGE batch

    with pytest.raises(FaceNotFoundError, match="reference image 1"):
        pipe.prepare_batch(batch)

    calls = []
    with caplog.at_level(logging.WARNING):
        faces = pipe.prepare_batch(batch, on_no_face="skip", progress=lambda d, n: calls.append((d, n)))
    assert [f.image_index for f in faces] == [0, 2]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert "Skipping reference image 1" in caplog.text

    with pytest.raises(FaceNotFoundError, match="any of the 2 reference images"):
        pipe.prepare_batch([black, black.numpy()], on_no_face="skip")
    with pytest.raises(PuLIDError, match="on_no_face"):
        pipe.prepare_batch(batch, on_no_face="ignore")
    with pytest.raises(PuLIDError, match="No reference images"):
        pipe.prepare_batch([])


def test_batch_cancel(analyzer, t1):
    xlib = StubXLib(_marks(t1))
    pipe = FacePipeline(analyzer, xlib)
    asked = []

    def should_cancel():
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(FaceCancelled, match="after 1 of 3"):
        pipe.prepare_batch([t1[0][:, :, ::-1].copy()] * 3, should_cancel=should_cancel)
    assert xlib.parsed == 1


class StubEva:
    """EVA's .features interface: pooled = mean pixel per channel @ P, hidden i = filled with i."""

    def __init__(self, image_size=336):
        self.image_size = image_size
        self.proj = torch.from_numpy(np.random.default_rng(3).standard_normal((3, 768)).astype(np.float32))
        self.seen = None

    def features(self, pixels):
        self.seen = pixels
        pooled = pixels.mean(dim=(2, 3)) @ self.proj
        hidden = [torch.full((pixels.shape[0], 577, 1024), float(i)) for i in range(5)]
        return pooled, hidden


def test_id_cond_from(analyzer, t1):
    pipe = FacePipeline(analyzer, StubXLib(_marks(t1)))
    faces = [pipe.prepare(t1[0][:, :, ::-1].copy(), selection=("left_to_right", i)) for i in (1, 3)]
    eva = StubEva()
    id_cond, hidden = id_cond_from(faces, eva)
    assert id_cond.shape == (2, 1280) and id_cond.dtype == torch.float32
    assert torch.equal(eva.seen, torch.stack([f.eva_pixels for f in faces]))
    pooled = eva.seen.mean(dim=(2, 3)) @ eva.proj
    for n, f in enumerate(faces):
        assert torch.equal(id_cond[n, :512], torch.from_numpy(f.embedding))  # raw, not normalised
        np.testing.assert_allclose(
            id_cond[n, 512:].numpy(), (pooled[n] / pooled[n].norm()).numpy(), atol=1e-6
        )
    assert len(hidden) == 5 and all(h.shape == (2, 577, 1024) for h in hidden)

    # An EVA with another input size gets the masked features resized to its size.
    small = StubEva(image_size=224)
    id_cond_from(faces[:1], small)
    feats = torch.from_numpy(faces[0].features_rgb).permute(2, 0, 1)[None]
    expected = normalize(resize(feats, 224, InterpolationMode.BICUBIC, antialias=False), CLIP_MEAN, CLIP_STD)
    assert (small.seen - expected).abs().max() <= 1e-5
    with pytest.raises(PuLIDError, match="No prepared faces"):
        id_cond_from([], eva)


def test_id_cond_from_with_a_tiny_real_eva(analyzer, t1):
    # The real EvaClip class (width 64, 2x2 patches of 14 -> 28 px input) built by the EVA tests' helper.
    tiny_official = pytest.importorskip("tests.unit.test_eva_clip").tiny_official
    from pulid_core.eva_clip import load_eva_clip

    eva = load_eva_clip(tiny_official())
    pipe = FacePipeline(analyzer, StubXLib(_marks(t1)))
    faces = [pipe.prepare(t1[0][:, :, ::-1].copy(), selection=("large_to_small", i)) for i in (0, 2)]
    id_cond, hidden = id_cond_from(faces, eva)
    feats = torch.stack([torch.from_numpy(f.features_rgb).permute(2, 0, 1) for f in faces])
    pixels = normalize(
        resize(feats, eva.image_size, InterpolationMode.BICUBIC, antialias=False), CLIP_MEAN, CLIP_STD
    )
    with torch.no_grad():
        pooled, ref_hidden = eva.features(pixels)
    assert id_cond.shape == (2, 512 + pooled.shape[1])
    torch.testing.assert_close(id_cond[:, 512:], pooled / pooled.norm(dim=1, keepdim=True), atol=1e-5, rtol=0)
    assert torch.equal(id_cond[:, :512], torch.from_numpy(np.stack([f.embedding for f in faces])))
    for h, r in zip(hidden, ref_hidden, strict=True):
        # Relative to the hidden states' scale (up to ~20 in this tiny tower), as for any deep tower.
        torch.testing.assert_close(h, r, atol=2e-5 * float(r.abs().max()), rtol=0)
