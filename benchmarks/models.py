"""What the benchmarks run on: ComfyUI in-process, SDXL's layer shapes, random PuLID adapters, the anchor.

No weights can be downloaded: adapters get random values in the official files' layouts
(tests/data/golden/checkpoint_layouts.json); only shapes and dtypes matter to timing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import types
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
# The archived cubiq/PuLID_ComfyUI, imported at run time only (Apache-2.0, never copied here).
DEFAULT_ANCHOR_DIR = REPO.parent / "shared" / "anchors" / "PuLID_ComfyUI"
ANCHOR_ENV = "PULID_ANCHOR_DIR"

log = logging.getLogger("benchmarks")

# The real SDXL base UNet (ComfyUI's unet_config for sd_xl_base_1.0).
SDXL_UNET = dict(
    model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048,
    num_head_channels=64, num_heads=-1, adm_in_channels=2816, num_classes="sequential",
    use_linear_in_transformer=True, in_channels=4, out_channels=4, use_spatial_transformer=True, legacy=False,
    use_temporal_attention=False, use_temporal_resblock=False, image_size=32,
)
TEXT_TOKENS = 77
ID_TOKENS = {"v1": 10, "v1.1": 32}  # ID tokens per identity: v1's IDEncoder, v1.1's IDFormer
# (projection, num_zero) per method, as the archived port sets them in its Apply node (v1 only).
ANCHOR_METHODS = {"fidelity": ("ortho_v2", 8), "style": ("ortho", 16), "neutral": ("none", 0)}


def setup_comfy(device: str = "cpu"):
    """ComfyUI in-process (CPU mode unless ``device`` is cuda) with this pack as ``comfyui_pulid``."""
    for path in (REPO / "tests", REPO):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import comfy_harness
    import tests  # noqa: F401  (binds ``tests`` to this repository before ComfyUI's own)

    if comfy_harness.comfyui_dir() is None:
        raise SystemExit("ComfyUI not found: run scripts/setup_env.sh (or set COMFYUI_DIR).")
    comfy_harness.load_pack_inprocess(cpu=device == "cpu")
    return comfy_harness.comfyui_dir()


# -- random weights ----------------------------------------------------------------
def random_state(shapes: dict, seed: int, dtype: torch.dtype) -> dict:
    """Fan-in scaled pseudo-random tensors: one block of uniform values, each tensor a scaled copy
    from a name-dependent offset (a generator per tensor would take minutes for GBs on 2 cores)."""
    block_len = 1_048_573  # prime: rows of a weight do not repeat in step
    gen = torch.Generator().manual_seed(seed)
    block = torch.rand(2 * block_len, generator=gen) * 2 - 1
    out = {}
    for name, shape in shapes.items():
        t = torch.empty(tuple(shape), dtype=torch.float32)
        if t.ndim == 1 and name.endswith("weight"):
            scale, shift = 0.02, 1.0
        else:
            scale = 3**0.5 * (int(np.prod(t.shape[1:])) ** -0.5 if t.ndim > 1 else 0.02)
            shift = 0.0
        flat = t.view(-1)
        src = block[zlib.crc32(f"{seed}:{name}".encode()) % block_len:][:block_len]
        rows = flat.numel() // block_len
        if rows:
            flat[:rows * block_len].view(rows, block_len).copy_(src.expand(rows, block_len))
        flat[rows * block_len:].copy_(src[:flat.numel() - rows * block_len])
        out[name] = (t * scale + shift).to(dtype)
    return out


def _layout(title_start: str) -> dict:
    layouts = json.loads((REPO / "tests" / "data" / "golden" / "checkpoint_layouts.json").read_text())
    return next(v for k, v in layouts.items() if k.startswith(title_start))


# -- the UNet ----------------------------------------------------------------------
def sdxl_shell(tiny: bool):
    """A ModelPatcher of the SDXL UNet for the Apply nodes to patch.

    Full size: built on the meta device (no weights: the nodes only read the layer widths; the
    patch calls are timed on q/k/v of the real shapes). Tiny: the tests' tiny SDXL with weights.
    """
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    if tiny:
        from comfy_testpack.tiny_models import tiny_sdxl_model, tiny_unet_config

        return tiny_sdxl_model(), tiny_unet_config("sdxl")
    cfg = dict(SDXL_UNET, dtype=torch.float32)
    model_config = comfy.supported_models.SDXL(dict(cfg))
    model_config.unet_config = cfg  # BASE.__init__ rewrites the head settings otherwise
    model_config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):
        model = model_config.get_model({}, "", device=torch.device("meta"))
    model.model_sampling = comfy.model_base.model_sampling(model_config, model.model_type)  # real sigmas
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), cfg


def sdxl_unet_with_weights(tiny: bool):
    """(diffusion_model, cfg) with random weights, for the unpatched whole step (fp32: ~10 GB full size)."""
    import comfy.supported_models

    if tiny:
        from comfy_testpack.tiny_models import tiny_sdxl_model, tiny_unet_config

        return tiny_sdxl_model().model.diffusion_model, tiny_unet_config("sdxl")
    cfg = dict(SDXL_UNET, dtype=torch.float32)
    model_config = comfy.supported_models.SDXL(dict(cfg))
    model_config.unet_config = cfg
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    unet = model.diffusion_model
    state = random_state({k: tuple(v.shape) for k, v in unet.state_dict().items()}, seed=0, dtype=torch.float32)
    unet.load_state_dict(state)
    return unet, cfg


def attn_layers(patcher, cfg: dict) -> list:
    """[(ComfyUI attn2 key, width, heads, downsampling)] for every cross-attention layer of the UNet."""
    unet = patcher.get_model_object("diffusion_model")
    out = []
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]),
                         ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                for j, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    width = tb.attn2.to_q.out_features
                    # SDXL: one 2x downsampling per level, channels model_channels * channel_mult.
                    level = cfg["channel_mult"].index(width // cfg["model_channels"])
                    out.append(((name, 0 if name == "middle" else i, j), width, tb.attn2.heads, 2**level))
    return out


# -- PuLID -------------------------------------------------------------------------
def build_adapter(version: str, tiny: bool):
    """(PuLIDAdapter as the loader node builds it, its state dict in the official layout)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from comfyui_pulid.nodes.loaders import PuLIDAdapter

    from pulid_core import load_pulid

    if tiny:
        from comfy_testpack.stand_ins_pulid import tiny_pulid_shapes

        shapes = tiny_pulid_shapes(version)
    else:
        shapes = _layout("pulid_v1.bin" if version == "v1" else "pulid_v1.1.safetensors")
    # The official files: v1 is fp32 (.bin), v1.1 fp16 (.safetensors).
    state = random_state(shapes, seed=11 if version == "v1" else 12,
                         dtype=torch.float32 if version == "v1" else torch.float16)
    patcher = comfy.model_patcher.ModelPatcher(load_pulid(state), load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return PuLIDAdapter(patcher, f"pulid_{version} (random weights)"), state


def id_embeds(adapter, seed: int = 3):
    """Random ID tokens of the adapter's version and context width, as 'Encode Face' returns them."""
    from comfyui_pulid.nodes.pulid import IDEmbeds

    gen = torch.Generator().manual_seed(seed)
    shape = (1, ID_TOKENS[adapter.version], adapter.model.context_dim)
    return IDEmbeds(adapter.version, torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), 1,
                    "average", {"adapter": adapter.filename})


