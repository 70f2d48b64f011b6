"""InsightFace exactly as the PuLID authors ran it (insightface 0.7.3):

- ArcFace alignment (``face_align.norm_crop``): a float32 template and float32 landmarks, solved by
  scikit-image's SimilarityTransform in float32 (means, covariance, SVD), not in float64;
- SCRFD's score order: ``argsort()[::-1]`` (numpy's default, unstable sort) in ``detect`` and again
  in ``nms``, not a stable sort, so equal scores can let a different box survive NMS;
- PuLID's "largest face": float32 bbox areas, sorted ascending, the last one (ties to the later face).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from pulid_core.face import arcface_crop, similarity_umeyama
from pulid_core.face.align import ARCFACE_TEMPLATE_112
from pulid_core.face.insight import SCRFD
from pulid_core.face.pipeline import select_face

# Landmarks of a face in a 640x480 photo (float32, as SCRFD returns them) and the matrix
# scikit-image 0.26 estimates from them and the float32 template (float.hex, row-major).
KPS = np.array([[261.3, 201.7], [338.9, 196.2], [301.4, 247.8], [270.2, 289.6], [332.5, 285.1]], np.float32)
PINNED = [
    "0x1.d578b02e5044ap-2", "-0x1.ce3a83678c80ap-7", "-0x1.39dcbf34422bep+6",
    "0x1.ce3a83678c80ap-7", "0x1.d578b02e5044ap-2", "-0x1.61f80357877eep+5",
]


def skimage_matrix(src, dst):
    """insightface's estimate_norm: SimilarityTransform().estimate(lmk, dst).params[0:2]."""
    transform = pytest.importorskip("skimage.transform")
    tform = transform.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # estimate() is deprecated in favour of from_estimate()
        tform.estimate(src, dst)
    return tform.params[:2]


def test_arcface_template_is_float32_like_insightface():
    assert ARCFACE_TEMPLATE_112.dtype == np.float32


@pytest.mark.parametrize("seed", range(6))
def test_alignment_solves_like_skimage_in_float32(seed):
    rng = np.random.default_rng(seed)
    # A random similarity of the template plus detector noise, in float32.
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.8, 4.0)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = (ARCFACE_TEMPLATE_112 @ rot.T + rng.uniform(50, 400, 2) + rng.normal(0, 1.5, (5, 2))).astype(np.float32)
    for size in (112, 128):
        ratio, shift = (size / 112.0, 0.0) if size % 112 == 0 else (size / 128.0, 8.0 * size / 128.0)
        dst = ARCFACE_TEMPLATE_112 * ratio
        dst[:, 0] += shift
        expected = skimage_matrix(kps, dst)
        assert np.array_equal(similarity_umeyama(kps, dst), expected)
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        np.testing.assert_array_equal(arcface_crop(image, kps, size),
                                      cv2.warpAffine(image, expected, (size, size), borderValue=0.0))


def test_alignment_pinned_matrix():
    # Runs without scikit-image: the float32 solve to the last bit.
    matrix = similarity_umeyama(KPS, ARCFACE_TEMPLATE_112)
    assert [float.hex(float(x)) for x in matrix.reshape(-1)] == PINNED
    # Landmarks given as float64 are taken as the float32 SCRFD returns (arcface_crop's rule).
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(arcface_crop(image, KPS.astype(np.float64)), arcface_crop(image, KPS))


def test_pinned_matrix_is_skimages():
    expected = skimage_matrix(KPS, ARCFACE_TEMPLATE_112)
    assert [float.hex(float(x)) for x in expected.reshape(-1)] == PINNED


# -- SCRFD score order -----------------------------------------------------------------------
class _Node:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeSession:
    """An SCRFD graph's interface (3 strides, 2 anchors, keypoints) returning fixed outputs."""

    def __init__(self, outputs):
        self.outputs = outputs

    def get_inputs(self):
        return [_Node("input.1", [1, 3, 32, 32])]

    def get_outputs(self):
        return [_Node(f"out{i}", list(o.shape)) for i, o in enumerate(self.outputs)]

    def run(self, names, feed):
        return self.outputs


