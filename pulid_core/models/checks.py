"""Structural checks of model files, and ``check``: which files are present, missing,
misplaced or broken, and whether the files a use needs are all there."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .paths import ModelPaths, shell_quote
from .registry import USES, ModelFile, registry

# ---------------------------------------------------------------------------- file checks

_MAX_HEADER = 100_000_000  # safetensors refuses larger headers (safetensors/src/tensor.rs)


def inspect_file(path: str, name: str | None = None) -> str | None:
    """What is wrong with a model file, judged from its structure, or None.

    Catches truncated downloads, HTML error pages, Git LFS pointers and files of another
    format saved under a model's name. The format comes from the extension of ``name``
    (default: ``path``). Safetensors, zip and pickle checks read only headers; an ONNX file
    is parsed with the ``onnx`` package.
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
        return _safetensors_problem(path, size, head)
    if ext in (".bin", ".pt", ".pth", ".ckpt"):
        if head.startswith(b"PK"):
            return _zip_problem(path)
        # A legacy (pre-zip) torch pickle starts with the PROTO opcode; only its size can be checked.
        return None if head[:1] == b"\x80" else "it is not a PyTorch file (neither a zip nor a pickle)"
    if ext == ".onnx":
        return _onnx_problem(path)
    if ext == ".zip":
        return _zip_problem(path)
    return None


def _other_format(head: bytes) -> str:
    if head.startswith(b"PK"):
        return " (it is a zip archive, e.g. a PyTorch checkpoint renamed)"
    if head[:1] == b"\x80":
        return " (it is a pickle, e.g. a PyTorch checkpoint renamed)"
    return ""


def _safetensors_problem(path: str, size: int, head: bytes) -> str | None:
    if size < 10:
        return f"it is truncated ({size} bytes)"
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or head[8:9] != b"{":
        return "it is not a safetensors file" + _other_format(head)
    if n > size - 8:
        return f"it is truncated ({size:,} bytes; its header alone needs {n + 8:,})"
    with open(path, "rb") as f:
        f.seek(8)
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


def _zip_problem(path: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError):
        return "it is truncated or corrupt (its zip central directory is missing)"
    return None


def _onnx_problem(path: str) -> str | None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        return f"it is not a readable ONNX model, probably truncated ({type(exc).__name__})"
    # A cut exactly between two top-level fields still parses: the graph or opsets go missing.
    if not model.graph.node or not model.graph.output or not model.opset_import:
        return "it is truncated or not an ONNX model (no graph)"
    return None


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_problem(entry: ModelFile, path: str, verify: bool = True) -> tuple[str, str] | None:
    """(status, detail) when ``path`` is not a good copy of ``entry``; size and sha256 are
    compared only under the entry's own file name (``verify``: hash it, reading every byte)."""
    problem = inspect_file(path, entry.filename if path.endswith(".part") else None)
    if problem:
        return CORRUPT, problem
    exact = os.path.basename(path).removesuffix(".part") == entry.filename
    size = os.path.getsize(path)
    if exact and entry.size is not None and size != entry.size:
        return WRONG_SIZE, f"{size:,} bytes, expected {entry.size:,} (an incomplete or different file)"
    if verify and exact and entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return CHECKSUM, f"checksum mismatch: sha256 {digest}, expected {entry.sha256}"
    return None


# ---------------------------------------------------------------------------- check

PRESENT = "present"
NESTED = "nested"  # found by the nodes, with a warning: the files belong one folder up
MISSING = "missing"
NOT_NEEDED = "not needed"
OPTIONAL = "optional"
WRONG_SIZE = "wrong size"
CORRUPT = "corrupt"
CHECKSUM = "checksum mismatch"
MISPLACED = "misplaced"
USABLE = (PRESENT, NESTED)
PROBLEMS = (WRONG_SIZE, CORRUPT, CHECKSUM, MISPLACED)


@dataclass(frozen=True)
class Finding:
    entry: ModelFile
    status: str
    path: str | None = None
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True)
class Report:
    findings: list[Finding]
    uses: tuple[str, ...]  # what the files were checked for
    unmet: list[tuple[str, str, str]]  # (use, group, fix) for each group with no usable file
    problems: list[Finding]  # broken or misplaced files that a checked use needs

    @property
    def ok(self) -> bool:
        return bool(self.uses) and not self.unmet and not self.problems


