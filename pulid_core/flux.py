"""PuLID-FLUX injection: which FLUX.1 block gets which cross-attention module, and the math
a block patch applies after it. Framework-free: the ComfyUI patch only calls these.

In the authors' ``flux/model.py`` (ToTheBeginning/PuLID, ``Flux.forward``) the image
stream gets ``id_weight * pulid_ca[k](id, img)`` added after double blocks 0, 2, ..., 18
(k = 0..9) and, on the image part of the joint sequence, after single blocks 0, 4, ..., 36
(k = 10..19).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import PuLIDError
from .rows import UNCOND, batch_rows

# FLUX.1 (dev, schnell, Krea and their fine-tunes): 3072-wide streams, 19 double + 38 single blocks.
FLUX_HIDDEN = 3072
DOUBLE_BLOCKS = 19
SINGLE_BLOCKS = 38
# The authors insert after every 2nd double and every 4th single block.
DOUBLE_INTERVAL = 2
SINGLE_INTERVAL = 4
NUM_DOUBLE_CA = math.ceil(DOUBLE_BLOCKS / DOUBLE_INTERVAL)  # 10
NUM_CA = NUM_DOUBLE_CA + math.ceil(SINGLE_BLOCKS / SINGLE_INTERVAL)  # 20
# FLUX patchifies 2x2 latent pixels into one image token.
PATCH_SIZE = 2

# Other DiTs ComfyUI runs, by the class name of their diffusion model, for refusal messages.
_OTHER_MODELS = {
    "Chroma": "Chroma",
    "ChromaRadiance": "Chroma Radiance",
    "MMDiT": "SD3 / SD3.5",
    "OpenAISignatureMMDITWrapper": "SD3 / SD3.5",
    "Flux2": "FLUX.2",
    "HunyuanVideo": "HunyuanVideo",
    "Lumina2": "Lumina 2",
    "HiDreamImageTransformer2DModel": "HiDream",
    "QwenImageTransformer2DModel": "Qwen-Image",
}


def ca_index(block_type: str, i: int) -> int | None:
    """The PuLID-FLUX cross-attention module applied after FLUX block ``i`` of ``block_type``
    ("double" or "single"), or None for a block the authors do not follow with one."""
    if block_type == "double":
        blocks, interval, offset = DOUBLE_BLOCKS, DOUBLE_INTERVAL, 0
    elif block_type == "single":
        blocks, interval, offset = SINGLE_BLOCKS, SINGLE_INTERVAL, NUM_DOUBLE_CA
    else:
        raise PuLIDError(f"FLUX block types are 'double' and 'single'; got {block_type!r}.")
    if not 0 <= i < blocks or i % interval:
        return None
    return offset + i // interval


def check_flux_model(
    hidden_size: int,
    n_double: int,
    n_single: int,
    *,
    node: str,
    ca_dim: int = FLUX_HIDDEN,
    model_class: str | None = None,
    global_modulation: bool = False,
) -> None:
    """Refuse, naming what was found, a diffusion model that PuLID-FLUX cannot patch.

    PuLID-FLUX is trained for FLUX.1: ``hidden_size`` must equal the adapter's CA width
    ``ca_dim`` (3072 for the released files; reduced test adapters are narrower) and the
    model must have 19 double and 38 single blocks. ``model_class`` is the class name of
    ComfyUI's diffusion model, when known (other DiTs such as Chroma share FLUX's sizes);
    ``global_modulation`` is set by ComfyUI's FLUX class for FLUX.2, which it also serves.
    """
    if model_class in _OTHER_MODELS or global_modulation:
        what = f"{_OTHER_MODELS[model_class]} ({model_class})" if model_class in _OTHER_MODELS else "FLUX.2"
        raise PuLIDError(
            f"{node}: the model is {what}, not FLUX.1. PuLID-FLUX works only with FLUX.1 models (dev, "
            "schnell, Krea-dev and their fine-tunes)."
        )
    found = f"a DiT {hidden_size} wide with {n_double} double and {n_single} single blocks"
    if (n_double, n_single) != (DOUBLE_BLOCKS, SINGLE_BLOCKS):
        guess = " (FLUX.2 or another DiT)" if n_double < DOUBLE_BLOCKS else ""
        raise PuLIDError(
            f"{node}: the model is {found}{guess}; FLUX.1 has {DOUBLE_BLOCKS} double and {SINGLE_BLOCKS} "
            "single blocks. PuLID-FLUX works only with FLUX.1 models (dev, schnell, Krea-dev and their "
            "fine-tunes)."
        )
    if hidden_size != ca_dim:
        if ca_dim == FLUX_HIDDEN:
            raise PuLIDError(
                f"{node}: the model is {found}; FLUX.1 is {FLUX_HIDDEN} wide. PuLID-FLUX works only with "
                "FLUX.1 models (dev, schnell, Krea-dev and their fine-tunes)."
            )
        raise PuLIDError(
            f"{node}: the PuLID-FLUX adapter's cross-attention is {ca_dim} wide but the model is {found}: "
            f"this adapter is not for this model. Use pulid_flux_v0.9.1.safetensors with a FLUX.1 model."
        )


def token_grid(latent_h: int, latent_w: int) -> tuple[int, int]:
    """The grid of image tokens of a latent: 2x2 latent pixels per token, the latent padded
    up to even sizes first (as ComfyUI's FLUX does)."""
    return -(-latent_h // PATCH_SIZE), -(-latent_w // PATCH_SIZE)


def select_rows(cond_or_uncond: Sequence[int], batch: int, cond: torch.Tensor, uncond: torch.Tensor | None):
    """ID tokens for each row of a ComfyUI batch: [batch, T, D].

    Chunks marked uncond in ``cond_or_uncond`` get ``uncond``, the others ``cond``
    (:func:`pulid_core.rows.batch_rows`). ``cond`` / ``uncond`` are [1 or rows per chunk, T, D].
    """
    layout = batch_rows(cond_or_uncond, batch, who="PuLID-FLUX")
    chunk = layout.chunk
    rows = []
    for kind in layout.chunk_kinds:
        tokens, what = (uncond, "uncond") if kind == UNCOND else (cond, "cond")
        if tokens is None:
            raise PuLIDError(f"PuLID-FLUX has no {what} ID tokens for a {what} chunk of the batch.")
        if tokens.ndim != 3 or tokens.shape[0] not in (1, chunk):
            raise PuLIDError(
                f"PuLID-FLUX {what} ID tokens must be [1 or {chunk}, tokens, width] for chunks of {chunk} "
                f"row(s); got {tuple(tokens.shape)}."
            )
        rows.append(tokens.expand(chunk, -1, -1))
    if len({r.shape[1:] for r in rows}) > 1:
        raise PuLIDError(
            f"PuLID-FLUX cond and uncond ID tokens differ in shape: {tuple(cond.shape)} vs "
            f"{tuple(uncond.shape)}."
        )
    return torch.cat(rows, dim=0)


def identity_delta(
    img: torch.Tensor,
    adapter,
    index: int,
    id_tokens: torch.Tensor,
    weight: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight * pulid_ca[index](id_tokens, img)`` (times ``mask`` [B or 1, N, 1] if given), in img's
    dtype: what :func:`add_identity` adds. The CA reads each image token on its own (its queries)."""
    weight = float(weight)
    if not math.isfinite(weight):
        raise PuLIDError(f"The PuLID-FLUX weight must be a finite number; got {weight}.")
    delta = adapter.pulid_ca(index, id_tokens, img)
    if mask is not None:
        if mask.ndim != 3 or mask.shape[1:] != (img.shape[1], 1) or mask.shape[0] not in (1, img.shape[0]):
            raise PuLIDError(
                f"The PuLID-FLUX mask must be [1 or {img.shape[0]}, {img.shape[1]}, 1] for image tokens "
                f"{tuple(img.shape)}; got {tuple(mask.shape)}."
            )
        delta = delta * mask.to(device=delta.device, dtype=delta.dtype)
    return weight * delta


def add_identity(img: torch.Tensor, adapter, index: int, id_tokens: torch.Tensor, weight: float,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """``img + weight * pulid_ca[index](id_tokens, img)`` (times ``mask`` [B or 1, N, 1] if given),
    computed in img's dtype. Returns a new tensor; ``img`` is never modified."""
    return img + identity_delta(img, adapter, index, id_tokens, weight, mask)


def mask_to_tokens(mask: torch.Tensor, grid_h: int, grid_w: int, batch: int, dtype, device,
                   latent_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """A region mask [B or 1, H, W] (or [H, W]) as per-token weights [batch, grid_h * grid_w, 1].

    Each image token gets the mean of the mask over the area it covers (the mask resized to
    the exact token grid), in the row-major order of FLUX's image tokens. ``latent_hw``: the
    latent's size where it is odd (padded by one pixel to the token grid): the mask is then
    resized to the latent and each token averages its real latent pixels only (the padding
    repeats the edge), so the last token row/column follows the image's last pixels.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
        raise PuLIDError(
            f"The attention mask must be a MASK [batch, height, width]; got {tuple(getattr(mask, 'shape', ()))}."
        )
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape[0] not in (1, batch):
        raise PuLIDError(
            f"The attention mask has {mask.shape[0]} masks for a batch of {batch} latents: give one mask, "
            f"or one per latent."
        )
    if latent_hw is not None and tuple(latent_hw) != (grid_h * PATCH_SIZE, grid_w * PATCH_SIZE):
        h, w = latent_hw
        pixels = F.interpolate(mask[:, None].float(), size=(h, w), mode="area")
        pixels = F.pad(pixels, (0, grid_w * PATCH_SIZE - w, 0, grid_h * PATCH_SIZE - h), mode="replicate")
        grid = F.avg_pool2d(pixels, PATCH_SIZE)
    else:
        grid = F.interpolate(mask[:, None].float(), size=(grid_h, grid_w), mode="area")
    tokens = grid.reshape(mask.shape[0], grid_h * grid_w, 1).expand(batch, -1, -1)
    return tokens.to(device=device, dtype=dtype)
