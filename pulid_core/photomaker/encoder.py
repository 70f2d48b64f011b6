"""PhotoMaker v1/v2 ID encoder: CLIP vision tower, QFormerPerceiver and FuseModule.

The math follows the authors' ``model.py`` (v1, commit 1e78aa6) and ``model_v2.py`` +
``resampler.py`` (v2). Module and parameter names are the checkpoint's, so the file's
``id_encoder`` dict loads with ``strict=True``. Every size is read from the state dict,
so smaller encoders with the same key structure load too.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as default_ops
from ..blocks import PerceiverAttention, feed_forward
from ..errors import ModelFileError, PuLIDError
from ..io import check_float_weights, guess_kind, key_diff_message, read_state_dict, state_dict_mismatch

log = logging.getLogger(__name__)

_QFORMER = "qformer_perceiver."
_LAYER_RE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_RESAMPLER_LAYER_RE = re.compile(r"^qformer_perceiver\.perceiver_resampler\.layers\.(\d+)\.")
# QFormerPerceiver fixes the head width at 128 (heads = width // 128).
_RESAMPLER_DIM_HEAD = 128
# HF CLIP ViT configs use 64-wide heads (ViT-L/14: 1024 / 16).
_CLIP_DIM_HEAD = 64


# ---------------------------------------------------------------------------
# CLIP vision tower (HF CLIPVisionModel layout, pre-LN, quick_gelu)
# ---------------------------------------------------------------------------


class _PositionEmbedding(nn.Module):
    """Holds ``position_embedding.weight`` under the HF name; a lookup of all rows is the table."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_positions, dim, device="meta"))


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, hidden: int, patch: int, num_positions: int, operations):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(hidden, device="meta"))
        self.patch_embedding = operations.Conv2d(
            3, hidden, kernel_size=patch, stride=patch, bias=False, device="meta"
        )
        self.position_embedding = _PositionEmbedding(num_positions, hidden)

    def forward(self, pixels):
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = default_ops.cast_parameter(self.class_embedding, x).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + default_ops.cast_parameter(self.position_embedding.weight, x)


class CLIPAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, operations):
        super().__init__()
        self.heads = heads
        self.q_proj = operations.Linear(hidden, hidden, device="meta")
        self.k_proj = operations.Linear(hidden, hidden, device="meta")
        self.v_proj = operations.Linear(hidden, hidden, device="meta")
        self.out_proj = operations.Linear(hidden, hidden, device="meta")

    def forward(self, x):
        b, n, c = x.shape

        def split(t):
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class CLIPMLP(nn.Module):
    def __init__(self, hidden: int, inner: int, operations):
        super().__init__()
        self.fc1 = operations.Linear(hidden, inner, device="meta")
        self.fc2 = operations.Linear(inner, hidden, device="meta")

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu, as in OpenAI CLIP


class CLIPEncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, operations):
        super().__init__()
        self.layer_norm1 = operations.LayerNorm(hidden, eps=1e-5, device="meta")
        self.self_attn = CLIPAttention(hidden, heads, operations)
        self.layer_norm2 = operations.LayerNorm(hidden, eps=1e-5, device="meta")
        self.mlp = CLIPMLP(hidden, inner, operations)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, depth: int, operations):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(hidden, heads, inner, operations) for _ in range(depth))


class CLIPVisionTransformer(nn.Module):
    """Returns ``(last_hidden_state, pooled)``: pooled = post_layernorm(CLS); the hidden state has no post-LN."""

    def __init__(
        self, hidden: int, heads: int, inner: int, depth: int, patch: int, num_positions: int, operations
    ):
        super().__init__()
        self.image_size = patch * math.isqrt(num_positions - 1)
        self.embeddings = CLIPVisionEmbeddings(hidden, patch, num_positions, operations)
        self.pre_layrnorm = operations.LayerNorm(hidden, eps=1e-5, device="meta")
        self.encoder = CLIPEncoder(hidden, heads, inner, depth, operations)
        self.post_layernorm = operations.LayerNorm(hidden, eps=1e-5, device="meta")

    def forward(self, pixels):
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise PuLIDError(
                f"PhotoMaker's image encoder takes {self.image_size}x{self.image_size} images, got "
                f"{pixels.shape[-1]}x{pixels.shape[-2]}: run the images through the PhotoMaker preprocessing first."
            )
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return x, self.post_layernorm(x[:, 0])


