"""PhotoMaker v1/v2 nodes: load the file (ID encoder + bundled LoRA) and encode a prompt with an identity.

Done as the authors do (TencentARC/PhotoMaker photomaker/pipeline.py, v2: pipeline.py +
model_v2.py + insightface_package.py), unlike ComfyUI core's experimental
v1 node: all reference images are used, the class word before the trigger is repeated
N (v1) or 2N (v2) times before text encoding and the trigger is removed, the fused
vectors overwrite the full CLIP-L + CLIP-G width, the bundled LoRA is applied, and the
early "style strength" steps use the text-only prompt. The math is in pulid_core.photomaker.
"""

from __future__ import annotations

import copy
import logging
import os

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from ..pulid_core.errors import FaceNotFoundError, PuLIDError
from ..pulid_core.face import to_uint8_rgb
from ..pulid_core.photomaker import PhotoMakerModel, load_photomaker
from ..pulid_core.photomaker.lora import comfy_lora_state_dict, lora_patches
from ..pulid_core.photomaker.preprocess import preprocess_id_images
from ..pulid_core.photomaker.prompt import CLIP_EOS, check_trigger, expand_class_tokens
from . import folders
from .comfy_compat import offload_model
from .loaders import PuLIDInsightFaceLoader
from .types import FaceAnalysis, check_inputs, display_name

log = logging.getLogger(__name__)

# Not core's "PHOTOMAKER": those objects are core's v1-only encoder class.
PhotoMaker = io.Custom("PULID_PHOTOMAKER")

CATEGORY = "pulid/photomaker"
# The official v2 pipeline embeds faces with InsightFace's buffalo_l pack.
V2_FACE_PACK = "buffalo_l"
# When no face is found, the official v2 app retries detection at these sizes (insightface_package.py).
DET_SIZE_FALLBACK = (640, 576, 512, 448, 384, 320, 256)
# Moves the text-only/ID boundary just past the style-strength percent, so a step that
# lands exactly on it stays text-only (the official rule is inclusive: i <= S).
BOUNDARY_NUDGE = 1e-3


# ---------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------


def apply_lora(model, lora_weights, strength: float, name: str):
    """The MODEL with the bundled LoRA patched in (W + strength * up @ down), UNet only.

    Every target layer is checked against the MODEL first, so a non-SDXL model is an
    error naming the mismatch instead of ComfyUI's silent "lora key not loaded".
    """
    if strength == 0 and not lora_weights:
        return model  # an ID-encoder-only file: nothing to patch, as asked
    patches = lora_patches(lora_weights, name)
    weights = model.model.state_dict()
    missing = [t for t in patches if t not in weights]
    mismatched = [
        t
        for t, (up, down) in patches.items()
        if t in weights and tuple(weights[t].shape[:2]) != (up.shape[0], down.shape[1])
    ]
    if missing or mismatched:
        example = (missing or mismatched)[0]
        raise PuLIDError(
            f"The LoRA in {name} does not fit this MODEL: {len(missing)} of its {len(patches)} target layers "
            f"are missing and {len(mismatched)} have other shapes (e.g. {example}). PhotoMaker is made for "
            "SDXL: connect the MODEL of an SDXL checkpoint (base or a fine-tune)."
        )
    if strength == 0:
        return model
    new_model, _ = comfy.sd.load_lora_for_models(model, None, comfy_lora_state_dict(lora_weights, name), strength, 0)
    return new_model


def load_photomaker_patcher(source):
    """The ID encoder of a file (or its loaded dict), built with ComfyUI's manual_cast layers and
    managed by a ModelPatcher.

    Weights keep the file's dtypes (the real files mix bf16 and fp32); each layer casts
    them to the input's dtype at call time, so the fuse runs in fp32.
    """
    model = load_photomaker(source, operations=comfy.ops.manual_cast)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.text_encoder_device(),
        offload_device=comfy.model_management.text_encoder_offload_device(),
    )


class PuLIDPhotoMakerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDPhotoMakerLoader",
            display_name="Load PhotoMaker (PuLID pack)",
            category=CATEGORY,
            description=(
                "Loads photomaker-v1.bin or photomaker-v2.bin from models/photomaker (version detected from "
                "the file) and applies the LoRA bundled in the file to the MODEL, as the official pipeline "
                "does. Connect the photomaker output to 'PhotoMaker Encode (PuLID pack)'."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model; the bundled LoRA is applied to its UNet."),
                io.Combo.Input(
                    "photomaker_file",
                    options=folder_paths.get_filename_list("photomaker"),
                    tooltip="photomaker-v1.bin or photomaker-v2.bin (TencentARC) in models/photomaker.",
                ),
                io.Float.Input(
                    "lora_strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Strength of the bundled LoRA: 1.0 as the official pipeline; 0 skips it.",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with PhotoMaker's LoRA applied."),
                PhotoMaker.Output(display_name="photomaker", tooltip="The PhotoMaker ID encoder (v1 or v2)."),
            ],
        )

    @classmethod
    def execute(cls, model, photomaker_file, lora_strength) -> io.NodeOutput:
        check_inputs(cls, files={"photomaker_file": photomaker_file}, lora_strength=lora_strength)
        patcher = load_photomaker_patcher(folders.resolve("photomaker", photomaker_file))
        encoder = patcher.model
        model = apply_lora(model, encoder.lora_weights, lora_strength, os.path.basename(photomaker_file))
        return io.NodeOutput(model, patcher)


# ---------------------------------------------------------------------------
# Encode
# ---------------------------------------------------------------------------


# SDXL's CLIP: ComfyUI tokenizes for its two text encoders, CLIP-L ("l") and CLIP-G ("g").
SDXL_TEXT_ENCODERS = ("g", "l")


def trigger_token_ids(clip, trigger: str) -> list[int]:
    """The trigger word's token ids, from the CLIP's own tokenizer (the same for CLIP-L and CLIP-G)."""
    tokens = clip.tokenize(trigger)
    if tuple(sorted(tokens)) != SDXL_TEXT_ENCODERS:
        encoders = ", ".join(f"'{k}'" for k in sorted(tokens)) or "none"
        raise PuLIDError(
            f"PhotoMaker fuses into SDXL's prompt (text encoders 'g' and 'l'); this CLIP has {encoders} (FLUX, "
            "SD1.5 and SD3 CLIPs differ): connect the CLIP of an SDXL checkpoint."
        )
    found = {tuple(_content_ids(chunks[0])) for chunks in tokens.values()}
    if len(found) != 1 or not next(iter(found)):
        raise PuLIDError(
            f"trigger_word {trigger!r} does not tokenize to the same words for every text encoder: "
            "use a plain word such as 'img'."
        )
    return list(next(iter(found)))


def _content_ids(chunk) -> list[int]:
    """Ids between BOS and the first EOS of a tokenized chunk."""
    ids = [int(entry[0]) for entry in chunk]
    eos = ids.index(CLIP_EOS, 1) if CLIP_EOS in ids[1:] else len(ids)
    return ids[1:eos]


def expand_prompt(clip, text: str, trigger: str, copies: int):
    """(ID-prompt tokens, class-token mask, text-only tokens) for ``text``.

    The ID prompt repeats the class token before the trigger ``copies`` times and drops
    the trigger; the text-only prompt keeps the class token once (the official text branch).
    """
    trigger = trigger.strip()
    problem = check_trigger(text, trigger)
    if problem:
        raise PuLIDError(f"text: {problem}")
    trigger_ids = trigger_token_ids(clip, trigger)
    tokens = clip.tokenize(text)
    id_tokens, mask = expand_class_tokens(tokens, trigger_ids, copies, trigger_name=trigger)
    text_tokens, _ = expand_class_tokens(tokens, trigger_ids, 1, trigger_name=trigger)
    return id_tokens, mask, text_tokens


def _analyzer(face_analysis):
    """The FaceAnalyzer of a FACEANALYSIS object (a FacePipeline, or an analyzer itself)."""
    analyzer = getattr(face_analysis, "analyzer", face_analysis)
    if not callable(getattr(analyzer, "detect", None)) or not callable(getattr(analyzer, "embed", None)):
        raise PuLIDError(
            f"face_analysis must come from '{display_name(PuLIDInsightFaceLoader)}' with the buffalo_l pack; "
            f"got {type(face_analysis).__name__}."
        )
    return analyzer


def _at_det_size(analyzer, size: int):
    """``analyzer`` with its SCRFD letterboxing into size x size; the shared loader output is not changed."""
    if tuple(analyzer.detector.input_size) == (size, size):
        return analyzer
    view, detector = copy.copy(analyzer), copy.copy(analyzer.detector)
    detector.input_size = (size, size)
    view.detector = detector
    return view


