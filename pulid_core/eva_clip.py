"""EVA02-CLIP-L-14-336 vision tower: loading either published format into timm's Eva.

PuLID feeds its ID encoder with the pooled CLIP embedding and five raw hidden states of
this tower. timm's ``Eva`` with the EVA-CLIP options (separate q/k/v, no k bias, SwiGLU
with an inner LayerNorm, LayerNorm before the attention output projection, 2-D RoPE,
CLS pooling into a Linear head) is the same network as the authors' ``EVAVisionTransformer``,
so the only work here is renaming keys and reading the sizes from the file.

Accepted layouts (any other top-level keys, e.g. the text tower, are ignored):

- official EVA-CLIP (``EVA02_CLIP_L_336_psz14_s6B.pt``): ``visual.blocks.0.attn.q_bias``,
  ``visual.blocks.0.mlp.w1.weight``, ... , with or without the ``visual.`` prefix;
- open_clip ``EVA02-L-14-336`` / timm names: ``visual.trunk.blocks.0.attn.q_proj.bias``,
  ``visual.trunk.blocks.0.mlp.fc1_g.weight``, ... , with or without ``visual.trunk.``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from .errors import ModelFileError, PuLIDError
from .io import check_float_weights, guess_kind, key_diff_message, read_state_dict, state_dict_mismatch

log = logging.getLogger(__name__)

# EVA-CLIP uses the OpenAI CLIP normalisation (its pretrained cfg leaves mean/std unset).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The official tower collects its hidden states before blocks 4, 8, 12, 16, 20, i.e. after
# these blocks, whatever its depth; PuLID's encoders consume exactly these five.
HIDDEN_BLOCKS = (3, 7, 11, 15, 19)

# EVA-CLIP architecture constants: 64-wide heads, and RoPE frequencies defined on the
# 16x16 grid of 224-pixel pre-training (``pt_hw_seq_len``) and interpolated to the real grid.
HEAD_WIDTH = 64
ROPE_REF_GRID = (16, 16)

# Official EVA-CLIP names -> timm names (the same renaming timm's checkpoint_filter_fn does).
_OFFICIAL_TO_TIMM = (
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".mlp.w3.", ".mlp.fc2."),
)

# Keys the sizes are read from, in timm naming.
_SIZE_KEYS = (
    "pos_embed",
    "patch_embed.proj.weight",
    "blocks.0.mlp.fc1_g.weight",
    "head.weight",
)

_EXPECTED_FILES = (
    "EVA02_CLIP_L_336_psz14_s6B.pt (QuanSun/EVA-CLIP on Hugging Face) or open_clip's "
    "EVA02-L-14-336 weights (timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k)"
)


class EvaClip(nn.Module):
    """EVA02-CLIP vision tower for PuLID: a timm ``Eva`` trunk plus the facts the face pipeline needs."""

    def __init__(self, trunk: nn.Module, image_size: int):
        super().__init__()
        self.trunk = trunk
        self.image_size = image_size
        self.mean = OPENAI_CLIP_MEAN
        self.std = OPENAI_CLIP_STD

    @property
    def dtype(self) -> torch.dtype:
        return self.trunk.patch_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.trunk.patch_embed.proj.weight.device

    @device.setter
    def device(self, _value) -> None:
        # ComfyUI's ModelPatcher records the device on the model; the weights already say it.
        pass

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = self.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
            raise PuLIDError(
                f"EVA-CLIP expects normalised RGB pixels of shape [B, 3, {size}, {size}], got "
                f"{list(pixels.shape)}. Resize the aligned face to {size}x{size} first."
            )
        x = pixels.to(device=self.device, dtype=self.dtype)
        final, hidden = self.trunk.forward_intermediates(
            x, indices=list(HIDDEN_BLOCKS), return_prefix_tokens=True, norm=False, output_fmt="NLC"
        )
        # timm splits CLS off each hidden state; PuLID wants it back in front.
        hidden = [torch.cat((prefix, spatial), dim=1) for spatial, prefix in hidden]
        pooled = self.trunk.forward_head(final)
        return pooled, hidden

    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pixels ``[B, 3, S, S]`` (already normalised) -> (pooled ``[B, D_out]`` before the L2
        normalisation PuLID applies, 5 x ``[B, 1 + (S/p)^2, D]`` raw residual stream after blocks
        3, 7, 11, 15, 19 with CLS first and no final norm). Runs in the weights' dtype."""
        return self(pixels)


