"""PuLID's ID branch of an SDXL cross-attention layer (official IDAttnProcessor2_0 math).

The ID tokens get their own attention on the layer's query; the result is added to
the text attention output H before ``to_out``, optionally with the part parallel
to H removed ("ortho") or scaled by the attention mass on the first ID tokens
("ortho_v2"). Shapes follow ComfyUI's attn2 replace patches: q [B, N, heads*d].

Reference: ToTheBeginning/PuLID ``pulid/attention_processor.py`` (IDAttnProcessor2_0).
The authors append ``num_zero`` zero tokens to the ID tokens. A zero key has logit 0
and a zero value adds nothing, so those tokens only add ``num_zero * exp(0 - max)`` to
each softmax denominator; :func:`prepare_id_kv` leaves them out of the attention and
adds one extra logit column of ``log(num_zero)`` instead (the same softmax), and folds
the weight into the values (the attention is linear in them). Everything that depends
only on the Apply is prepared once per layer; a sampling call
(:func:`id_attention_prepared`) reads nothing back from the device and launches a fixed
handful of kernels (torch's fused attention for the ID attention and ortho_v2's mass).
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


class PreparedIDKV(NamedTuple):
    """One layer's ID keys and values laid out for :func:`id_attention_prepared`.

    ``k`` and ``v`` [B, heads, T', d]: the keys as they are (the attention scales them by
    ``scale`` = 1/sqrt(d)) and the values times the weight. Columns: the T ID tokens; one
    column for all num_zero zero tokens if any (key 0, value 0; ``mask`` [1, T'] gives it the
    logit log(num_zero), so its softmax weight is num_zero * exp(0 - max), as num_zero
    separate zero tokens would have); then padding to a multiple of 16 (key 0, value 0,
    logit -inf: weight exactly 0). ``v_rest`` [B, heads, T', d]: 1 on the columns after the
    first ORTHO_V2_TOKENS (zero tokens included), 0 elsewhere; an attention with the unscaled
    logits over these values gives each head's mass on the other tokens in every channel
    (ortho_v2). ``zero``, ``tiny`` and ``one``: fp32 [1] constants on the device (1-D, so that they
    make a product of fp16 tensors run in fp32). B is 1 or the batch. In fp16/bf16,
    log(num_zero) is rounded to that dtype (the zero tokens' weight is off by at most 0.1 %).
    """

    k: torch.Tensor
    v: torch.Tensor
    v_rest: torch.Tensor
    mask: torch.Tensor
    zero: torch.Tensor
    tiny: torch.Tensor
    one: torch.Tensor
    scale: float
    heads: int

    @property
    def rows(self) -> int:
        return self.k.shape[0]


def _row_weight(weight, rows: int) -> torch.Tensor | float:
    """A float, or a tensor of 1 or ``rows`` per-row weights shaped [rows or 1, 1, 1, 1]."""
    if not isinstance(weight, torch.Tensor):
        return float(weight)
    if weight.numel() not in (1, rows) or weight.ndim > 3 or (weight.numel() > 1 and weight.shape[0] != rows):
        raise PuLIDError(f"weight must be a float or one value per batch row; got shape {tuple(weight.shape)}.")
    return weight.reshape(-1, 1, 1, 1)


def prepare_id_kv(id_k: torch.Tensor, id_v: torch.Tensor, heads: int, weight, *, num_zero: int = 0,
                  device=None, dtype=None) -> PreparedIDKV:
    """Lay out ID keys/values [B or 1, T, heads*d] once per layer (a function of the Apply alone).

    ``num_zero`` zero tokens are implied after the T given ones (zero rows passed explicitly
    simply take part in the attention, with the same result). The weight (a float, or a
    tensor of 1 or B per-row values) is folded into the values. Result in ``dtype``
    (default the keys' dtype) on ``device``.
    """
    if id_k.shape != id_v.shape or id_k.ndim != 3 or id_k.shape[-1] % heads:
        raise PuLIDError(
            f"ID keys {tuple(id_k.shape)} and values {tuple(id_v.shape)} must be equal [batch, tokens, "
            f"heads*d] with {heads} heads."
        )
    if int(num_zero) != num_zero or num_zero < 0:
        raise PuLIDError(f"num_zero must be a whole number >= 0; got {num_zero!r}.")
    dtype = dtype or id_k.dtype
    device = device or id_k.device
    rows, tokens, inner = id_k.shape
    d = inner // heads
    k = id_k.to(device=device, dtype=dtype).view(rows, tokens, heads, d).transpose(1, 2)
    v = id_v.to(device=device, dtype=dtype).view(rows, tokens, heads, d).transpose(1, 2)
    w = _row_weight(weight, rows)
    if isinstance(w, torch.Tensor):
        w = w.to(device=device, dtype=dtype)
        if w.shape[0] != rows:
            k = k.expand(w.shape[0], -1, -1, -1)
    v = v * w
    # Zero tokens: one column of key 0, value 0 and logit log(num_zero). Then padding columns
    # (key 0, value 0, logit -inf: weight exactly 0) up to a multiple of 16: the alignment
    # CUDA's memory-efficient attention wants for a mask (it would pad a copy on every call),
    # and torch's CPU attention kernel runs about 3x faster on 16 columns than on 11.
    width = tokens + (1 if num_zero else 0)
    width += -width % 16
    pad = (0, 0, 0, width - tokens)
    k, v = F.pad(k, pad).contiguous(), F.pad(v, pad).contiguous()
    mask = torch.full((1, width), -math.inf, device=device, dtype=dtype)
    mask[:, :tokens] = 0.0
    v_rest = torch.zeros(1, heads, width, d, device=device, dtype=dtype)
    v_rest[:, :, ORTHO_V2_TOKENS:tokens] = 1.0
    if num_zero:
        mask[:, tokens] = math.log(num_zero)
        v_rest[:, :, tokens] = 1.0
    zero, tiny, one = torch.tensor([[0.0], [_TINY], [1.0]], device=device, dtype=torch.float32).unbind()
    return PreparedIDKV(k, v, v_rest.expand(k.shape[0], -1, -1, -1).contiguous(), mask, zero, tiny, one,
                        1.0 / math.sqrt(d), heads)


def select_rows(kv: PreparedIDKV, rows: torch.Tensor | None = None, batch: int | None = None) -> PreparedIDKV:
    """The keys/values of rows ``rows`` (a LongTensor of row indices), or of one row
    broadcast to ``batch`` rows; contiguous, ready for a batch."""
    k, v, v_rest = kv.k, kv.v, kv.v_rest
    if rows is not None:
        k, v, v_rest = k[rows], v[rows], v_rest[rows]
    elif batch is not None and k.shape[0] != batch:
        k, v, v_rest = (t.expand(batch, -1, -1, -1) for t in (k, v, v_rest))
    return kv._replace(k=k.contiguous(), v=v.contiguous(), v_rest=v_rest.contiguous())


_TINY = torch.finfo(torch.float32).tiny


def id_attention_prepared(base: torch.Tensor, q: torch.Tensor, kv: PreparedIDKV, projection: str,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """``base`` plus the ID term, with keys/values from :func:`prepare_id_kv` (one row per q row).

    The ID attention runs in q's dtype through torch's scaled_dot_product_attention, which
    reads the heads straight out of q's [B, N, heads*d] layout and writes its result
    token-major like H (on the CPU and CUDA kernels): no copies. The projection runs in fp32 as
    the authors do: products of fp16 values with the fp32 constants are computed in fp32, and
    the result is rounded once, into base's dtype. Nothing is read back from the device.
    """
    batch, n, inner = q.shape
    heads = kv.heads
    if kv.rows != batch:
        raise PuLIDError(f"ID keys for {kv.rows} rows cannot serve a batch of {batch}.")
    qh = q.reshape(batch, n, heads, -1).transpose(1, 2)  # [B, h, N, d], a view of a contiguous q
    # The weight is folded into v; the result is a fresh tensor, updated in place below.
    ident = F.scaled_dot_product_attention(qh, kv.k, kv.v, attn_mask=kv.mask, scale=kv.scale)
    ident = ident.transpose(1, 2).reshape(batch, n, inner)  # a view where the kernel wrote token-major

    if projection == "none":
        # Added in the UNet dtype, as the authors do.
        out = ident.add_(base) if ident.dtype == base.dtype else base + ident.to(base.dtype)
        return _masked(base, out, mask)

    # The projection in fp32, as the authors do. CUDA kernels convert fp16/bf16 operands to fp32
    # as they load them (the fp32 constants below make each product run in fp32); CPU kernels
    # would copy mixed operands to fp32 on every op, so there they are converted once, here.
    if base.dtype == torch.float32 or base.is_cuda:
        h, i = base, ident
    else:
        h, i = base.float(), ident.float()
    # Per channel over the tokens: the energy of H, with a tiny added per token so that a
    # channel where H is 0 at every token (e.g. a zeroed negative prompt) divides 0 by a
    # positive number (the authors' 0/0 = NaN becomes 0: the ID term is added unprojected;
    # elsewhere H*H + tiny rounds to H*H), and <H, s I>. One fp32 scratch tensor serves both
    # products and the factor.
    scratch = torch.addcmul(kv.tiny, h, h)
    energy = scratch.sum(dim=1, keepdim=True)  # [B, 1, C]
    dot = torch.addcmul(kv.zero, h, i, out=scratch).sum(dim=1, keepdim=True)
    if projection == "ortho":
        # H + s (I - P) = I_s + H (1 - c), c = <H, I_s> / |H|^2 per channel.
        factor = torch.addcdiv(kv.one, dot, energy, value=-1.0)
    else:
        # H + s (I + (m - 1) P) = I_s + H (1 + (m - 1) c), m the mass on the first ORTHO_V2_TOKENS
        # ID tokens of the softmax of the unscaled logits, averaged over the heads. 1 - m per
        # head is the attention of q onto v_rest (every channel holds it), summed over the heads.
        rest = F.scaled_dot_product_attention(qh, kv.k, kv.v_rest, attn_mask=kv.mask, scale=1.0)
        rest = rest[..., 0].sum(dim=1, dtype=torch.float32)  # [B, N]
        factor = torch.addcmul(kv.one, rest.unsqueeze(-1), dot.div_(energy), value=-1.0 / heads, out=scratch)
    out = i.addcmul_(h, factor)  # i is this call's own tensor; computed in fp32, rounded once
    return _masked(base, out if out.dtype == base.dtype else out.to(base.dtype), mask)


def _masked(base: torch.Tensor, full: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """base + mask * (full - base): exactly ``full`` where the mask is 1 and ``base`` where it is 0.
    Written over ``full`` (a fresh tensor)."""
    if mask is None:
        return full
    return torch.lerp(base, full, _mask4(mask, base.shape[0], base.shape[1]).squeeze(-1).to(base.dtype), out=full)


def _mask4(mask: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """A mask broadcastable to [B, N, 1] (or [B, N]) as [B or 1, N or 1, 1, 1]."""
    m = mask.unsqueeze(-1) if mask.ndim == 2 else mask
    if m.ndim == 1 and m.numel() == batch and batch > 1:
        m = m.view(batch, 1, 1)
    if m.ndim > 3 or m.shape[-1] != 1:
        raise PuLIDError(f"mask must broadcast to [batch, tokens, 1]; got shape {tuple(mask.shape)}.")
    while m.ndim < 3:
        m = m.unsqueeze(0)
    return m.unsqueeze(-1)


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
    num_zero: int = 0,
) -> torch.Tensor:
    """``base`` plus PuLID's ID term, before to_out.

    base: text cross-attention output H [B, N, heads*d]; q: the layer's (unscaled) query,
    same shape; id_k/id_v: [B or 1, T', heads*d] from ``PuLIDModel.id_kv`` (zero rows
    included, or left out and counted in ``num_zero``). weight: id_scale, a float or a
    tensor of 1 or B per-row values. projection: "none" (H + s*I), "ortho"
    (H + s*(I - P)) or "ortho_v2" (H + s*(I + (m - 1)*P)), P being I projected onto H
    over the token axis per channel. mask: broadcastable to [B, N, 1] (or [B, N]),
    multiplies the ID term. attention: ``(q, k, v, heads) -> out`` in the same shape
    convention (e.g. ComfyUI's optimized_attention) for the ID attention, given the
    zero rows explicitly; default: this module's own attention, which shares ortho_v2's QK^T.
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
    if id_k.shape[0] != batch and id_k.shape[0] != 1:
        raise PuLIDError(f"ID keys for {id_k.shape[0]} rows cannot serve a batch of {batch}.")
    if isinstance(weight, (int, float)) and weight == 0:
        return base.clone()
    if attention is None:
        kv = prepare_id_kv(id_k, id_v, heads, weight, num_zero=num_zero, device=q.device, dtype=q.dtype)
        return id_attention_prepared(base, q, select_rows(kv, batch=batch), projection, mask)
    return _id_attention_backend(base, q, id_k, id_v, heads, weight, projection, mask, attention, num_zero)


def _id_attention_backend(base, q, id_k, id_v, heads, weight, projection, mask, attention, num_zero):
    """The ID attention through a given backend (which needs the zero tokens as real rows)."""
    batch = q.shape[0]
    if num_zero:
        pad = id_k.new_zeros(id_k.shape[0], int(num_zero), id_k.shape[-1])
        id_k, id_v = torch.cat((id_k, pad), 1), torch.cat((id_v, pad), 1)
    id_k = id_k.expand(batch, -1, -1).to(device=q.device, dtype=q.dtype)
    id_v = id_v.expand(batch, -1, -1).to(device=q.device, dtype=q.dtype)
    ident = attention(q, id_k, id_v, heads)
    w = weight.reshape(-1, 1, 1).to(q.device) if isinstance(weight, torch.Tensor) else float(weight)
    if projection == "none":
        term = ident.to(base.dtype)
        out = base
    else:
        out, ident = base.float(), ident.float()
        energy = (out * out).sum(dim=-2, keepdim=True).clamp_min(_TINY)
        proj = (out * ident).sum(dim=-2, keepdim=True) / energy * out
        if projection == "ortho":
            term = ident - proj
        else:
            logits = _split_heads(q.float(), heads) @ _split_heads(id_k.float(), heads).transpose(-2, -1)
            mass = logits.softmax(dim=-1).mean(dim=1)[..., :ORTHO_V2_TOKENS].sum(dim=-1, keepdim=True)
            term = ident + (mass - 1.0) * proj
    term = term * (w.to(term.dtype) if isinstance(w, torch.Tensor) else w)
    return _masked(base, (out + term).to(base.dtype), mask)
