"""Reading weight files safely, and telling the user what a wrong file looks like.

Every loader of the pack goes through :func:`read_state_dict`, so the rules hold
everywhere: pickles only through ``torch.load(weights_only=True)``, dtypes kept,
and a truncated, corrupt or code-carrying file gets a message naming the file.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping

import torch

from .errors import ModelFileError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_state_dict(path: str | os.PathLike) -> dict:
    """Load a ``.safetensors`` or torch pickle file onto the CPU, dtypes unchanged.

    Returns the object stored in the file (a flat dict of tensors, or for some
    formats a nested dict such as PhotoMaker's ``{"id_encoder", "lora_weights"}``).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"Model file not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise ModelFileError(f"{name} is empty (0 bytes): delete it and download it again.")
    if path.lower().endswith((".safetensors", ".sft")):
        return _read_safetensors(path, name, size)
    return _read_pickle(path, name, size)


def _read_safetensors(path: str, name: str, size: int) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{name} ({size:,} bytes) is not a readable safetensors file ({exc}). It is probably an "
            "incomplete download: delete it and download it again."
        ) from exc


def _read_pickle(path: str, name: str, size: int):
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Legacy (non-zip) pickles cannot be memory-mapped; retry plainly.
            if "mmap" not in str(exc) and "zip" not in str(exc).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"Refused to load {name}: it is a pickle that asks to run code or build objects other "
            f"than tensors ({_first_line(exc)}). Only plain weight files are loaded. Use the "
            "safetensors version of this model, or the official file from its publisher."
        ) from exc
    except (EOFError, zipfile.BadZipFile) as exc:
        raise ModelFileError(
            f"{name} ({size:,} bytes) is truncated or corrupt ({_first_line(exc) or type(exc).__name__}): "
            "delete it and download it again."
        ) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "PytorchStreamReader" in text or "failed finding central directory" in text or "EOF" in text:
            raise ModelFileError(
                f"{name} ({size:,} bytes) is truncated or corrupt ({_first_line(exc)}): delete it and "
                "download it again."
            ) from exc
        raise ModelFileError(f"Could not read {name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def flat_keys(obj) -> list[str]:
    """All tensor keys of a (possibly nested) state dict, nested ones joined with dots."""
    out: list[str] = []
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(value, Mapping):
                out.extend(f"{key}.{sub}" for sub in flat_keys(value))
            else:
                out.append(str(key))
    return out


def guess_kind(keys) -> str:
    """A short human description of what a state dict looks like, for error messages."""
    keys = list(keys)
    has = lambda *frags: any(all(f in k for f in frags) for k in keys)  # noqa: E731
    if has("qformer_perceiver"):
        return "a PhotoMaker v2 file"
    if has("fuse_module") or (has("id_encoder") and has("lora_weights")):
        return "a PhotoMaker file"
    if has("id_adapter_attn_layers") or has("id_adapter."):
        return "an official PuLID file"
    if has("image_proj.") and has("ip_adapter.") and (has("mapping_patch_") or has("id_embedding_mapping")):
        return "a PuLID IPAdapter-format file"
    if has("image_proj.") and has("ip_adapter."):
        return "an IP-Adapter / IPAdapter FaceID / InstantID file"
    if has("model.diffusion_model.") and has("conditioner.embedders"):
        return "an SDXL checkpoint"
    if has("model.diffusion_model."):
        return "a Stable Diffusion checkpoint"
    if has("lora_unet_") or has("lora_te") or has(".lora_up.") or has("lora_A") or has("_lora.up"):
        return "a LoRA"
    if has("visual.blocks.") or has("visual.trunk.blocks.") or (has("blocks.") and has("rope")):
        return "an EVA-CLIP vision tower"
    if has("vision_model.encoder.layers"):
        return "a CLIP vision model"
    if has("text_model.encoder") or has("transformer.text_model"):
        return "a CLIP text encoder"
    if has("encoder.down.") and has("decoder.up."):
        return "a VAE"
    if has("body.conv") and has("ClassHead"):
        return "a RetinaFace detector"
    if has("context_path") or has("ffm.convblk"):
        return "a BiSeNet face-parsing model"
    if has("body.") and has("mapping_") and not has("ip_adapter"):
        return "a PuLID encoder without attention layers"
    return "an unrecognised file"


def key_diff_message(missing, unexpected, limit: int = 4) -> str:
    """'missing 3 keys (a, b, c); 2 unexpected keys (d, e)' with at most ``limit`` names each."""
    parts = []
    for label, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
            parts.append(f"{len(keys)} {label} key{'s' if len(keys) != 1 else ''} ({shown})")
    return "; ".join(parts)
