"""Face encode edge cases from an adversarial review (2026-11-27).

README, Bad input: a bad photo stops with "a clear PuLIDError naming the node, the photo index and
the fix". A photo whose five landmarks are degenerate (collinear / identical: RetinaFace or SCRFD
on an extreme profile or a tiny, blurred face) got a message with neither the photo index nor
advice, and stopped the run even with on_no_face 'skip'.
"""

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.comfy

IMG_W, IMG_H = 640, 480
BOX = np.array([200.0, 100.0, 330.0, 250.0])


class StubXLib:
    """FaceXLib's interface: RetinaFace marks per call (one entry per photo), a fixed parse map."""

    def __init__(self, marks_per_photo):
        self.marks_per_photo = list(marks_per_photo)
        self.calls = 0

    def landmarks(self, image_bgr):
        marks = self.marks_per_photo[min(self.calls, len(self.marks_per_photo) - 1)]
        self.calls += 1
        return list(marks)

    def parse(self, crop_bgr):
        labels = np.ones(crop_bgr.shape[:2], np.uint8)
        labels[:100] = 0
        return labels


def _images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, IMG_H, IMG_W, 3, generator=g)


def _analyzer(root, faces):
    from comfyui_pulid.pulid_core.face import load_face_analysis

    from tests.unit.face_models import letterbox_scale, make_pack

    s = letterbox_scale(IMG_H, IMG_W)
    make_pack(os.path.join(root, "models", "antelopev2"), [(b * s, k * s, sc) for b, k, sc in faces])
    return load_face_analysis(root)


def _good_then_degenerate(root):
    """A face pipeline where InsightFace finds no face (the RetinaFace fallback aligns) and RetinaFace gives
    photo 0 good landmarks and photo 1 five identical ones."""
    from comfyui_pulid.pulid_core.face import FacePipeline

    from tests.unit.face_models import kps_for_box

    kps, _ = kps_for_box(BOX)
    good, bad = [(BOX, kps, 0.99)], [(BOX, np.tile(kps[:1], (5, 1)), 0.99)]
    return FacePipeline(_analyzer(str(root), []), StubXLib([good, bad]), alignment="retinaface")


def test_degenerate_retinaface_landmarks_name_the_photo(loaded, tmp_path):
    """Photo 0 is fine, photo 1's RetinaFace landmarks are degenerate (InsightFace finds no face,
    so the official fallback aligns with RetinaFace's)."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace
    from comfyui_pulid.pulid_core.errors import PuLIDError

    with pytest.raises(PuLIDError) as err:
        PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], _good_then_degenerate(tmp_path), _images(2), "largest",
                                0, "error", "average")
    message = str(err.value)
    assert message.startswith("Encode Face (PuLID):")
    # Was: "Encode Face (PuLID): Could not align the face: its five landmarks are degenerate
    # (collinear or identical)." -- no photo index, no advice.
    assert "reference image 1" in message.lower(), message


def test_degenerate_insightface_keypoints_name_the_photo(loaded, tmp_path):
    """SCRFD returns a face whose five keypoints are collinear: the ArcFace crop cannot be made.
    The error comes from the embedding step and names no photo."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace
    from comfyui_pulid.pulid_core.errors import PuLIDError
    from comfyui_pulid.pulid_core.face import FacePipeline

    x = np.linspace(BOX[0] + 20, BOX[2] - 20, 5)
    collinear = np.stack([x, np.full(5, (BOX[1] + BOX[3]) / 2)], axis=1)  # five points on one line
    pipe = FacePipeline(_analyzer(str(tmp_path), [(BOX, collinear, 0.9)]), StubXLib([[]]),
                        alignment="insightface")
    with pytest.raises(PuLIDError) as err:
        PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], pipe, _images(1), "largest", 0, "error", "average")
    message = str(err.value)
    assert message.startswith("Encode Face (PuLID):")
    # Was: "Encode Face (PuLID): Could not align the face: its five landmarks are collinear or identical."
    assert "reference image 0" in message.lower(), message


def test_an_unalignable_face_is_skipped_like_a_missing_one(loaded, tmp_path):
    """on_no_face 'skip' drops a photo whose face cannot be aligned, as one without a face."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace

    embeds = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], _good_then_degenerate(tmp_path), _images(2),
                                     "largest", 0, "skip", "average").result[0]
    assert embeds.images == 1