def load_eva_clip(source, *, dtype: torch.dtype | None = None) -> EvaClip:
    """Build an :class:`EvaClip` from a file path or a state dict in either published layout.

    Sizes (width, depth, patch, image size, MLP width, output width) come from the tensors,
    so smaller towers with the same key structure load too. Tensors are used as they are
    (no copy) unless ``dtype`` asks for a cast.
    """
    if isinstance(source, Mapping):
        name = "the given EVA-CLIP state dict"
        raw = source
    else:
        name = os.path.basename(os.fspath(source))
        raw = read_state_dict(source)
        if not isinstance(raw, Mapping):
            raise ModelFileError(
                f"{name} holds a {type(raw).__name__}, not a dict of weights. Use {_EXPECTED_FILES}."
            )
    flat = _flatten(raw)
    sd = _trunk_state_dict(flat, name)
    check_float_weights(sd, name)  # before any cast: every tensor of the tower is a float
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    args = _architecture(sd, name)
    trunk = _build_trunk(args, sd, name)
    log.info(
        "Loaded EVA-CLIP from %s: width %d, depth %d, image %d, dtype %s",
        name, args["embed_dim"], args["depth"], args["img_size"], trunk.patch_embed.proj.weight.dtype,
    )
    return EvaClip(trunk, args["img_size"])


def _flatten(obj, prefix: str = "") -> dict:
    """Nested dicts ({'state_dict': {...}}) become dotted keys; non-tensor entries are dropped."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


def _find_prefix(keys, name: str) -> str:
    """The prefix in front of the vision trunk's keys ('visual.', 'visual.trunk.', '', ...)."""
    anchor = "blocks.0.norm1.weight"
    candidates = [k[: -len(anchor)] for k in keys if k.endswith(anchor)]
    # 'resblocks.0...' (a text tower) is not a match: the prefix must end at a dot.
    candidates = [p for p in candidates if (p == "" or p.endswith(".")) and p + "pos_embed" in keys]
    if not candidates:
        raise ModelFileError(
            f"{name} is not an EVA02-CLIP vision tower: it looks like {guess_kind(keys)}. "
            f"PuLID needs {_EXPECTED_FILES}; put it in the EVA-CLIP model folder and select it."
        )
    # A full CLIP file may hold other towers with ViT blocks; the image tower is 'visual'.
    candidates.sort(key=lambda p: ("visual" not in p, len(p)))
    return candidates[0]


def _trunk_state_dict(flat: dict, name: str) -> dict:
    keys = set(flat)
    prefix = _find_prefix(keys, name)
    sd = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        # RoPE tables are recomputed at build time (non-persistent in timm).
        if key.startswith("rope.") or ".rope." in key:
            continue
        for official, timm_name in _OFFICIAL_TO_TIMM:
            key = key.replace(official, timm_name)
        sd[key] = value
    if prefix.endswith("trunk."):
        # open_clip keeps any projection beside the trunk; this loader has none to put it in.
        outer = prefix[: -len("trunk.")]
        stray = sorted(k for k in keys if k.startswith(outer) and not k.startswith(prefix))
        if stray:
            raise ModelFileError(
                f"{name} has vision-tower keys outside the timm trunk, which an EVA02-CLIP-L-14-336 "
                f"file does not have: {key_diff_message([], stray)}. Use {_EXPECTED_FILES}."
            )
    return sd


