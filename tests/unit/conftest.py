"""Shared unit-test fixtures: reduced-size model state dicts with the real key structure."""

import pytest
import torch

from pulid_layouts import pulid_shapes, to_ipadapter_layout
from tests import detfill


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
