"""The pack's model folders in ComfyUI's ``folder_paths``, driven by ``pulid_core.models``.

:func:`register_folders` runs when the pack is imported, after ComfyUI has applied
extra_model_paths.yaml and ``--models-directory``, so a user's own dirs for our keys
are kept and the default ``<models_dir>/<key>`` is appended. The other functions
resolve files for the loader nodes and raise the registry's messages when one is
missing. ``folder_paths`` is imported inside the functions (tests pass a fake one).
"""

from __future__ import annotations

import importlib
import logging
import os

from ..pulid_core.errors import ModelFileError
from ..pulid_core.models import FOLDERS, ModelPaths, missing_file_message, registry, shell_quote

log = logging.getLogger(__name__)


def _fp(folder_paths=None):
    return folder_paths if folder_paths is not None else importlib.import_module("folder_paths")


def register_folders(folder_paths=None) -> None:
    """Register every folder key of the registry (idempotent)."""
    fp = _fp(folder_paths)
    for key, folder in FOLDERS.items():
        if folder.core and key in fp.folder_names_and_paths:
            continue  # ComfyUI owns it (photomaker): keep its dirs and filter
        default = os.path.join(fp.models_dir, key)
        dirs = list(fp.folder_names_and_paths.get(key, ([], set()))[0])
        if os.path.normpath(default) not in {os.path.normpath(d) for d in dirs}:
            dirs.append(default)
        extensions = {".onnx"} if folder.extensions == "onnx" else set(fp.supported_pt_extensions)
        fp.folder_names_and_paths[key] = (dirs, extensions)


def model_paths(folder_paths=None) -> ModelPaths:
    """The registry's view of ComfyUI's current folders (for ``check`` inside ComfyUI)."""
    fp = _fp(folder_paths)
    keys = set(FOLDERS) | {k for e in registry for k in e.misplaced_in}
    folders = {k: list(fp.get_folder_paths(k)) for k in keys if k in fp.folder_names_and_paths}
    return ModelPaths(fp.models_dir, folders, origin=f"--models-dir {shell_quote(fp.models_dir)}")


def resolve(key: str, filename: str, folder_paths=None) -> str:
    """Full path of ``filename`` in folder ``key``, or ModelFileError with the fix."""
    fp = _fp(folder_paths)
    path = fp.get_full_path(key, filename)
    if path is None:
        raise ModelFileError(missing_file_message(filename, fp.get_folder_paths(key)))
    return path


def facexlib_dir(folder_paths=None, detection: bool = True) -> str:
    """The facexlib folder holding every file needed (RetinaFace only with ``detection``)."""
    fp = _fp(folder_paths)
    roots = fp.get_folder_paths("facexlib")
    needed = [e for e in registry if e.folder == "facexlib" and e.required
              and (detection or "detection" not in e.filename)]
    for root in roots:
        if all(os.path.isfile(os.path.join(root, e.filename)) for e in needed):
            return root
    missing = next(e for e in needed if not any(os.path.isfile(os.path.join(r, e.filename)) for r in roots))
    raise ModelFileError(missing_file_message(missing, roots))


def _pack_dirs(folder_paths=None) -> dict[str, str]:
    """Pack name -> the folder holding its .onnx files.

    Also accepts the nested ``models/<pack>/<pack>/`` left by unzipping in place and a
    pack folder missing the ``models/`` level, with a warning saying where it belongs;
    a correctly placed copy wins over those.
    """
    candidates = []  # (name, found, right)
    for root in _fp(folder_paths).get_folder_paths("insightface"):
        models = os.path.join(root, "models")
        for name in _subdirs(models):
            pack = os.path.join(models, name)
            for found in (pack, os.path.join(pack, name)):
                if _has_onnx(found):
                    candidates.append((name, found, pack))
                    break
        for name in _subdirs(root):
            if name != "models" and _has_onnx(os.path.join(root, name)):
                candidates.append((name, os.path.join(root, name), os.path.join(models, name)))
    packs: dict[str, str] = {}
    for name, found, right in sorted(candidates, key=lambda c: c[1] != c[2]):
        if name in packs:
            continue
        if found != right:
            log.warning(
                "insightface pack %s is in %s; it belongs in %s. Move its .onnx files there "
                "(`python -m pulid_core.models check` prints the commands).",
                name,
                found,
                right,
            )
        packs[name] = found
    return packs


def _subdirs(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))


def _has_onnx(path: str) -> bool:
    return os.path.isdir(path) and any(n.lower().endswith(".onnx") for n in os.listdir(path))


def list_insightface_packs(folder_paths=None) -> list[str]:
    """Names of the insightface packs found, for a combo input."""
    return sorted(_pack_dirs(folder_paths))


def insightface_pack_dir(name: str, folder_paths=None) -> str:
    """Folder holding the .onnx files of pack ``name``; ModelFileError names the fix if the
    pack or one of the files the pack needs is missing."""
    fp = _fp(folder_paths)
    roots = fp.get_folder_paths("insightface")
    found = _pack_dirs(fp).get(name)
    for entry in registry:
        if (
            entry.pack == name
            and entry.required
            and not (found and os.path.isfile(os.path.join(found, entry.filename)))
        ):
            raise ModelFileError(missing_file_message(entry, roots))
    if found is None:
        raise ModelFileError(
            f"insightface pack {name!r} not found in {', '.join(roots)}: put its .onnx files in "
            f"{os.path.join(roots[0], 'models', name)}."
        )
    return found
