"""Apply PuLID to a FLUX.1 MODEL: face → ID tokens → the authors' 20 cross-attention insertions."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..pulid_core import flux as core_flux
from ..pulid_core.errors import PuLIDError
from ..pulid_core.options import ON_NO_FACE, SELECTIONS
from .embeds import checked_embeds, describe
from .flux_patch import FluxIDContext, applications, install
from .loaders import PuLIDAdapter
from .pulid import IDEmbeds, check_adapter, check_schedule, encode_faces, face_apply_inputs, selection_of
from .types import PuLID, PuLIDEmbeds, check_inputs

log = logging.getLogger(__name__)

FLUX_FILE = "pulid_flux_v0.9.1.safetensors"
WEIGHT_RANGE = (-1.0, 5.0)


def check_flux_adapter(pulid, node: str, sdxl_node: str = "Apply PuLID") -> PuLIDAdapter:
    """The pulid input, a PuLID-FLUX adapter; an SDXL one is sent to ``sdxl_node`` (the SDXL node of the
    same kind)."""
    adapter = check_adapter(pulid, node)
    if adapter.version != "flux":
        raise PuLIDError(
            f"{node}: {adapter.filename} is a PuLID {adapter.version} adapter for SDXL. For FLUX.1 load "
            f"{FLUX_FILE} (models/pulid) with 'Load PuLID Model'; for SDXL use '{sdxl_node}'."
        )
    return adapter


def check_flux_model(model, adapter: PuLIDAdapter, node: str) -> None:
    """Refuse anything but a FLUX.1 diffusion model as wide as the adapter's cross-attention."""
    try:
        dm = model.get_model_object("diffusion_model")
    except AttributeError as exc:
        raise PuLIDError(f"{node}: the model input is not a ComfyUI MODEL.") from exc
    name = type(dm).__name__
    if hasattr(dm, "input_blocks"):
        raise PuLIDError(
            f"{node}: the model is a UNet ({name}: SDXL or SD1.5), not FLUX.1. For SDXL use 'Apply PuLID' "
            "with an SDXL PuLID file; for FLUX load a FLUX.1 model (Load Diffusion Model)."
        )
    if not hasattr(dm, "double_blocks") or not hasattr(dm, "single_blocks"):
        raise PuLIDError(f"{node}: the model is {name}, not FLUX.1 (no double/single blocks). PuLID-FLUX works "
                         "only with FLUX.1 models (dev, schnell, Krea-dev and their fine-tunes).")
    core_flux.check_flux_model(getattr(dm, "hidden_size", None), len(dm.double_blocks), len(dm.single_blocks),
                               node=node, ca_dim=adapter.model.ca_dim, model_class=name,
                               # ComfyUI runs FLUX.2 through the same class, with global modulation
                               global_modulation=bool(getattr(getattr(dm, "params", None), "global_modulation", False)))


def _mask(attn_mask, node: str):
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.ndim not in (2, 3) or 0 in attn_mask.shape:
        raise PuLIDError(f"{node}: attn_mask must be a MASK (height x width); got "
                         f"{tuple(getattr(attn_mask, 'shape', ()))}.")
    mask = attn_mask if attn_mask.ndim == 3 else attn_mask[None]
    return mask.float().cpu()


def apply_flux_embeds(model, adapter: PuLIDAdapter, embeds: IDEmbeds, *, node: str, weight: float, start_at: float,
                      end_at: float, attn_mask=None):
    """A clone of ``model`` whose 20 PuLID blocks add this identity (chained onto their occupants).

    An earlier PuLID-FLUX application on ``model`` is replaced, not stacked, unless both have
    an attn_mask (one identity per region: two people in one image).
    """
    if not isinstance(embeds, IDEmbeds):
        raise PuLIDError(f"{node}: embeds must come from 'Encode Face (PuLID)' or 'Load PuLID Embeds'.")
    if embeds.version != "flux":
        raise PuLIDError(
            f"{node}: {describe(embeds)}: made with PuLID {embeds.version} (SDXL). Encode the face with "
            f"{FLUX_FILE} loaded in 'Load PuLID Model', or apply these with 'Apply PuLID Embeds' on SDXL."
        )
    embeds = checked_embeds(embeds, node, adapter)  # shape, dtype, finite values (hand-made or corrupt files)
    weight, start_at, end_at = check_schedule(node, weight, start_at, end_at, _range_inputs())
    check_flux_model(model, adapter, node)
    mask = _mask(attn_mask, node)
    sampling = model.get_model_object("model_sampling")
    context = FluxIDContext(adapter.patcher, embeds.cond, embeds.uncond, weight=weight,
                            sigma_start=sampling.percent_to_sigma(start_at),
                            sigma_end=sampling.percent_to_sigma(end_at), mask=mask, node=node,
                            schedule=(start_at, end_at))

    def replaces(earlier_masked: bool) -> bool:
        return mask is None or not earlier_masked

    replaced = sum(replaces(masked) for _, masked in applications(model))
    if replaced:
        log.info("%s: replaces %d earlier PuLID-FLUX identity(ies) on this model (chain masked ones for several "
                 "people)", node, replaced)
    patched = install(model, context, replace=replaces)
    log.info("%s: PuLID-FLUX on 20 blocks (weight %.2f, %s)", node, weight,
             "masked" if mask is not None else "whole image")
    return patched


