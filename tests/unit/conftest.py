"""Shared unit-test fixtures: reduced-size model state dicts with the real key structure."""

import pytest
import torch

from pulid_layouts import pulid_shapes
from tests import detfill


def fill_state_dict(shapes: dict, salt="tiny:", dtype=torch.float32) -> dict:
    """detfill tensors for every key (values depend on the key name only)."""
    return {k: torch.from_numpy(detfill.tensor(k, s, salt)).to(dtype) for k, s in shapes.items()}


def to_ipadapter_layout(state: dict) -> dict:
    """Official PuLID keys -> IPAdapter-format keys (spec §1.1 renaming table)."""
    out = {}
    for key, value in state.items():
        key = key.replace("id_adapter_attn_layers.", "ip_adapter.").replace("id_adapter.", "image_proj.")
        out[key.replace(".id_to_k.", ".to_k_ip.").replace(".id_to_v.", ".to_v_ip.")] = value
    return out


@pytest.fixture(scope="session")
def tiny_pulid_state_dict():
    """Factory: ``tiny_pulid_state_dict(version="v1"|"v1.1", layout="official"|"ipadapter", **sizes)``."""

    def make(version="v1", layout="official", dtype=torch.float32, salt="tiny:", **sizes):
        state = fill_state_dict(pulid_shapes(version, **sizes), salt, dtype)
        return to_ipadapter_layout(state) if layout == "ipadapter" else state

    return make
