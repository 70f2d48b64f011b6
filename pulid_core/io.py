"""Reading weight files safely, and telling the user what a wrong file looks like.

Every loader of the pack goes through :func:`read_state_dict` (or :func:`read_safetensors`
where the metadata matters), so the rules hold everywhere: pickles only through
``torch.load(weights_only=True)``, dtypes kept, and a truncated, corrupt or code-carrying
file gets a message naming the file. A file that is no checkpoint at all (an HTML error
page, a Git LFS pointer) is told apart from a pickle that imports code-running globals.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping

import torch

from .errors import ModelFileError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
REDOWNLOAD = "delete it and download it again"
ZIP_MAGIC = b"PK\x03\x04"
# torch.save writes a zip archive (torch >= 1.6) or, legacy, pickles of protocol 2+ (PROTO opcode 0x80).
PICKLE_MAGICS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
# Globals that build data, not run code: torch's tensor/storage rebuilders, containers, numpy arrays.
DATA_GLOBAL_MODULES = ("torch", "collections", "_codecs", "numpy")
DATA_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "str", "bytes",
                 "bytearray", "slice", "range"}


def read_state_dict(path: str | os.PathLike) -> dict:
    """Load a ``.safetensors`` or torch pickle file onto the CPU, dtypes unchanged.

    Returns the object stored in the file (a flat dict of tensors, or for some
    formats a nested dict such as PhotoMaker's ``{"id_encoder", "lora_weights"}``).
    """
    path, name, size = _check_file(path, REDOWNLOAD)
    if path.lower().endswith((".safetensors", ".sft")) or _is_safetensors(path, size):
        return _read_safetensors(path, name, size, REDOWNLOAD)[0]
    return _read_pickle(path, name, size)


def _is_safetensors(path: str, size: int) -> bool:
    """A safetensors file under another suffix: an 8-byte little-endian header length, then '{'."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def read_safetensors(path: str | os.PathLike, *, fix: str = REDOWNLOAD, max_bytes: int | None = None,
                     name: str | None = None) -> tuple[dict, dict]:
    """(tensors, metadata) of a ``.safetensors`` file; a bad file gets a message naming it (``name``, or
    its base name) and ``fix``."""
    path, name, size = _check_file(path, fix, name)
    if max_bytes is not None and size > max_bytes:
        raise ModelFileError(f"{name} is {size:,} bytes, far more than such a file holds (at most "
                             f"{max_bytes:,}): it is not the file expected here.")
    return _read_safetensors(path, name, size, fix)


def _check_file(path, fix: str, name: str | None = None) -> tuple[str, str, int]:
    path = os.fspath(path)
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"Model file not found: {path}")
    size = os.path.getsize(path)
    if not os.access(path, os.R_OK):
        raise ModelFileError(f"{name} cannot be read (permission denied): make the file readable by the user "
                             "that runs ComfyUI.")
    if size == 0:
        raise ModelFileError(f"{name} is empty (0 bytes): {fix}.")
    return path, name, size


def _read_safetensors(path: str, name: str, size: int, fix: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        hint = "It is probably an incomplete download: " if fix == REDOWNLOAD else "It is truncated or corrupt: "
        raise ModelFileError(
            f"{name} ({size:,} bytes) is not a readable safetensors file ({_first_line(exc)}). {hint}{fix}."
        ) from exc
    return tensors, metadata


def _read_pickle(path: str, name: str, size: int):
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head.startswith((ZIP_MAGIC, *PICKLE_MAGICS)):
        raise ModelFileError(
            f"{name} ({size:,} bytes) is not a PyTorch checkpoint (an HTML page? a failed download?): it "
            f"starts with {_preview(head)}. Delete it and download it again from the model's publisher."
        )
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError) as exc:
            # Legacy (non-zip) pickles cannot be memory-mapped, nor can files on some filesystems; retry
            # plainly (a zip cut short fails again there, with an OSError: handled below).
            if not isinstance(exc, OSError) and "mmap" not in str(exc) and "zip" not in str(exc).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = sorted({g.replace(" ", ".") for g in pickle_globals(path) if _runs_code(g)})
        if foreign:
            raise ModelFileError(
                f"Refused to load {name}: it is a pickle that asks to import and call {', '.join(foreign[:3])}, "
                "code that would run on loading. Only plain weight files are loaded. Use the safetensors "
                "version of this model, or the official file from its publisher."
            ) from exc
        reason = _weights_only_reason(exc)
        if "Unsupported global" in reason:
            what = reason.split("GLOBAL ", 1)[-1].split(" ")[0]
            raise ModelFileError(
                f"Refused to load {name}: it stores {what} objects, not plain tensors; weights-only loading "
                "does not build them. Use the safetensors version of this model, or re-save its state_dict "
                "of tensors."
            ) from exc
        raise ModelFileError(
            f"{name} ({size:,} bytes) is not a PyTorch checkpoint, or is corrupt ({reason}): delete it and "
            "download it again."
        ) from exc
    except (EOFError, zipfile.BadZipFile, IndexError, KeyError, struct.error, UnicodeDecodeError, OSError) as exc:
        # What torch's unpickler raises on a pickle that stops or goes wrong midway (its zip reader: an
        # OSError "Invalid argument" for an archive cut short in its first 64 KiB).
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


