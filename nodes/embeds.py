"""Encode a face once, keep its ID embeddings, apply them any number of times."""

from __future__ import annotations

import json
import os

import folder_paths
import safetensors.torch
from comfy_api.latest import io

from ..pulid_core.errors import PuLIDError
from .pulid import (
    COMBINES,
    PROJECTIONS,
    SELECTIONS,
    IDEmbeds,
    _range_inputs,
    _selection,
    apply_embeds,
    check_adapter,
    encode_faces,
    method_settings,
)
from .types import EvaClip, FaceAnalysis, PuLID, PuLIDEmbeds

EMBEDS_FOLDER = "pulid_embeds"
FORMAT = "comfyui-pulid/id-embeds/1"


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
                io.Combo.Input("face_selection", options=SELECTIONS, default="largest"),
                io.Int.Input("face_index", default=0, min=0, max=64),
                io.Combo.Input("on_no_face", options=["error", "skip"], default="error"),
                io.Combo.Input("combine", options=COMBINES, default="average",
                               tooltip="v1: average or concatenate the photos' ID tokens; v1.1 always encodes "
                                       "all photos together."),
            ],
            outputs=[PuLIDEmbeds.Output(display_name="PULID_EMBEDS"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, pulid, eva_clip, face_analysis, image, face_selection, face_index, on_no_face, combine):
        adapter = check_adapter(pulid, "Encode Face (PuLID)")
        embeds, preview = encode_faces(adapter, eva_clip, face_analysis, image, node="Encode Face (PuLID)",
                                       selection=_selection(face_selection, face_index), on_no_face=on_no_face,
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
                io.Combo.Input("method", options=["fidelity", "style", "neutral", "custom"], default="fidelity",
                               tooltip="custom uses the projection and num_zero below"),
            ] + _range_inputs(0.8) + [
                io.Combo.Input("projection", options=PROJECTIONS, default="ortho_v2", optional=True),
                io.Int.Input("num_zero", default=8, min=0, max=80, optional=True),
                io.Mask.Input("attn_mask", optional=True),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, pulid, embeds, method, weight, start_at, end_at, projection="ortho_v2", num_zero=8,
                attn_mask=None):
        node = "Apply PuLID Embeds"
        adapter = check_adapter(pulid, node)
        if not isinstance(embeds, IDEmbeds):
            raise PuLIDError(f"{node}: embeds must come from 'Encode Face (PuLID)' or 'Load PuLID Embeds'.")
        if method != "custom":
            projection, num_zero = method_settings(adapter.version, method)
        return io.NodeOutput(apply_embeds(model, adapter, embeds, node=node, weight=weight, projection=projection,
                                          num_zero=num_zero, start_at=start_at, end_at=end_at,
                                          attn_mask=attn_mask))


def save_embeds(embeds: IDEmbeds, path: str) -> None:
    metadata = {"format": FORMAT, "pulid_version": embeds.version, "images": str(embeds.images),
                "combine": embeds.combine, "extra": json.dumps(embeds.metadata)}
    safetensors.torch.save_file({"cond": embeds.cond.contiguous(), "uncond": embeds.uncond.contiguous()}, path,
                                metadata=metadata)


def load_embeds(path: str) -> IDEmbeds:
    name = os.path.basename(path)
    with safetensors.safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT or set(f.keys()) != {"cond", "uncond"}:
            raise PuLIDError(f"{name} is not a PuLID embeddings file saved by 'Save PuLID Embeds'.")
        cond, uncond = f.get_tensor("cond"), f.get_tensor("uncond")
    return IDEmbeds(metadata["pulid_version"], cond.float(), uncond.float(), int(metadata.get("images", 1)),
                    metadata.get("combine", ""), json.loads(metadata.get("extra", "{}")))


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
        if not isinstance(embeds, IDEmbeds):
            raise PuLIDError("Save PuLID Embeds: embeds must come from 'Encode Face (PuLID)'.")
        folder = folder_paths.get_folder_paths(EMBEDS_FOLDER)[0]
        full, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder)
        os.makedirs(full, exist_ok=True)
        filename = f"{name}_{counter:05}.safetensors"
        save_embeds(embeds, os.path.join(full, filename))
        shown = os.path.join(subfolder, filename) if subfolder else filename
        return io.NodeOutput(ui={"text": [f"saved {shown} (PuLID {embeds.version}, {embeds.images} photo(s))"]})


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
        path = folder_paths.get_full_path(EMBEDS_FOLDER, embeds_file)
        if path is None:
            raise PuLIDError(f"Load PuLID Embeds: {embeds_file} not found in "
                             f"{', '.join(folder_paths.get_folder_paths(EMBEDS_FOLDER))}.")
        return io.NodeOutput(load_embeds(path))

    @classmethod
    def fingerprint_inputs(cls, embeds_file):
        path = folder_paths.get_full_path(EMBEDS_FOLDER, embeds_file)
        return os.path.getmtime(path) if path else embeds_file


NODES = [PuLIDEncodeFace, PuLIDApplyEmbeds, PuLIDSaveEmbeds, PuLIDLoadEmbeds]