def _architecture(sd: dict, name: str) -> dict:
    missing = [k for k in _SIZE_KEYS if k not in sd]
    if missing:
        raise ModelFileError(
            f"{name} is an incomplete or unsupported EVA-CLIP vision tower: "
            f"{key_diff_message(missing, [])}. Use {_EXPECTED_FILES}."
        )
    pos_tokens, dim = sd["pos_embed"].shape[-2:]
    patch_w = sd["patch_embed.proj.weight"]
    patch = patch_w.shape[-1]
    grid = math.isqrt(pos_tokens - 1)
    block_ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1
    problems = []
    if grid * grid != pos_tokens - 1:
        problems.append(f"pos_embed has {pos_tokens} tokens, not 1 class token plus a square grid")
    if dim % HEAD_WIDTH:
        problems.append(f"width {dim} is not a multiple of the {HEAD_WIDTH}-wide EVA-CLIP heads")
    if depth <= max(HIDDEN_BLOCKS):
        problems.append(
            f"it has {depth} transformer blocks, but PuLID reads the output of block "
            f"{max(HIDDEN_BLOCKS) + 1} (EVA02-CLIP-L has 24); the file is truncated or a smaller model"
        )
    if problems:
        raise ModelFileError(
            f"{name} cannot be used as PuLID's EVA-CLIP: {'; '.join(problems)}. Use {_EXPECTED_FILES}."
        )
    hidden = sd["blocks.0.mlp.fc1_g.weight"].shape[0]
    return {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": patch_w.shape[1],
        "embed_dim": dim,
        "depth": depth,
        "num_heads": dim // HEAD_WIDTH,
        # timm sizes the MLP as int(dim * mlp_ratio); the half keeps float rounding from losing a unit.
        "mlp_ratio": (hidden + 0.5) / dim,
        "num_classes": sd["head.weight"].shape[0],
        "global_pool": "token",
        "qkv_fused": False,
        "swiglu_mlp": True,
        "scale_mlp": True,
        "scale_attn_inner": True,
        "use_rot_pos_emb": True,
        "ref_feat_shape": ROPE_REF_GRID,
    }


@functools.cache
def _trunk_class():
    """timm's Eva without its random initialisation, which would be thrown away (and is slow
    even on the meta device)."""
    from timm.models.eva import Eva

    class EvaTrunk(Eva):
        def init_weights(self, needs_reset: bool = True):
            return None

    return EvaTrunk


def _build_trunk(args: dict, sd: dict, name: str) -> nn.Module:
    trunk_class = _trunk_class()
    # On the meta device nothing is allocated; the file's tensors are assigned afterwards.
    with torch.device("meta"):
        trunk = trunk_class(**args)
    key_diff, wrong_shapes = state_dict_mismatch(sd, trunk.state_dict())
    if key_diff:
        raise ModelFileError(
            f"{name} does not match the EVA02-CLIP vision tower its sizes describe (width "
            f"{args['embed_dim']}, {args['depth']} blocks): {key_diff}. "
            f"Use {_EXPECTED_FILES}."
        )
    wrong = [f"{k} is {list(got)}, expected {list(s)}" for k, got, s in wrong_shapes]
    if wrong:
        raise ModelFileError(
            f"{name} has EVA-CLIP tensors of the wrong shape for a width-{args['embed_dim']} tower: "
            f"{'; '.join(wrong[:4])}{'; ...' if len(wrong) > 4 else ''}. The file is damaged or "
            f"mixes models; use {_EXPECTED_FILES}."
        )
    trunk.load_state_dict(sd, strict=True, assign=True)
    # The RoPE tables are non-persistent buffers computed in __init__, so they are still on
    # meta; take them from a block-less twin built on the CPU (cheap: no transformer blocks).
    trunk.rope = trunk_class(**{**args, "depth": 0, "num_classes": 0}).rope.to(trunk.pos_embed.device)
    leftover = [n for n, b in trunk.named_buffers() if b.is_meta]
    if leftover:
        raise PuLIDError(
            f"The installed timm builds EVA with buffers this loader does not know ({', '.join(leftover)}); "
            "install timm 1.0.x as listed in requirements.txt."
        )
    trunk.requires_grad_(False)
    return trunk.eval()
