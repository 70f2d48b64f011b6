"""Apply PuLID to an SDXL MODEL: face → ID tokens → attn2 patches on all 70 layers."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io

from ..pulid_core.embeds import IDEmbeds
from ..pulid_core.errors import PuLIDError
from ..pulid_core.identity import encode_identity, method_settings, stored_combine
from ..pulid_core.layers import MODULE_INDEX_BY_COMFY_KEY
from ..pulid_core.options import (
    COMBINES,
    METHODS,
    METHODS_CUSTOM,
    ON_NO_FACE,
    PROJECTIONS,
    SELECTIONS,
    check_choice,
    check_finite,
    check_mask,
)
from .attn_patch import IDAttnPatch, IDContext
from .comfy_compat import offload_model
from .loaders import EvaClipModel, PuLIDAdapter, PuLIDEvaClipLoader, PuLIDInsightFaceLoader, PuLIDModelLoader
from .run_options import bind_run_options
from .types import EvaClip, FaceAnalysis, PuLID, check_inputs, display_name, shown_name

log = logging.getLogger(__name__)

# -- model checks ------------------------------------------------------------------
def cross_attn_layers(model, adapter: PuLIDAdapter, node: str,
                      flux_node: str = "Apply PuLID (FLUX)") -> list[tuple[tuple, int]]:
    """(ComfyUI attn2 key, checkpoint module index) for every cross-attention layer.

    Found by walking the UNet, then checked against SDXL's 70 layers and the adapter's
    widths, so SD1.5, the refiner and distilled UNets are refused with a reason, naming
    ``node``; a FLUX model or adapter is sent to ``flux_node`` (the FLUX node of the same kind).
    """
    try:
        unet = model.get_model_object("diffusion_model")
    except AttributeError as exc:
        raise PuLIDError(f"{node}: the model input is not a ComfyUI MODEL.") from exc
    if adapter.version == "flux" or hasattr(unet, "double_blocks"):
        what = f"{adapter.filename} is a PuLID-FLUX adapter" if adapter.version == "flux" else "the model is a DiT (FLUX?)"
        raise PuLIDError(f"{node}: {what}, and this node is PuLID for SDXL. For FLUX.1 use '{flux_node}' with "
                         "pulid_flux_v0.9.1.safetensors; for SDXL load an SDXL model and pulid_v1.1.safetensors.")
    found = {}
    for name, blocks in (("input", getattr(unet, "input_blocks", [])), ("middle", [getattr(unet, "middle_block", [])]),
                         ("output", getattr(unet, "output_blocks", []))):
        for i, block in enumerate(blocks):
            for layer in block:
                for j, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    if getattr(tb, "attn2", None) is not None:
                        found[(name, 0 if name == "middle" else i, j)] = tb.attn2
    expected = set(MODULE_INDEX_BY_COMFY_KEY)
    if set(found) != expected:
        context = next(iter(found.values())).to_k.in_features if found else None
        kind = {768: "an SD1.5 model", 1024: "an SD2 model", 1280: "the SDXL refiner"}.get(context)
        if kind is None and context == 2048:
            kind = "a distilled SDXL (SSD-1B, Vega, KOALA…)"
        raise PuLIDError(
            f"{node}: PuLID for SDXL needs a full SDXL UNet with its 70 cross-attention layers; this model has "
            f"{len(found)}{f' ({kind})' if kind else ''}. Use an SDXL base model or an SDXL fine-tune "
            "(Pony, Illustrious, Juggernaut, Lightning...)."
        )
    widths = adapter.model.layer_widths
    layers = []
    for key, attn in found.items():
        index = MODULE_INDEX_BY_COMFY_KEY[key]
        width = attn.to_q.out_features
        if widths[index] != width:
            raise PuLIDError(
                f"{node}: the PuLID adapter {adapter.filename} does not fit this UNet: layer {key} is {width} wide, "
                f"the adapter's is {widths[index]}."
            )
        layers.append((key, index))
    return layers


def check_adapter(pulid, node: str) -> PuLIDAdapter:
    if not isinstance(pulid, PuLIDAdapter):
        raise PuLIDError(
            f"{node}: the pulid input must come from '{display_name(PuLIDModelLoader)}' of this pack; got "
            f"{type(pulid).__name__} (from another PuLID pack?)."
        )
    return pulid


# -- encoding ----------------------------------------------------------------------
def _offload(patcher) -> None:
    """Give a run-once encoder's device memory back right away (ComfyUI would keep it loaded)."""
    offload_model(patcher)


