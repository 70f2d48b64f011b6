"""The node ids of the archived cubiq/PuLID_ComfyUI, so its saved workflows open and run.

Same ids, inputs and widget order; the work is done by this pack's code (all 70
layers, the authors' preprocessing and math). Registered only when that pack is
not installed (see nodes/__init__.py).
"""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..pulid_core.errors import ModelFileError
from ..pulid_core.identity import method_settings
from ..pulid_core.models import missing_file_message, registry
from ..pulid_core.options import METHODS, PROJECTIONS, PROVIDERS
from .loaders import load_adapter, load_eva, load_face_pipeline
from .pulid import apply_embeds, check_adapter, cross_attn_layers, encode_faces, face_apply_inputs
from .types import EvaClip, FaceAnalysis, PuLID, check_inputs

CATEGORY = "pulid/legacy (cubiq ids)"


class PulidModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PulidModelLoader", display_name="Load PuLID Model (legacy id)", category=CATEGORY,
                         inputs=[io.Combo.Input("pulid_file", options=folder_paths.get_filename_list("pulid"))],
                         outputs=[PuLID.Output(display_name="PULID")])

    @classmethod
    def execute(cls, pulid_file):
        check_inputs(cls, files={"pulid_file": pulid_file})
        return io.NodeOutput(load_adapter(pulid_file))


class PulidInsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PulidInsightFaceLoader", display_name="Load InsightFace (legacy id)",
                         category=CATEGORY,
                         inputs=[io.Combo.Input("provider", options=list(PROVIDERS))],
                         outputs=[FaceAnalysis.Output(display_name="FACEANALYSIS")])

    @classmethod
    def execute(cls, provider):
        check_inputs(cls, provider=provider)
        return io.NodeOutput(load_face_pipeline(provider, "antelopev2", "retinaface"))


def default_eva_file() -> str:
    """The old loader had no input (it downloaded EVA-CLIP): take the file in models/eva_clip."""
    files = folder_paths.get_filename_list("eva_clip")
    known = [e.filename for e in registry if e.folder == "eva_clip"]
    for name in known:
        if name in files:
            return name
    if files:
        return files[0]
    entry = next(e for e in registry if e.folder == "eva_clip")
    raise ModelFileError(missing_file_message(entry, folder_paths.get_folder_paths("eva_clip")))


class PulidEvaClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PulidEvaClipLoader", display_name="Load Eva Clip (legacy id)", category=CATEGORY,
                         inputs=[], outputs=[EvaClip.Output(display_name="EVA_CLIP")])

    @classmethod
    def execute(cls):
        return io.NodeOutput(load_eva(default_eva_file()))


def range_inputs():
    return [io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001),
            io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001)]


def apply(node, model, pulid, eva_clip, face_analysis, image, weight, projection, num_zero, start_at, end_at,
           attn_mask, noise=0.0):
    adapter = check_adapter(pulid, node)
    cross_attn_layers(model, adapter, node)
    # The old pack skipped photos without a face.
    embeds, _ = encode_faces(adapter, eva_clip, face_analysis, image, node=node, on_no_face="skip", noise=noise)
    return apply_embeds(model, adapter, embeds, node=node, weight=weight, projection=projection, num_zero=num_zero,
                        start_at=start_at, end_at=end_at, attn_mask=attn_mask)


class ApplyPulid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyPulid", display_name="Apply PuLID (legacy id)", category=CATEGORY,
            inputs=face_apply_inputs() + [
                io.Combo.Input("method", options=list(METHODS)),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05),
            ] + range_inputs() + [io.Mask.Input("attn_mask", optional=True)],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, pulid, eva_clip, face_analysis, image, method, weight, start_at, end_at, attn_mask=None):
        node = check_inputs(cls, method=method, weight=weight, start_at=start_at, end_at=end_at, attn_mask=attn_mask,
                            image=image)
        adapter = check_adapter(pulid, node)
        cross_attn_layers(model, adapter, node)  # a FLUX file or model is named before the presets
        projection, num_zero = method_settings(adapter.version, method)
        return io.NodeOutput(apply(node, model, pulid, eva_clip, face_analysis, image, weight, projection,
                                    num_zero, start_at, end_at, attn_mask))


class ApplyPulidAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyPulidAdvanced", display_name="Apply PuLID Advanced (legacy id)", category=CATEGORY,
            inputs=face_apply_inputs() + [
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05),
                io.Combo.Input("projection", options=list(PROJECTIONS)),
                io.Int.Input("fidelity", default=8, min=0, max=32, step=1),
                io.Float.Input("noise", default=0.0, min=-1.0, max=1.0, step=0.1),
            ] + range_inputs() + [io.Mask.Input("attn_mask", optional=True)],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, pulid, eva_clip, face_analysis, image, weight, projection, fidelity, noise, start_at,
                end_at, attn_mask=None):
        node = check_inputs(cls, weight=weight, projection=projection, fidelity=fidelity, noise=noise,
                            start_at=start_at, end_at=end_at, attn_mask=attn_mask, image=image)
        return io.NodeOutput(apply(node, model, pulid, eva_clip, face_analysis, image, weight,
                                    projection, fidelity, start_at, end_at, attn_mask, noise=noise))


NODES = [PulidModelLoader, PulidInsightFaceLoader, PulidEvaClipLoader, ApplyPulid, ApplyPulidAdvanced]
