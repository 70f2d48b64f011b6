"""Every choice a node offers, defined once, and the checks of values that enter the pack.

ComfyUI 0.3.75 does not check that a V3 node's COMBO value is one of its options when a
prompt comes from an API client or a hand-edited workflow, and its FLOAT range check lets
NaN through. The nodes therefore check their own inputs with these functions, so a bad
value is an error naming the node, the input and the allowed values.

Lists live where their concept does (projections in ``attention``, the face options in
``face.pipeline``, methods and combines in ``identity``); this module gathers them for the
nodes, in the order the UI shows them (the default first).
"""

from __future__ import annotations

import math

import torch

from .attention import PROJECTIONS as _PROJECTIONS
from .errors import PuLIDError
from .face.pipeline import ALIGNMENTS, ON_NO_FACE, ORDERS
from .identity import COMBINES, METHOD_NAMES

# The UI's order: the authors' default first.
PROJECTIONS = tuple(sorted(_PROJECTIONS, key=("ortho_v2", "ortho", "none").index))
METHODS = METHOD_NAMES
METHODS_CUSTOM = METHOD_NAMES + ("custom",)
SELECTIONS = ("largest", "center") + ORDERS
# ONNX Runtime providers by the names the loaders show (resolved in face.insight.resolve_provider).
PROVIDERS = ("CPU", "CUDA", "ROCM", "CoreML", "DirectML")
# EVA-CLIP precisions: fp32 is what the PuLID authors run.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["ALIGNMENTS", "COMBINES", "METHODS", "METHODS_CUSTOM", "ON_NO_FACE", "ORDERS", "PRECISIONS",
           "PROJECTIONS", "PROVIDERS", "SELECTIONS", "check_choice", "check_finite", "check_mask",
           "check_mask_batch"]


def _where(node: str, input_name: str) -> str:
    return f"{node}: {input_name}" if node else input_name


def check_choice(value, options, *, node: str, input_name: str):
    """``value`` if it is one of ``options``, else a PuLIDError naming the node and the allowed values."""
    allowed = list(options)
    if isinstance(value, str) and value in allowed:
        return value
    raise PuLIDError(
        f"{_where(node, input_name)} is {value!r}, which is not one of its options: "
        f"{', '.join(map(str, allowed))}. Pick one of those (a hand-edited workflow or an API client "
        "may have sent an old or misspelled value)."
    )


def check_finite(value, *, node: str, input_name: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float if it is a finite number within [lo, hi], else a PuLIDError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not math.isfinite(number):
        raise PuLIDError(f"{_where(node, input_name)} must be a finite number; got {value!r}.")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}")
        raise PuLIDError(f"{_where(node, input_name)} must be {bounds}; got {number}.")
    return number


def check_mask(mask, *, node: str, input_name: str = "attn_mask"):
    """A MASK ([H, W] or [B, H, W]) as [B, H, W], checked: finite values in 0..1."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3, 4) or mask.numel() == 0:
        raise PuLIDError(
            f"{_where(node, input_name)} must be a MASK ([H, W] or [batch, H, W]); got "
            f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}."
        )
    if mask.ndim == 4 and mask.shape[-1] == 1 and mask.shape[1] != 1:
        mask = mask[..., 0]  # channel-last [B, H, W, 1] (cubiq's ApplyPulid squeezed it the same way)
    mask = mask if mask.ndim == 3 else mask.reshape(-1, *mask.shape[-2:])
    if not mask.is_floating_point():
        mask = mask.float()
    if not torch.isfinite(mask).all():
        raise PuLIDError(f"{_where(node, input_name)} has NaN or infinite values; a mask holds values in 0..1.")
    low, high = float(mask.min()), float(mask.max())
    if low < 0.0 or high > 1.0:
        raise PuLIDError(
            f"{_where(node, input_name)} has values from {low:g} to {high:g}; a mask holds values in 0..1 "
            "(use a Mask node, or Image To Mask, to make one)."
        )
    return mask


def check_image(image, *, node: str, input_name: str = "image"):
    """An IMAGE batch [B, H, W, C] (C 1, 3 or 4; what ComfyUI's nodes pass) or a list of single images
    (API callers of the library). A lone [H, W, C] image, which ComfyUI never passes but a custom node
    or script may, would be taken as H images of one pixel row each: it is named as what it is."""
    if isinstance(image, (list, tuple)):
        return image
    if not isinstance(image, torch.Tensor):
        raise PuLIDError(f"{_where(node, input_name)} must be an IMAGE; got {type(image).__name__}.")
    shape = tuple(image.shape)
    if image.ndim == 3 and shape[-1] in (1, 3, 4):
        raise PuLIDError(
            f"{_where(node, input_name)} is one image of shape {shape} without its batch dimension; an IMAGE is "
            "[batch, height, width, channels]. Whatever made it (a custom node or script) should add the batch "
            "dimension (image.unsqueeze(0))."
        )
    if image.ndim != 4 or shape[-1] not in (1, 3, 4) or 0 in shape:
        raise PuLIDError(
            f"{_where(node, input_name)} has shape {shape}; an IMAGE is [batch, height, width, channels] with 3 "
            "channels (1 or 4 also accepted) and at least one image."
        )
    return image


def check_mask_batch(mask_batch: int, latent_batch: int, *, node: str = "Apply PuLID",
                     input_name: str = "attn_mask") -> None:
    """An attention mask serves every image of the batch (batch 1) or one mask per image."""
    if mask_batch not in (1, latent_batch):
        raise PuLIDError(
            f"{_where(node, input_name)} holds {mask_batch} masks but the latent batch is {latent_batch}: give "
            f"one mask (used for every image) or exactly {latent_batch}, one per image."
        )


def mask_for_area(mask: torch.Tensor, latent_hw: tuple[int, int], area: tuple[int, int, int, int]) -> torch.Tensor:
    """The part of a whole-image mask [M, H, W] over a latent area (y, x, h, w) of a latent of size
    ``latent_hw``: what the mask says about the crop a regional prompt runs on. Mask pixels map to
    latent pixels proportionally (a MASK is usually 8x the latent); the crop takes every mask pixel
    the area touches, at least one."""
    mh, mw = mask.shape[-2:]
    lh, lw = latent_hw
    y, x, h, w = area
    y0, x0 = min(mh - 1, y * mh // lh), min(mw - 1, x * mw // lw)
    y1, x1 = max(y0 + 1, -(-(y + h) * mh // lh)), max(x0 + 1, -(-(x + w) * mw // lw))
    return mask[..., y0:min(mh, y1), x0:min(mw, x1)]