def _range_inputs():
    return [
        io.Float.Input("weight", default=1.0, min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1], step=0.05,
                       tooltip="id_weight: more is more likeness, less editability (authors: 1.0)."),
        io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="When the ID starts, as a fraction of the schedule (authors: from the first step)."),
        io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001),
    ]


_MASK_TOOLTIP = ("Where the identity goes (at the exact grid of image tokens). Chain several Apply nodes with masks "
                 "for several people; without masks a second Apply replaces the first.")


class PuLIDFluxApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDFluxApply",
            display_name="Apply PuLID (FLUX)",
            category="pulid",
            description="Injects the identity of the face in `image` into a FLUX.1 model (PuLID-FLUX v0.9.x, the "
                        "authors' 20 cross-attention insertions after the double and single blocks). Several "
                        "photos are encoded together, as the authors' IDFormer does.",
            inputs=face_apply_inputs() + _range_inputs() + [
                io.Combo.Input("face_selection", options=list(SELECTIONS), default="largest"),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="For the ordered selections: which face (0 = first)."),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), default="error",
                               tooltip="skip drops photos without a face (the node errors if none is left)."),
                io.Mask.Input("attn_mask", optional=True, tooltip=_MASK_TOOLTIP),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, pulid, eva_clip, face_analysis, image, weight, start_at, end_at,
                face_selection="largest", face_index=0, on_no_face="error", attn_mask=None):
        node = check_inputs(cls, weight=weight, start_at=start_at, end_at=end_at, face_selection=face_selection,
                            face_index=face_index, on_no_face=on_no_face, attn_mask=attn_mask, image=image)
        adapter = check_flux_adapter(pulid, node)
        check_schedule(node, weight, start_at, end_at, _range_inputs())
        check_flux_model(model, adapter, node)  # refuse a wrong model before the slow face work
        embeds, _ = encode_faces(adapter, eva_clip, face_analysis, image, node=node,
                                 selection=selection_of(face_selection, face_index), on_no_face=on_no_face)
        return io.NodeOutput(apply_flux_embeds(model, adapter, embeds, node=node, weight=weight, start_at=start_at,
                                               end_at=end_at, attn_mask=attn_mask))


class PuLIDFluxApplyEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDFluxApplyEmbeds",
            display_name="Apply PuLID Embeds (FLUX)",
            category="pulid",
            description="Applies ID embeddings made with a PuLID-FLUX adapter ('Encode Face (PuLID)' or "
                        "'Load PuLID Embeds') to a FLUX.1 model.",
            inputs=[
                io.Model.Input("model"),
                PuLID.Input("pulid"),
                PuLIDEmbeds.Input("embeds"),
            ] + _range_inputs() + [io.Mask.Input("attn_mask", optional=True, tooltip=_MASK_TOOLTIP)],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, pulid, embeds, weight, start_at, end_at, attn_mask=None):
        node = check_inputs(cls, weight=weight, start_at=start_at, end_at=end_at, attn_mask=attn_mask)
        adapter = check_flux_adapter(pulid, node, sdxl_node="Apply PuLID Embeds")
        return io.NodeOutput(apply_flux_embeds(model, adapter, embeds, node=node, weight=weight, start_at=start_at,
                                               end_at=end_at, attn_mask=attn_mask))


NODES = [PuLIDFluxApply, PuLIDFluxApplyEmbeds]
