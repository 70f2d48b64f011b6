"""Loader nodes: the PuLID adapter, EVA-CLIP and InsightFace/facexlib.

Torch models are wrapped in ComfyUI ModelPatchers, so ComfyUI loads them onto the
GPU when they are used and offloads them after; nothing is pinned on the GPU.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..pulid_core.options import ALIGNMENTS, PRECISIONS, PROVIDERS, check_choice
from . import folders
from .comfy_compat import offload_model
from .types import EvaClip, FaceAnalysis, PuLID, check_inputs, display_name, shown_name

log = logging.getLogger(__name__)


class PuLIDAdapter:
    """A loaded PuLID checkpoint: the ModelPatcher around ``pulid_core.PuLIDModel``."""

    def __init__(self, patcher, filename: str):
        self.patcher = patcher
        self.filename = filename

    @property
    def model(self):
        return self.patcher.model

    @property
    def version(self) -> str:
        return self.model.version


class EvaClipModel:
    """A loaded EVA02-CLIP-L vision tower in a ModelPatcher."""

    def __init__(self, patcher, filename: str, dtype: torch.dtype):
        self.patcher = patcher
        self.filename = filename
        self.dtype = dtype


def load_adapter(filename: str) -> PuLIDAdapter:
    from ..pulid_core import load_pulid

    model = load_pulid(folders.resolve("pulid", filename))
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    log.info("PuLID %s loaded from %s", model.version, filename)
    return PuLIDAdapter(patcher, filename)


def load_eva(filename: str, precision: str = "fp32") -> EvaClipModel:
    from ..pulid_core import load_eva_clip

    dtype = PRECISIONS[check_choice(precision, PRECISIONS, node=display_name(PuLIDEvaClipLoader),
                                    input_name="precision")]
    model = load_eva_clip(folders.resolve("eva_clip", filename), dtype=dtype)
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.text_encoder_device(), offload_device=mm.text_encoder_offload_device())
    return EvaClipModel(patcher, filename, dtype)


def load_face_pipeline(provider: str, pack: str, alignment: str):
    from ..pulid_core.face import FacePipeline, load_face_analysis, load_facexlib

    # The folder holding the pack's .onnx files (found in any registered insightface dir).
    analyzer = load_face_analysis(folders.insightface_pack_dir(pack), pack=pack, provider=provider)
    # Keypoint alignment needs BiSeNet only, not the RetinaFace weights.
    detection = alignment == "retinaface"
    facexlib = load_facexlib(folders.facexlib_dir(detection=detection), device="cpu", detection=detection)
    # RetinaFace and BiSeNet run on ComfyUI's device (the CPU without a GPU) during the encode
    # and are offloaded after it, like EVA-CLIP.
    patchers = [comfy.model_patcher.ModelPatcher(m, load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device())
                for m in facexlib.modules()]

    @contextlib.contextmanager
    def on_device():
        mm.load_models_gpu(patchers, force_full_load=True)
        try:
            yield
        finally:
            for patcher in patchers:
                offload_model(patcher)

    return FacePipeline(analyzer, facexlib, alignment=alignment, device_scope=on_device)


def _file_combo(key: str) -> list[str]:
    return folder_paths.get_filename_list(key)


class PuLIDModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDModelLoader",
            display_name=shown_name("Load PuLID Model"),
            category="pulid",
            description="Loads a PuLID adapter from models/pulid: SDXL (v1 or v1.1, official or "
                        "IPAdapter-format file) or FLUX.1 (pulid_flux_v0.9.1 / v0.9.0). The version is "
                        "detected from the weights; FLUX adapters go to Apply PuLID (FLUX).",
            inputs=[io.Combo.Input("pulid_file", options=_file_combo("pulid"),
                                   tooltip="SDXL: pulid_v1.1.safetensors, pulid_v1.bin or "
                                           "ip-adapter_pulid_sdxl_fp16.safetensors; FLUX.1: "
                                           "pulid_flux_v0.9.1.safetensors or pulid_flux_v0.9.0.safetensors "
                                           "(in models/pulid)")],
            outputs=[PuLID.Output(display_name="PULID")],
        )

    @classmethod
    def execute(cls, pulid_file):
        check_inputs(cls, files={"pulid_file": pulid_file})
        adapter = load_adapter(pulid_file)
        return io.NodeOutput(adapter, ui={"text": [f"PuLID {adapter.version}"]})


class PuLIDEvaClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDEvaClipLoader",
            display_name="Load EVA-CLIP (PuLID)",
            category="pulid",
            description="Loads EVA02-CLIP-L-14-336 from models/eva_clip: the official "
                        "EVA02_CLIP_L_336_psz14_s6B.pt or the open_clip file. Nothing is downloaded.",
            inputs=[
                io.Combo.Input("eva_clip", options=_file_combo("eva_clip")),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="fp32 is what the PuLID authors run; fp16/bf16 halve memory."),
            ],
            outputs=[EvaClip.Output(display_name="EVA_CLIP")],
        )

    @classmethod
    def execute(cls, eva_clip, precision="fp32"):
        check_inputs(cls, files={"eva_clip": eva_clip}, precision=precision)
        return io.NodeOutput(load_eva(eva_clip, precision))


class PuLIDInsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        packs = folders.list_insightface_packs() or ["antelopev2"]
        return io.Schema(
            node_id="PuLIDInsightFaceLoader",
            display_name="Load InsightFace + facexlib (PuLID)",
            category="pulid",
            description="Face detection and ArcFace embedding (InsightFace pack from "
                        "models/insightface/models/<pack>) and the facexlib RetinaFace/BiSeNet models "
                        "(models/facexlib) for alignment and parsing.",
            inputs=[
                io.Combo.Input("provider", options=list(PROVIDERS), default="CPU",
                               tooltip="ONNX Runtime provider; falls back to CPU with a warning when the "
                                       "installed onnxruntime lacks it."),
                io.Combo.Input("pack", options=packs, default="antelopev2" if "antelopev2" in packs else packs[0],
                               tooltip="antelopev2 for PuLID, buffalo_l for PhotoMaker v2"),
                io.Combo.Input("alignment", options=list(ALIGNMENTS), default="retinaface",
                               tooltip="retinaface: the authors' facexlib alignment; insightface: the "
                                       "detector's own five keypoints (no RetinaFace weights needed)"),
            ],
            outputs=[FaceAnalysis.Output(display_name="FACEANALYSIS")],
        )

    @classmethod
    def execute(cls, provider, pack, alignment="retinaface"):
        check_inputs(cls, files={"pack": pack}, provider=provider, alignment=alignment)
        return io.NodeOutput(load_face_pipeline(provider, pack, alignment))


NODES = [PuLIDModelLoader, PuLIDEvaClipLoader, PuLIDInsightFaceLoader]
