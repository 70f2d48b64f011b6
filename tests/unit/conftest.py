"""Shared unit-test fixtures: reduced-size model state dicts with the real key structure."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pulid_core import load_pulid
from pulid_layouts import pulid_shapes, to_ipadapter_layout
from tests import detfill
from tests.attention_paths import ATTENTION_PATHS, native_buildable


def fill_state_dict(shapes: dict, salt="tiny:", dtype=torch.float32) -> dict:
    """detfill tensors for every key (values depend on the key name only)."""
    return {k: torch.from_numpy(detfill.tensor(k, s, salt)).to(dtype) for k, s in shapes.items()}


@pytest.fixture(scope="session")
def tiny_pulid_state_dict():
    """Factory: ``tiny_pulid_state_dict(version="v1"|"v1.1", layout="official"|"ipadapter", **sizes)``."""

    def make(version="v1", layout="official", dtype=torch.float32, salt="tiny:", **sizes):
        state = fill_state_dict(pulid_shapes(version, **sizes), salt, dtype)
        return to_ipadapter_layout(state) if layout == "ipadapter" else state

    return make


@pytest.fixture(scope="module")
def attn_golden():
    """The authors' ID-attention outputs for a 640-wide layer (tests/data/golden/pulid_attention.safetensors)."""
    return load_file(Path(__file__).resolve().parents[1] / "data" / "golden" / "pulid_attention.safetensors")


@pytest.fixture(scope="module")
def c640_model(tiny_pulid_state_dict):
    """A reduced v1 adapter whose layer 1 (640 wide) holds the golden ``attn.c640.id_to_k/v`` weights."""
    state = tiny_pulid_state_dict("v1", context_dim=2048)
    for proj in ("k", "v"):
        state[f"id_adapter_attn_layers.1.id_to_{proj}.weight"] = torch.from_numpy(
            detfill.tensor(f"attn.c640.id_to_{proj}.weight", (640, 2048), "pub:"))
    return load_pulid(state)



@pytest.fixture(params=list(ATTENTION_PATHS))
def attention_path(request) -> dict:
    """Keyword arguments of id_attention / id_attention_prepared for one path (tests/attention_paths.py)."""
    if request.param == "native" and not native_buildable():
        pytest.skip("no C compiler (or COMFYUI_PULID_NATIVE=0): the compiled ID-branch kernel is not built here")
    return ATTENTION_PATHS[request.param]
