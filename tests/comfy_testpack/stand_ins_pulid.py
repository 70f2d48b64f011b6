"""Tiny PuLID, EVA-CLIP, InsightFace and facexlib files for the tiny test SDXL.

Every file has the real key structure (or ONNX signature) and random weights, so
the pack's loaders read it exactly as they read the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pulid_layouts import flux_shapes, pulid_shapes, sdxl_width, to_ipadapter_layout

from .stand_ins import writer
from .tiny_sizes import TINY_WIDTH

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = REPO / "tests" / "data" / "golden" / "checkpoint_layouts.json"

EVA_WIDTH, EVA_OUT, EVA_HIDDEN, EVA_GRID = 64, 32, 96, 2  # 28x28 pixels, patch 14
ARCFACE_DIM = 512
ID_DIM = ARCFACE_DIM + EVA_OUT
TOKEN_DIM = 48  # width of the tiny ID tokens


def _layout(title_start: str) -> dict:
    layouts = json.loads(LAYOUTS.read_text())
    return next(v for k, v in layouts.items() if k.startswith(title_start))


def _random(shapes: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) == 1:
            out[key] = 1.0 + 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            out[key] = torch.randn(shape, generator=gen) * (0.5 / fan_in**0.5 if len(shape) > 1 else 0.02)
    return out


def tiny_pulid_shapes(version: str) -> dict:
    """The official layout's keys; sizes fit the tiny EVA (width 64, out 32) and the tiny SDXL."""
    return pulid_shapes(version, id_dim=ID_DIM, vit_dim=EVA_WIDTH, hidden=32, context_dim=TOKEN_DIM, num_queries=32,
                        former_dim=64, former_inner=64, layer_width=lambda k: TINY_WIDTH[sdxl_width(k)])


def tiny_flux_adapter_shapes() -> dict:
    """PuLID-FLUX's keys; the CA fits the tiny FLUX (128 wide, 2 heads of 128), the IDFormer the tiny EVA."""
    from .tiny_flux import TINY_FLUX_CONFIG

    return flux_shapes(ca_dim=TINY_FLUX_CONFIG["hidden_size"], ca_inner=256, id_dim=ID_DIM, vit_dim=EVA_WIDTH, hidden=32,
                       context_dim=TOKEN_DIM, num_queries=32, former_dim=64, former_inner=64)


@writer(("PuLIDModelLoader", "PulidModelLoader"), "pulid_file", "pulid")
def write_tiny_pulid(path: Path) -> None:
    if "flux" in path.name.lower():
        # The release stores 16-bit tensors.
        save_file({k: v.to(torch.bfloat16) for k, v in _random(tiny_flux_adapter_shapes(), seed=15).items()},
                  str(path))
        return
    version = "v1.1" if "1.1" in path.name else "v1"
    state = _random(tiny_pulid_shapes(version), seed=11 if version == "v1" else 12)
    if path.name.startswith("ip-adapter"):
        state = to_ipadapter_layout(state)
    if path.suffix == ".safetensors":
        save_file({k: v.half() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def tiny_eva_state_dict() -> dict:
    """The official EVA02-CLIP-L visual keys at width 64, depth 24, 2x2 patches."""
    dims = {1024: EVA_WIDTH, 2730: EVA_HIDDEN, 768: EVA_OUT, 577: EVA_GRID * EVA_GRID + 1}
    layout = _layout("EVA02_CLIP_L_336_psz14_s6B.pt")
    shapes = {k: tuple(dims.get(s, s) for s in shape) for k, shape in layout.items()}
    return _random(shapes, seed=13)


@writer(("PuLIDEvaClipLoader",), "eva_clip", "eva_clip")
def write_tiny_eva(path: Path) -> None:
    state = tiny_eva_state_dict()
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


# The face box the synthetic detector reports, in its 640x640 input (the middle of a square photo).
STAND_IN_FACE_BOX = (200.0, 150.0, 440.0, 450.0)


@writer(("PuLIDInsightFaceLoader",), "pack", "insightface")
def write_tiny_face_models(path: Path) -> None:
    """An InsightFace pack (synthetic SCRFD + ArcFace ONNX) and random facexlib weights.

    ``path`` is <insightface>/<pack>; packs live in <insightface>/models/<pack>.
    """
    from pulid_core.face.insight import PACK_FILES
    from tests.unit import face_models

    kps, _ = face_models.kps_for_box(STAND_IN_FACE_BOX)
    face_models.make_pack(str(path.parent / "models" / path.name), [(np.array(STAND_IN_FACE_BOX), kps, 0.9)],
                          extra=False, names=PACK_FILES.get(path.name, PACK_FILES["antelopev2"]))
    facexlib = path.parent.parent / "facexlib"
    facexlib.mkdir(parents=True, exist_ok=True)
    if not (facexlib / "detection_Resnet50_Final.pth").exists():
        torch.save(face_models.retinaface_state_dict(), facexlib / "detection_Resnet50_Final.pth")
    if not (facexlib / "parsing_bisenet.pth").exists():
        torch.save(face_models.bisenet_state_dict(), facexlib / "parsing_bisenet.pth")


@writer(("PuLIDLoadEmbeds",), "embeds_file", "pulid_embeds")
def write_tiny_embeds(path: Path) -> None:
    """ID embeddings as 'Save PuLID Embeds' writes them, for the tiny v1.1 adapter."""
    gen = torch.Generator().manual_seed(14)
    tensors = {"cond": torch.randn(1, 32, TOKEN_DIM, generator=gen), "uncond": torch.randn(1, 32, TOKEN_DIM, generator=gen)}
    save_file(tensors, str(path), metadata={"format": "comfyui-pulid/id-embeds/1", "pulid_version": "v1.1",
                                            "images": "1", "combine": "idformer", "extra": "{}"})


def _write_retinaface(path: Path) -> None:
    from tests.unit import face_models

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(face_models.retinaface_state_dict(), path)


def _write_bisenet(path: Path) -> None:
    from tests.unit import face_models

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(face_models.bisenet_state_dict(), path)


# facexlib's files, which every face loader reads from models/facexlib (no input names them).
FACEXLIB_WRITERS = {"detection_Resnet50_Final.pth": _write_retinaface, "parsing_bisenet.pth": _write_bisenet}

# Loaders without a file input (cubiq's ids) and the (folder, name) they look for.
IMPLICIT = {
    "PulidInsightFaceLoader": ("insightface", "antelopev2"),
    "PulidEvaClipLoader": ("eva_clip", "EVA02_CLIP_L_336_psz14_s6B.pt"),
}
IMPLICIT_WRITERS = {"insightface": write_tiny_face_models, "eva_clip": write_tiny_eva}