def pulid_patches(shell, adapter, embeds, method: str, weight: float) -> dict:
    """This pack's attn2 patches, installed by 'Apply PuLID Embeds' on a clone of ``shell``."""
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds

    out = PuLIDApplyEmbeds.execute(shell, adapter, embeds, method, weight, 0.0, 1.0).result[0]
    return out.model_options["transformer_options"]["patches_replace"]["attn2"]


# -- the anchor (cubiq/PuLID_ComfyUI, archived) ------------------------------------
def anchor_dir(option: str | None) -> Path:
    return Path(option or os.environ.get(ANCHOR_ENV) or DEFAULT_ANCHOR_DIR).resolve()


# The anchor's module-level imports that its attention path never calls: its EVA-CLIP tokenizer's
# ftfy and its face pipeline's insightface and facexlib (not among this pack's requirements, and
# absent from some GPU images). A missing package is replaced by stand-in modules whose names fail
# when called; the report says which.
ANCHOR_UNUSED_IMPORTS = {
    "ftfy": (),
    "insightface.app": ("FaceAnalysis",),
    "facexlib.parsing": ("init_parsing_model",),
    "facexlib.utils.face_restoration_helper": ("FaceRestoreHelper",),
}


def _unavailable(module: str, name: str):
    def call(*args, **kwargs):
        raise ImportError(f"{module} is not installed: the benchmark stands in for {name}, which it never calls")

    return call


