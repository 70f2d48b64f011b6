"""PhotoMaker's ID-image preprocessing: the HF ``CLIPImageProcessor()`` defaults, without transformers.

The authors feed the whole image (no face crop): PIL bicubic resize of the shortest side to
224 on uint8 (long side floored), centre crop, /255, OpenAI CLIP mean/std. ComfyUI's
``clip_preprocess`` (torch bicubic, antialias, rounded size) is close but not bit-equal.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import PuLIDError
from ..face.image import round_to_uint8

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _describe(index: int | None) -> str:
    return "An ID image" if index is None else f"ID image {index}"


def _to_uint8(image, index: int | None = None) -> np.ndarray:
    """HWC RGB uint8 from a uint8 array or a ComfyUI float image in [0, 1] (rounded, as PIL conversion).

    As the official pipeline's PIL ``convert("RGB")``: an alpha channel is dropped, gray ([H, W] or
    [H, W, 1]) is repeated to RGB. ``index`` (1-based) names the image in messages."""
    name = _describe(index)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.is_floating_point():
            image = image.float()
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise PuLIDError(f"{name} must be H x W x 3 (RGB; gray or RGBA are converted), got shape {image.shape}.")
    image = np.repeat(image, 3, axis=2) if image.shape[-1] == 1 else image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            # Cast to uint8 they would silently become black (or any value): refuse, as the face branch does.
            raise PuLIDError(f"{name} contains NaN or infinite values: check the node that made it.")
        # In float32, with the face branch's rounding: both branches see the same pixels.
        return round_to_uint8(image.astype(np.float32))
    raise PuLIDError(f"{name} must be uint8 or float in [0, 1], got {image.dtype}.")


def preprocess_id_image(image, size: int = 224, index: int | None = None) -> torch.Tensor:
    """One RGB image (HWC, uint8 or float in [0, 1]) -> normalised pixels [3, size, size] float32."""
    pixels = _to_uint8(image, index)
    h, w = pixels.shape[:2]
    if min(h, w) == 0:
        raise PuLIDError(f"{_describe(index)} is empty (0 pixels).")
    # HF get_resize_output_image_size: short side -> size, long side = int(size * long / short).
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), resample=Image.BICUBIC))
    # HF center_crop: top/left offsets rounded down.
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def preprocess_id_images(images, size: int = 224) -> torch.Tensor:
    """A ComfyUI IMAGE batch [N, H, W, 3] or a list of HWC images -> [N, 3, size, size] float32."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 3:
        images = images[None]
    if len(images) == 0:
        raise PuLIDError("No ID image given: connect at least one reference photo of the person.")
    return torch.stack([preprocess_id_image(img, size, i + 1) for i, img in enumerate(images)])
