"""Loading a PuLID adapter (SDXL v1 or v1.1, official or IPAdapter-format, or PuLID-FLUX) and running it.

An SDXL PuLID file holds an ID encoder (``id_adapter.*``) and, for each of the 70 SDXL
cross-attention layers, bias-free ID key/value projections
(``id_adapter_attn_layers.{k}.id_to_k/v.weight``, k = 1, 3, ..., 139). The
IPAdapter-format conversions rename these to ``image_proj.*`` and
``ip_adapter.{k}.to_k_ip/to_v_ip.weight``; they are renamed back on load.

A PuLID-FLUX file (``pulid_flux_v0.9.x.safetensors``) holds the v1.1 IDFormer as
``pulid_encoder.*`` and 20 ``PerceiverAttentionCA`` modules as ``pulid_ca.{0..19}.*``
(ToTheBeginning/PuLID ``pulid/pipeline_flux.py`` loads both with ``strict=True``).
"""

from __future__ import annotations

import logging
import operator
import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import ops as default_ops
from .blocks import PerceiverAttention, num_heads
from .encoders import NUM_VIT_SCALES, IDEncoder, IDFormer, Shapes, id_encoder_keys, id_former_keys
from .errors import ModelFileError, PuLIDError
from .flux import NUM_CA
from .io import check_float_weights, flat_keys, guess_kind, key_diff_message, read_state_dict
from .layers import MODULE_INDICES, NUM_LAYERS

log = logging.getLogger(__name__)

ENCODER = "id_adapter."
ATTN = "id_adapter_attn_layers."
IPA_ENCODER = "image_proj."
IPA_ATTN = "ip_adapter."
_KNOWN_FILES = "pulid_v1.bin, pulid_v1.1.safetensors or ip-adapter_pulid_sdxl_fp16.safetensors"
FLUX_ENCODER = "pulid_encoder."
FLUX_CA = "pulid_ca."
_FLUX_FILES = "pulid_flux_v0.9.1.safetensors (or pulid_flux_v0.9.0.safetensors)"
# dim_head of the authors' PerceiverAttentionCA (always 128), so heads = inner width / 128.
FLUX_CA_DIM_HEAD = 128
FLUX_CA_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
    "to_q.weight",
    "to_kv.weight",
    "to_out.weight",
)
_FLUX_CA_KEY = re.compile(r"^pulid_ca\.(\d+)\.")
_FLUX_LAYER_KEY = re.compile(r"^pulid_encoder\.layers\.(\d+)\.")
_IPA_ATTN_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")
_ATTN_KEY = re.compile(r"^id_adapter_attn_layers\.(\d+)\.id_to_([kv])\.weight$")
_LAYER_KEY = re.compile(r"^id_adapter\.layers\.(\d+)\.")

# Where a file that is not PuLID belongs, by guess_kind's description.
_WHERE_IT_BELONGS = {
    "PhotoMaker": "load it with the PhotoMaker loader (models/photomaker)",
    "EVA-CLIP": "it is the EVA-CLIP vision tower, loaded by the EVA-CLIP loader",
    "checkpoint": "load it with Load Checkpoint (models/checkpoints)",
    "diffusion model": "load it with Load Diffusion Model (models/diffusion_models)",
    "LoRA": "load it with a LoRA loader (models/loras)",
    "IP-Adapter": "load it with an IPAdapter / InstantID loader",
}


class IDKV(nn.Module):
    """One cross-attention layer's ID key/value projections (bias-free, context_dim -> C)."""

    def __init__(self, context_dim: int, width: int, operations):
        super().__init__()
        self.id_to_k = operations.Linear(context_dim, width, bias=False, device="meta")
        self.id_to_v = operations.Linear(context_dim, width, bias=False, device="meta")


