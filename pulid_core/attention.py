"""PuLID's ID branch of an SDXL cross-attention layer (official IDAttnProcessor2_0 math).

The ID tokens get their own attention on the layer's query; the result is added to
the text attention output H before ``to_out``, optionally with the part parallel
to H removed ("ortho") or scaled by the attention mass on the first ID tokens
("ortho_v2"). Shapes follow ComfyUI's attn2 replace patches: q [B, N, heads*d].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import PuLIDError

PROJECTIONS = ("none", "ortho", "ortho_v2")
# ortho_v2 weighs the projection by the attention on the first five ID tokens (hard-coded by the
# authors: the five body tokens of v1, the first five of the 32 v1.1 queries).
ORTHO_V2_TOKENS = 5


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head attention with the standard 1/sqrt(d) scale, [B, N, heads*d] in and out."""
    b, n, inner = q.shape
    out = F.scaled_dot_product_attention(
        _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
    )
    return out.transpose(1, 2).reshape(b, n, inner)


def _id_token_mass(q: torch.Tensor, id_k: torch.Tensor, heads: int) -> torch.Tensor:
    """m [B, N, 1]: softmax(Q K^T) without the 1/sqrt(d) scale, averaged over heads and summed
    over the first ID tokens. fp32 here; the authors use the UNet dtype (same up to rounding)."""
    logits = _split_heads(q.float(), heads) @ _split_heads(id_k.float(), heads).transpose(-2, -1)
    mass = logits.softmax(dim=-1).mean(dim=1)
    return mass[..., :ORTHO_V2_TOKENS].sum(dim=-1, keepdim=True)


def _as_row_factor(value, like: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """A float or per-row tensor as something that broadcasts against [B, N, C]."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 1 and t.numel() == batch and batch > 1:
        t = t.view(batch, 1, 1)
    if t.ndim > 3:
        raise PuLIDError(f"{what} must broadcast to [batch, 1, 1]; got shape {tuple(t.shape)}.")
    return t


def id_attention(
    base: torch.Tensor,
    q: torch.Tensor,
    id_k: torch.Tensor,
    id_v: torch.Tensor,
    heads: int,
    weight,
    projection: str,
    *,
    mask: torch.Tensor | None = None,
    attention=None,
) -> torch.Tensor:
    """``base`` plus PuLID's ID term, before to_out.

    base: text cross-attention output H [B, N, heads*d]; q: the layer's (unscaled) query,
    same shape; id_k/id_v: [B or 1, T', heads*d] from ``PuLIDModel.id_kv`` (zero rows
    included). weight: id_scale, a float or a tensor broadcastable to [B, 1, 1] (a 1-D
    tensor of length B is taken per row). projection: "none" (H + s*I), "ortho"
    (H + s*(I - P)) or "ortho_v2" (H + s*(I + (m - 1)*P)), P being I projected onto H
    over the token axis per channel. mask: broadcastable to [B, N, 1] (or [B, N]),
    multiplies the ID term. attention: ``(q, k, v, heads) -> out`` in the same shape
    convention (ComfyUI's optimized_attention); default torch SDPA.
    Returns base's dtype.
    """
    if projection not in PROJECTIONS:
        raise PuLIDError(f"Unknown PuLID projection {projection!r}; use one of {', '.join(PROJECTIONS)}.")
    batch, _, inner = q.shape
    if inner % heads or base.shape != q.shape or id_k.shape != id_v.shape or id_k.shape[-1] != inner:
        raise PuLIDError(
            f"PuLID attention shapes do not fit: base {tuple(base.shape)}, q {tuple(q.shape)}, "
            f"id_k {tuple(id_k.shape)}, id_v {tuple(id_v.shape)}, heads {heads}. The adapter's layer "
            "widths must match the model's (PuLID is for SDXL)."
        )
    if id_k.shape[0] != batch:
        if id_k.shape[0] != 1:
            raise PuLIDError(f"ID keys for {id_k.shape[0]} rows cannot serve a batch of {batch}.")
        id_k, id_v = id_k.expand(batch, -1, -1), id_v.expand(batch, -1, -1)
    # The authors cast the ID keys/values to the query's dtype before attending.
    id_k = id_k.to(device=q.device, dtype=q.dtype)
    id_v = id_v.to(device=q.device, dtype=q.dtype)
    ident = (attention or sdpa_attention)(q, id_k, id_v, heads)

    if projection == "none":
        term = ident.to(base.dtype)  # added in the UNet dtype, as the authors do
        out = base
    else:
        out = base.float()
        ident = ident.float()
        energy = (out * out).sum(dim=-2, keepdim=True)
        # A channel where H is 0 at every token (e.g. a zeroed negative prompt) has nothing to
        # project onto; the authors' 0/0 would turn the whole image into NaN.
        coeff = torch.where(energy > 0, (out * ident).sum(dim=-2, keepdim=True) / energy.clamp_min(1e-30), 0.0)
        proj = coeff * out
        if projection == "ortho":
            term = ident - proj
        else:
            term = ident + (_id_token_mass(q, id_k, heads) - 1.0) * proj
    term = term * _as_row_factor(weight, term, batch, "weight")
    if mask is not None:
        mask = mask.unsqueeze(-1) if mask.ndim == 2 else mask
        term = term * _as_row_factor(mask, term, batch, "mask")
    return (out + term).to(base.dtype)
