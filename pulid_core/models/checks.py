"""Cheap structural checks of model files, and ``check``: present / missing / misplaced / corrupt."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .paths import ModelPaths, shell_quote
from .registry import ModelFile, _split_hf, registry

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- cheap file checks

_ONNX_WIRE = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def inspect_file(path: str, name: str | None = None) -> str | None:
    """What is wrong with a model file, judged from its header and structure, or None.

    Cheap: reads headers and seeks, never the weights. Catches truncated downloads,
    HTML error pages and Git LFS pointers saved under a model's name. The format comes
    from the extension of ``name`` (default: ``path``).
    """
    size = os.path.getsize(path)
    if size == 0:
        return "it is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the model (the repository was cloned without git-lfs)"
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "it is a web page, not the model (a failed or blocked download)"
    ext = os.path.splitext(name or path)[1].lower()
    if ext in (".safetensors", ".sft"):
        return _safetensors_problem(path, size)
    if ext in (".bin", ".pt", ".pth", ".ckpt"):
        return _torch_problem(path, head)
    if ext == ".onnx":
        return _onnx_problem(path, size)
    if ext == ".zip":
        return _zip_problem(path)
    return None


def _safetensors_problem(path: str, size: int) -> str | None:
    with open(path, "rb") as f:
        if size < 8:
            return f"it is truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            return f"it is truncated ({size:,} bytes; its header alone needs {n + 8:,})"
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its safetensors header is unreadable"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"it is truncated ({size:,} bytes; its header says {expected:,})"
    if size > expected:
        return f"it has {size - expected:,} bytes more than its header says"
    return None


def _torch_problem(path: str, head: bytes) -> str | None:
    if head.startswith(b"PK"):
        return _zip_problem(path)
    if head[:1] == b"\x80":
        return None  # legacy (pre-zip) torch pickle: only its size can be checked cheaply
    return "it is not a PyTorch file (unknown header)"


def _zip_problem(path: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError):
        return "it is truncated or corrupt (its zip central directory is missing)"
    return None


def _read_varint(f) -> int | None:
    value, shift = 0, 0
    while True:
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            return None


def _onnx_problem(path: str, size: int) -> str | None:
    # Walk the top-level protobuf fields of ModelProto, seeking over their bodies: a
    # truncated file ends inside a field, and a non-ONNX file has no graph (field 7).
    seen = set()
    with open(path, "rb") as f:
        while f.tell() < size:
            tag = _read_varint(f)
            if not tag or tag >> 3 == 0:
                return "it is not an ONNX model (bad protobuf)"
            number, wire = tag >> 3, tag & 7
            if _ONNX_WIRE.get(number, wire) != wire:
                return "it is not an ONNX model (bad protobuf)"
            if wire == 0:
                if _read_varint(f) is None:
                    return "it is truncated"
            elif wire in (1, 2, 5):
                length = {1: 8, 5: 4}.get(wire) or _read_varint(f)
                if length is None or f.tell() + length > size:
                    return "it is truncated"
                f.seek(length, os.SEEK_CUR)
            else:
                return "it is not an ONNX model (bad protobuf)"
            seen.add(number)
    return None if 7 in seen else "it is not an ONNX model (no graph)"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- check

PRESENT = "present"
MISSING = "missing"
NOT_NEEDED = "not needed"
WRONG_SIZE = "wrong size"
CORRUPT = "corrupt"
CHECKSUM = "checksum mismatch"
MISPLACED = "misplaced"
PROBLEMS = (WRONG_SIZE, CORRUPT, CHECKSUM, MISPLACED)


@dataclass(frozen=True)
class Finding:
    entry: ModelFile
    status: str
    path: str | None = None
    detail: str = ""
    fix: str = ""




def _move_cmd(src: str, dst: str, copy: bool = False) -> str:
    if os.name == "nt":
        return f"{'copy' if copy else 'move'} {shell_quote(src)} {shell_quote(dst)}"
    return f"{'cp -L' if copy else 'mv'} {shell_quote(src)} {shell_quote(dst)}"


def _download_cmd(entry: ModelFile, paths: ModelPaths) -> str:
    name = entry.pack if entry.pack else entry.name
    return f"python -m pulid_core.models download {name} {paths.origin}".rstrip()


def _redownload_cmd(entry: ModelFile, path: str, paths: ModelPaths) -> str:
    rm = "del" if os.name == "nt" else "rm"
    return f"{rm} {shell_quote(path)} && {_download_cmd(entry, paths)}"


class _Walker:
    """Recursive file listings, one walk per directory per check."""

    def __init__(self):
        self._cache: dict[str, dict[str, list[str]]] = {}

    def find(self, directory: str, names: Sequence[str]) -> list[str]:
        if directory not in self._cache:
            index: dict[str, list[str]] = {}
            for root, _dirs, files in os.walk(directory, followlinks=True):
                for name in files:
                    index.setdefault(name, []).append(os.path.join(root, name))
            self._cache[directory] = index
        found = []
        for name in names:
            found.extend(sorted(self._cache[directory].get(name, [])))
        return found


def _validate(entry: ModelFile, path: str, verify: bool) -> tuple[str, str]:
    """(status, detail) for a file found under one of the entry's names."""
    exact = os.path.basename(path) == entry.filename
    size = os.path.getsize(path)
    problem = inspect_file(path)
    if problem:
        return CORRUPT, problem
    if exact and entry.size is not None and size != entry.size:
        return WRONG_SIZE, f"{size:,} bytes, expected {entry.size:,} (an incomplete or different file)"
    if verify and exact and entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return CHECKSUM, f"sha256 {digest}, expected {entry.sha256}"
    return PRESENT, f"{size:,} bytes"


