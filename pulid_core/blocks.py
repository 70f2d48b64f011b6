"""Model blocks shared by PuLID v1.1 (IDFormer), PhotoMaker v2 (QFormerPerceiver) and PuLID-FLUX.

Each block is written once; the variants differ only in what the arguments say:

- :class:`PerceiverAttention` — the authors' Perceiver resampler attention
  (``PerceiverAttention`` in PuLID's ``encoders_transformer.py`` and PhotoMaker's
  ``resampler.py``: keys and values from the context *and* the latents) and PuLID-FLUX's
  ``PerceiverAttentionCA`` (the image tokens attend to the ID tokens only, whose width
  ``kv_dim`` differs from the image width). All of them: LayerNorm on both inputs,
  bias-free ``to_q``/``to_kv``/``to_out``, ``dim_head ** -0.25`` on q and on k, softmax in
  fp32.
- :func:`feed_forward` — LayerNorm, Linear, GELU, Linear (no biases), the checkpoint's
  ``Sequential`` indices 0/1/3.
- :func:`num_heads` — heads from a projection width and the authors' fixed head width.

Layers come from ``operations`` (:mod:`pulid_core.ops`, or ComfyUI's ``comfy.ops``) and are
built on the meta device: weights always come from a state dict (``assign=True``).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ModelFileError


def num_heads(inner: int, dim_head: int, what: str) -> int:
    """Heads of an attention whose projections are ``inner`` wide with ``dim_head``-wide heads.

    A width below one head (reduced test models) is a single head; any other width that is
    not a multiple of ``dim_head`` cannot come from the authors' modules.
    """
    if inner % dim_head == 0:
        return inner // dim_head
    if 0 < inner < dim_head:
        return 1
    raise ModelFileError(f"{what} is {inner} wide, not a multiple of its {dim_head}-wide heads")


class PerceiverAttention(nn.Module):
    """Latents (queries) attend to a context; parameter names are the checkpoints'.

    ``dim``: width of the latents; ``kv_dim``: width of the context (default ``dim``);
    ``inner``: width of q, k and v, split into ``heads``.
    ``with_latents``: keys and values come from ``cat(context, latents)`` (the resampler in
    PuLID v1.1 and PhotoMaker v2) or from the context alone (FLUX's ``PerceiverAttentionCA``).
    ``norm1`` normalises the context, ``norm2`` the latents.
    """

    def __init__(
        self,
        dim: int,
        inner: int,
        heads: int,
        operations,
        *,
        kv_dim: int | None = None,
        with_latents: bool = True,
    ):
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        if with_latents and kv_dim != dim:
            raise ValueError("keys from cat(context, latents) need a context as wide as the latents")
        self.heads = heads
        self.with_latents = with_latents
        self.norm1 = operations.LayerNorm(kv_dim, device="meta")
        self.norm2 = operations.LayerNorm(dim, device="meta")
        self.to_q = operations.Linear(dim, inner, bias=False, device="meta")
        self.to_kv = operations.Linear(kv_dim, 2 * inner, bias=False, device="meta")
        self.to_out = operations.Linear(inner, dim, bias=False, device="meta")

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context = self.norm1(context)
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        q = self._split(self.to_q(latents))
        kv_input = torch.cat((context, latents), dim=1) if self.with_latents else context
        k, v = (self._split(t) for t in self.to_kv(kv_input).chunk(2, dim=-1))
        # The authors split 1/sqrt(d) as d^-1/4 on each factor and take the softmax in fp32:
        # both keep fp16 from overflowing.
        scale = q.shape[-1] ** -0.25
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


def feed_forward(dim: int, inner: int, operations) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, bias-free Linears, at the checkpoint's indices 0/1/3."""
    return nn.Sequential(
        operations.LayerNorm(dim, device="meta"),
        operations.Linear(dim, inner, bias=False, device="meta"),
        nn.GELU(),
        operations.Linear(inner, dim, bias=False, device="meta"),
    )
