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
    official app does (on the uint8 image, as it gets it). ``index`` only names the
    image in error messages.

    Memory: a float image is converted a band of rows at a time into one uint8 image
    (a quarter of the float size); no full-size float temporary is made, so a
    48-megapixel photo costs its uint8 copy, not gigabytes.
    """
    name = _describe(index)
    if isinstance(image, torch.Tensor):
        image = image.detach()
        if image.device.type != "cpu" or not image.is_floating_point():
            image = image.cpu()
        if not image.is_floating_point():
            image = image.numpy()
    elif not isinstance(image, np.ndarray):
        image = np.asarray(image)
    shape = tuple(image.shape)
    if len(shape) == 3 and shape[2] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        raise PuLIDError(f"{name} is channels-first {shape}; pass it as [height, width, channels].")
    if len(shape) == 2:
        image = image[:, :, None]
        shape = (*shape, 1)
    if len(shape) != 3 or shape[2] not in (1, 3, 4):
        raise PuLIDError(f"{name} has shape {shape}; expected [height, width] or [height, width, 1|3|4].")
    if shape[0] == 0 or shape[1] == 0:
        raise PuLIDError(f"{name} is empty ({shape[1]}x{shape[0]} px).")

    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        rgb = image if shape[2] != 4 else _in_bands(image, name, divide_by=255.0)
    elif isinstance(image, torch.Tensor) or np.issubdtype(image.dtype, np.floating):
        rgb = _in_bands(image, name)
    else:
        raise PuLIDError(f"{name} has pixel type {image.dtype}; expected float in 0..1 or uint8.")
    rgb = np.ascontiguousarray(rgb)

    h, w = rgb.shape[:2]
    resized = max_long_side is not None and max(h, w) > max_long_side
    if resized:
        k = max_long_side / max(h, w)
        new_h, new_w = int(h * k), int(w * k)
        log.debug("%s resized from %dx%d to %dx%d (long side %d)", name, w, h, new_w, new_h, max_long_side)
        # cv2 returns [h, w] for one channel; channels are resized independently either way.
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4).reshape(new_h, new_w, -1)
    if min(rgb.shape[:2]) < min_short_side:
        raise PuLIDError(
            f"{name} is too small ({rgb.shape[1]}x{rgb.shape[0]} px{' after resizing' if resized else ''}); "
            f"face detection needs at least {min_short_side} px on the short side. Use a larger photo of the face."
        )
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)  # after the resize: gray is repeated at the small size
    return rgb


BAND_BYTES = 8 << 20  # float32 bytes converted at a time


def _in_bands(image, name: str, divide_by: float | None = None) -> np.ndarray:
    """A float (or uint8 RGBA, with ``divide_by=255``) [H, W, C] image -> uint8 [H, W, 1|3], a band of rows at a time."""
    h, w, c = image.shape
    out = np.empty((h, w, 3 if c == 4 else c), np.uint8)
    rows = max(1, BAND_BYTES // (w * c * 4))
    for top in range(0, h, rows):
        band = image[top:top + rows]
        band = band.float().numpy() if isinstance(band, torch.Tensor) else band.astype(np.float32, copy=False)
        if divide_by is not None:
            band = band / divide_by
        elif not np.isfinite(band).all():
            raise PuLIDError(f"{name} contains NaN or infinite values.")
        out[top:top + rows] = _over_white(band[:, :, :3], band[:, :, 3:]) if c == 4 else round_to_uint8(band)
    return out


def round_to_uint8(x: np.ndarray) -> np.ndarray:
    """Float pixels in 0..1 as uint8, rounded (in x's dtype: float32 for every converted image)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    alpha = np.clip(alpha, 0.0, 1.0)
    return round_to_uint8(rgb * alpha + (1.0 - alpha))


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