def _stand_in(dotted: str, names) -> None:
    parts = dotted.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=depth < len(parts))
            if depth < len(parts):
                module.__path__ = []
            sys.modules[name] = module
            if depth > 1:
                setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], module)
    for attr in names:
        setattr(sys.modules[dotted], attr, _unavailable(parts[0], attr))


def load_anchor(path: Path):
    """(its ``pulid`` module, None) or (None, why not). Needs ComfyUI set up first; missing
    packages among ``ANCHOR_UNUSED_IMPORTS`` get stand-ins (``module.stubbed_modules``)."""
    if not (path / "pulid.py").is_file():
        return None, f"anchor not found at {path} (set --anchor-dir or {ANCHOR_ENV})"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    stubbed = []
    for dotted, names in ANCHOR_UNUSED_IMPORTS.items():
        top = dotted.split(".")[0]
        if top in stubbed or (top not in sys.modules and importlib.util.find_spec(top) is None):
            _stand_in(dotted, names)
            stubbed += [top] if top not in stubbed else []
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its imports print; stdout carries the table
            module = importlib.import_module(f"{path.name}.pulid")
    except Exception as exc:  # an anchor that does not import is reported, not fatal
        return None, f"anchor at {path} did not import: {type(exc).__name__}: {exc}"
    module.stubbed_modules = stubbed
    return module, None


def anchor_patch(anchor, state: dict, module_index: int, embeds, method: str, weight: float, dtype,
                 device="cpu"):
    """The anchor's own attn2 patch object for one layer (its ``Attn2Replace`` around its
    ``pulid_attention``), with the settings and zero tokens its Apply node would give it."""
    projection, num_zero = ANCHOR_METHODS[method]
    prefix = f"id_adapter_attn_layers.{module_index}."
    # Its To_KV takes the IPAdapter-format keys of the layers it serves.
    to_kv = anchor.To_KV({f"{module_index}.to_k_ip.weight": state[prefix + "id_to_k.weight"].to(dtype),
                          f"{module_index}.to_v_ip.weight": state[prefix + "id_to_v.weight"].to(dtype)}).to(device)
    cond, uncond = embeds.cond.to(device, dtype), embeds.uncond.to(device, dtype)
    if num_zero:
        zeros = torch.zeros(1, num_zero, cond.shape[-1], dtype=dtype, device=device)
        cond, uncond = torch.cat([cond, zeros], 1), torch.cat([uncond, zeros], 1)
    return anchor.Attn2Replace(anchor.pulid_attention, pulid=SimpleNamespace(ip_layers=to_kv), weight=weight,
                               cond=cond, uncond=uncond, sigma_start=float("inf"), sigma_end=0.0,
                               ortho=projection == "ortho", ortho_v2=projection == "ortho_v2", mask=None,
                               module_key=str(module_index))


def anchor_fires(key) -> bool:
    """Whether the anchor's patch at this ComfyUI key is ever called: it keys the middle block's
    ten layers ("middle", 1, i), while ComfyUI calls them ("middle", 0, i)."""
    return key[0] != "middle"


# -- FLUX.1 -------------------------------------------------------------------------
# FLUX.1's transformer (dev / schnell: ComfyUI's model_detection values): 3072 wide, 24 heads of
# 128, MLP ratio 4, qkv biases, RoPE over (index, row, column) with axes 16 + 56 + 56 and theta 10000.
FLUX_BLOCK = dict(hidden_size=3072, num_heads=24, mlp_ratio=4.0, axes_dim=(16, 56, 56), theta=10000)
FLUX_TEXT_TOKENS = 512  # T5-XXL tokens: FLUX.1-dev's max_sequence_length in BFL's reference sampling code
FLUX_ID_TOKENS = 32  # the IDFormer's output tokens, 2048 wide
# Tiny: one 128-wide head (the tests' tiny PuLID-FLUX CA is 128 wide), a few text tokens.
TINY_FLUX_BLOCK = dict(hidden_size=128, num_heads=1, mlp_ratio=4.0, axes_dim=(16, 56, 56), theta=10000)
TINY_FLUX_TEXT_TOKENS = 8


