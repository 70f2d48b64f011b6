"""pulid_core.options: the option lists and the checks of values entering the pack."""

import math

import pytest
import torch

from pulid_core import options
from pulid_core.errors import PuLIDError
from pulid_core.face import insight


def test_lists_are_the_ones_the_library_accepts():
    from pulid_core.attention import PROJECTIONS
    from pulid_core.face.pipeline import ORDERS, parse_selection

    assert set(options.PROJECTIONS) == set(PROJECTIONS) and options.PROJECTIONS[0] == "ortho_v2"
    for selection in options.SELECTIONS:
        parse_selection(selection if selection in ("largest", "center") else (selection, 0))
    assert options.SELECTIONS[2:] == ORDERS
    assert all(p.lower() in insight.PROVIDERS for p in options.PROVIDERS)
    assert options.PRECISIONS["fp32"] is torch.float32


def test_check_choice():
    assert options.check_choice("concat", options.COMBINES, node="N", input_name="combine") == "concat"
    with pytest.raises(PuLIDError, match=r"^N: combine is 'sum', which is not one of its options: average, concat\."):
        options.check_choice("sum", options.COMBINES, node="N", input_name="combine")
    with pytest.raises(PuLIDError, match="None"):
        options.check_choice(None, options.COMBINES, node="N", input_name="combine")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "abc", None, True])
def test_check_finite_refuses(value):
    with pytest.raises(PuLIDError, match="N: weight must be a finite number"):
        options.check_finite(value, node="N", input_name="weight")


def test_check_finite_range():
    assert options.check_finite("0.5", node="N", input_name="w", lo=0, hi=1) == 0.5
    with pytest.raises(PuLIDError, match="N: w must be between 0 and 1; got 1.5"):
        options.check_finite(1.5, node="N", input_name="w", lo=0, hi=1)
    with pytest.raises(PuLIDError, match="at least 0"):
        options.check_finite(-1, node="N", input_name="w", lo=0)


def test_check_mask():
    assert options.check_mask(None, node="N") is None
    assert options.check_mask(torch.ones(4, 4), node="N").shape == (1, 4, 4)
    assert options.check_mask(torch.ones(2, 1, 4, 4), node="N").shape == (2, 4, 4)
    for bad, match in ((torch.full((1, 4, 4), math.nan), "NaN"), (torch.full((4, 4), 1.5), "0..1"),
                       (torch.zeros(4), "MASK"), ("mask", "MASK")):
        with pytest.raises(PuLIDError, match=f"N: attn_mask .*{match}"):
            options.check_mask(bad, node="N")


def test_check_mask_batch():
    options.check_mask_batch(1, 4)
    options.check_mask_batch(4, 4)
    with pytest.raises(PuLIDError, match="Apply PuLID: attn_mask holds 2 masks but the latent batch is 3"):
        options.check_mask_batch(2, 3, node="Apply PuLID")


@pytest.mark.parametrize("scale", [8, 1, 3])
def test_mask_for_area_takes_the_masks_pixels_over_the_latent_area(scale):
    """A MASK at scale x the latent: the crop over latent rows 2..5 and columns 6..9 is exactly the mask
    pixels those latent pixels cover (no shift, no stretch)."""
    mask = torch.arange(1 * 10 * 12 * scale * scale, dtype=torch.float32).reshape(1, 10 * scale, 12 * scale)
    crop = options.mask_for_area(mask, (10, 12), (2, 6, 4, 4))
    assert torch.equal(crop, mask[:, 2 * scale : 6 * scale, 6 * scale : 10 * scale])


def test_mask_for_area_of_a_mask_smaller_than_the_latent_keeps_a_pixel():
    mask = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # 2x2 mask over a 16x16 latent
    assert torch.equal(options.mask_for_area(mask, (16, 16), (9, 0, 2, 3)), torch.tensor([[[2.0]]]))
    assert torch.equal(options.mask_for_area(mask, (16, 16), (0, 4, 16, 8)), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]))
