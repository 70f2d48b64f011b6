"""Tier 2: PuLID-FLUX inside ComfyUI: a tiny FLUX.1 through ComfyUI's own FLUX class, golden parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfy

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "pulid_flux.safetensors"
SALT = "pub:"


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN))


def _input(name, shape):
    import detfill

    return torch.from_numpy(detfill.tensor(name, shape, SALT))


@pytest.fixture(scope="module")
def tiny_flux(pack):
    from comfy_testpack.tiny_flux import tiny_flux_model

    return tiny_flux_model()


@pytest.fixture(scope="module")
def flux_inputs(golden):
    """The golden forward's inputs in ComfyUI's terms: the patchified img back to a [1,16,2h,2w] latent."""
    from einops import rearrange

    rows, cols = (int(v) for v in golden["tiny.grid"])
    img = _input("input.flux.img", (1, rows * cols, 64))
    x = rearrange(img, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=rows, w=cols, ph=2, pw=2)
    return {"x": x, "context": _input("input.flux.txt", (1, 8, 64)), "y": _input("input.flux.y", (1, 32)),
            "grid": (rows, cols)}


def flux_forward(model, inputs, **options):
    """ComfyUI's FLUX forward with the model's patches and wrappers, at timestep 0.7, guidance 3.5,
    returned patchified like the authors' ``Flux.forward`` output [B, h*w, 64]."""
    from einops import rearrange

    transformer_options = dict(model.model_options.get("transformer_options", {}))
    transformer_options["wrappers"] = model.wrappers
    transformer_options.update(options)
    with torch.no_grad():
        out = model.model.diffusion_model(inputs["x"], torch.tensor([0.7]), inputs["context"], y=inputs["y"],
                                          guidance=torch.tensor([3.5]), transformer_options=transformer_options)
    return rearrange(out, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def test_tiny_flux_unpatched_forward_equals_the_authors(tiny_flux, flux_inputs, golden):
    out = flux_forward(tiny_flux, flux_inputs)
    assert out.shape == golden["tiny.no_id"].shape
    torch.testing.assert_close(out, golden["tiny.no_id"], atol=1e-4, rtol=0)