# ---------------------------------------------------------------------------
# FuseModule (shared by v1 and v2)
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool, operations):
        super().__init__()
        self.use_residual = use_residual
        self.layernorm = operations.LayerNorm(in_dim, device="meta")
        self.fc1 = operations.Linear(in_dim, hidden_dim, device="meta")
        self.fc2 = operations.Linear(hidden_dim, out_dim, device="meta")

    def forward(self, x):
        out = self.fc2(F.gelu(self.fc1(self.layernorm(x))))
        return out + x if self.use_residual else out


class FuseModule(nn.Module):
    def __init__(self, dim: int, operations):
        super().__init__()
        self.mlp1 = MLP(2 * dim, dim, dim, use_residual=False, operations=operations)
        self.mlp2 = MLP(dim, dim, dim, use_residual=True, operations=operations)
        self.layer_norm = operations.LayerNorm(dim, device="meta")

    def forward(self, prompt_tokens, id_tokens):
        """Fuse each class-token embedding [K, D] with its ID token [K, D]."""
        h = self.mlp1(torch.cat([prompt_tokens, id_tokens], dim=-1)) + prompt_tokens
        return self.layer_norm(self.mlp2(h))


# ---------------------------------------------------------------------------
# v2: QFormerPerceiver (ArcFace embedding -> tokens, refined by a perceiver over CLIP patches)
# ---------------------------------------------------------------------------