def download_command(entry: ModelFile, paths: ModelPaths) -> str:
    name = entry.pack or entry.name
    return f"python -m pulid_core.models download {name} {paths.origin}".rstrip()


def _move_cmd(src: str, dst: str, copy: bool = False) -> str:
    mkdir = "" if os.path.isdir(os.path.dirname(dst)) else "mkdir -p " + shell_quote(os.path.dirname(dst))
    if os.name == "nt":
        mkdir = mkdir.replace("mkdir -p", "mkdir")
        cmd = f"{'copy' if copy else 'move'} {shell_quote(src)} {shell_quote(dst)}"
    else:
        cmd = f"{'cp -L' if copy else 'mv'} {shell_quote(src)} {shell_quote(dst)}"
    return f"{mkdir} && {cmd}" if mkdir else cmd


class Walker:
    """Recursive file listings, one walk per directory."""

    def __init__(self):
        self._cache: dict[str, dict[str, list[str]]] = {}

    def find(self, directory: str, names: Sequence[str]) -> list[str]:
        if directory not in self._cache:
            index: dict[str, list[str]] = {}
            for root, _dirs, files in os.walk(directory, followlinks=True):
                for name in files:
                    index.setdefault(name, []).append(os.path.join(root, name))
            self._cache[directory] = index
        return [p for name in names for p in sorted(self._cache[directory].get(name, []))]


def _strays(entry: ModelFile, paths: ModelPaths, walker: Walker) -> list[tuple[str, str]]:
    """Copies where the pack does not look for them: (path, NESTED | "move" | "copy")."""
    out: list[tuple[str, str]] = []
    if entry.pack:
        # The nodes also accept models/<pack>/<pack>/ (an unzip in place) and <pack>/ without
        # the models/ level, with a warning; loose files are only found here when no other
        # pack has a file of that name.
        unique = sum(1 for e in registry if e.pack and e.filename == entry.filename) <= 1
        for d in paths.dirs(entry.folder):
            usable = {os.path.join(d, "models", entry.pack, entry.pack), os.path.join(d, entry.pack)}
            for p in walker.find(d, entry.accepted_names):
                parent = os.path.dirname(p)
                if parent in usable:
                    out.append((p, NESTED))
                elif parent in (d, os.path.join(d, "models")) and unique:
                    out.append((p, "move"))
        return out
    for key in entry.misplaced_in:
        out.extend((p, "move") for d in paths.dirs(key) for p in walker.find(d, entry.accepted_names))
    if entry.folder == "facexlib" and paths.facexlib_weights_dir:
        out.extend((p, "move") for p in walker.find(paths.facexlib_weights_dir, entry.accepted_names))
    if entry.source == "hf" and paths.hf_hub_cache:
        cached = os.path.join(
            paths.hf_hub_cache, "models--" + entry.hf_repo.replace("/", "--"), "snapshots", "*", entry.hf_path
        )
        # The hub cache may serve other programs: copy out of it instead of moving.
        out.extend((p, "copy") for p in sorted(glob.glob(cached)))
    return out


def find(
    entry: ModelFile, paths: ModelPaths, verify: bool = False, walker: Walker | None = None
) -> list[Finding]:
    """Findings for one entry: where ComfyUI finds it, else every stray copy, else MISSING."""
    walker = walker or Walker()
    target = paths.target_dir(entry)
    if entry.pack:
        dirs = [os.path.join(d, "models", entry.pack) for d in paths.dirs(entry.folder)]
        found = [os.path.join(d, n) for d in dirs for n in entry.accepted_names]
        found = [p for p in found if os.path.isfile(p)]
    else:
        found = [p for d in paths.dirs(entry.folder) for p in walker.find(d, entry.accepted_names)]
    places = [(found[0], PRESENT)] if found else _strays(entry, paths, walker)
    out = []
    for path, kind in places:
        problem = file_problem(entry, path, verify)
        if problem:
            status, detail = problem
            fix = f"{'del' if os.name == 'nt' else 'rm'} {shell_quote(path)} && {download_command(entry, paths)}"
        elif kind == PRESENT:
            status, detail, fix = PRESENT, f"{os.path.getsize(path):,} bytes", ""
        else:
            where = "the Hugging Face cache" if kind == "copy" else "a folder the pack does not read"
            if kind == NESTED:
                where = f"{os.path.dirname(path)}: the nodes find it there, with a warning; move the pack up"
            status, detail = (NESTED if kind == NESTED else MISPLACED), f"in {where}"
            fix = _move_cmd(path, os.path.join(target, entry.filename), copy=kind == "copy")
        out.append(Finding(entry, status, path, detail, fix))
    if not out:
        staging = os.path.join(target, entry.filename + ".download")
        part = os.path.join(target, entry.filename + ".part")
        debris = [p for p in (staging, part) if os.path.exists(p)]
        detail = f"goes in {target}" + (f"; an interrupted download is in {debris[0]}" if debris else "")
        out.append(Finding(entry, MISSING, None, detail, download_command(entry, paths)))
    if not entry.required:
        # Never opened by the pack: whatever state it is in never blocks anything.
        out = [
            f if f.status == PRESENT else dataclasses.replace(
                f, status=OPTIONAL, detail="never opened by the pack" + (f"; {f.detail}" if f.path else ""),
                fix=f.fix if f.status in (NESTED, MISPLACED) else "",
            )
            for f in out
        ]
    return out