def _locate(entry: ModelFile, paths: ModelPaths, walker: _Walker) -> list[str]:
    if entry.pack:
        return [
            p
            for d in paths.dirs(entry.folder)
            for p in [os.path.join(d, "models", entry.pack, n) for n in entry.accepted_names]
            if os.path.isfile(p)
        ]
    return [p for d in paths.dirs(entry.folder) for p in walker.find(d, entry.accepted_names)]


def _stray(entry: ModelFile, paths: ModelPaths, walker: _Walker) -> list[tuple[str, bool]]:
    """Copies in places the pack does not read: (path, copy instead of move)."""
    out: list[tuple[str, bool]] = []
    if entry.pack:
        # A pack file is stray in a folder named after its pack (the nested
        # antelopev2/antelopev2 of an unzip, or a pack folder missing the models/ level),
        # or loose in the insightface folder when no other pack has a file of that name.
        unique = sum(1 for e in registry if e.pack and e.filename == entry.filename) <= 1
        for d in paths.dirs(entry.folder):
            right = os.path.join(d, "models", entry.pack)
            for p in walker.find(d, entry.accepted_names):
                parent = os.path.dirname(p)
                loose = parent in (d, os.path.join(d, "models")) and unique
                if parent != right and (os.path.basename(parent) == entry.pack or loose):
                    out.append((p, False))
        return out
    for key in entry.misplaced_in:
        for d in paths.dirs(key):
            out.extend((p, False) for p in walker.find(d, entry.accepted_names))
    if entry.folder == "facexlib" and paths.facexlib_weights_dir:
        out.extend((p, False) for p in walker.find(paths.facexlib_weights_dir, entry.accepted_names))
    if entry.source == "hf" and paths.hf_hub_cache:
        repo, path = _split_hf(entry.location)
        pattern = os.path.join(
            paths.hf_hub_cache, "models--" + repo.replace("/", "--"), "snapshots", "*", path
        )
        # The hub cache may serve other programs: copy out of it instead of moving.
        out.extend((p, True) for p in sorted(glob.glob(pattern)))
    return out


def check(paths: ModelPaths, entries: Iterable[ModelFile] = registry, verify: bool = False) -> list[Finding]:
    """One finding per entry (more when several stray copies exist), in registry order.

    ``verify`` also hashes files whose sha256 is known (slow: reads every byte).
    """
    entries = tuple(entries)
    walker = _Walker()
    findings: list[Finding] = []
    for entry in entries:
        target = paths.target_dir(entry)
        found = _locate(entry, paths, walker)
        if found:
            status, detail = _validate(entry, found[0], verify)
            fix = "" if status == PRESENT else _redownload_cmd(entry, found[0], paths)
            findings.append(Finding(entry, status, found[0], detail, fix))
            continue
        strays = _stray(entry, paths, walker)
        for path, copy in strays:
            status, detail = _validate(entry, path, verify)
            if status == PRESENT:
                status = MISPLACED
                detail = f"in {'the Hugging Face cache' if copy else 'a folder the pack does not read'}"
                fix = _move_cmd(path, os.path.join(target, entry.filename), copy)
                if not os.path.isdir(target):
                    fix = f"{'mkdir' if os.name == 'nt' else 'mkdir -p'} {shell_quote(target)} && {fix}"
            else:
                fix = _redownload_cmd(entry, path, paths)
            findings.append(Finding(entry, status, path, detail, fix))
        if strays:
            continue
        part = os.path.join(target, entry.filename + ".part")
        detail = f"goes in {target}" + (
            f"; a partial download ({os.path.getsize(part):,} bytes) is in {part}"
            if os.path.isfile(part)
            else ""
        )
        findings.append(Finding(entry, MISSING, None, detail, _download_cmd(entry, paths)))
    return _mark_not_needed(findings)


def _mark_not_needed(findings: list[Finding]) -> list[Finding]:
    have = {f.entry.choice for f in findings if f.status == PRESENT and f.entry.choice}
    out = []
    for f in findings:
        if f.status == MISSING and (not f.entry.required or (f.entry.choice and f.entry.choice in have)):
            reason = "optional" if not f.entry.required else f"another {f.entry.choice} file is present"
            f = dataclasses.replace(f, status=NOT_NEEDED, detail=reason, fix="")
        out.append(f)
    return out


def format_findings(findings: Sequence[Finding]) -> str:
    lines = []
    for f in findings:
        where = f" {f.path}" if f.path else ""
        detail = f" ({f.detail})" if f.detail else ""
        lines.append(f"{f.status.upper():<17} {f.entry.name}:{where}{detail}")
        if f.fix:
            lines.append(f"{'':<17}   fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in (PRESENT, MISSING, *PROBLEMS)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return "\n".join(lines + [summary or "nothing to check"]) + "\n"
