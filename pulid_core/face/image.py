"""Turning whatever the user hands in into the RGB uint8 array the official app sees."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from ..errors import PuLIDError

log = logging.getLogger(__name__)

MAX_LONG_SIDE = 1024
MIN_SHORT_SIDE = 64


def _describe(index) -> str:
    return "The reference image" if index is None else f"Reference image {index}"


def to_uint8_rgb(
    image,
    max_long_side: int | None = MAX_LONG_SIDE,
    min_short_side: int = MIN_SHORT_SIDE,
    index: int | None = None,
) -> np.ndarray:
    """One image ([H, W], [H, W, 1|3|4], float 0..1 or uint8, numpy or torch) -> RGB uint8 [H, W, 3].

    Floats become uint8 by rounding (the official demo receives uint8 from gradio;
    truncation would darken every pixel by half a grey level on average). Gray is
    repeated to RGB, RGBA is composited on white. A long side over ``max_long_side``
    is scaled down with LANCZOS4 and ``int()`` truncation of both sides, as the
    official app does. ``index`` only names the image in error messages.
    """
    name = _describe(index)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.float().numpy() if image.is_floating_point() else image.numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise PuLIDError(f"{name} is channels-first {arr.shape}; pass it as [height, width, channels].")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise PuLIDError(f"{name} has shape {arr.shape}; expected [height, width] or [height, width, 1|3|4].")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PuLIDError(f"{name} is empty ({arr.shape[1]}x{arr.shape[0]} px).")

    if arr.dtype == np.uint8:
        rgb = arr
        if arr.shape[2] == 4:
            rgb = _over_white(
                arr[:, :, :3].astype(np.float32) / 255.0, arr[:, :, 3:].astype(np.float32) / 255.0
            )
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise PuLIDError(f"{name} contains NaN or infinite values.")
        arr = arr.astype(np.float32, copy=False)
        rgb = _over_white(arr[:, :, :3], arr[:, :, 3:]) if arr.shape[2] == 4 else _round(arr)
    else:
        raise PuLIDError(f"{name} has pixel type {arr.dtype}; expected float in 0..1 or uint8.")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    rgb = np.ascontiguousarray(rgb)

    h, w = rgb.shape[:2]
    resized = max_long_side is not None and max(h, w) > max_long_side
    if resized:
        k = max_long_side / max(h, w)
        new_h, new_w = int(h * k), int(w * k)
        log.debug("%s resized from %dx%d to %dx%d (long side %d)", name, w, h, new_w, new_h, max_long_side)
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4)
    if min(rgb.shape[:2]) < min_short_side:
        raise PuLIDError(
            f"{name} is too small ({rgb.shape[1]}x{rgb.shape[0]} px{' after resizing' if resized else ''}); "
            f"face detection needs at least {min_short_side} px on the short side. Use a larger photo of the face."
        )
    return rgb


def _round(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    alpha = np.clip(alpha, 0.0, 1.0)
    return _round(rgb * alpha + (1.0 - alpha))


def split_images(images) -> list:
    """A ComfyUI IMAGE batch [B, H, W, C], one [H, W, C] image or a list of either -> list of images."""
    if isinstance(images, (list, tuple)):
        out = []
        for item in images:
            out.extend(split_images(item))
        return out
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]
