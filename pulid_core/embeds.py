"""Saved PuLID ID embeddings: the file format, and checking what a file or a client hands in.

An embeddings file is a safetensors file with two tensors, ``cond`` and ``uncond``
([1, T, 2048] with real models: the ID tokens of the positive and of the negative branch), and string
metadata: the format tag, the PuLID kind that made them, the number of photos, how
several photos were combined, and a JSON object of extras.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from .errors import PuLIDError
from .identity import COMBINES, STACKED_COMBINE, STACKED_VERSIONS, V1_EXTRA_IMAGE_TOKENS
from .io import guess_kind, read_safetensors

FORMAT = "comfyui-pulid/id-embeds/1"
WIDTH = 2048  # the SDXL / FLUX PuLID context width of an ID token
# ID tokens per kind: the v1 IDEncoder gives 10 (ToTheBeginning/PuLID pulid/encoders.py), the v1.1 and
# FLUX IDFormer 32 (pulid/encoders_transformer.py).
TOKENS = {"v1": 10, "v1.1": 32, "flux": 32}
# The adapter file that makes (and applies) each kind, for "load this file" messages.
ADAPTER_FILES = {
    "v1": "ip-adapter_pulid_sdxl_fp16.safetensors (or pulid_v1.bin)",
    "v1.1": "pulid_v1.1.safetensors",
    "flux": "pulid_flux_v0.9.1.safetensors",
}
# Encoder outputs end in a LayerNorm-scaled projection and stay orders of magnitude below this;
# values beyond it (a corrupt or hand-made file) overflow fp16 attention into a black image.
MAX_ABS = 1.0e3
MAX_IMAGES = 4096
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class IDEmbeds:
    """ID tokens of one identity, ready to apply: fp32 cond / uncond [1, T, width] on the CPU, the
    PuLID kind that made them, the number of photos, how they were combined, and extras (the
    file's JSON object, or what the encode recorded)."""

    version: str
    cond: torch.Tensor
    uncond: torch.Tensor
    images: int
    combine: str
    metadata: dict = field(default_factory=dict)


def expected_tokens(version: str, combine: str, images: int) -> int:
    """T for embeddings of this kind: v1 concat adds 5 tokens per extra photo."""
    if version == "v1" and combine == "concat":
        return TOKENS["v1"] + V1_EXTRA_IMAGE_TOKENS * (images - 1)
    return TOKENS[version]


def parse_metadata(metadata, *, name: str, node: str) -> tuple[str, int, str, dict]:
    """(version, images, combine, extra) from a file's string metadata, or a PuLIDError naming the file."""
    bad = f"{node}: {name}: "
    if not isinstance(metadata, dict):
        raise PuLIDError(f"{bad}no metadata; it was not saved by 'Save PuLID Embeds'.")
    version = metadata.get("pulid_version")
    if version not in TOKENS:
        raise PuLIDError(f"{bad}unknown PuLID kind {version!r} (known: {', '.join(TOKENS)}). "
                         "Encode the face again and save it with 'Save PuLID Embeds'.")
    try:
        images = int(str(metadata.get("images", "1")).strip())
    except ValueError:
        raise PuLIDError(f"{bad}broken metadata field images={metadata.get('images')!r} (expected the "
                         "number of photos). Encode the face again and save it with 'Save PuLID Embeds'.") from None
    if not 1 <= images <= MAX_IMAGES:
        raise PuLIDError(f"{bad}metadata says {images} photos (expected 1 to {MAX_IMAGES}). "
                         "Encode the face again and save it with 'Save PuLID Embeds'.")
    combine = metadata.get("combine", "")
    if not isinstance(combine, str):
        raise PuLIDError(f"{bad}broken metadata field combine={combine!r}.")
    try:
        extra = json.loads(metadata.get("extra", "{}"))
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise PuLIDError(f"{bad}broken JSON in the metadata field 'extra' ({exc}). Encode the face again "
                         "and save it with 'Save PuLID Embeds'.") from None
    if not isinstance(extra, dict):
        raise PuLIDError(f"{bad}the metadata field 'extra' is not a JSON object.")
    return version, images, combine, extra


def check_tokens(cond, uncond, version: str, combine: str, images: int, *, name: str, node: str,
                 expected_version: str | None = None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ID tokens against their kind (and the loaded adapter's); return them as fp32 on the CPU.

    ``width``: the adapter's token width (its UNet context, 2048 for SDXL and FLUX) when an
    adapter is at hand; without one, cond and uncond need only share their width.
    """
    bad = f"{node}: {name}: "
    if version not in TOKENS:
        raise PuLIDError(f"{bad}unknown PuLID kind {version!r} (known: {', '.join(TOKENS)}).")
    if not isinstance(images, int) or not 1 <= images <= MAX_IMAGES:
        raise PuLIDError(f"{bad}{images!r} photos (expected 1 to {MAX_IMAGES}).")
    if expected_version is not None and version != expected_version:
        raise PuLIDError(
            f"{bad}made with PuLID {version}, but the loaded PuLID model is {expected_version}. Load "
            f"{ADAPTER_FILES.get(version, version)} in 'Load PuLID Model' to use these embeddings, or encode the "
            f"face again with the {expected_version} model."
        )
    combines = (STACKED_COMBINE,) if version in STACKED_VERSIONS else COMBINES
    if combine not in combines:
        raise PuLIDError(f"{bad}unknown combine {combine!r} for PuLID {version} embeddings (known: "
                         f"{', '.join(combines)}). Encode the face again with 'Encode Face (PuLID)'.")
    tokens = expected_tokens(version, combine, images)
    out = []
    for label, t in (("cond", cond), ("uncond", uncond)):
        if not isinstance(t, torch.Tensor):
            raise PuLIDError(f"{bad}no '{label}' tensor (got {type(t).__name__}).")
        if not t.is_floating_point():
            raise PuLIDError(f"{bad}'{label}' is {str(t.dtype).replace('torch.', '')}; ID tokens are floats. "
                             "The file was not written by 'Save PuLID Embeds': encode the face again.")
        shape = list(t.shape)
        if width is None and label == "cond" and len(shape) == 3 and shape[2] > 0:
            width = shape[2]
        if shape != [1, tokens, width]:
            extra = ""
            if len(shape) == 3 and shape[0] != 1:
                extra = " (one identity per file: a batch of several is not applied row by row)"
            raise PuLIDError(
                f"{bad}'{label}' has shape {shape}; PuLID {version} embeddings"
                f"{' of ' + str(images) + ' photos (concat)' if tokens != TOKENS[version] else ''} are "
                f"[1, {tokens}, {width or WIDTH}]{extra}. Encode the face again with 'Encode Face (PuLID)'."
            )
        t = t.detach().to("cpu", torch.float32)
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            raise PuLIDError(f"{bad}'{label}' contains {int((~finite).sum())} NaN or infinite values; it would "
                             "give a black image. Encode the face again.")
        peak = float(t.abs().max())
        if peak > MAX_ABS or math.isnan(peak):
            raise PuLIDError(f"{bad}'{label}' has values up to {peak:.3g}, far beyond ID tokens (|value| <= "
                             f"{MAX_ABS:g}); it would give a black image. Encode the face again.")
        out.append(t.contiguous())
    return out[0], out[1]


def check_embeds(tensors, metadata, *, name: str, node: str, expected_version: str | None = None,
                 width: int | None = None) -> IDEmbeds:
    """Validate an embeddings state dict (``{"cond", "uncond"}`` + string metadata) as read from a file."""
    if not isinstance(tensors, dict):
        raise PuLIDError(f"{node}: {name} holds no tensors.")
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if isinstance(found, str) and found != FORMAT and found.startswith(FORMAT.rsplit("/", 1)[0] + "/"):
        raise PuLIDError(
            f"{node}: {name} was saved in the embeddings format {found!r}, which this version of comfyui-pulid "
            f"does not read (it reads {FORMAT!r}): update comfyui-pulid."
        )
    if found != FORMAT:
        kind = guess_kind(tensors.keys()) if tensors else "an empty file"
        looks = f" (it looks like {kind})" if kind != "an unrecognised file" else ""
        raise PuLIDError(f"{node}: {name} is not a PuLID embeddings file saved by 'Save PuLID Embeds'{looks}.")
    missing = [k for k in ("cond", "uncond") if k not in tensors]
    if missing:
        raise PuLIDError(f"{node}: {name}: no {' and no '.join(repr(k) for k in missing)} tensor (it has: "
                         f"{', '.join(sorted(tensors)) or 'nothing'}). Encode the face again and save it.")
    others = sorted(set(tensors) - {"cond", "uncond"})
    if others:
        raise PuLIDError(f"{node}: {name} has tensors other than cond and uncond ({', '.join(others[:4])}): it was "
                         "not written by 'Save PuLID Embeds'.")
    version, images, combine, extra = parse_metadata(metadata, name=name, node=node)
    cond, uncond = check_tokens(tensors["cond"], tensors["uncond"], version, combine, images, name=name, node=node,
                                expected_version=expected_version, width=width)
    return IDEmbeds(version, cond, uncond, images, combine, extra)


def read_embeds(path, *, node: str, expected_version: str | None = None, width: int | None = None,
                name: str | None = None) -> IDEmbeds:
    """Read and validate an embeddings file; every problem is a PuLIDError naming the node and the file
    (``name``: as the user chose it, e.g. with its subfolder; default the file's base name)."""
    name = name or os.path.basename(os.fspath(path))
    try:
        tensors, metadata = read_safetensors(path, fix="encode the face again and save it with 'Save PuLID "
                                                        "Embeds'", max_bytes=MAX_FILE_BYTES, name=name)
    except PuLIDError as exc:
        raise PuLIDError(f"{node}: {exc}") from exc
    return check_embeds(tensors, metadata, name=name, node=node, expected_version=expected_version, width=width)


def embeds_metadata(version: str, images: int, combine: str, extra: dict) -> dict[str, str]:
    return {"format": FORMAT, "pulid_version": version, "images": str(int(images)), "combine": combine,
            "extra": json.dumps(extra)}


def write_embeds(path, cond: torch.Tensor, uncond: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write a new embeddings file; never replaces an existing one (FileExistsError)."""
    import safetensors.torch

    data = safetensors.torch.save({"cond": cond.detach().cpu().contiguous(),
                                   "uncond": uncond.detach().cpu().contiguous()}, metadata=metadata)
    fh = open(path, "xb")  # exclusive create: a second save can never overwrite the first
    try:
        # The close is inside: a disk that fills in the last buffered bytes, or a network share's
        # quota, reports the error only when the buffer is flushed.
        with fh:
            fh.write(data)
    except BaseException:
        try:
            os.remove(path)  # no half-written file left behind (disk full, interrupt)
        except OSError:
            pass
        raise
