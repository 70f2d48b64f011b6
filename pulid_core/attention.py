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
(:func:`id_attention_prepared`) reads nothing back from the device and runs a fixed set of
ops: torch's fused attention (GPUs), or on the CPU one set of logits serving both the ID
attention and ortho_v2's mass, in reused buffers, or the same math in one compiled library
call per row (``csrc/id_branch.c``, :mod:`.native`).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import native as native_build
from .errors import PuLIDError

log = logging.getLogger(__name__)

PROJECTIONS = ("none", "ortho", "ortho_v2")
# ortho_v2 weighs the projection by the attention on the first five ID tokens (hard-coded by the
# authors: the five body tokens of v1, the first five of the 32 v1.1 queries).
ORTHO_V2_TOKENS = 5


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
    (ortho_v2). ``zero`` and ``tiny``: fp32 [1] constants, ``one`` fp32 ones [1, 1, heads*d], on the
    device (so that they make a product of fp16 tensors run in fp32). B is 1 or the batch. In fp16/bf16,
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
    # The explicit path (CPU fp32) multiplies only the first ``short`` columns (see prepare_id_kv).
    short: int
    # ortho_v2's mass from the ID softmax P = softmax(scale * L + bias): P ** power (power = 1/scale)
    # is proportional to exp(L) per head, the unscaled softmax the mass needs, once the zero
    # column is weighted by num_zero ** (1 - power). ``mass_weights`` [heads, 2, short]: row 0 those
    # weights on the columns after the first ORTHO_V2_TOKENS, row 1 on every real column. ``power``
    # is 0 where 1/scale is not a power of two up to 16, or where a head's sum of the powers could
    # underflow: the mass then comes from a second softmax of the unscaled logits, weighted by
    # ``rest_cols`` [1, heads*short] (1 on the columns after the first ORTHO_V2_TOKENS), and the
    # logits are rescaled in place by ``mask_rest`` [1, short, 1] = mask * (1 - scale).
    power: int
    mass_weights: torch.Tensor
    rest_cols: torch.Tensor
    mask_rest: torch.Tensor
    # The compiled CPU kernel's layout (csrc/id_branch.c): ``k_t`` [B, heads, d, W] the first
    # ``short`` keys transposed, zero-padded to W (a multiple of 16); ``bias_w`` [W] their logit
    # bias (mask, -inf on the padding); ``rest_w`` [W] ortho_v2's rest weight per column (v_rest).
    k_t: torch.Tensor
    bias_w: torch.Tensor
    rest_w: torch.Tensor

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
    if id_k.shape[1] == 0:
        raise PuLIDError("There are no ID tokens to attend to (an identity of width 0).")
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
        # The authors' mass window is the first ORTHO_V2_TOKENS columns of [ID tokens, zero tokens]:
        # with fewer ID tokens, that many zero tokens are inside it (all zero tokens share one logit,
        # so the column's weight splits exactly), the others are "rest".
        inside = min(num_zero, max(0, ORTHO_V2_TOKENS - tokens))
        v_rest[:, :, tokens] = (num_zero - inside) / num_zero
    zero, tiny = torch.tensor([[0.0], [_TINY]], device=device, dtype=torch.float32).unbind()
    # A row of ones, not a [1] constant: CPU kernels vectorise addcmul(one, [B, N, 1], [B, 1, C])
    # only when at most one operand is constant along the channels (7x faster).
    one = torch.ones(1, 1, heads * d, device=device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(d)
    # The explicit path multiplies only up to the next multiple of 4 (its matmuls have the
    # columns as their short side, where 12 runs faster than 16 on the CPU, and the softmax
    # sees fewer padding rows): 11 -> 12 columns in fidelity, 33 -> 36 in v1.1.
    short = tokens + (1 if num_zero else 0)
    short += -short % 4
    power = _mass_power(d, short, num_zero)
    real = torch.zeros(short, dtype=torch.float32, device=device)
    real[:tokens] = 1.0
    if num_zero:
        real[tokens] = float(num_zero) ** (1 - power) if power else 1.0
    mass_weights = torch.stack([v_rest[0, 0, :short, 0].float() * real, real]).expand(heads, 2, short).contiguous()
    rest_cols = v_rest[:, :, :short, 0].reshape(1, heads * short).contiguous()
    # -inf stays -inf (also where 1 - scale is 0, d = 1: -inf * 0 would be NaN).
    mask_rest = torch.where(mask[:, :short].isinf(), mask[:, :short], mask[:, :short] * (1.0 - scale))
    wide = short + -short % 16
    k_t = F.pad(k[:, :, :short], (0, 0, 0, wide - short)).transpose(2, 3).contiguous()
    bias_w = F.pad(mask[0, :short], (0, wide - short), value=-math.inf).contiguous()
    rest_w = F.pad(v_rest[0, 0, :short, 0], (0, wide - short)).contiguous()
    return PreparedIDKV(k, v, v_rest.expand(k.shape[0], -1, -1, -1).contiguous(), mask, zero, tiny, one,
                        scale, heads, short, power, mass_weights, rest_cols, mask_rest.view(1, short, 1),
                        k_t, bias_w, rest_w)


def _mass_power(d: int, short: int, num_zero: int) -> int:
    """1/scale = sqrt(d) where it is a power of two from 2 to 16 (P ** power by squarings) and a
    head's weighted sum of the powers cannot underflow in fp32 (its largest column has P >= 1/short,
    weighted by 1 or by num_zero ** (1 - power)); else 0."""
    power = round(math.sqrt(d))
    if power * power != d or power < 2 or power & (power - 1) or power > 16:
        return 0
    zero_weight = float(num_zero) ** (1 - power) if num_zero else 1.0
    return power if short ** -power * min(1.0, zero_weight) >= 1e-30 else 0


def select_rows(kv: PreparedIDKV, rows=None, batch: int | None = None) -> PreparedIDKV:
    """The keys/values of rows ``rows`` (row indices: a sequence or a LongTensor), or of one row
    broadcast to ``batch`` rows; contiguous, ready for a batch."""
    k, v, v_rest, k_t = kv.k, kv.v, kv.v_rest, kv.k_t
    if rows is not None:
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows  # one read, not one per row
        index = torch.as_tensor([int(r) for r in rows], device=k.device)
        k, v, v_rest, k_t = k[index], v[index], v_rest[index], k_t[index]
    elif batch is not None:
        k, v, v_rest, k_t = (t.expand(batch, -1, -1, -1) for t in (k, v, v_rest, k_t))
    return kv._replace(k=k.contiguous(), v=v.contiguous(), v_rest=v_rest.contiguous(), k_t=k_t.contiguous())


_TINY = torch.finfo(torch.float32).tiny


def id_attention_prepared(base: torch.Tensor, q: torch.Tensor, kv: PreparedIDKV, projection: str,
                          mask: torch.Tensor | None = None, *, fused: bool | None = None,
                          native: bool | None = None, workspace: dict | None = None,
                          inplace: bool = False) -> torch.Tensor:
    """``base`` plus the ID term, with keys/values from :func:`prepare_id_kv` (one row per q row).

    Two paths to the same numbers (the second also in a compiled kernel, ``native``); none reads
    anything back from the device.
    ``fused=True``: torch's scaled_dot_product_attention for the ID attention (and a second one
    for ortho_v2's mass), which reads the heads straight out of q's [B, N, heads*d] layout and
    writes its result token-major like H: few kernels, the logits never stored.
    ``fused=False`` (fp32 only): row by row, the logits as one matmul, one softmax serving the ID
    attention and ortho_v2's mass, one matmul writing I head-major, then the projection
    in blocks of tokens small enough to stay in the CPU's cache: more, smaller ops, about half the
    arithmetic of two fused attentions (torch's CPU flash kernel is slow for 16 keys), and each
    pass over the activations reads what the one before it left in the cache.
    ``None`` (default): the explicit path for fp32 on the CPU, the fused one elsewhere
    (GPUs, and fp16/bf16 CPU runs).
    ``native`` (the explicit path on the CPU): ``None`` (default) runs it in the compiled kernel
    (:mod:`.native`, one pass per token for the logits, softmax, I and the sums, a second for the
    projection) where that is built and agreed with torch's ops; ``False`` on torch's ops; ``True``
    requires the kernel.
    ``workspace``: a dict the caller keeps between calls; intermediate tensors (the projection's
    fp32 scratch, the explicit path's logits) then live in buffers reused across calls, one per
    shape (fresh CPU memory costs a page fault per 4 KiB, about as much time as the arithmetic).
    ``inplace``: write the result into ``base`` (which must be the caller's own new tensor, such
    as ComfyUI's attention output) instead of a new tensor.
    The projection runs in fp32 as the authors do; the result is rounded once, into base's dtype.
    With autograd recording (grad mode, an input that requires grad: ComfyUI's Train LoRA node runs
    the model outside inference mode) the fused path runs, differentiable: no ``out=`` buffer, no
    writing into ``base``.
    """
    batch, n, inner = q.shape
    if projection not in PROJECTIONS:
        raise PuLIDError(f"Unknown PuLID projection {projection!r}; use one of {', '.join(PROJECTIONS)}.")
    if kv.rows != batch:
        raise PuLIDError(f"ID keys for {kv.rows} rows cannot serve a batch of {batch}.")
    fp32 = base.dtype == q.dtype == kv.k.dtype == torch.float32
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (base, q, kv.k, kv.v))
    if track:
        if fused is False or native:
            raise PuLIDError("The explicit ID attention path does not record gradients; use fused=True or None.")
        fused, workspace, inplace = True, None, False
    if fused is None:
        fused = q.device.type != "cpu" or not fp32
    elif not fused and not fp32:
        raise PuLIDError("The explicit ID attention path is fp32 only; use fused=True or None for fp16/bf16.")
    # (CPU fp16/bf16 results are computed in fp32 copies and rounded into a new tensor.)
    in_place = inplace and (base.is_cuda or base.dtype == q.dtype == torch.float32)
    if not fused:
        # With a mask the full result needs its own tensor (blended into base afterwards).
        full = base if in_place and mask is None else torch.empty_like(base, memory_format=torch.contiguous_format)
        kernel = _native_for(native, q, base, full, kv)
        if kernel is None:
            _explicit(base, q, kv, projection, full, workspace)
        else:
            _explicit_native(kernel, base, q, kv, projection, full, workspace)
        return _masked(base, full, mask, into_base=in_place)

    ident, rest = _attend_fused(q, kv, projection == "ortho_v2")
    # In place: the last op writes the result into base (with a mask: the full result into I,
    # then the blend into base). Recording gradients: every op makes a new tensor.
    dest = None if track else base if in_place and mask is None else ident
    if projection == "none":
        # Added in the UNet dtype, as the authors do.
        if ident.dtype == base.dtype:
            full = torch.add(ident, base, out=dest)
        else:
            full = base + ident.to(base.dtype)
        return _masked(base, full, mask, into_base=in_place, new=track)

    # The projection in fp32, as the authors do. CUDA kernels convert fp16/bf16 operands to fp32
    # as they load them (the fp32 constants below make each product run in fp32); CPU kernels
    # would copy mixed operands to fp32 on every op, so there they are converted once, here.
    if base.dtype == torch.float32 or base.is_cuda:
        h, i = base, ident
    else:
        h, i = base.float(), ident.float()
        dest = None if track else i
    # Per channel over the tokens: the energy of H, with a tiny added per token so that a
    # channel where H is 0 at every token (e.g. a zeroed negative prompt) divides 0 by a
    # positive number (the authors' 0/0 = NaN becomes 0: the ID term is added unprojected;
    # elsewhere H*H + tiny rounds to H*H), and <H, s I>. One fp32 scratch tensor serves both
    # products and the factor.
    scratch = None if track else _buffer(workspace, "scratch", h.shape, torch.float32, h.device)
    energy = torch.addcmul(kv.tiny, h, h, out=scratch).sum(dim=1, keepdim=True)  # [B, 1, C]
    dot = torch.addcmul(kv.zero, h, i, out=scratch).sum(dim=1, keepdim=True)
    if projection == "ortho":
        # H + s (I - P) = I_s + H (1 - c), c = <H, I_s> / |H|^2 per channel.
        factor = torch.addcdiv(kv.one, dot, energy, value=-1.0)
    else:
        # H + s (I + (m - 1) P) = I_s + H (1 + (m - 1) c), m the mass on the first ORTHO_V2_TOKENS
        # ID tokens of the softmax of the unscaled logits, averaged over the heads; ``rest`` [B, N, 1]
        # is the heads' summed mass on the other tokens, so m - 1 = -rest / heads.
        factor = torch.addcmul(kv.one, rest, dot / energy if track else dot.div_(energy), value=-1.0 / kv.heads,
                               out=scratch)
    # Into this call's own I (or base, in place); computed in fp32, rounded once.
    full = torch.addcmul(i, h, factor, out=dest)
    return _masked(base, full if full.dtype == base.dtype else full.to(base.dtype), mask, into_base=in_place,
                   new=track)


