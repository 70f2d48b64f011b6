"""Reference image -> the chosen face's ArcFace embedding, aligned crop and EVA input.

The official PuLID code embeds insightface's *largest* face but aligns facexlib's
*centre-most* face, which in a group photo can be two different people. Here one
face is selected on the InsightFace detections and the RetinaFace detection of the
same face (best box overlap) supplies the alignment landmarks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FaceNotFoundError, PuLIDError, UnalignableFaceError
from .align import EVA_SIZE, align_ffhq, face_features, normalize_for_eva
from .image import split_images, to_uint8_rgb

log = logging.getLogger(__name__)

ALIGNMENTS = ("retinaface", "insightface")
ORDERS = ("left_to_right", "top_to_bottom", "large_to_small")
ON_NO_FACE = ("error", "skip")
# A RetinaFace box must overlap the selected InsightFace box this much to be the same face.
MATCH_IOU = 0.3


class FaceCancelled(Exception):
    """Preprocessing was stopped by the caller's cancel check."""


@dataclass
class PreparedFace:
    """Everything PuLID (and PhotoMaker v2) needs from one reference image."""

    embedding: np.ndarray  # [512] float32 raw ArcFace embedding
    crop_bgr: np.ndarray  # [512, 512, 3] uint8 FFHQ-aligned crop
    features_rgb: np.ndarray | None  # [512, 512, 3] float32 0..1 masked gray face, for previews
    eva_pixels: torch.Tensor | None  # [3, 336, 336] float32 normalised EVA input
    bbox: np.ndarray  # [4] x1, y1, x2, y2 of the face used, in the (resized) input image
    kps: np.ndarray  # [5, 2] landmarks the crop was aligned with
    image_index: int | None
    used_fallback: bool  # embedding taken from the aligned crop (InsightFace found no face)
    alignment: str  # "retinaface" or "insightface": landmarks actually used for the crop
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the image the boxes refer to
    source_size: tuple[int, int] = (0, 0)  # (width, height) as given, before the long-side cap
    det_score: float = 0.0


def parse_selection(selection):
    """Validate ``selection``: 'largest', 'center' or (order, index) with order in ORDERS."""
    if selection in ("largest", "center"):
        return selection, 0
    if isinstance(selection, (tuple, list)) and len(selection) == 2 and selection[0] in ORDERS:
        order, idx = selection
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool) and idx >= 0:
            return order, int(idx)
    raise PuLIDError(
        f"Unknown face selection {selection!r}: use 'largest', 'center' or (order, index) with order one of "
        f"{', '.join(ORDERS)} and index >= 0."
    )


def select_face(
    boxes: np.ndarray, image_wh: tuple[int, int], selection="largest", index: int | None = None
) -> int:
    """Index into ``boxes`` [K, 4] of the face the selection picks."""
    order, pos = parse_selection(selection)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if order == "largest":
        # The official code sorts the faces by their float32 bbox area (insightface's boxes are
        # float32) ascending and takes the last one: ties, in float32, go to the later face.
        b32 = boxes.astype(np.float32)
        areas32 = (b32[:, 2] - b32[:, 0]) * (b32[:, 3] - b32[:, 1])
        return int(len(areas32) - 1 - np.argmax(areas32[::-1]))
    if order == "center":
        dist = np.linalg.norm(centres - np.array(image_wh, dtype=np.float64) / 2, axis=1)
        return int(np.argmin(dist))
    keys = {"left_to_right": centres[:, 0], "top_to_bottom": centres[:, 1], "large_to_small": -areas}[order]
    ranked = np.argsort(keys, kind="stable")
    if pos >= len(ranked):
        raise PuLIDError(
            f"{_where(index)} has {len(ranked)} face{'s' if len(ranked) != 1 else ''}; face {pos} in "
            f"{order.replace('_', ' ')} order does not exist (use 0..{len(ranked) - 1})."
        )
    return int(ranked[pos])


