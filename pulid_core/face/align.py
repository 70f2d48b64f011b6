"""Pure geometry and pixel steps of PuLID's face preprocessing (no model weights).

The numbers follow the official PuLID pipeline: facexlib's FFHQ-512 alignment,
the BiSeNet background mask, BT.601 gray, bicubic resize to the EVA size with
antialias off (torchvision 0.15 tensor semantics) and the OpenAI CLIP mean/std.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PuLIDError, UnalignableFaceError

# facexlib FaceRestoreHelper's 5-point template for a 512x512 FFHQ crop.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
FFHQ_BORDER_BGR = (135, 133, 132)

# insightface's ArcFace 112x112 template (face_align.arcface_dst), float32 as insightface stores it.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

# CelebAMask-HQ labels PuLID paints white: background, ears, earring, neck, necklace, cloth, hat.
BACKGROUND_LABELS = (0, 7, 8, 9, 14, 15, 16, 18)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EVA_SIZE = 336
FFHQ_SIZE = 512


def _landmarks5(landmarks) -> np.ndarray:
    lmk = np.asarray(landmarks, dtype=np.float64)
    if lmk.size != 10:
        raise PuLIDError(f"Expected 5 facial landmarks (x, y), got an array of shape {lmk.shape}.")
    lmk = lmk.reshape(5, 2)
    if not np.isfinite(lmk).all():
        raise PuLIDError("Facial landmarks contain NaN or infinite values.")
    return lmk


def align_ffhq(image_bgr: np.ndarray, landmarks5, size: int = FFHQ_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ-aligned face crop as facexlib makes it for PuLID.

    Returns ``(crop_bgr [size, size, 3] uint8, affine [2, 3] float64)``: a similarity
    transform estimated with LMEDS (facexlib's choice, close to skimage's), then a
    bilinear warp with facexlib's constant grey border.
    """
    lmk = _landmarks5(landmarks5)
    template = FFHQ_TEMPLATE_512 * (size / 512.0)
    affine, _ = cv2.estimateAffinePartial2D(lmk, template, method=cv2.LMEDS)
    if affine is None:
        raise UnalignableFaceError(
            "Could not align the face: its five landmarks are degenerate (collinear or identical)."
        )
    crop = cv2.warpAffine(
        np.ascontiguousarray(image_bgr),
        affine,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=FFHQ_BORDER_BGR,
    )
    return crop, affine


def similarity_umeyama(src, dst) -> np.ndarray:
    """Least-squares similarity transform src -> dst (Umeyama 1991, eqs. 38-43), as a [2, 3] float64 matrix.

    The arithmetic follows scikit-image's ``SimilarityTransform.estimate`` (what insightface's
    ``norm_crop`` calls) step for step, in the inputs' precision: with float32 landmarks and
    template, as insightface passes them, means, covariance and SVD are float32 and only the
    assembly of the matrix is float64. The crop then equals insightface's to the pixel.
    """
    src = np.asarray(src)
    dst = np.asarray(dst)
    if not np.issubdtype(src.dtype, np.floating):
        src = src.astype(np.float64)
    if not np.issubdtype(dst.dtype, np.floating):
        dst = dst.astype(np.float64)
    src, dst = src.reshape(-1, 2), dst.reshape(-1, 2)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n  # eq. 38
    signs = np.ones(2, dtype=np.float64)  # eq. 39
    if np.linalg.det(cov) < 0:
        signs[1] = -1.0
    u, sing, vt = np.linalg.svd(cov)
    # The rank from the singular values, with numpy's matrix_rank tolerance in float64 epsilon.
    if np.count_nonzero(sing > sing.max() * 2 * np.finfo(float).eps) < 2:
        raise UnalignableFaceError("Could not align the face: its five landmarks are collinear or identical.")
    rot = u @ np.diag(signs) @ vt  # eqs. 40, 43 (float64 from here on)
    scale = 1.0 / src_c.var(axis=0).sum() * (sing @ signs)  # eqs. 41, 42
    out = np.empty((2, 3), dtype=np.float64)
    out[:, 2] = dst_mean - scale * (rot @ src_mean.T)
    out[:, :2] = rot * scale
    return out


def arcface_crop(image_bgr: np.ndarray, kps, size: int = 112) -> np.ndarray:
    """insightface 0.7.3 ``norm_crop``: the float32 'arcface' template scaled to ``size``, float32
    landmarks, black border."""
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio, shift = size / 128.0, 8.0 * size / 128.0
    else:
        raise PuLIDError(
            f"A recognition model input of {size}px is not supported (needs a multiple of 112 or 128)."
        )
    dst = ARCFACE_TEMPLATE_112 * ratio  # stays float32, as in insightface's estimate_norm
    dst[:, 0] += shift
    matrix = similarity_umeyama(_landmarks5(kps).astype(np.float32), dst)
    return cv2.warpAffine(np.ascontiguousarray(image_bgr), matrix, (size, size), borderValue=0.0)


def _check_labels(crop_bgr: np.ndarray, parsing_labels) -> tuple[np.ndarray, np.ndarray]:
    crop = np.asarray(crop_bgr)
    labels = (
        parsing_labels.cpu().numpy()
        if isinstance(parsing_labels, torch.Tensor)
        else np.asarray(parsing_labels)
    )
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise PuLIDError(f"The aligned face crop must be [H, W, 3] BGR, got shape {crop.shape}.")
    if labels.shape != crop.shape[:2]:
        raise PuLIDError(f"Parsing labels {labels.shape} do not match the face crop {crop.shape[:2]}.")
    return crop, labels


def face_features(crop_bgr: np.ndarray, parsing_labels) -> torch.Tensor:
    """The masked 'face features' image: [3, H, W] float32 RGB in [0, 1].

    Background classes become white; the face itself becomes BT.601 gray, so EVA
    sees facial structure without colour, hair-free background or clothing.
    """
    crop, labels = _check_labels(crop_bgr, parsing_labels)
    rgb = torch.from_numpy(np.ascontiguousarray(crop[:, :, ::-1]).astype(np.float32)).permute(2, 0, 1) / 255.0
    gray = 0.299 * rgb[0:1] + 0.587 * rgb[1:2] + 0.114 * rgb[2:3]
    background = torch.from_numpy(np.isin(labels, BACKGROUND_LABELS))
    return torch.where(background, torch.ones_like(gray), gray).expand(3, -1, -1).contiguous()


def normalize_for_eva(features: torch.Tensor, size: int = EVA_SIZE) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> [3, size, size] CLIP-normalised (bicubic, antialias off, no clamp)."""
    x = F.interpolate(
        features[None], size=(size, size), mode="bicubic", align_corners=False, antialias=False
    )[0]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def eva_input(crop_bgr: np.ndarray, parsing_labels, size: int = EVA_SIZE) -> torch.Tensor:
    """The normalised EVA-CLIP input [3, size, size] float32 from an aligned crop and its BiSeNet argmax."""
    return normalize_for_eva(face_features(crop_bgr, parsing_labels), size)