class _IDEncoding(nn.Module):
    """``encode`` / ``encode_uncond`` over the ID encoder in ``self.encoder`` (SDXL and FLUX)."""

    version: str

    @property
    def encoder(self) -> nn.Module:
        raise NotImplementedError

    def _check_inputs(self, id_cond: torch.Tensor, id_vit_hidden) -> int:
        """Validate shapes; returns the number of reference images."""
        enc = self.encoder
        if (
            not isinstance(id_cond, torch.Tensor)
            or id_cond.ndim not in (2, 3)
            or id_cond.shape[-1] != enc.width
        ):
            raise PuLIDError(
                f"id_cond must be [batch, {enc.width}] (ArcFace + EVA-CLIP pooled), or [batch, images, "
                f"{enc.width}] for v1.1 and FLUX; got {tuple(getattr(id_cond, 'shape', ()))}."
            )
        num_images = id_cond.shape[1] if id_cond.ndim == 3 else 1
        if isinstance(enc, IDEncoder) and num_images != 1:
            raise PuLIDError(
                f"The v1 ID encoder takes one image at a time (id_cond {tuple(id_cond.shape)}): encode each "
                "image and combine the ID tokens."
            )
        if not isinstance(id_vit_hidden, Sequence) or len(id_vit_hidden) != NUM_VIT_SCALES:
            raise PuLIDError(f"id_vit_hidden must be a list of {NUM_VIT_SCALES} EVA-CLIP hidden states.")
        for i, h in enumerate(id_vit_hidden):
            if h.ndim != 3 or h.shape[0] != id_cond.shape[0] or h.shape[-1] != enc.vit_dim:
                raise PuLIDError(
                    f"id_vit_hidden[{i}] must be [{id_cond.shape[0]}, tokens, {enc.vit_dim}]; got {tuple(h.shape)}."
                )
        return num_images

    def encode(self, id_cond: torch.Tensor, id_vit_hidden) -> torch.Tensor:
        """ID tokens [B, num_tokens, context_dim], computed in id_cond's dtype.

        v1.1 and FLUX also take N images at once: id_cond [B, N, 1280] and each hidden
        state holding the N images' tokens one after the other ([B, 577*N, 1024]).
        """
        num_images = self._check_inputs(id_cond, id_vit_hidden)
        if isinstance(self.encoder, IDEncoder) and id_cond.ndim == 3:
            id_cond = id_cond[:, 0]
        hidden = [h.to(device=id_cond.device, dtype=id_cond.dtype) for h in id_vit_hidden]
        if isinstance(self.encoder, IDFormer) and any(h.shape[1] != hidden[0].shape[1] for h in hidden):
            raise PuLIDError(f"The {NUM_VIT_SCALES} hidden states must have the same number of tokens.")
        log.debug("PuLID %s encode: %d image(s), batch %d", self.version, num_images, id_cond.shape[0])
        return self.encoder(id_cond, hidden)

    def encode_uncond(self, id_cond: torch.Tensor, id_vit_hidden) -> torch.Tensor:
        """The negative ID tokens: the encoder applied to all-zero inputs (not zero, the
        biases make it non-zero). Only the shapes, dtype and device of the arguments are
        used; as in the official v1.1 and FLUX pipelines, several images give a single zero
        image."""
        num_images = self._check_inputs(id_cond, id_vit_hidden)
        batch = id_cond.shape[0]
        zeros = id_cond.new_zeros(batch, id_cond.shape[-1])
        hidden = []
        for h in id_vit_hidden:
            if h.shape[1] % num_images:
                raise PuLIDError(
                    f"A hidden state of {h.shape[1]} tokens cannot hold {num_images} images' tokens."
                )
            hidden.append(zeros.new_zeros(batch, h.shape[1] // num_images, h.shape[-1]))
        return self.encoder(zeros, hidden)


class PuLIDModel(_IDEncoding):
    """The ID encoder and the per-layer ID K/V projections of one SDXL PuLID checkpoint.

    Parameter names equal the official checkpoint keys. Weights keep the file's dtype;
    every computation runs in the dtype of its input.
    """

    def __init__(self, version: str, shapes: Mapping, depth: int = 0, operations=None):
        super().__init__()
        operations = operations or default_ops
        shapes = Shapes.of(shapes)
        enc_shapes = shapes.sub(ENCODER)
        self.version = version
        if version == "v1":
            self.id_adapter = IDEncoder(enc_shapes, operations)
        else:
            self.id_adapter = IDFormer(enc_shapes, depth, operations)
        self.context_dim = self.id_adapter.context_dim
        self.num_tokens = self.id_adapter.num_tokens
        self.layer_widths = {k: shapes.dims(f"{ATTN}{k}.id_to_k.weight", 2)[0] for k in MODULE_INDICES}
        self.id_adapter_attn_layers = nn.ModuleDict(
            {str(k): IDKV(self.context_dim, c, operations) for k, c in self.layer_widths.items()}
        )

    @property
    def encoder(self) -> nn.Module:
        return self.id_adapter

    def id_kv(self, layer: int, tokens: torch.Tensor, num_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s ID keys and values [B, T + num_zero, C], in tokens' dtype.

        ``layer`` is the checkpoint's odd module index (1..139, diffusers order; see
        :mod:`pulid_core.layers`). The ``num_zero`` zero tokens appended after the ID
        tokens project to exactly zero (bias-free), so they are appended after projecting.
        """
        if layer not in self.layer_widths:
            raise PuLIDError(
                f"PuLID has no cross-attention layer {layer!r}; layers are the odd numbers 1..139."
            )
        if tokens.ndim != 3 or tokens.shape[-1] != self.context_dim:
            raise PuLIDError(
                f"ID tokens must be [batch, tokens, {self.context_dim}]; got {tuple(tokens.shape)}."
            )
        if int(num_zero) != num_zero or num_zero < 0:
            raise PuLIDError(f"num_zero must be a whole number >= 0; got {num_zero!r}.")
        kv = self.id_adapter_attn_layers[str(layer)]
        k, v = kv.id_to_k(tokens), kv.id_to_v(tokens)
        if num_zero:
            pad = k.new_zeros(k.shape[0], int(num_zero), k.shape[-1])
            k, v = torch.cat((k, pad), dim=1), torch.cat((v, pad), dim=1)
        return k, v

    def pulid_ca(self, *args, **kwargs):
        raise PuLIDError(
            f"This is an SDXL PuLID {self.version} adapter: it has no FLUX cross-attention modules. "
            f"Load {_FLUX_FILES} for FLUX models."
        )


class FluxCrossAttentions(nn.ModuleList):
    """PuLID-FLUX's 20 ``PerceiverAttentionCA`` modules; called as ``(index, id_tokens, img)``."""

    def __init__(self, modules, ca_dim: int, kv_dim: int):
        super().__init__(modules)
        self.ca_dim = ca_dim
        self.kv_dim = kv_dim

    def forward(self, index: int, id_tokens: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """The term the authors add to the image stream (before the ID weight): CA module
        ``index`` with the image tokens ``img`` [B, N, ca_dim] as queries attending to the ID
        tokens [B or 1, T, kv_dim]. Computed in img's dtype and on its device."""
        try:
            position = -1 if isinstance(index, bool) else operator.index(index)
        except TypeError:
            position = -1
        if not 0 <= position < len(self):
            raise PuLIDError(f"PuLID-FLUX has cross-attention modules 0..{len(self) - 1}; got {index!r}.")
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[-1] != self.ca_dim:
            raise PuLIDError(
                f"PuLID-FLUX's cross-attention takes image tokens [batch, tokens, {self.ca_dim}] (the FLUX.1 "
                f"image stream); got {tuple(getattr(img, 'shape', ()))}. Use it with a FLUX.1 model."
            )
        if (
            not isinstance(id_tokens, torch.Tensor)
            or id_tokens.ndim != 3
            or id_tokens.shape[-1] != self.kv_dim
            or id_tokens.shape[0] not in (1, img.shape[0])
        ):
            raise PuLIDError(
                f"PuLID-FLUX ID tokens must be [1 or {img.shape[0]}, tokens, {self.kv_dim}] for {img.shape[0]} "
                f"image row(s); got {tuple(getattr(id_tokens, 'shape', ()))}."
            )
        id_tokens = id_tokens.to(device=img.device, dtype=img.dtype).expand(img.shape[0], -1, -1)
        return self[position](id_tokens, img)


class PuLIDFluxModel(_IDEncoding):
    """PuLID-FLUX: the v1.1 IDFormer (``pulid_encoder``) and 20 cross-attention modules
    (``pulid_ca``), parameter names equal to the checkpoint keys. Weights keep the file's
    dtype; every computation runs in the dtype of its input."""

    version = "flux"

    def __init__(self, shapes: Mapping, depth: int, operations=None):
        super().__init__()
        operations = operations or default_ops
        shapes = Shapes.of(shapes)
        enc_shapes = shapes.sub(FLUX_ENCODER)
        self.pulid_encoder = IDFormer(enc_shapes, depth, operations)
        self.context_dim = self.pulid_encoder.context_dim
        self.num_tokens = self.pulid_encoder.num_tokens
        ca = FLUX_CA + "0."
        kv_dim = shapes.dims(ca + "norm1.weight", 1)[0]
        self.ca_dim = shapes.dims(ca + "norm2.weight", 1)[0]
        inner = shapes.dims(ca + "to_q.weight", 2)[0]
        if kv_dim != self.context_dim:
            raise ModelFileError(
                f"its cross-attention modules take {kv_dim}-wide ID tokens but its encoder makes "
                f"{self.context_dim}-wide ones"
            )
        heads = num_heads(inner, FLUX_CA_DIM_HEAD, "the cross-attention's inner width")
        self.pulid_ca = FluxCrossAttentions(
            [
                PerceiverAttention(self.ca_dim, inner, heads, operations, kv_dim=kv_dim, with_latents=False)
                for _ in range(NUM_CA)
            ],
            self.ca_dim,
            kv_dim,
        )
        self.num_ca = len(self.pulid_ca)

    @property
    def encoder(self) -> nn.Module:
        return self.pulid_encoder

    def _sdxl_only(self, what: str):
        raise PuLIDError(
            f"{what} belongs to SDXL PuLID adapters; this is a PuLID-FLUX adapter, which works only on "
            f"FLUX.1 models. For SDXL load {_KNOWN_FILES}."
        )

    def id_kv(self, *args, **kwargs):
        self._sdxl_only("id_kv (the SDXL cross-attention ID keys/values)")

    @property
    def layer_widths(self):
        self._sdxl_only("layer_widths (the 70 SDXL cross-attention layers)")


def load_pulid(source, *, operations=None, dtype: torch.dtype | None = None) -> PuLIDModel | PuLIDFluxModel:
    """Load a PuLID adapter from a file path or a state dict.

    Accepts the official ``pulid_v1.bin`` / ``pulid_v1.1.safetensors``, the
    IPAdapter-format conversions (flat, or the nested ``{"image_proj", "ip_adapter"}``
    .bin form) and ``pulid_flux_v0.9.x.safetensors`` (``.version == "flux"``).
    Sizes are read from the weights; the version from the encoder keys.
    Tensors are used as loaded (no copy) unless ``dtype`` asks for a cast.
    ``operations`` supplies Linear/LayerNorm (``comfy.ops.manual_cast`` in ComfyUI).
    """
    if isinstance(source, Mapping):
        name, state = "The PuLID state dict", source
    else:
        name, state = os.path.basename(os.fspath(source)), read_state_dict(source)
        if not isinstance(state, Mapping):
            raise ModelFileError(f"{name} does not hold a state dict (it holds a {type(state).__name__}).")
    if any(isinstance(k, str) and k.startswith((FLUX_ENCODER, FLUX_CA)) for k in state):
        state = _flux_state(state, name)
        depth = _check_flux_keys(state, name)
        version, files = "flux", _FLUX_FILES
        build = lambda shapes: PuLIDFluxModel(shapes, depth, operations)  # noqa: E731
    else:
        state, ipa = _official_layout(state, name)
        version, depth = _check_keys(state, name, ipa)
        files = _KNOWN_FILES
        build = lambda shapes: PuLIDModel(version, shapes, depth, operations)  # noqa: E731
    label = "PuLID-FLUX" if version == "flux" else f"PuLID {version}"
    shapes = Shapes({k: tuple(v.shape) for k, v in state.items()})
    try:
        model = build(shapes)
    except ModelFileError as exc:
        raise ModelFileError(
            f"{name} is not a usable {label} file: {exc}. The file is damaged or was converted wrongly: use "
            f"the original {files}."
        ) from exc
    check_float_weights(state, name, model.state_dict())
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise ModelFileError(
            f"{name} has {label} keys but tensors of unexpected shapes ({details}). The file is "
            f"damaged or was converted wrongly: use the original {files}."
        ) from exc
    model.requires_grad_(False)
    model.eval()
    log.info(
        "Loaded %s: %s, %d ID tokens of width %d, dtype %s",
        name,
        label,
        model.num_tokens,
        model.context_dim,
        next(iter(state.values())).dtype,
    )
    return model


def _flux_state(state: Mapping, name: str) -> dict:
    """The flat PuLID-FLUX state dict, refusing other PuLID layouts mixed into it."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{name} holds entries that are not tensors ({', '.join(map(str, bad[:4]))}).")
    sdxl = [k for k in state if k.startswith((ENCODER, ATTN, IPA_ENCODER, IPA_ATTN))]
    if sdxl:
        raise ModelFileError(
            f"{name} mixes PuLID-FLUX keys (pulid_encoder.*, pulid_ca.*) with SDXL PuLID keys "
            f"({', '.join(sorted(sdxl)[:2])}, ...): it was merged or converted wrongly. Use the original "
            f"{_FLUX_FILES}."
        )
    return dict(state)


def _check_flux_keys(state: Mapping, name: str) -> int:
    """Check a PuLID-FLUX state dict's keys strictly; returns the IDFormer depth."""
    keys = set(state)
    if not any(k.startswith(FLUX_ENCODER) for k in keys):
        raise ModelFileError(
            f"{name} holds only PuLID-FLUX's cross-attention modules (pulid_ca.*) and no ID encoder "
            f"(pulid_encoder.*): use the complete {_FLUX_FILES}."
        )
    found = {int(m[1]) for m in map(_FLUX_CA_KEY.match, keys) if m}
    if not found:
        raise ModelFileError(
            f"{name} holds only a PuLID-FLUX ID encoder (pulid_encoder.*), without the {NUM_CA} "
            f"cross-attention modules (pulid_ca.*): use the complete {_FLUX_FILES}."
        )
    missing_ca = [i for i in range(NUM_CA) if i not in found]
    if missing_ca:
        shown = ", ".join(map(str, missing_ca[:8])) + (", ..." if len(missing_ca) > 8 else "")
        raise ModelFileError(
            f"{name} has {NUM_CA - len(missing_ca)} of PuLID-FLUX's {NUM_CA} cross-attention "
            f"modules (missing pulid_ca.{shown}): the file is incomplete. Download {_FLUX_FILES} again."
        )
    layer_ids = {int(m[1]) for m in map(_FLUX_LAYER_KEY.match, keys) if m}
    depth = max(layer_ids) + 1 if layer_ids else NUM_VIT_SCALES
    expected = {FLUX_ENCODER + k for k in id_former_keys(depth)}
    expected |= {f"{FLUX_CA}{i}.{k}" for i in range(NUM_CA) for k in FLUX_CA_KEYS}
    missing, unexpected = expected - keys, keys - expected
    if missing or unexpected:
        raise ModelFileError(
            f"{name} looks like a PuLID-FLUX file but its keys do not match: "
            f"{key_diff_message(missing, unexpected)}. The file is incomplete or was converted wrongly: "
            f"use the original {_FLUX_FILES}."
        )
    return depth


def _not_pulid(name: str, keys) -> ModelFileError:
    kind = guess_kind(keys)
    hint = next((h for word, h in _WHERE_IT_BELONGS.items() if word in kind), None)
    return ModelFileError(
        f"{name} is not a PuLID model: it looks like {kind}"
        + (f" ({hint})" if hint else "")
        + f". Choose a PuLID file such as {_KNOWN_FILES} (SDXL) or {_FLUX_FILES} (FLUX)."
    )


def _official_layout(state: Mapping, name: str) -> tuple[dict, bool]:
    """Flatten the nested IPAdapter .bin form and rename IPAdapter-format keys to the official
    ones; also returns whether the file used the IPAdapter-format names."""
    if any(isinstance(v, Mapping) for v in state.values()):
        if not set(state) <= {"image_proj", "ip_adapter"}:
            raise _not_pulid(name, flat_keys(state))
        state = {f"{group}.{k}": v for group, sub in state.items() for k, v in sub.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{name} holds entries that are not tensors ({', '.join(map(str, bad[:4]))}).")
    keys = list(state)
    official = any(k.startswith((ENCODER, ATTN)) for k in keys)
    ipa = any(k.startswith((IPA_ENCODER, IPA_ATTN)) for k in keys)
    if official and ipa:
        raise ModelFileError(
            f"{name} mixes the official (id_adapter.*) and IPAdapter-format (image_proj.*, ip_adapter.*) "
            f"key layouts: it was merged or converted wrongly. Use an original {_KNOWN_FILES}."
        )
    if not (official or ipa):
        raise _not_pulid(name, keys)
    if official:
        return dict(state), False
    renamed = {}
    for key, value in state.items():
        match = _IPA_ATTN_KEY.match(key)
        if match:
            key = f"{ATTN}{match[1]}.id_to_{match[2]}.weight"
        elif key.startswith(IPA_ENCODER):
            key = ENCODER + key[len(IPA_ENCODER) :]
        renamed[key] = value
    return renamed, True


def _file_key(key: str, ipa: bool) -> str:
    """An official key as the file spells it, for messages about IPAdapter-format files."""
    if not ipa:
        return key
    match = _ATTN_KEY.match(key)
    if match:
        return f"{IPA_ATTN}{match[1]}.to_{match[2]}_ip.weight"
    return IPA_ENCODER + key[len(ENCODER) :] if key.startswith(ENCODER) else key


def _check_keys(state: Mapping, name: str, ipa: bool) -> tuple[str, int]:
    """Detect the version and check every key strictly; returns (version, IDFormer depth).

    ``ipa``: the file uses the IPAdapter-format names, which messages then quote."""
    keys = set(state)
    is_v1 = any(k.startswith((ENCODER + "body.", ENCODER + "mapping_patch_")) for k in keys)
    is_v11 = any(
        k.startswith((ENCODER + "latents", ENCODER + "layers.", ENCODER + "id_embedding_mapping."))
        for k in keys
    )
    if is_v1 and is_v11:
        raise ModelFileError(
            f"{name} mixes v1 IDEncoder keys (body, mapping_patch_*) and v1.1 IDFormer keys (latents, "
            f"layers, id_embedding_mapping): it was merged wrongly. Use an original {_KNOWN_FILES}."
        )
    if not (is_v1 or is_v11):
        if any(k.startswith(ENCODER) for k in keys):
            raise _not_pulid(name, [_file_key(k, ipa) for k in keys])
        raise ModelFileError(
            f"{name} holds only PuLID's ID attention weights and no ID encoder (id_adapter.* / image_proj.*): "
            f"use the complete {_KNOWN_FILES}."
        )
    attn_keys = {k for k in keys if k.startswith(ATTN)}
    missing_layers = [
        k
        for k in MODULE_INDICES
        if not {f"{ATTN}{k}.id_to_k.weight", f"{ATTN}{k}.id_to_v.weight"} <= attn_keys
    ]
    if not attn_keys:
        raise ModelFileError(
            f"{name} holds only a PuLID ID encoder, without the ID attention weights of the "
            f"{NUM_LAYERS} cross-attention layers: use the complete {_KNOWN_FILES}."
        )
    if missing_layers:
        shown = ", ".join(map(str, missing_layers[:8])) + (", ..." if len(missing_layers) > 8 else "")
        raise ModelFileError(
            f"{name} has ID attention weights for {NUM_LAYERS - len(missing_layers)} of the {NUM_LAYERS} SDXL "
            f"cross-attention layers (missing layer {shown}): the file is incomplete or not for SDXL. "
            f"Download it again."
        )
    if is_v1:
        version, depth, enc = "v1", 0, id_encoder_keys()
    else:
        layer_ids = {int(m[1]) for m in map(_LAYER_KEY.match, keys) if m}
        # With no perceiver layer at all, expect the minimum (one per ViT scale) to list what is missing.
        depth = max(layer_ids) + 1 if layer_ids else NUM_VIT_SCALES
        version, enc = "v1.1", id_former_keys(depth)
    expected = {ENCODER + k for k in enc}
    expected |= {f"{ATTN}{k}.id_to_{p}.weight" for k in MODULE_INDICES for p in "kv"}
    missing, unexpected = expected - keys, keys - expected
    if missing or unexpected:
        diff = key_diff_message([_file_key(k, ipa) for k in missing], [_file_key(k, ipa) for k in unexpected])
        raise ModelFileError(
            f"{name} looks like a PuLID {version} file but its keys do not match: {diff}. The file is "
            f"incomplete or was converted wrongly: use the original {_KNOWN_FILES}."
        )
    return version, depth