def _detect_with_fallback(analyzer, bgr):
    """(analyzer at the det size that worked, faces), as the official v2 app detects.

    The size that last found a face is tried first, then 640 down to 256, so within one
    node run the images are detected as the official loop does. A detector exported with
    a fixed input size is used as it is.
    """
    faces = analyzer.detect(bgr, embed=False)
    detector = getattr(analyzer, "detector", None)
    if faces or detector is None or _fixed_input(detector):
        return analyzer, faces
    for size in DET_SIZE_FALLBACK:
        trial = _at_det_size(analyzer, size)
        if trial is not analyzer:
            faces = trial.detect(bgr, embed=False)
            if faces:
                log.info("PhotoMaker v2: face found at detection size %d (as the official fallback)", size)
                return trial, faces
    return analyzer, faces


def _fixed_input(detector) -> bool:
    shape = detector.session.get_inputs()[0].shape
    return isinstance(shape[2], int) and isinstance(shape[3], int)


def face_embeddings(face_analysis, images) -> torch.Tensor:
    """[N, 512] raw ArcFace embeddings, one per image: the highest-scoring face, BGR input (official v2).

    An image without a face is an error naming it, so the CLIP and face branches stay paired.
    """
    analyzer = _analyzer(face_analysis)
    pack = getattr(analyzer, "pack", None)
    if pack is not None and pack != V2_FACE_PACK:
        log.warning(
            "PhotoMaker v2 was trained with InsightFace %s embeddings; the %s pack gives different ones. "
            "Use '%s' with the %s pack for the official behaviour.",
            V2_FACE_PACK,
            pack,
            display_name(PuLIDInsightFaceLoader),
            V2_FACE_PACK,
        )
    n = len(images)
    out = []
    for i, image in enumerate(images):
        comfy.model_management.throw_exception_if_processing_interrupted()
        # An alpha channel is dropped, as in the CLIP branch and the official pipeline (PIL convert("RGB")).
        rgb = image[..., :3] if image.ndim == 3 and image.shape[-1] == 4 else image
        rgb = to_uint8_rgb(rgb, max_long_side=None, index=i + 1)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        analyzer, faces = _detect_with_fallback(analyzer, bgr)
        if not faces:
            raise FaceNotFoundError(
                f"PhotoMaker v2: no face found in reference image {i + 1} of {n} "
                f"({bgr.shape[1]}x{bgr.shape[0]} px). Every reference image needs a detectable face: remove "
                "that image from the batch or use a photo where the face is large, frontal and well lit."
            )
        best = max(faces, key=lambda f: f.det_score)
        out.append(np.asarray(analyzer.embed(bgr, best), dtype=np.float32))
    return torch.from_numpy(np.stack(out))


def fuse_prompt(photomaker, pixels, cond, mask, id_embeds=None) -> torch.Tensor:
    """Run the ID encoder (loaded by ComfyUI) in fp32 and fuse it into ``cond`` at the mask positions."""
    try:
        comfy.model_management.load_models_gpu([photomaker])
        device = photomaker.load_device
        with torch.no_grad():
            out = photomaker.model.fuse(
                pixels.to(device=device, dtype=torch.float32).unsqueeze(0),
                cond.to(device=device, dtype=torch.float32),
                torch.tensor(mask, dtype=torch.bool, device=device),
                None if id_embeds is None else id_embeds.to(device=device, dtype=torch.float32),
            )
        return out.to(device=comfy.model_management.intermediate_device(), dtype=cond.dtype)
    finally:
        offload_model(photomaker)  # a run-once encoder: its memory back right away (errors included)


def style_boundary(style_strength: float) -> float | None:
    """The sampling percent where the ID prompt takes over, or None for ID on every step.

    Official: text-only for step index i <= S with S = int(style_strength / 100 * steps), i.e.
    for the steps whose fraction i / steps <= style_strength / 100. ComfyUI's timestep ranges
    compare the step's sigma with the sigma at a percent, so the text-only range ends (and the
    ID range starts) at that percent, nudged past it so a step exactly on it stays text-only.
    With the sgm_uniform and simple schedulers a step's percent is i / steps and this is the
    official count; with normal (i / (steps - 1)) it can be one text-only step fewer.
    """
    if style_strength <= 0:
        return None
    return min(style_strength / 100.0 + BOUNDARY_NUDGE, 1.0)