def _previews(prepared) -> torch.Tensor:
    """Per face: the aligned crop | the masked grey face EVA-CLIP sees, as an IMAGE batch."""
    rows = []
    for face in prepared:
        crop = face.crop_bgr[:, :, ::-1].astype(np.float32) / 255.0
        features = face.features_rgb if face.features_rgb is not None else np.ones_like(crop)
        rows.append(np.concatenate([crop, features.astype(np.float32)], axis=1))
    return torch.from_numpy(np.stack(rows))


def encode_faces(adapter: PuLIDAdapter, eva: EvaClipModel, face_pipeline, image, *, node: str,
                 selection="largest", on_no_face="error", combine="average", noise: float = 0.0):
    """Reference image(s) → (IDEmbeds, preview IMAGE). The tokens come from ``pulid_core.identity``."""
    if not isinstance(eva, EvaClipModel):
        raise PuLIDError(
            f"{node}: the eva_clip input must come from '{display_name(PuLIDEvaClipLoader)}' of this pack.")
    if not hasattr(face_pipeline, "prepare_batch"):
        raise PuLIDError(
            f"{node}: the face_analysis input must come from '{display_name(PuLIDInsightFaceLoader)}' of this pack.")
    check_choice(combine, COMBINES, node=node, input_name="combine")
    check_choice(on_no_face, ON_NO_FACE, node=node, input_name="on_no_face")
    noise = check_finite(noise, node=node, input_name="uncond_noise")
    from ..pulid_core.face import id_cond_from

    images = image if isinstance(image, (list, tuple)) else list(image)
    bar = comfy.utils.ProgressBar(len(images) + 2)

    def progress(done, total):
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, len(images) + 2)

    try:
        prepared = face_pipeline.prepare_batch(images, on_no_face=on_no_face, selection=selection,
                                               progress=progress)
    except PuLIDError as exc:
        raise PuLIDError(f"{node}: {exc}") from exc

    # Offloaded in `finally`: an error midway (a CUDA fault, Cancel) leaves nothing loaded either.
    try:
        mm.load_models_gpu([eva.patcher], force_full_load=True)
        id_cond, hidden = id_cond_from(prepared, eva.patcher.model, device=eva.patcher.load_device,
                                       dtype=torch.float32)
    finally:
        _offload(eva.patcher)
    bar.update_absolute(len(images) + 1)

    model = adapter.model
    try:
        mm.load_models_gpu([adapter.patcher], force_full_load=True)
        device = adapter.patcher.load_device
        cond, uncond = encode_identity(model, id_cond.to(device), [h.to(device) for h in hidden], combine=combine,
                                       uncond_noise=noise)
    finally:
        _offload(adapter.patcher)
    bar.update_absolute(len(images) + 2)
    out = mm.intermediate_device()
    embeds = IDEmbeds(model.version, cond.float().to(out), uncond.float().to(out), len(prepared),
                      stored_combine(model.version, combine),
                      {"adapter": adapter.filename, "skipped": len(images) - len(prepared)})
    return embeds, _previews(prepared)