def uses_found(findings: Iterable[Finding]) -> tuple[str, ...]:
    """The uses whose model file (an adapter, not a shared face model) is on disk somewhere."""
    found = {u for f in findings if f.path and f.entry.folder in ("pulid", "photomaker") for u in f.entry.uses}
    return tuple(u for u in USES if u in found)


def check(
    paths: ModelPaths,
    entries: Iterable[ModelFile] = registry,
    verify: bool = False,
    uses: Sequence[str] | None = None,
) -> Report:
    """Every entry's findings, in registry order, judged for ``uses`` (default: the uses
    whose model files are found). ``verify`` also hashes files whose sha256 is known."""
    walker = Walker()
    findings = [f for e in entries for f in find(e, paths, verify, walker)]
    uses = tuple(uses) if uses else uses_found(findings)
    usable = {f.entry.group for f in findings if f.status in USABLE}
    unmet: dict[str, tuple[str, str, str]] = {}
    for f in findings:
        for use in f.entry.uses:
            if use in uses and f.entry.required and f.entry.group not in usable:
                fix = f.fix or download_command(f.entry, paths)
                unmet.setdefault(f"{use}:{f.entry.group}", (use, f.entry.group, fix))
    needed = {f.entry.name for f in findings if f.entry.required and set(f.entry.uses) & set(uses)}
    findings = [
        dataclasses.replace(f, status=NOT_NEEDED, detail=_why_not_needed(f, usable), fix="")
        if f.status == MISSING and uses and (f.entry.name not in needed or f.entry.group in usable)
        else f
        for f in findings
    ]
    # A misplaced copy is harmless once another file of its group is usable.
    problems = [
        f
        for f in findings
        if f.status in PROBLEMS and f.entry.name in needed and (f.status != MISPLACED or f.entry.group not in usable)
    ]
    return Report(findings, uses, list(unmet.values()), problems)


def _why_not_needed(f: Finding, usable: set[str]) -> str:
    if f.entry.group in usable:
        return f"{f.entry.group}: another one is present"
    return f"only for {', '.join(f.entry.uses)}"


def format_report(report: Report) -> str:
    lines = []
    for f in report.findings:
        where = f" {f.path}" if f.path else ""
        lines.append(f"{f.status.upper():<17} {f.entry.name}:{where}{f' ({f.detail})' if f.detail else ''}")
        if f.fix:
            lines.append(f"{'':<17}   fix: {f.fix}")
    lines.append("")
    if not report.uses:
        lines.append(
            "No PuLID or PhotoMaker model file was found. Pass --for USE to say what you will run "
            f"({', '.join(USES)}), or download one, e.g. `python -m pulid_core.models download pulid`."
        )
    for use in report.uses:
        missing = [(g, fix) for u, g, fix in report.unmet if u == use]
        broken = [f.entry.name for f in report.problems if use in f.entry.uses]
        if not missing and not broken:
            lines.append(f"{use} ({USES[use]}): every file it needs is in place.")
            continue
        lines.append(f"{use} ({USES[use]}): NOT READY.")
        lines += [f"  needs {g}: {fix}" for g, fix in missing]
        lines += [f"  fix {name} (see above)" for name in broken]
    return "\n".join(lines) + "\n"