def pickle_globals(path: str, max_pickles: int = 8) -> list[str]:
    """The ``module name`` globals the pickle(s) in a torch file import, found without unpickling.

    Reads the opcodes only (``pickletools``): a zip checkpoint's ``data.pkl``, or the
    consecutive pickles of a legacy file. Stops quietly where the data stops being a pickle.
    """
    import io as _io
    import pickletools

    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                streams = [_io.BytesIO(zf.read(member))] if member else []
        else:
            streams = [open(path, "rb")]  # noqa: SIM115 - closed below
    except (OSError, zipfile.BadZipFile, KeyError):
        return found
    for stream in streams:
        try:
            for _ in range(max_pickles):
                strings: list = []
                memo: dict = {}
                pushed = None  # the string the previous opcode pushed, if it pushed one
                for op, arg, _pos in pickletools.genops(stream):
                    kind = op.name
                    if kind in _STRING_OPS:
                        pushed = str(arg)
                        strings.append(pushed)
                        continue
                    if kind == "MEMOIZE":
                        memo[len(memo)] = pushed
                        continue
                    if kind in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[arg] = pushed
                        continue
                    if kind in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
                        pushed = memo[arg]
                        strings.append(pushed)
                        continue
                    if kind == "GLOBAL":
                        found.append(str(arg))
                    elif kind == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]} {strings[-1]}")
                    pushed = None
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle: what was found so far is the answer
            pass
        finally:
            stream.close()
    return found


def _runs_code(global_name: str) -> bool:
    """Whether a pickle global (``"module name"``) is a callable that does more than build data."""
    module, _, attr = global_name.partition(" ")
    if module in ("builtins", "__builtin__"):
        return attr not in DATA_BUILTINS
    return module.split(".")[0] not in DATA_GLOBAL_MODULES


_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING")


def _weights_only_reason(exc: BaseException) -> str:
    """The one informative line of torch's long weights-only error."""
    for line in str(exc).splitlines():
        if "Unsupported" in line or "error:" in line:
            return line.strip().replace("WeightsUnpickler error: ", "")
    return _first_line(exc)


def _preview(head: bytes) -> str:
    text = head[:32].decode("latin-1")
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return repr(" ".join(text.split()))
    return head[:8].hex(" ")


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
    if has("pulid_ca.") or has("pulid_encoder."):
        return "a PuLID-FLUX file"
    # FLUX.1's transformer: 19 double-stream and 38 single-stream blocks (ComfyUI / BFL key names,
    # bare or under model.diffusion_model.; diffusers names them transformer_blocks / single_transformer_blocks).
    if has("double_blocks.") and has("single_blocks."):
        if has("distilled_guidance_layer"):
            return "a Chroma diffusion model"
        return "a FLUX checkpoint" if has("model.diffusion_model.") else "a FLUX diffusion model"
    if has("single_transformer_blocks.") and has("transformer_blocks."):
        return "a FLUX diffusion model (diffusers format)"
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


def state_dict_mismatch(sd: Mapping, expected: Mapping) -> tuple[str, list[tuple[str, tuple, tuple]]]:
    """Compare a state dict with the keys and shapes a module expects.

    ``expected`` maps each key to a tensor or a shape (a module's ``state_dict()`` will do). Returns
    ``(key_diff, wrong)``: ``key_diff`` is :func:`key_diff_message`'s text, ``""`` when the keys
    match; ``wrong`` lists ``(key, shape in sd, expected shape)`` for the keys in both whose shapes
    differ, in ``expected``'s order.
    """
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    wrong = [(k, tuple(sd[k].shape), s) for k, s in shapes.items() if k in sd and tuple(sd[k].shape) != s]
    return key_diff_message(missing, unexpected), wrong


def check_float_weights(sd: Mapping, name: str, expected: Mapping | None = None, *, what: str = "weights") -> None:
    """Refuse integer or boolean tensors where floating-point weights belong.

    ``expected`` (a module's ``state_dict()``) limits the check to the keys whose expected tensor
    is floating point (BatchNorm's ``num_batches_tracked`` and CLIP's ``position_ids`` stay
    integers); without it every tensor of ``sd`` must be floating point. A quantised (int8) or
    damaged file would otherwise be cast to float and used as weights: a silently wrong image.
    """
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor) or value.is_floating_point():
            continue
        if expected is not None:
            ref = expected.get(key)
            if not (isinstance(ref, torch.Tensor) and ref.is_floating_point()):
                continue
        dtype = str(value.dtype).removeprefix("torch.")
        raise ModelFileError(
            f"{name} stores {what} as {dtype} ({key}), not as floating-point numbers: it is a quantised or "
            "damaged file that this loader cannot use. Use the original fp16/fp32 file from its publisher."
        )