def _photomaker_model(photomaker) -> PhotoMakerModel:
    model = getattr(photomaker, "model", None)
    if not isinstance(model, PhotoMakerModel):
        raise PuLIDError(
            f"photomaker must come from '{display_name(PuLIDPhotoMakerLoader)}' (core's PhotoMakerLoader gives "
            "another kind of object)."
        )
    return model


class PuLIDPhotoMakerEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PuLIDPhotoMakerEncode",
            display_name="PhotoMaker Encode (PuLID pack)",
            category=CATEGORY,
            description=(
                "Encodes a prompt with the identity of the reference images, as the official PhotoMaker: "
                "write the trigger word right after the class word ('a photo of a man img, ...'). Use the "
                "output as the positive conditioning of any sampler; encode the negative prompt normally. "
                "PhotoMaker v2 also needs face_analysis (InsightFace buffalo_l)."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the SDXL checkpoint."),
                PhotoMaker.Input("photomaker", tooltip=f"From '{display_name(PuLIDPhotoMakerLoader)}'."),
                io.Image.Input(
                    "image",
                    tooltip="One or more photos of the same person (a batch). The whole image is used: the "
                    "face should fill most of it.",
                ),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="a photo of a man img, highly detailed, natural light",
                    tooltip="The prompt, with the trigger word right after the class word (man, woman, ...).",
                ),
                io.String.Input(
                    "trigger_word",
                    default="img",
                    tooltip="The word that marks the class word; it is removed from the prompt.",
                ),
                io.Float.Input(
                    "style_strength",
                    default=20.0,
                    min=0.0,
                    max=100.0,
                    step=1.0,
                    tooltip="Percent of the first sampling steps that use the text-only prompt (official "
                    "default 20). Higher: more style, less likeness. 0: the identity from the first step.",
                ),
                FaceAnalysis.Input(
                    "face_analysis",
                    optional=True,
                    tooltip=f"PhotoMaker v2 only: '{display_name(PuLIDInsightFaceLoader)}' with the buffalo_l pack.",
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, photomaker, image, text, trigger_word, style_strength, face_analysis=None) -> io.NodeOutput:
        check_inputs(cls, style_strength=style_strength, image=image)
        model = _photomaker_model(photomaker)
        if model.version == "v1" and face_analysis is not None:
            raise PuLIDError(
                f"face_analysis is connected, which PhotoMaker v2 needs, but {model.name} is PhotoMaker v1: "
                "load photomaker-v2.bin, or disconnect face_analysis to use v1."
            )
        if model.version == "v2" and face_analysis is None:
            raise PuLIDError(
                f"{model.name} is PhotoMaker v2, which needs the face embedding of each reference image: "
                f"connect face_analysis ('{display_name(PuLIDInsightFaceLoader)}', buffalo_l), or load "
                "photomaker-v1.bin."
            )
        images = list(image)
        id_tokens, mask, text_tokens = expand_prompt(clip, text, trigger_word, len(images) * model.num_tokens)
        id_embeds = face_embeddings(face_analysis, images) if model.version == "v2" else None
        pixels = preprocess_id_images(images, size=model.image_size)

        # As a dict, as CLIPTextEncode encodes: with the pooled output and what the CLIP adds for the
        # sampler (SetClipHooks' hooks, which apply a hook LoRA's UNet half while this prompt samples).
        id_options = clip.encode_from_tokens(id_tokens, return_pooled=True, return_dict=True)
        cond = fuse_prompt(photomaker, pixels, id_options.pop("cond"), mask, id_embeds)
        boundary = style_boundary(style_strength)
        if boundary is None:
            return io.NodeOutput([[cond, id_options]])
        text_options = clip.encode_from_tokens(text_tokens, return_pooled=True, return_dict=True)
        text_cond = text_options.pop("cond")
        # The style-strength split in clip_start/end_percent: ComfyUI intersects these with
        # start/end_percent (comfy/samplers.py), so a ConditioningSetTimestepRange after this node
        # narrows both entries instead of overwriting the split. The ID entry first: ConditioningAverage
        # / Concat take only the first entry of their "from" input, which then keeps the identity.
        return io.NodeOutput(
            [
                [cond, {**id_options, "clip_start_percent": boundary, "clip_end_percent": 1.0}],
                [text_cond, {**text_options, "clip_start_percent": 0.0, "clip_end_percent": boundary}],
            ]
        )


NODES = [PuLIDPhotoMakerLoader, PuLIDPhotoMakerEncode]