def _buffer(workspace: dict | None, name: str, shape, dtype, device) -> torch.Tensor:
    """An uninitialised tensor: fresh, or the workspace's one of this name, shape, dtype and device."""
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    key = (name, tuple(shape), dtype, str(device))
    buf = workspace.get(key)
    if buf is None:
        buf = workspace[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf


def _attend_fused(q: torch.Tensor, kv: PreparedIDKV, mass: bool):
    """(I [B, N, C] in q's dtype, this call's own tensor; ortho_v2's rest mass [B, N, 1] or None)
    through torch's fused attention."""
    batch, n, inner = q.shape
    qh = q.reshape(batch, n, kv.heads, -1).transpose(1, 2)  # [B, h, N, d], a view of a contiguous q
    # The weight is folded into v.
    ident = F.scaled_dot_product_attention(qh, kv.k, kv.v, attn_mask=kv.mask, scale=kv.scale)
    ident = ident.transpose(1, 2).reshape(batch, n, inner)  # a view where the kernel wrote token-major
    if not mass:
        return ident, None
    # 1 - m per head is the attention of q onto v_rest with the unscaled logits (every channel holds it).
    rest = F.scaled_dot_product_attention(qh, kv.k, kv.v_rest, attn_mask=kv.mask, scale=1.0)
    return ident, rest[..., 0].sum(dim=1, dtype=torch.float32).unsqueeze(-1)


# On one thread, the explicit path works through each batch row in segments of at most about
# _SEGMENT_ELEMENTS values (q, H and I of a segment, 6 MiB each in fp32, stay in the CPU's last-level
# cache from the pass that reads them to the next), and the projection's sums in blocks of about
# _BLOCK_ELEMENTS (a product of 512 KiB stays in a core's L2 cache between its two uses).
_SEGMENT_ELEMENTS = 3 << 19
_BLOCK_ELEMENTS = 1 << 17


def _explicit(base: torch.Tensor, q: torch.Tensor, kv: PreparedIDKV, projection: str, full: torch.Tensor,
              workspace: dict | None) -> None:
    """The fp32 path of :func:`id_attention_prepared`: the full result into ``full`` (base itself,
    or a new tensor), one batch row at a time, in segments of tokens, so that each pass over q, H
    and I finds them where the one before it left them: in the cache."""
    batch, n, inner = q.shape
    heads, width = kv.heads, kv.short
    mass = projection == "ortho_v2"
    bias = kv.mask[:, :width].view(1, width, 1)  # 0 for the ID tokens, log(num_zero), -inf for padding
    # On one thread, cache-sized pieces; on several, each op is split between the cores (each cache
    # holds its own part) and smaller pieces only add per-op overhead: whole rows (measured on 2
    # cores, 640 x 4096: 16 ms a call in whole rows, 18 ms in pieces).
    pieces = torch.get_num_threads() == 1
    block = max(1, min(n, _BLOCK_ELEMENTS // inner)) if pieces else n
    spans = [(s, min(n, s + block)) for s in range(0, n, block)]
    count = -(-n * inner // _SEGMENT_ELEMENTS) if pieces else 1
    per_segment = -(-len(spans) // count)  # whole blocks, the segments as even as they come
    segments = [(spans[i][0], spans[min(i + per_segment, len(spans)) - 1][1]) for i in range(0, len(spans), per_segment)]
    if projection != "none":
        scratch = _buffer(workspace, "scratch", (block, inner), torch.float32, q.device)
        sums = _buffer(workspace, "sums", (2, len(spans), inner), torch.float32, q.device)
    rest = _buffer(workspace, "rest", (n, 1), torch.float32, q.device) if mass else None
    d = inner // heads
    # I of one row, head-major [heads, n, d]: the matmul writes each head's rows contiguously; the
    # passes after it read it through a token-major view ([n, heads, d], 256-byte runs).
    ident_heads = _buffer(workspace, "ident", (heads, n, d), q.dtype, q.device)
    ident = ident_heads.transpose(0, 1)
    # The last row first: ComfyUI's attention wrote its H (and read its q) last.
    for r in reversed(range(batch)):
        h, out = base[r].view(n, heads, d), full[r].view(n, heads, d)
        j = 0
        for a, b in segments:
            _attend_segment(q[r, a:b], kv, r, bias, mass, ident_heads[:, a:b], rest[a:b] if mass else None, workspace)
            if projection == "none":
                torch.add(ident[a:b], h[a:b], out=out[a:b])
                continue
            # Per channel over the tokens, block by block: the energy of H (plus a tiny per token,
            # see the fused path) and <H, s I>.
            while j < len(spans) and spans[j][1] <= b:
                s, e = spans[j]
                hb, sb = h[s:e], scratch[: e - s].view(e - s, heads, d)
                torch.sum(torch.addcmul(kv.tiny, hb, hb, out=sb), 0, out=sums[0, j].view(heads, d))
                torch.sum(torch.mul(hb, ident[s:e], out=sb), 0, out=sums[1, j].view(heads, d))
                j += 1
        if projection == "none":
            continue
        energy, dot = sums.sum(1).unbind()
        if projection == "ortho":
            factor = torch.addcdiv(kv.one[0], dot, energy, value=-1.0).view(1, heads, d)
            torch.addcmul(ident, h, factor, out=out)
            continue
        c = dot.div_(energy)
        for s, e in spans:
            factor = torch.addcmul(kv.one[0], rest[s:e], c, value=-1.0 / heads, out=scratch[: e - s])
            torch.addcmul(ident[s:e], h[s:e], factor.view(e - s, heads, d), out=out[s:e])


@functools.cache
def native_kernel() -> native_build.Kernel | None:
    """The compiled CPU kernel (:mod:`.native`), once per process: loaded, then checked against
    torch's ops on small cases of every projection (both head-width code paths, zero tokens, a
    partial last group of tokens, in place); None where it is unavailable or disagrees."""
    kernel = native_build.load()
    if kernel is None:
        return None
    gen = torch.Generator().manual_seed(7)
    for heads, d, n, tokens, num_zero in ((2, 64, 37, 10, 3), (3, 8, 5, 2, 0), (1, 64, 70, 33, 0)):
        q, h = (torch.randn(2, n, heads * d, generator=gen) for _ in range(2))
        k, v = (torch.randn(2, tokens, heads * d, generator=gen) for _ in range(2))
        kv = prepare_id_kv(k, v, heads, 0.7, num_zero=num_zero)
        for projection in PROJECTIONS:
            want = torch.empty_like(h)
            _explicit(h, q, kv, projection, want, None)
            got = torch.empty_like(h)
            _explicit_native(kernel, h, q, kv, projection, got, None)
            in_place = h.clone()
            _explicit_native(kernel, in_place, q, kv, projection, in_place, None)
            if not all(torch.allclose(x, want, rtol=1e-4, atol=1e-4) for x in (got, in_place)):
                log.warning("comfyui-pulid: the compiled CPU ID-branch kernel (%s) disagrees with torch's ops "
                            "(%s, %d heads of %d); torch's ops are used. Please report this with your CPU "
                            "and compiler.", kernel.path, projection, heads, d)
                return None
    log.info("comfyui-pulid: the CPU ID branch runs in the compiled kernel %s (%s)", kernel.path,
             "on torch's threads" if kernel.threaded else "on one thread")
    return kernel


# The kernel's limits (csrc/id_branch.c): at most 64 columns; thread shares up to 64.
_NATIVE_MAX_COLUMNS = 64


# torch.compile (ComfyUI's TorchCompileModel) never traces into the kernel's loading or its library
# call: they run as they are, between the traced graphs.
@torch.compiler.disable
def _native_for(native: bool | None, q: torch.Tensor, base: torch.Tensor, full: torch.Tensor,
                kv: PreparedIDKV) -> native_build.Kernel | None:
    """The kernel for this call, None for torch's ops; raises where ``native=True`` cannot be met."""
    if native is False:
        return None
    kernel = native_kernel()
    why = None
    if kernel is None:
        why = "it is not built on this machine (no C compiler, or COMFYUI_PULID_NATIVE=0; see the log)"
    elif q.device.type != "cpu":
        why = "it runs on the CPU only"
    elif kv.k_t.shape[-1] > _NATIVE_MAX_COLUMNS:
        why = f"it takes at most {_NATIVE_MAX_COLUMNS} ID columns, not {kv.short}"
    elif any(t.stride(-1) != 1 for t in (q, base, full)):
        why = "it needs contiguous channels"
    elif kernel.threads(torch.get_num_threads()) is None:
        why = "it runs on one thread here and torch has several"
    if why is None:
        return kernel
    if native:
        raise PuLIDError(f"The compiled ID-branch kernel cannot run this call: {why}.")
    return None


@torch.compiler.disable
def _explicit_native(kernel: native_build.Kernel, base: torch.Tensor, q: torch.Tensor, kv: PreparedIDKV,
                     projection: str, full: torch.Tensor, workspace: dict | None) -> None:
    """The explicit path in the compiled kernel: the full result into ``full`` (base itself, or a
    new tensor), one batch row per call. Everything it touches is checked here (the kernel trusts
    its pointers): fp32 on the CPU, channels contiguous, keys and values as prepare_id_kv lays
    them out."""
    batch, n, inner = q.shape
    heads, d = kv.heads, inner // kv.heads
    mode = PROJECTIONS.index(projection)  # 0 none, 1 ortho, 2 ortho_v2 (the kernel's numbering)
    threads = kernel.threads(torch.get_num_threads()) or 1
    for t in (q, base, full, kv.k_t, kv.v, kv.bias_w, kv.rest_w):
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.stride(-1) != 1:
            raise PuLIDError("The compiled ID-branch kernel takes fp32 CPU tensors with contiguous channels.")
    wide = kv.k_t.shape[-1]
    if (inner != heads * d or base.shape != q.shape or full.shape != q.shape or kv.k_t.shape != (batch, heads, d, wide)
            or not kv.k_t.is_contiguous() or not kv.v.is_contiguous() or kv.v.shape[:2] != (batch, heads)
            or kv.v.shape[2] < kv.short or kv.v.shape[3] != d or kv.bias_w.shape != (wide,)
            or kv.rest_w.shape != (wide,)):
        raise PuLIDError(f"ID keys/values {tuple(kv.k_t.shape)} do not fit activations {tuple(q.shape)}.")
    in_place = full.data_ptr() == base.data_ptr()
    # I of a row, kept for the second pass when the result goes into base (the torch path's buffer).
    ident = _buffer(workspace, "ident", (heads, n, d), torch.float32, q.device) if in_place and mode else None
    rest = _buffer(workspace, "rest", (n, 1), torch.float32, q.device)
    scratch = _buffer(workspace, "native", (kernel.lib.pulid_scratch_floats(heads, d, threads),), torch.float32,
                      q.device)
    lib = kernel.lib
    # The last row first: ComfyUI's attention wrote its H (and read its q) last.
    for r in reversed(range(batch)):
        failed = lib.pulid_id_row(
            q[r].data_ptr(), q.stride(1), base[r].data_ptr(), base.stride(1), full[r].data_ptr(), full.stride(1),
            ident.data_ptr() if ident is not None else None, kv.k_t[r].data_ptr(), kv.v[r].data_ptr(),
            kv.bias_w.data_ptr(), kv.rest_w.data_ptr(), rest.data_ptr(), scratch.data_ptr(),
            n, heads, d, wide, kv.short, kv.v.shape[2] * d, kv.scale, _TINY, mode, threads)
        if failed:
            raise PuLIDError(f"The compiled ID-branch kernel refused its arguments ({tuple(q.shape)}, {heads} heads).")


def _attend_segment(q: torch.Tensor, kv: PreparedIDKV, row: int, bias: torch.Tensor, mass: bool,
                    ident: torch.Tensor, rest: torch.Tensor | None, workspace: dict | None) -> None:
    """I of q [M, C] (one row's segment) onto the ID tokens of batch row ``row``, into ``ident``
    [heads, M, d] (head-major), and ortho_v2's rest mass into ``rest`` [M, 1]: the logits as one matmul
    into [heads, T'', M] (the softmax then runs over T'' with the tokens contiguous, which torch's
    CPU kernel vectorises), one matmul back (q's heads read in place as a strided operand, each
    head's rows of I written contiguously)."""
    m, inner = q.shape
    heads, width = kv.heads, kv.short
    d = inner // heads
    logits = _buffer(workspace, "logits", (heads, width, m), q.dtype, q.device)
    probs = _buffer(workspace, "probs", (heads, width, m), q.dtype, q.device)
    torch.bmm(kv.k[row, :, :width], q.view(m, heads, d).permute(1, 2, 0), out=logits)  # unscaled
    if mass and not kv.power:
        # The mass from a softmax of the unscaled logits, then the scaled ones in place:
        # scale * (L + bias) + (1 - scale) * bias = scale * L + bias (-inf stays -inf).
        torch.softmax(logits.add_(bias), 1, out=probs)
        torch.mm(kv.rest_cols, probs.view(heads * width, m), out=rest.view(1, m))
        torch.add(kv.mask_rest, logits, alpha=kv.scale, out=logits)
    else:
        torch.add(bias, logits, alpha=kv.scale, out=logits)
    torch.softmax(logits, 1, out=probs)
    if mass and kv.power:
        _mass_from_powers(probs, kv, logits, rest, workspace)
    torch.bmm(probs.transpose(1, 2), kv.v[row, :, :width], out=ident)


def _mass_from_powers(probs: torch.Tensor, kv: PreparedIDKV, spare: torch.Tensor, rest: torch.Tensor,
                      workspace: dict | None) -> None:
    """ortho_v2's rest mass [N, 1] (summed over the heads) from the ID softmax P [heads, T'', N]:
    P ** power = exp(scale * L + bias) ** power / Z ** power is exp(L) per head and token up to a
    factor, with the zero column's weight num_zero ** power, corrected to num_zero by
    ``kv.mass_weights``; one matmul gives each head's weighted sum on the rest and on all columns.
    Written into ``rest``; ``spare`` (the logits' buffer, no longer needed) holds the powers."""
    heads, _, n = probs.shape
    torch.mul(probs, probs, out=spare)
    for _ in range(kv.power.bit_length() - 2):
        spare.mul_(spare)
    sums = _buffer(workspace, "mass", (heads, 2, n), torch.float32, probs.device)
    torch.bmm(kv.mass_weights, spare, out=sums)
    torch.sum(sums[:, 0].div_(sums[:, 1]), 0, out=rest.view(n))


def _masked(base: torch.Tensor, full: torch.Tensor, mask: torch.Tensor | None, into_base: bool = False,
            new: bool = False) -> torch.Tensor:
    """base + mask * (full - base): exactly ``full`` where the mask is 1 and ``base`` where it is 0.
    Written over ``full`` (this call's own tensor), over ``base``, or (``new``) into a new tensor."""
    if mask is None:
        return full
    weight = _mask4(mask, base.shape[0], base.shape[1]).squeeze(-1).to(base.dtype)
    return torch.lerp(base, full, weight, out=None if new else base if into_base else full)


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
    num_zero: int = 0,
    fused: bool | None = None,
    native: bool | None = None,
) -> torch.Tensor:
    """``base`` plus PuLID's ID term, before to_out.

    base: text cross-attention output H [B, N, heads*d]; q: the layer's (unscaled) query,
    same shape; id_k/id_v: [B or 1, T', heads*d] from ``PuLIDModel.id_kv`` (zero rows
    included, or left out and counted in ``num_zero``). weight: id_scale, a float or a
    tensor of 1 or B per-row values. projection: "none" (H + s*I), "ortho"
    (H + s*(I - P)) or "ortho_v2" (H + s*(I + (m - 1)*P)), P being I projected onto H
    over the token axis per channel. mask: broadcastable to [B, N, 1] (or [B, N]),
    multiplies the ID term. fused, native: see :func:`id_attention_prepared`. Returns base's dtype.
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
    kv = prepare_id_kv(id_k, id_v, heads, weight, num_zero=num_zero, device=q.device, dtype=q.dtype)
    return id_attention_prepared(base, q, select_rows(kv, batch=batch), projection, mask, fused=fused,
                                 native=native)