def tied_outputs(seed=0):
    """Scores with many exact ties (0.5/0.75/0.875) and boxes that overlap in clusters."""
    rng = np.random.default_rng(seed)
    scores, boxes, points = [], [], []
    for stride in (8, 16, 32):
        n = (32 // stride) ** 2 * 2
        scores.append(rng.choice(np.float32([0.5, 0.75, 0.875, 0.2]), (n, 1)).astype(np.float32))
        boxes.append(rng.choice(np.float32([0.5, 1.0, 1.5]), (n, 4)).astype(np.float32))
        points.append(rng.uniform(-1, 1, (n, 10)).astype(np.float32))
    return scores + boxes + points


def reference_0_7_3(outputs, det_thresh=0.5, nms_thresh=0.4):
    """insightface 0.7.3's SCRFD.detect + nms on these outputs, at scale 1, written out."""
    scores, boxes, kpss = [], [], []
    for i, stride in enumerate((8, 16, 32)):
        side = 32 // stride
        ys, xs = np.mgrid[:side, :side]
        centers = np.repeat((np.stack([xs, ys], -1).astype(np.float32) * stride).reshape(-1, 2), 2, axis=0)
        pos = np.where(outputs[i] >= det_thresh)[0]
        dist = outputs[i + 3] * stride
        box = np.stack([centers[:, 0] - dist[:, 0], centers[:, 1] - dist[:, 1],
                        centers[:, 0] + dist[:, 2], centers[:, 1] + dist[:, 3]], axis=-1)
        kd = outputs[i + 6] * stride
        kps = np.stack([centers[:, j % 2] + kd[:, j] for j in range(10)], axis=-1).reshape(-1, 5, 2)
        scores.append(outputs[i][pos])
        boxes.append(box[pos])
        kpss.append(kps[pos])
    score = np.vstack(scores).ravel()
    order = score.argsort()[::-1]
    raw = np.hstack((np.vstack(boxes), np.vstack(scores))).astype(np.float32)
    pre_det = raw[order]
    kpss = np.vstack(kpss)[order]
    x1, y1, x2, y2, sc = (pre_det[:, j] for j in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    left, keep = sc.argsort()[::-1], []
    while left.size > 0:
        i = left[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[left[1:]]) - np.maximum(x1[i], x1[left[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[left[1:]]) - np.maximum(y1[i], y1[left[1:]]) + 1)
        inter = w * h
        left = left[np.where(inter / (areas[i] + areas[left[1:]] - inter) <= nms_thresh)[0] + 1]
    return pre_det[keep], kpss[keep], raw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_scores_are_ordered_like_0_7_3(seed):
    outputs = tied_outputs(seed)
    detector = SCRFD(FakeSession(outputs), "fake.onnx")
    dets, kps = detector.detect(np.zeros((32, 32, 3), np.uint8))
    want_dets, want_kps, _ = reference_0_7_3(outputs)
    np.testing.assert_array_equal(dets, want_dets)
    np.testing.assert_array_equal(kps, want_kps)


def test_the_tie_case_discriminates_stable_sorting():
    # With a stable order the surviving boxes (or their order) differ on these outputs, so the
    # test above fails for a stable sort.
    outputs = tied_outputs(0)
    want, _, raw = reference_0_7_3(outputs)
    stable = raw[np.argsort(-raw[:, 4], kind="stable")]
    assert not np.array_equal(stable, raw[raw[:, 4].argsort()[::-1]])
    assert len(want) >= 2


# -- largest face ----------------------------------------------------------------------------
def test_largest_face_compares_float32_areas_ties_to_the_later():
    # 24929 x 673 = 2**24 + 1 and 4096 x 4096 = 2**24: distinct in float64, equal in float32.
    first = np.array([0.0, 0.0, 24929.0, 673.0], np.float32)
    second = np.array([5.0, 5.0, 4101.0, 4101.0], np.float32)
    assert select_face(np.stack([first, second]), (30000, 5000), "largest") == 1
    assert select_face(np.stack([second, first]), (30000, 5000), "largest") == 1
    bigger = np.array([0.0, 0.0, 4097.0, 4096.0], np.float32)
    assert select_face(np.stack([bigger, second]), (30000, 5000), "largest") == 0
