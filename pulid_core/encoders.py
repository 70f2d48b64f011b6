"""PuLID ID encoders: v1 IDEncoder (MLPs) and v1.1 IDFormer (perceiver resampler).

Both turn ``id_cond`` (ArcFace 512 + L2-normalised EVA-CLIP pooled 768 = 1280) and
the five EVA-CLIP hidden states into ID tokens for the cross-attention layers.
Every size is read from the checkpoint's tensor shapes, so reduced test adapters
with the real key structure build too. Submodule names equal the official ones,
so the official state dict (``id_adapter.`` prefix stripped) loads strictly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .blocks import PerceiverAttention, feed_forward, num_heads
from .errors import ModelFileError
from .ops import cast_parameter

# EVA-CLIP hidden states taken after blocks 3, 7, 11, 15, 19: one mapping MLP each.
NUM_VIT_SCALES = 5
# LayerNorm/Linear positions inside the official nn.Sequential MLPs (2 and 5 are LeakyReLU).
_MLP_LINEARS = (0, 3, 6)
_MLP_NORMS = (1, 4)
_FF_KEYS = ("1.0.weight", "1.0.bias", "1.1.weight", "1.3.weight")
_ATTN_KEYS = (
    "0.norm1.weight",
    "0.norm1.bias",
    "0.norm2.weight",
    "0.norm2.bias",
    "0.to_q.weight",
    "0.to_kv.weight",
    "0.to_out.weight",
)
# The IDFormer's PerceiverAttention uses 64-wide heads (16 x 64 = 1024).
_PERCEIVER_HEAD_DIM = 64


class Shapes(dict):
    """A checkpoint's tensor shapes by key, and the prefix its keys had in the file (for messages).

    The modules read their sizes from these with :meth:`dims`, which checks the number of
    dimensions first: a damaged or wrongly converted tensor is then named, not an IndexError.
    """

    def __init__(self, items=(), prefix: str = ""):
        super().__init__(items)
        self.prefix = prefix

    @classmethod
    def of(cls, shapes: Mapping) -> Shapes:
        """``shapes`` itself if it is a Shapes, else a Shapes of it (modules also take a plain mapping)."""
        return shapes if isinstance(shapes, cls) else cls(shapes)

    def sub(self, prefix: str) -> Shapes:
        """The shapes under ``prefix``, with it stripped (and remembered)."""
        return Shapes({k[len(prefix) :]: s for k, s in self.items() if k.startswith(prefix)}, self.prefix + prefix)

    def dims(self, key: str, ndim: int) -> tuple:
        shape = tuple(self[key])
        if len(shape) != ndim:
            raise ModelFileError(
                f"{self.prefix}{key} has shape {list(shape)}, where a tensor of {ndim} dimension"
                f"{'s' if ndim != 1 else ''} belongs"
            )
        return shape


def mlp_keys(prefix: str) -> list[str]:
    keys = [f"{prefix}.{i}.{p}" for i in _MLP_LINEARS for p in ("weight", "bias")]
    return keys + [f"{prefix}.{i}.{p}" for i in _MLP_NORMS for p in ("weight", "bias")]


def id_encoder_keys() -> list[str]:
    """Keys of the v1 IDEncoder, without the ``id_adapter.`` prefix."""
    keys = mlp_keys("body")
    for i in range(NUM_VIT_SCALES):
        keys += mlp_keys(f"mapping_{i}") + mlp_keys(f"mapping_patch_{i}")
    return keys


def id_former_keys(depth: int) -> list[str]:
    """Keys of a v1.1 IDFormer with ``depth`` perceiver layers, without the prefix."""
    keys = ["latents", "proj_out", *mlp_keys("id_embedding_mapping")]
    keys += [k for i in range(NUM_VIT_SCALES) for k in mlp_keys(f"mapping_{i}")]
    keys += [f"layers.{n}.{k}" for n in range(depth) for k in _ATTN_KEYS + _FF_KEYS]
    return keys


def _mlp(shapes: Shapes, prefix: str, in_dim: int, operations) -> nn.Sequential:
    """Linear-LN-LeakyReLU-Linear-LN-LeakyReLU-Linear, widths from the three weights."""
    h1 = shapes.dims(f"{prefix}.0.weight", 2)[0]
    h2 = shapes.dims(f"{prefix}.3.weight", 2)[0]
    out = shapes.dims(f"{prefix}.6.weight", 2)[0]
    return nn.Sequential(
        operations.Linear(in_dim, h1, device="meta"),
        operations.LayerNorm(h1, device="meta"),
        nn.LeakyReLU(),
        operations.Linear(h1, h2, device="meta"),
        operations.LayerNorm(h2, device="meta"),
        nn.LeakyReLU(),
        operations.Linear(h2, out, device="meta"),
    )


def _meta_parameter(shape) -> nn.Parameter:
    return nn.Parameter(torch.empty(tuple(shape), device="meta"), requires_grad=False)


class IDEncoder(nn.Module):
    """v1: body MLP of id_cond gives ``num_token`` tokens; each ViT scale adds one token,
    mapping(CLS) + mean over patches of mapping_patch(patch)."""

    def __init__(self, shapes: Mapping, operations):
        super().__init__()
        shapes = Shapes.of(shapes)
        self.width = shapes.dims("body.0.weight", 2)[1]
        self.vit_dim = shapes.dims("mapping_0.0.weight", 2)[1]
        self.context_dim = shapes.dims("mapping_0.6.weight", 2)[0]
        body_out = shapes.dims("body.6.weight", 2)[0]
        if body_out % self.context_dim:
            raise ModelFileError(
                f"the IDEncoder body outputs {body_out} values, not a multiple of its token width "
                f"{self.context_dim}"
            )
        self.num_token = body_out // self.context_dim
        self.body = _mlp(shapes, "body", self.width, operations)
        for i in range(NUM_VIT_SCALES):
            setattr(self, f"mapping_{i}", _mlp(shapes, f"mapping_{i}", self.vit_dim, operations))
            setattr(self, f"mapping_patch_{i}", _mlp(shapes, f"mapping_patch_{i}", self.vit_dim, operations))

    @property
    def num_tokens(self) -> int:
        return self.num_token + NUM_VIT_SCALES

    def forward(self, id_cond: torch.Tensor, id_vit_hidden) -> torch.Tensor:
        tokens = [self.body(id_cond).reshape(id_cond.shape[0], self.num_token, self.context_dim)]
        for i, emb in enumerate(id_vit_hidden):
            cls = getattr(self, f"mapping_{i}")(emb[:, :1])
            # The MLP runs per patch token; the mean is taken after it.
            patches = getattr(self, f"mapping_patch_{i}")(emb[:, 1:]).mean(dim=1, keepdim=True)
            tokens.append(cls + patches)
        return torch.cat(tokens, dim=1)


class IDFormer(nn.Module):
    """v1.1: 32 learned queries plus 5 ID tokens per image resample the ID tokens and
    the mapped ViT features; each ViT scale feeds depth/5 perceiver layers in turn."""

    def __init__(self, shapes: Mapping, depth: int, operations):
        super().__init__()
        shapes = Shapes.of(shapes)
        _, self.num_queries, self.dim = shapes.dims("latents", 3)
        self.width = shapes.dims("id_embedding_mapping.0.weight", 2)[1]
        self.vit_dim = shapes.dims("mapping_0.0.weight", 2)[1]
        self.context_dim = shapes.dims("proj_out", 2)[1]
        id_out = shapes.dims("id_embedding_mapping.6.weight", 2)[0]
        if id_out % self.dim or depth % NUM_VIT_SCALES:
            raise ModelFileError(
                f"the IDFormer has {depth} layers and {id_out} ID-mapping outputs; expected a multiple "
                f"of {NUM_VIT_SCALES} layers and of its width {self.dim}"
            )
        self.num_id_token = id_out // self.dim
        self.layers_per_scale = depth // NUM_VIT_SCALES
        self.latents = _meta_parameter(shapes["latents"])
        self.proj_out = _meta_parameter(shapes["proj_out"])
        self.id_embedding_mapping = _mlp(shapes, "id_embedding_mapping", self.width, operations)
        for i in range(NUM_VIT_SCALES):
            setattr(self, f"mapping_{i}", _mlp(shapes, f"mapping_{i}", self.vit_dim, operations))
        inner = shapes.dims("layers.0.0.to_q.weight", 2)[0]
        ff_inner = shapes.dims("layers.0.1.1.weight", 2)[0]
        heads = num_heads(inner, _PERCEIVER_HEAD_DIM, "the IDFormer attention")
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(self.dim, inner, heads, operations),
                    feed_forward(self.dim, ff_inner, operations),
                ]
            )
            for _ in range(depth)
        )

    @property
    def num_tokens(self) -> int:
        return self.num_queries

    def forward(self, id_cond: torch.Tensor, id_vit_hidden) -> torch.Tensor:
        """id_cond [B, 1280] or [B, N, 1280] (N images); hidden states [B, 577*N, 1024]."""
        batch = id_cond.shape[0]
        num_images = id_cond.shape[1] if id_cond.ndim == 3 else 1
        id_tokens = self.id_embedding_mapping(id_cond).reshape(
            batch, self.num_id_token * num_images, self.dim
        )
        queries = cast_parameter(self.latents, id_cond).expand(batch, -1, -1)
        # The ID tokens join the latents (and are updated there) and also lead every context.
        latents = torch.cat((queries, id_tokens), dim=1)
        for i, hidden in enumerate(id_vit_hidden):
            context = torch.cat((id_tokens, getattr(self, f"mapping_{i}")(hidden)), dim=1)
            for attn, ff in self.layers[i * self.layers_per_scale : (i + 1) * self.layers_per_scale]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, : self.num_queries] @ cast_parameter(self.proj_out, latents)
