"""Encode a face once, keep its ID embeddings, apply them any number of times."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import folder_paths
from comfy_api.latest import io

from ..pulid_core.embeds import MAX_FILE_BYTES, check_tokens, embeds_metadata, read_embeds, write_embeds
from ..pulid_core.errors import PuLIDError
from ..pulid_core.options import COMBINES, METHODS_CUSTOM, ON_NO_FACE, PROJECTIONS, SELECTIONS
from .pulid import (
    IDEmbeds,
    apply_embeds,
    check_adapter,
    cross_attn_layers,
    encode_faces,
    method_settings,
    range_inputs,
    selection_of,
)
from .types import EvaClip, FaceAnalysis, PuLID, PuLIDEmbeds, check_inputs

EMBEDS_FOLDER = "pulid_embeds"
SOURCE_KEY = "file"  # IDEmbeds.metadata key naming the file the embeds were loaded from (never saved)
# Room ComfyUI's counter suffix "_00001_" and ".safetensors" take in a file name.
NAME_SUFFIX = len("_00001_.safetensors")


def register_embeds_folder() -> None:
    """models/pulid_embeds (saved embeddings are written to the first folder)."""
    dirs = list(folder_paths.folder_names_and_paths.get(EMBEDS_FOLDER, ([], set()))[0])
    default = os.path.join(folder_paths.models_dir, EMBEDS_FOLDER)
    if default not in dirs:
        dirs.append(default)
    folder_paths.folder_names_and_paths[EMBEDS_FOLDER] = (dirs, {".safetensors"})


class PuLIDEncodeFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDEncodeFace",
            display_name="Encode Face (PuLID)",
            category="pulid",
            description="Turns photos of one person into PuLID ID embeddings, once. The preview shows, per "
                        "photo, the aligned face and the masked grey face EVA-CLIP sees.",
            inputs=[
                PuLID.Input("pulid"),
                EvaClip.Input("eva_clip"),
                FaceAnalysis.Input("face_analysis"),
                io.Image.Input("image"),
                io.Combo.Input("face_selection", options=list(SELECTIONS), default="largest"),
                io.Int.Input("face_index", default=0, min=0, max=64),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), default="error"),
                io.Combo.Input("combine", options=list(COMBINES), default="average",
                               tooltip="v1: average or concatenate the photos' ID tokens; v1.1 always encodes "
                                       "all photos together."),
            ],
            outputs=[PuLIDEmbeds.Output(display_name="PULID_EMBEDS"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, pulid, eva_clip, face_analysis, image, face_selection, face_index, on_no_face, combine):
        node = check_inputs(cls, face_selection=face_selection, face_index=face_index, on_no_face=on_no_face,
                            combine=combine, image=image)
        adapter = check_adapter(pulid, node)
        embeds, preview = encode_faces(adapter, eva_clip, face_analysis, image, node=node,
                                       selection=selection_of(face_selection, face_index), on_no_face=on_no_face,
                                       combine=combine)
        return io.NodeOutput(embeds, preview)


class PuLIDApplyEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDApplyEmbeds",
            display_name="Apply PuLID Embeds",
            category="pulid",
            description="Applies saved or encoded ID embeddings to an SDXL model.",
            inputs=[
                io.Model.Input("model"),
                PuLID.Input("pulid"),
                PuLIDEmbeds.Input("embeds"),
                io.Combo.Input("method", options=list(METHODS_CUSTOM), default="fidelity",
                               tooltip="custom uses the projection and num_zero below"),
            ] + range_inputs(0.8) + [
                io.Combo.Input("projection", options=list(PROJECTIONS), default="ortho_v2", optional=True),
                io.Int.Input("num_zero", default=8, min=0, max=80, optional=True),
                io.Mask.Input("attn_mask", optional=True),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, pulid, embeds, method, weight, start_at, end_at, projection="ortho_v2", num_zero=8,
                attn_mask=None):
        node = check_inputs(cls, method=method, weight=weight, start_at=start_at, end_at=end_at,
                            projection=projection, num_zero=num_zero, attn_mask=attn_mask)
        adapter = check_adapter(pulid, node)
        # A wrong model (FLUX, SD1.5) is the first thing to say.
        cross_attn_layers(model, adapter, node, flux_node="Apply PuLID Embeds (FLUX)")
        embeds = checked_embeds(embeds, node, adapter)
        if method != "custom":
            projection, num_zero = method_settings(adapter.version, method)
        return io.NodeOutput(apply_embeds(model, adapter, embeds, node=node, weight=weight, projection=projection,
                                          num_zero=num_zero, start_at=start_at, end_at=end_at,
                                          attn_mask=attn_mask))


def describe(embeds: IDEmbeds) -> str:
    """How messages name embeddings: their file, or where they came from."""
    source = embeds.metadata.get(SOURCE_KEY) if isinstance(embeds.metadata, dict) else None
    return str(source) if source else "embeds from 'Encode Face (PuLID)'"


def checked_embeds(embeds, node: str, adapter=None) -> IDEmbeds:
    """The embeds input, checked (shape, dtype, finite values, kind); fp32 tensors."""
    if not isinstance(embeds, IDEmbeds):
        raise PuLIDError(f"{node}: embeds must come from 'Encode Face (PuLID)' or 'Load PuLID Embeds'; got "
                         f"{type(embeds).__name__}.")
    cond, uncond = check_tokens(embeds.cond, embeds.uncond, embeds.version, embeds.combine, embeds.images,
                                name=describe(embeds), node=node,
                                expected_version=adapter.version if adapter is not None else None,
                                width=getattr(adapter.model, "context_dim", None) if adapter is not None else None)
    return dataclasses.replace(embeds, cond=cond, uncond=uncond)


def new_file_path(folder: str, prefix: str, node: str) -> tuple[str, str, int]:
    """(folder, base name, first counter) for a new file, as ComfyUI's savers name them.

    ComfyUI's counter (``folder_paths.get_save_image_path``) only counts names of the
    form ``<prefix>_<digits>_...``: the trailing ``_`` is what makes it advance.
    """
    if not isinstance(prefix, str) or not prefix.strip() or "\0" in prefix:
        raise PuLIDError(f"{node}: filename_prefix {prefix!r} is not a usable file name prefix.")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON client
        raise PuLIDError(f"{node}: filename_prefix {prefix!r} is not valid text (a broken character); type the "
                         "name again.") from None
    # A workflow made on Windows may hold "people\\bob": a subfolder there, and here too.
    prefix = prefix.strip().replace("\\", "/")
    parts = os.path.normpath(prefix).split("/")
    if os.path.isabs(prefix) or ".." in parts:
        raise PuLIDError(f"{node}: filename_prefix {prefix!r} points outside {folder}; use a name or a "
                         "subfolder/name inside it.")
    if parts[-1] in ("", "."):  # "." or "x/..": the file would be the hidden "._00001_.safetensors"
        raise PuLIDError(f"{node}: filename_prefix {prefix!r} names no file (it is the folder itself); use a "
                         "name such as 'face' or 'people/face'.")
    limit = _name_max(folder)
    for i, part in enumerate(parts):
        room = limit - (NAME_SUFFIX if i == len(parts) - 1 else 0)
        if len(part.encode("utf-8")) > room:
            raise PuLIDError(f"{node}: filename_prefix is too long for the file system ({len(part.encode())} "
                             f"bytes in {part[:24]!r}...; at most {room} per name). Use a shorter prefix.")
    try:
        full, name, counter, _, _ = folder_paths.get_save_image_path(prefix, folder)
    except Exception as exc:  # ComfyUI raises a bare Exception for a path outside the folder
        raise PuLIDError(f"{node}: cannot save with filename_prefix {prefix!r}: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    return full, name, counter


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


class PuLIDSaveEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDSaveEmbeds",
            display_name="Save PuLID Embeds",
            category="pulid",
            description="Saves ID embeddings (with the PuLID version and the number of photos) to "
                        "models/pulid_embeds, for 'Load PuLID Embeds'.",
            inputs=[PuLIDEmbeds.Input("embeds"),
                    io.String.Input("filename_prefix", default="pulid_face")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, embeds, filename_prefix):
        node = check_inputs(cls)
        embeds = checked_embeds(embeds, node)
        folder = os.path.abspath(folder_paths.get_folder_paths(EMBEDS_FOLDER)[0])
        full, name, counter = new_file_path(folder, filename_prefix, node)
        extra = {k: v for k, v in embeds.metadata.items() if k != SOURCE_KEY}
        metadata = embeds_metadata(embeds.version, embeds.images, embeds.combine, extra)
        try:
            os.makedirs(full, exist_ok=True)
            while True:
                path = os.path.join(full, f"{name}_{counter:05}_.safetensors")
                shown = os.path.relpath(path, folder).replace(os.sep, "/")
                # ComfyUI's counter sees only this folder; a name another embeddings folder holds
                # would make the Load list resolve that older file's name to this new one.
                if folder_paths.get_full_path(EMBEDS_FOLDER, shown) is not None:
                    counter += 1
                    continue
                try:
                    write_embeds(path, embeds.cond, embeds.uncond, metadata)
                    break
                except FileExistsError:  # a file ComfyUI's counter did not count: take the next number
                    counter += 1
        except OSError as exc:
            raise PuLIDError(f"{node}: could not write to {full}: {exc.strerror or exc}. Check that the folder "
                             "is writable and the disk has room.") from exc
        return io.NodeOutput(ui={"text": [f"saved {shown} in {folder} (PuLID {embeds.version}, {embeds.images} "
                                          "photo(s))"]})


class PuLIDLoadEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDLoadEmbeds",
            display_name="Load PuLID Embeds",
            category="pulid",
            description="Loads ID embeddings saved by 'Save PuLID Embeds' from models/pulid_embeds.",
            inputs=[io.Combo.Input("embeds_file", options=folder_paths.get_filename_list(EMBEDS_FOLDER))],
            outputs=[PuLIDEmbeds.Output(display_name="PULID_EMBEDS")],
        )

    @classmethod
    def execute(cls, embeds_file):
        node = check_inputs(cls, files={"embeds_file": embeds_file})
        path = folder_paths.get_full_path(EMBEDS_FOLDER, embeds_file)
        if path is None:
            raise PuLIDError(f"{node}: {embeds_file} not found in "
                             f"{', '.join(folder_paths.get_folder_paths(EMBEDS_FOLDER))}.")
        embeds = read_embeds(path, node=node, name=embeds_file)
        return io.NodeOutput(dataclasses.replace(embeds, metadata={**embeds.metadata, SOURCE_KEY: embeds_file}))

    @classmethod
    def fingerprint_inputs(cls, embeds_file):
        # The content's hash, as ComfyUI's LoadImage does: every file of one kind has the same size,
        # and a timestamp misses a file replaced within its granularity (FAT 2 s) or restored with
        # its old time (cp -p, rsync -a, unzip). The files are about 0.5 MB.
        path = folder_paths.get_full_path(EMBEDS_FOLDER, embeds_file) if isinstance(embeds_file, str) else None
        if path is None:
            return embeds_file
        try:
            stat = os.stat(path)
            if stat.st_size > MAX_FILE_BYTES:  # refused by the Load itself
                return stat.st_mtime_ns
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()
        except OSError:
            return embeds_file  # unreadable: the Load says why


NODES = [PuLIDEncodeFace, PuLIDApplyEmbeds, PuLIDSaveEmbeds, PuLIDLoadEmbeds]