# -- applying ----------------------------------------------------------------------
def apply_embeds(model, adapter: PuLIDAdapter, embeds: IDEmbeds, *, node: str, weight: float, projection: str,
                 num_zero: int, start_at: float, end_at: float, attn_mask=None):
    """A clone of ``model`` whose 70 attn2 layers add this identity (chained onto any occupant)."""
    if embeds.version != adapter.version:
        raise PuLIDError(
            f"{node}: these ID embeddings were made with PuLID {embeds.version}, the adapter is "
            f"{adapter.version} ({adapter.filename}). Encode the face with the same PuLID model."
        )
    weight, start_at, end_at = check_schedule(node, weight, start_at, end_at)
    check_choice(projection, PROJECTIONS, node=node, input_name="projection")
    num_zero = int(check_finite(num_zero, node=node, input_name="num_zero", lo=0))
    # [M, H, W], M = 1 or the latent batch (known at sampling: checked there with options.check_mask_batch).
    mask = check_mask(attn_mask, node=node)
    layers = cross_attn_layers(model, adapter, node)
    sampling = model.get_model_object("model_sampling")
    context = IDContext(adapter.patcher, embeds.cond, embeds.uncond, weight=weight, projection=projection,
                        num_zero=num_zero, sigma_start=sampling.percent_to_sigma(start_at),
                        sigma_end=sampling.percent_to_sigma(end_at), mask=mask, node=node,
                        schedule=(start_at, end_at))
    patched = model.clone()
    occupants = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, index in layers:
        upstream = occupants.get(key) or occupants.get(key[:2])
        patched.set_model_attn2_replace(IDAttnPatch(context, index, upstream), key[0], key[1], key[2])
    bind_run_options(patched)  # the sampled model's schedule, regional prompts' areas
    log.info("%s: PuLID %s on %d layers (%s, %d zero tokens, weight %.2f)", node, adapter.version, len(layers),
             projection, num_zero, weight)
    return patched


def selection_of(selection: str, index: int):
    """The face pipeline's selection: 'largest', 'center' or (order, index)."""
    return selection if selection in ("largest", "center") else (selection, int(index))


def face_apply_inputs():
    """The inputs every Apply node that encodes a face starts with (SDXL, FLUX and the legacy ids)."""
    return [
        io.Model.Input("model"),
        PuLID.Input("pulid"),
        EvaClip.Input("eva_clip"),
        FaceAnalysis.Input("face_analysis"),
        io.Image.Input("image", tooltip="One or more photos of the same person (an image batch)."),
    ]


def check_schedule(node: str, weight, start_at, end_at, inputs=None) -> tuple[float, float, float]:
    """``weight``, ``start_at``, ``end_at`` as floats within their widgets' ranges (``inputs``, by default
    :func:`range_inputs`), ``start_at`` not after ``end_at``; else a PuLIDError naming ``node``.

    API clients skip the UI's checks, and NaN passes ComfyUI's own range check.
    """
    limits = {spec.id: (spec.min, spec.max) for spec in inputs or range_inputs(0.0)}
    weight, start_at, end_at = (check_finite(value, node=node, input_name=name, lo=limits[name][0], hi=limits[name][1])
                                for name, value in (("weight", weight), ("start_at", start_at), ("end_at", end_at)))
    if start_at > end_at:
        raise PuLIDError(f"{node}: start_at ({start_at}) must not be after end_at ({end_at}).")
    return weight, start_at, end_at


def range_inputs(weight_default: float):
    return [
        io.Float.Input("weight", default=weight_default, min=-1.0, max=5.0, step=0.05,
                       tooltip="id_scale: higher is more likeness, less editability (authors: 0.8)."),
        io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001),
        io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001),
    ]


class PuLIDApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDApply",
            display_name=shown_name("Apply PuLID"),
            category="pulid",
            description="Injects the identity of the face in `image` into every cross-attention layer of an "
                        "SDXL model (PuLID v1 or v1.1, the authors' math).",
            inputs=face_apply_inputs() + [
                io.Combo.Input("method", options=list(METHODS), default="fidelity",
                               tooltip="fidelity: ortho_v2 (v1: 8, v1.1: 20 zero tokens); style: ortho (v1: 16); "
                                       "neutral: plain addition (lower the weight)"),
            ] + range_inputs(0.8) + [io.Mask.Input("attn_mask", optional=True,
                                                     tooltip="Where the identity goes (several Apply nodes with "
                                                             "masks put several people in one image).")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, pulid, eva_clip, face_analysis, image, method, weight, start_at, end_at,
                attn_mask=None):
        node = check_inputs(cls, method=method, weight=weight, start_at=start_at, end_at=end_at,
                            attn_mask=attn_mask, image=image)
        adapter = check_adapter(pulid, node)
        # A wrong model or a FLUX file (no method presets) is named first, before the slow face work.
        cross_attn_layers(model, adapter, node)
        projection, num_zero = method_settings(adapter.version, method)
        embeds, _ = encode_faces(adapter, eva_clip, face_analysis, image, node=node)
        return io.NodeOutput(apply_embeds(model, adapter, embeds, node=node, weight=weight,
                                          projection=projection, num_zero=num_zero, start_at=start_at,
                                          end_at=end_at, attn_mask=attn_mask))


class PuLIDApplyAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDApplyAdvanced",
            display_name="Apply PuLID (Advanced)",
            category="pulid",
            description="Apply PuLID with every setting exposed: projection, zero tokens, uncond noise, which "
                        "face, what to do without a face, how several photos combine.",
            inputs=face_apply_inputs() + [
                io.Combo.Input("method", options=list(METHODS_CUSTOM), default="custom",
                               tooltip="custom uses projection and num_zero below; the others set them as "
                                       "Apply PuLID does"),
            ] + range_inputs(0.8) + [
                io.Combo.Input("projection", options=list(PROJECTIONS), default="ortho_v2"),
                io.Int.Input("num_zero", default=8, min=0, max=80,
                             tooltip="Zero tokens diluting the ID attention: more = more editable, less "
                                     "likeness (authors: v1 fidelity 8, style 16; v1.1 20)."),
                io.Float.Input("uncond_noise", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0: the negative ID is the encoder on zeros (authors). >0: on uniform "
                                       "noise of that size."),
                io.Combo.Input("face_selection", options=list(SELECTIONS), default="largest"),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="For the ordered selections: which face (0 = first)."),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), default="error",
                               tooltip="skip drops photos without a face (the node errors if none is left)."),
                io.Combo.Input("combine", options=list(COMBINES), default="average",
                               tooltip="v1 with several photos: average the ID tokens, or concatenate (the "
                                       "official app). v1.1 always encodes all photos together."),
                io.Mask.Input("attn_mask", optional=True),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, pulid, eva_clip, face_analysis, image, method, weight, start_at, end_at, projection,
                num_zero, uncond_noise, face_selection, face_index, on_no_face, combine, attn_mask=None):
        node = check_inputs(cls, method=method, weight=weight, start_at=start_at, end_at=end_at,
                            projection=projection, num_zero=num_zero, uncond_noise=uncond_noise,
                            face_selection=face_selection, face_index=face_index, on_no_face=on_no_face,
                            combine=combine, attn_mask=attn_mask, image=image)
        adapter = check_adapter(pulid, node)
        cross_attn_layers(model, adapter, node)
        if method != "custom":
            projection, num_zero = method_settings(adapter.version, method)
        embeds, _ = encode_faces(adapter, eva_clip, face_analysis, image, node=node,
                                 selection=selection_of(face_selection, face_index), on_no_face=on_no_face,
                                 combine=combine, noise=uncond_noise)
        return io.NodeOutput(apply_embeds(model, adapter, embeds, node=node, weight=weight, projection=projection,
                                          num_zero=num_zero, start_at=start_at, end_at=end_at,
                                          attn_mask=attn_mask))

NODES = [PuLIDApply, PuLIDApplyAdvanced]