def _where(index) -> str:
    return "The reference image" if index is None else f"Reference image {index}"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` [4] against boxes ``b`` [K, 4]."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


class FacePipeline:
    """Per-image face preprocessing with loaded models (nothing is rebuilt per image).

    ``facexlib`` (RetinaFace + BiSeNet) is needed for the EVA input; without it only the
    embedding and a keypoint-aligned crop are produced (enough for PhotoMaker v2).
    """

    def __init__(self, analyzer, facexlib=None, alignment: str = "retinaface", eva_size: int = EVA_SIZE,
                 device_scope: Callable[[], contextlib.AbstractContextManager] | None = None):
        """``device_scope()``: a context manager during which the facexlib models are on their
        compute device (the nodes load them through ComfyUI's model management and offload
        them after); by default they stay where they are."""
        if alignment not in ALIGNMENTS:
            raise PuLIDError(f"Unknown face alignment {alignment!r}; use 'retinaface' or 'insightface'.")
        if alignment == "retinaface" and facexlib is None:
            raise PuLIDError(
                "RetinaFace alignment needs the facexlib models: load them, or choose 'insightface' "
                "alignment (InsightFace's own five keypoints)."
            )
        self.analyzer, self.facexlib = analyzer, facexlib
        self.alignment, self.eva_size = alignment, eva_size
        self.device_scope = device_scope or contextlib.nullcontext

    def prepare(self, image, selection="largest", index: int | None = None) -> PreparedFace:
        """One image (ComfyUI float [H, W, C] or uint8 RGB) -> the selected face's ``PreparedFace``.

        ``index`` is the image's position in a batch, used in messages and recorded.
        """
        parse_selection(selection)
        shape = image.shape if hasattr(image, "shape") else np.shape(image)
        rgb = to_uint8_rgb(image, index=index)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        h, w = bgr.shape[:2]
        faces = self.analyzer.detect(bgr, embed=False)
        marks = self.facexlib.landmarks(bgr) if self.alignment == "retinaface" else []

        skip_hint = "" if index is None else ", or set on_no_face to 'skip' to drop such images"
        try:
            used_fallback = False
            if faces:
                face = faces[select_face(np.stack([f.bbox for f in faces]), (w, h), selection, index)]
                embedding = self.analyzer.embed(bgr, face)
                bbox, kps, score, alignment = face.bbox, face.kps, face.det_score, "insightface"
                if self.alignment == "retinaface":
                    if marks:
                        iou = box_iou(face.bbox, np.stack([m[0] for m in marks]))
                        best = int(np.argmax(iou))
                        if iou[best] >= MATCH_IOU:
                            kps, alignment = marks[best][1], "retinaface"
                    if alignment != "retinaface":
                        log.warning(
                            "%s: RetinaFace did not find the selected face; aligning it with InsightFace's "
                            "keypoints instead.",
                            _where(index),
                        )
            elif marks:
                # Official v1.1 fallback: embed the FFHQ crop when SCRFD finds nothing.
                bbox, kps, score = marks[select_face(np.stack([m[0] for m in marks]), (w, h), selection, index)]
                alignment, used_fallback = "retinaface", True
            else:
                raise FaceNotFoundError(
                    f"No face found in {_where(index).lower()} ({w}x{h} px). Use a closer crop where the face is "
                    f"large, frontal and well lit{skip_hint}."
                )

            crop, _ = align_ffhq(bgr, kps)
            if used_fallback:
                embedding = self.analyzer.embed_aligned(crop)
                log.info("%s: InsightFace found no face; embedding taken from the aligned crop.", _where(index))
        except UnalignableFaceError as exc:
            # A face whose five landmarks are degenerate cannot be cropped: as unusable as no face.
            why = str(exc).split(": ", 1)[-1].rstrip(".")
            raise UnalignableFaceError(
                f"{_where(index)} ({w}x{h} px): its face could not be aligned ({why}). Use a sharper, more "
                f"frontal photo where the whole face is visible{skip_hint}."
            ) from exc

        features = eva = None
        if self.facexlib is not None:
            feats = face_features(crop, self.facexlib.parse(crop))
            eva = normalize_for_eva(feats, self.eva_size)
            features = feats.permute(1, 2, 0).numpy()
        return PreparedFace(
            embedding=np.asarray(embedding, dtype=np.float32),
            crop_bgr=crop,
            features_rgb=features,
            eva_pixels=eva,
            bbox=np.asarray(bbox, dtype=np.float32),
            kps=np.asarray(kps, dtype=np.float32),
            image_index=index,
            used_fallback=used_fallback,
            alignment=alignment,
            image_size=(w, h),
            source_size=(int(shape[1]), int(shape[0])),
            det_score=float(score),
        )

    def prepare_batch(
        self,
        images,
        on_no_face: str = "error",
        selection="largest",
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[PreparedFace]:
        """Every image of a batch or list. ``progress(done, total)`` is called after each image;
        ``should_cancel()`` returning True stops with :class:`FaceCancelled`."""
        if on_no_face not in ON_NO_FACE:
            raise PuLIDError(f"Unknown on_no_face {on_no_face!r}; use 'error' or 'skip'.")
        parse_selection(selection)
        items = split_images(images)
        if not items:
            raise PuLIDError("No reference images were given.")
        prepared = []
        with self.device_scope():
            for i, image in enumerate(items):
                if should_cancel is not None and should_cancel():
                    raise FaceCancelled(f"Face preprocessing cancelled after {i} of {len(items)} images.")
                try:
                    prepared.append(self.prepare(image, selection, index=i))
                except FaceNotFoundError as exc:
                    if on_no_face == "error":
                        raise
                    log.warning("Skipping reference image %d: %s", i, exc)
                if progress is not None:
                    progress(i + 1, len(items))
        if not prepared:
            raise FaceNotFoundError(
                f"No face found in any of the {len(items)} reference image{'s' if len(items) != 1 else ''}. "
                "Use closer crops where the face is large, frontal and well lit."
            )
        return prepared


def id_cond_from(prepared_faces, eva, device=None, dtype=torch.float32):
    """EVA on all faces in one batch -> (id_cond [N, 512 + D], id_vit_hidden 5 x [N, T, C]).

    ``id_cond`` is [raw ArcFace embedding ‖ L2-normalised EVA pooled], in that order.
    """
    faces = list(prepared_faces)
    if not faces:
        raise PuLIDError("No prepared faces to encode.")
    if any(f.eva_pixels is None for f in faces):
        raise PuLIDError("These faces have no EVA input: prepare them with the facexlib models loaded.")
    if device is None:
        device = getattr(eva, "device", torch.device("cpu"))
    size = getattr(eva, "image_size", None)
    pixels = [
        f.eva_pixels
        if size is None or f.eva_pixels.shape[-1] == size
        else normalize_for_eva(torch.from_numpy(f.features_rgb).permute(2, 0, 1), size)
        for f in faces
    ]
    with torch.no_grad():
        pooled, hidden = eva.features(torch.stack(pixels).to(device=device, dtype=dtype))
        pooled = pooled.to(dtype)
        pooled = pooled / pooled.norm(p=2, dim=1, keepdim=True)
        arcface = torch.from_numpy(np.stack([f.embedding for f in faces])).to(
            device=pooled.device, dtype=dtype
        )
        id_cond = torch.cat([arcface, pooled], dim=-1)
    return id_cond, [h.to(dtype) for h in hidden]