class FacePerceiverResampler(nn.Module):
    def __init__(self, dim, depth, inner, heads, ff_inner, embedding_dim, output_dim, operations):
        super().__init__()
        self.proj_in = operations.Linear(embedding_dim, dim, device="meta")
        self.proj_out = operations.Linear(dim, output_dim, device="meta")
        self.norm_out = operations.LayerNorm(output_dim, device="meta")
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim, inner, heads, operations), feed_forward(dim, ff_inner, operations)]
            )
            for _ in range(depth)
        )

    def forward(self, latents, x):
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class QFormerPerceiver(nn.Module):
    def __init__(self, id_dim, id_inner, dim, num_tokens, resampler: FacePerceiverResampler, operations):
        super().__init__()
        self.num_tokens = num_tokens
        self.token_proj = nn.Sequential(
            operations.Linear(id_dim, id_inner, device="meta"),
            nn.GELU(),
            operations.Linear(id_inner, dim * num_tokens, device="meta"),
        )
        self.token_norm = operations.LayerNorm(dim, device="meta")
        self.perceiver_resampler = resampler

    def forward(self, id_embeds, last_hidden_state):
        """[M, id_dim] ArcFace embeddings + [M, L, hidden] CLIP states -> [M, num_tokens, dim]."""
        t = self.token_proj(id_embeds).reshape(id_embeds.shape[0], self.num_tokens, -1)
        t = self.token_norm(t)
        return t + self.perceiver_resampler(t, last_hidden_state)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class PhotoMakerModel(nn.Module):
    """The ``id_encoder`` part of a PhotoMaker file, plus its raw ``lora_weights`` dict.

    Submodule names are the checkpoint's (``vision_model``, ``visual_projection``,
    ``visual_projection_2``, ``fuse_module``, v2: ``qformer_perceiver``).
    """

    def __init__(self, sizes: dict, operations=None):
        super().__init__()
        operations = operations or default_ops
        self.version = "v2" if sizes["qformer"] is not None else "v1"
        self.num_tokens = 1 if self.version == "v1" else sizes["qformer"]["num_tokens"]
        self.name = sizes.get("name", "PhotoMaker model")
        self.lora_weights: dict = {}
        hidden = sizes["hidden"]
        self.vision_model = CLIPVisionTransformer(
            hidden,
            hidden // _CLIP_DIM_HEAD,
            sizes["mlp"],
            sizes["depth"],
            sizes["patch"],
            sizes["num_positions"],
            operations,
        )
        self.image_size = self.vision_model.image_size
        self.visual_projection = operations.Linear(hidden, sizes["proj1"], bias=False, device="meta")
        self.visual_projection_2 = operations.Linear(hidden, sizes["proj2"], bias=False, device="meta")
        self.fuse_module = FuseModule(sizes["fuse_dim"], operations)
        self.id_embeds_dim = None
        q = sizes["qformer"]
        if q is not None:
            self.id_embeds_dim = q["id_dim"]
            resampler = FacePerceiverResampler(
                q["dim"],
                q["depth"],
                q["inner"],
                q["inner"] // _RESAMPLER_DIM_HEAD,
                q["ff_inner"],
                q["embedding_dim"],
                q["output_dim"],
                operations,
            )
            self.qformer_perceiver = QFormerPerceiver(
                q["id_dim"], q["id_inner"], q["dim"], q["num_tokens"], resampler, operations
            )

    def id_tokens(self, id_pixels: torch.Tensor, id_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, 3, H, W] (and v2: [B, N, 512]) -> ID tokens [B, N * num_tokens, fuse_dim], image-major."""
        b, n = id_pixels.shape[:2]
        flat = id_pixels.reshape(b * n, *id_pixels.shape[2:])
        last_hidden, pooled = self.vision_model(flat)
        if self.version == "v1":
            tokens = torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)
        else:
            tokens = self.qformer_perceiver(id_embeds.reshape(b * n, -1).to(last_hidden), last_hidden)
        return tokens.reshape(b, n * self.num_tokens, -1)

    def fuse(
        self,
        id_pixels: torch.Tensor,
        prompt_embeds: torch.Tensor,
        class_tokens_mask: torch.Tensor,
        id_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return ``prompt_embeds`` with each class-token position fused with its ID token.

        Positions are paired in ascending order with the ID tokens, image-major (v2: image-major,
        token-minor); only the first ``mask.sum()`` tokens are used, as in the official code.
        One image set (B=1) and a one-row (or 1-D) mask are shared by every prompt row.
        """
        id_pixels, id_embeds = self._check_inputs(id_pixels, prompt_embeds, class_tokens_mask, id_embeds)
        mask = torch.as_tensor(class_tokens_mask, dtype=torch.bool, device=prompt_embeds.device)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        mask = mask.expand(prompt_embeds.shape[0], -1)
        tokens = self.id_tokens(id_pixels, id_embeds).to(prompt_embeds)
        out = prompt_embeds.clone()
        for row in range(prompt_embeds.shape[0]):
            positions = mask[row].nonzero().flatten()
            if positions.numel() == 0:
                log.warning("PhotoMaker: prompt row %d has no class-token positions; left unchanged.", row)
                continue
            row_tokens = tokens[row if tokens.shape[0] > 1 else 0]
            if positions.numel() > row_tokens.shape[0]:
                raise PuLIDError(
                    f"The prompt marks {positions.numel()} class-token positions but {self.name} made only "
                    f"{row_tokens.shape[0]} ID tokens ({id_pixels.shape[1]} image(s) x {self.num_tokens}). "
                    "Expand the class word once per image and per token (v1: N copies, v2: 2N)."
                )
            out[row, positions] = self.fuse_module(
                prompt_embeds[row, positions], row_tokens[: positions.numel()]
            )
        return out

    forward = fuse

    def _check_inputs(self, id_pixels, prompt_embeds, mask, id_embeds):
        if id_pixels.dim() == 4:
            id_pixels = id_pixels.unsqueeze(0)
        if id_pixels.dim() != 5 or id_pixels.shape[1] == 0:
            raise PuLIDError(
                f"PhotoMaker needs ID images shaped [batch, images, 3, H, W], got {tuple(id_pixels.shape)}."
            )
        b, n = id_pixels.shape[:2]
        rows = prompt_embeds.shape[0]
        if b not in (1, rows):
            raise PuLIDError(
                f"{b} ID image sets for {rows} prompt rows: give one set, or one per prompt row."
            )
        fuse_dim = self.fuse_module.layer_norm.normalized_shape[0]
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != fuse_dim:
            raise PuLIDError(
                f"PhotoMaker fuses SDXL prompt embeddings [batch, tokens, {fuse_dim}], got "
                f"{tuple(prompt_embeds.shape)}: use an SDXL model's CLIP."
            )
        mask_shape = tuple(torch.as_tensor(mask).shape)
        if (
            len(mask_shape) not in (1, 2)
            or mask_shape[-1:] != prompt_embeds.shape[1:2]
            or (len(mask_shape) == 2 and mask_shape[0] not in (1, rows))
        ):
            raise PuLIDError(
                f"The class-token mask {mask_shape} does not match the prompt embeddings "
                f"{tuple(prompt_embeds.shape[:2])}."
            )
        if self.version == "v1":
            if id_embeds is not None:
                log.info("%s is PhotoMaker v1, which does not use face embeddings; ignoring them.", self.name)
            return id_pixels, None
        if id_embeds is None:
            raise PuLIDError(
                f"{self.name} is PhotoMaker v2: it needs an InsightFace (buffalo_l) face embedding for each ID "
                "image. Connect a face analysis model, or use photomaker-v1.bin."
            )
        if id_embeds.dim() == 2:
            id_embeds = id_embeds.unsqueeze(0).expand(b, -1, -1)
        if tuple(id_embeds.shape) != (b, n, self.id_embeds_dim):
            raise PuLIDError(
                f"PhotoMaker v2 needs one {self.id_embeds_dim}-d face embedding per ID image: got "
                f"{tuple(id_embeds.shape)} for {n} image(s). Every ID image must show a detectable face."
            )
        return id_pixels, id_embeds


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_photomaker(source, *, operations=None, expect_version: str | None = None) -> PhotoMakerModel:
    """Load ``photomaker-v1.bin`` / ``-v2.bin`` (nested dict), the flat ``id_encoder.``/``lora_weights.``
    safetensors variant, or a bare ``id_encoder`` state dict, from a path or an in-memory dict.

    ``expect_version`` ("v1"/"v2") makes a file of the other version an error naming both.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.path.basename(os.fspath(source))
        obj = read_state_dict(source)
    else:
        name = "the PhotoMaker state dict"
        obj = source
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{name} does not hold a state dict: it is not a PhotoMaker file.")
    id_sd, lora = _split_container(obj, name)
    version = "v2" if any(k.startswith(_QFORMER) for k in id_sd) else "v1"
    if expect_version is not None and version != expect_version:
        raise ModelFileError(
            f"{name} is a PhotoMaker {version} file, but PhotoMaker {expect_version} is needed here: "
            f"choose photomaker-{expect_version}.bin."
        )
    sizes = _infer_sizes(id_sd, name)
    sizes["name"] = name
    model = PhotoMakerModel(sizes, operations)
    key_diff, _ = state_dict_mismatch(id_sd, model.state_dict())  # shapes: load_state_dict below
    if key_diff:
        raise ModelFileError(
            f"{name} is not a complete PhotoMaker {version} id_encoder (it looks like "
            f"{guess_kind(id_sd.keys())}): {key_diff}. "
            "Use the official photomaker-v1.bin or photomaker-v2.bin."
        )
    check_float_weights(id_sd, name, model.state_dict())
    check_float_weights(lora, name, what="LoRA weights")
    try:
        model.load_state_dict(id_sd, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise ModelFileError(
            f"{name} has tensors of unexpected shapes for PhotoMaker {version}: {exc}"
        ) from exc
    model.lora_weights = lora
    model.eval().requires_grad_(False)
    log.info("Loaded %s: PhotoMaker %s, %d ID token(s) per image", name, version, model.num_tokens)
    return model


def _split_container(obj: Mapping, name: str) -> tuple[dict, dict]:
    """(id_encoder state dict, lora_weights dict) from any of the accepted containers."""
    if isinstance(obj.get("id_encoder"), Mapping):
        extra = [k for k in obj if k not in ("id_encoder", "lora_weights")]
        if extra:
            raise ModelFileError(
                f"{name} has unexpected top-level entries {extra[:4]}: a PhotoMaker .bin holds only "
                "'id_encoder' and 'lora_weights'."
            )
        lora = obj.get("lora_weights")
        if lora is not None and not isinstance(lora, Mapping):
            raise ModelFileError(
                f"{name}: its 'lora_weights' entry is a {type(lora).__name__}, not a dict of LoRA tensors. The "
                "file is damaged or hand-made: use the official photomaker-v1.bin or photomaker-v2.bin."
            )
        return dict(obj["id_encoder"]), dict(lora or {})
    if any(k.startswith("id_encoder.") for k in obj):
        id_sd, lora, other = {}, {}, []
        for key, value in obj.items():
            if key.startswith("id_encoder."):
                id_sd[key[len("id_encoder.") :]] = value
            elif key.startswith("lora_weights."):
                lora[key[len("lora_weights.") :]] = value
            else:
                other.append(key)
        if other:
            raise ModelFileError(
                f"{name} mixes PhotoMaker keys with others ({key_diff_message([], other)}): use the "
                "official PhotoMaker file."
            )
        return id_sd, lora
    if any(k.startswith(("vision_model.", "fuse_module.")) for k in obj):
        return dict(obj), {}
    raise ModelFileError(
        f"{name} is not a PhotoMaker file: it looks like {guess_kind(obj.keys())}. "
        "Put photomaker-v1.bin or photomaker-v2.bin in models/photomaker and select it."
    )


def _infer_sizes(sd: Mapping, name: str) -> dict:
    def shape(key, ndim=2):
        if key not in sd:
            raise ModelFileError(
                f"{name} is not a complete PhotoMaker id_encoder (it looks like {guess_kind(sd.keys())}): "
                f"{key_diff_message([key], [])}. Use the official photomaker-v1.bin or photomaker-v2.bin."
            )
        found = tuple(getattr(sd[key], "shape", ()))
        if len(found) != ndim:
            raise ModelFileError(
                f"{name}: {key} has shape {list(found)}, where PhotoMaker has a tensor of {ndim} dimension"
                f"{'s' if ndim != 1 else ''}. The file is damaged or was converted wrongly: use the official "
                "photomaker-v1.bin or photomaker-v2.bin."
            )
        return found

    def count(pattern):
        found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
        return max(found) + 1 if found else 0

    hidden, _, patch, _ = shape("vision_model.embeddings.patch_embedding.weight", 4)
    num_positions = shape("vision_model.embeddings.position_embedding.weight")[0]
    if hidden % _CLIP_DIM_HEAD or math.isqrt(num_positions - 1) ** 2 != num_positions - 1:
        raise ModelFileError(
            f"{name}: the CLIP vision tower has width {hidden} and {num_positions} positions, which is not a "
            "square-image ViT with 64-wide heads. Use the official PhotoMaker file."
        )
    sizes = {
        "hidden": hidden,
        "patch": patch,
        "num_positions": num_positions,
        "depth": count(_LAYER_RE),
        "mlp": shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
        "proj1": shape("visual_projection.weight")[0],
        "proj2": shape("visual_projection_2.weight")[0],
        "fuse_dim": shape("fuse_module.layer_norm.weight", 1)[0],
        "qformer": None,
    }
    if sizes["proj1"] + sizes["proj2"] != sizes["fuse_dim"]:
        raise ModelFileError(
            f"{name}: the two visual projections ({sizes['proj1']} + {sizes['proj2']}) do not add up to the "
            f"fuse width {sizes['fuse_dim']}. The file is not a PhotoMaker id_encoder."
        )
    if any(k.startswith(_QFORMER) for k in sd):
        p = _QFORMER + "perceiver_resampler."
        dim = shape(_QFORMER + "token_norm.weight", 1)[0]
        id_inner, id_dim = shape(_QFORMER + "token_proj.0.weight")
        inner = shape(p + "layers.0.0.to_q.weight")[0]
        if inner % _RESAMPLER_DIM_HEAD:
            raise ModelFileError(
                f"{name}: the QFormer attention width {inner} is not a multiple of {_RESAMPLER_DIM_HEAD}."
            )
        sizes["qformer"] = {
            "dim": dim,
            "id_dim": id_dim,
            "id_inner": id_inner,
            "num_tokens": shape(_QFORMER + "token_proj.2.weight")[0] // dim,
            "depth": count(_RESAMPLER_LAYER_RE),
            "inner": inner,
            "ff_inner": shape(p + "layers.0.1.1.weight")[0],
            "embedding_dim": shape(p + "proj_in.weight")[1],
            "output_dim": shape(p + "proj_out.weight")[0],
        }
    return sizes
