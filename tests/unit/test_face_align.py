"""Parity of the pure preprocessing steps with the official PuLID/facexlib numbers."""

import os

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import normalize, resize

from pulid_core.errors import PuLIDError
from pulid_core.face import align_ffhq, arcface_crop, eva_input, face_features, similarity_umeyama
from tests.unit.face_models import ARCFACE_112, insightface_image, similarity

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "data", "golden", "preprocess.safetensors")
FFHQ = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def golden():
    return {k: v.numpy() for k, v in load_file(GOLDEN).items()}


def test_golden_affine_and_crop(golden):
    image = cv2.imread(insightface_image("Tom_Hanks_54745.png"))
    crop, affine = align_ffhq(image, golden["landmarks_in"])
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    assert np.abs(affine - golden["affine"]).max() <= 1e-4
    assert np.abs(crop.astype(int) - golden["crop_bgr"].astype(int)).max() <= 1


def test_golden_features_and_eva_input(golden):
    feats = face_features(golden["crop_bgr"], golden["parsing_labels"])
    assert feats.shape == (3, 512, 512) and feats.dtype == torch.float32
    assert (feats - torch.from_numpy(golden["features_512"])).abs().max() <= 1e-5
    x = eva_input(golden["crop_bgr"], golden["parsing_labels"])
    assert x.shape == (3, 336, 336) and x.dtype == torch.float32
    assert (x - torch.from_numpy(golden["eva_input"])).abs().max() <= 1e-5


@pytest.mark.parametrize("scale,angle,shift", [(0.5, 0.2, (-40.0, 30.0)), (2.3, -0.35, (100.0, -250.0))])
def test_align_recovers_known_similarity(scale, angle, shift):
    # Landmarks that are an exact similarity image of the template: the estimated
    # affine must be that similarity's inverse, and warping must follow it.
    fwd = similarity(scale, angle, shift)
    lmk = FFHQ @ fwd[:, :2].T + fwd[:, 2]
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    crop, affine = align_ffhq(image, lmk)
    assert np.abs(affine - inv).max() < 1e-4 * max(1.0, np.abs(inv).max())
    expected = cv2.warpAffine(
        image,
        inv,
        (512, 512),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(135, 133, 132),
    )
    assert np.abs(crop.astype(int) - expected.astype(int)).max() <= 1


def test_align_border_is_facexlib_grey():
    # The crop's bottom-right corner maps outside this black image, its top-left inside.
    image = np.zeros((64, 64, 3), np.uint8)
    crop, _ = align_ffhq(image, FFHQ / 512 * 20 + 50)
    assert tuple(crop[-1, -1]) == (135, 133, 132)
    assert tuple(crop[0, 0]) == (0, 0, 0)


def test_align_rejects_degenerate_landmarks():
    with pytest.raises(PuLIDError, match="landmarks"):
        align_ffhq(np.zeros((64, 64, 3), np.uint8), np.zeros((4, 2)))
    with pytest.raises(PuLIDError):
        align_ffhq(np.zeros((64, 64, 3), np.uint8), np.full((5, 2), np.nan))


def test_umeyama_and_arcface_crop_match_known_similarity():
    fwd = similarity(1.7, 0.3, (210.0, 95.0))
    kps = ARCFACE_112 @ fwd[:, :2].T + fwd[:, 2]
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(similarity_umeyama(kps, ARCFACE_112), inv, atol=1e-9)
    image = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    # insightface solves from float32 landmarks and template (see test_insightface_exact.py).
    solved32 = similarity_umeyama(kps.astype(np.float32), ARCFACE_112.astype(np.float32))
    np.testing.assert_allclose(solved32, inv, atol=1e-3)
    np.testing.assert_array_equal(
        arcface_crop(image, kps), cv2.warpAffine(image, solved32, (112, 112), borderValue=0.0)
    )
    # 128-multiple inputs use the template scaled by size/128 and shifted 8 px (insightface's rule)
    dst = ARCFACE_112 * 2 + [16, 0]
    np.testing.assert_allclose(
        similarity_umeyama(kps, dst),
        np.diag([2, 2, 1.0])[:2] @ np.vstack([inv, [0, 0, 1]]) + [[0, 0, 16], [0, 0, 0]],
        atol=1e-8,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_eva_input_other_label_maps_match_torchvision(seed):
    # The official steps written with torchvision (antialias off, as torchvision 0.15 did).
    rng = np.random.default_rng(seed)
    crop = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    labels = np.kron(rng.integers(0, 19, (16, 16)), np.ones((32, 32), int)).astype(np.uint8)
    rgb = torch.from_numpy(crop[:, :, ::-1].copy()).permute(2, 0, 1).float()[None] / 255.0
    gray = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]).repeat(1, 3, 1, 1)
    bg = torch.from_numpy(np.isin(labels, [0, 16, 18, 7, 8, 9, 14, 15]))[None, None]
    ref = torch.where(bg, torch.ones_like(rgb), gray)
    ref = normalize(resize(ref, 336, InterpolationMode.BICUBIC, antialias=False), CLIP_MEAN, CLIP_STD)[0]
    out = eva_input(crop, labels)
    assert (out - ref).abs().max() <= 1e-5
    # labels given as a torch tensor work the same
    assert torch.equal(eva_input(crop, torch.from_numpy(labels)), out)


def test_eva_input_checks_shapes():
    with pytest.raises(PuLIDError, match="do not match"):
        eva_input(np.zeros((512, 512, 3), np.uint8), np.zeros((256, 256), np.uint8))