def flux_block(kind: str, tiny: bool, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """One FLUX.1 double- or single-stream block built by ComfyUI's own classes, random weights."""
    import comfy.ldm.flux.layers as layers
    import comfy.ops

    sizes = TINY_FLUX_BLOCK if tiny else FLUX_BLOCK
    args = dict(hidden_size=sizes["hidden_size"], num_heads=sizes["num_heads"], mlp_ratio=sizes["mlp_ratio"],
                dtype=torch.float32, device=torch.device("cpu"), operations=comfy.ops.disable_weight_init)
    block = (layers.DoubleStreamBlock(qkv_bias=True, **args) if kind == "double"
             else layers.SingleStreamBlock(**args))
    state = random_state({k: tuple(v.shape) for k, v in block.state_dict().items()}, seed=seed, dtype=dtype)
    block.load_state_dict(state, assign=True)
    del state
    return block.to(device).eval()


def flux_inputs(resolution: int, tiny: bool, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """What a block gets at a resolution, batch 1 (FLUX.1-dev is guidance-distilled: cfg 1):
    img [1, (res/16)², C], txt [1, T, C], vec [1, C] and the rotary embedding ``pe`` of the
    joint sequence (text ids zero, image ids (0, row, column) as ComfyUI's FLUX makes them)."""
    import comfy.ldm.flux.layers as layers

    sizes = TINY_FLUX_BLOCK if tiny else FLUX_BLOCK
    width = sizes["hidden_size"]
    text = TINY_FLUX_TEXT_TOKENS if tiny else FLUX_TEXT_TOKENS
    side = resolution // 16  # 8x VAE, then 2x2 latent patches per token
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(1, side * side, width, generator=gen)
    txt = torch.randn(1, text, width, generator=gen)
    vec = torch.randn(1, width, generator=gen)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side, dtype=torch.float32)[:, None]
    img_ids[..., 2] = torch.arange(side, dtype=torch.float32)[None, :]
    ids = torch.cat([torch.zeros(1, text, 3), img_ids.reshape(1, side * side, 3)], dim=1)
    embed = layers.EmbedND(dim=width // sizes["num_heads"], theta=sizes["theta"], axes_dim=list(sizes["axes_dim"]))
    pe = embed(ids)
    cast = dict(device=device, dtype=dtype)
    return {"img": img.to(**cast), "txt": txt.to(**cast), "vec": vec.to(**cast), "pe": pe.to(device),
            "grid": (side, side)}


def build_flux_adapter(tiny: bool, dtype: torch.dtype):
    """(PuLIDAdapter as Load PuLID Model builds it for pulid_flux_v0.9.1, ID tokens [1, 32, 2048]),
    random weights in ``dtype`` (the model's compute dtype: no cast per call)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from comfyui_pulid.nodes.loaders import PuLIDAdapter

    from pulid_core import load_pulid

    if tiny:
        from pulid_layouts import flux_shapes, tiny_flux_sizes

        shapes = flux_shapes(**tiny_flux_sizes())
    else:
        layouts = json.loads((REPO / "tests" / "data" / "golden" / "pulid_flux_layout.json").read_text())
        shapes = next(iter(layouts.values()))
    state = random_state(shapes, seed=13, dtype=dtype)
    patcher = comfy.model_patcher.ModelPatcher(load_pulid(state), load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    gen = torch.Generator().manual_seed(4)
    context_dim = patcher.model.context_dim
    ids = torch.randn(1, FLUX_ID_TOKENS, context_dim, generator=gen).to(dtype)
    return PuLIDAdapter(patcher, "pulid_flux_v0.9.1 (random weights)"), ids


# -- the face encode ----------------------------------------------------------------
# A synthetic 1024x768 photo; the stand-in detector reports this face box (image pixels).
ENCODE_IMAGE_WH = (1024, 768)
ENCODE_FACE_BOX = (392.0, 184.0, 632.0, 504.0)
TINY_ENCODE_IMAGE_WH = (256, 192)
TINY_ENCODE_FACE_BOX = (98.0, 46.0, 158.0, 126.0)


def encode_photo(tiny: bool) -> torch.Tensor:
    """A ComfyUI IMAGE [1, H, W, 3] float: a lit background and a skin-coloured oval with eyes and
    mouth where the face box is (the random-weight networks cost the same on any content)."""
    import cv2

    w, h = TINY_ENCODE_IMAGE_WH if tiny else ENCODE_IMAGE_WH
    x1, y1, x2, y2 = TINY_ENCODE_FACE_BOX if tiny else ENCODE_FACE_BOX
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([90 + 80 * xx / w, 110 + 60 * yy / h, 140 + 40 * (xx + yy) / (w + h)], axis=-1)
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    cv2.ellipse(img, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, (205, 160, 130), -1)
    for ex in (cx - rx * 0.4, cx + rx * 0.4):
        cv2.circle(img, (int(ex), int(cy - ry * 0.2)), max(2, int(rx * 0.1)), (40, 30, 30), -1)
    cv2.ellipse(img, (int(cx), int(cy + ry * 0.45)), (int(rx * 0.35), max(1, int(ry * 0.08))), 0, 0, 360,
                (150, 60, 60), -1)
    return torch.from_numpy(np.clip(img, 0, 255) / 255.0).float()[None]


def face_box(tiny: bool) -> np.ndarray:
    return np.array(TINY_ENCODE_FACE_BOX if tiny else ENCODE_FACE_BOX, np.float64)


def write_face_models(root: Path, tiny: bool) -> None:
    """<root>/insightface/models/antelopev2: the tests' synthetic SCRFD and ArcFace ONNX graphs (real
    signatures, a few kFLOPs; the detector reports the photo's face box), and <root>/facexlib:
    full-size RetinaFace-R50 and BiSeNet with facexlib's random initialisation (also with ``tiny``:
    they have no small variant)."""
    from tests.unit import face_models

    w, h = TINY_ENCODE_IMAGE_WH if tiny else ENCODE_IMAGE_WH
    scale = face_models.letterbox_scale(h, w)
    box = face_box(tiny) * scale
    kps, _ = face_models.kps_for_box(box)
    face_models.make_pack(str(root / "insightface" / "models" / "antelopev2"), [(box, kps, 0.9)], extra=False)
    facexlib = root / "facexlib"
    facexlib.mkdir(parents=True, exist_ok=True)
    torch.save(face_models.retinaface_state_dict(), facexlib / "detection_Resnet50_Final.pth")
    torch.save(face_models.bisenet_state_dict(), facexlib / "parsing_bisenet.pth")


def face_pipeline(root: Path, provider: str):
    """'Load InsightFace + facexlib (PuLID)' on the files of :func:`write_face_models` (ComfyUI's
    folder_paths pointed at them): RetinaFace and BiSeNet as ModelPatchers on ComfyUI's device."""
    import folder_paths
    from comfyui_pulid.nodes import loaders

    folder_paths.add_model_folder_path("insightface", str(root / "insightface"), is_default=True)
    folder_paths.add_model_folder_path("facexlib", str(root / "facexlib"), is_default=True)
    return loaders.load_face_pipeline(provider, "antelopev2", "retinaface")


def build_eva(tiny: bool, precision: str):
    """'Load EVA-CLIP (PuLID)' on EVA02-CLIP-L-14-336's official layout with random weights (tiny:
    the tests' 64-wide tower), in ``precision``, in a ModelPatcher on ComfyUI's text-encoder device."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from comfyui_pulid.nodes.loaders import EvaClipModel

    from pulid_core import load_eva_clip
    from pulid_core.options import PRECISIONS

    if tiny:
        from comfy_testpack.stand_ins_pulid import tiny_eva_state_dict

        state = tiny_eva_state_dict()
    else:
        state = random_state(_layout("EVA02_CLIP_L_336_psz14_s6B.pt"), seed=21, dtype=torch.float32)
    dtype = PRECISIONS[precision]
    model = load_eva_clip(state, dtype=dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.text_encoder_device(),
                                               offload_device=mm.text_encoder_offload_device())
    return EvaClipModel(patcher, "EVA02-CLIP-L-14-336 (random weights)", dtype)
