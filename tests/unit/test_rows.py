"""Which rows of ComfyUI's batch are cond and which uncond: one rule for the SDXL and FLUX patches."""

import pytest

from pulid_core.errors import PuLIDError
from pulid_core.rows import COND, UNCOND, batch_rows


@pytest.mark.parametrize(
    "order, batch, kinds",
    [
        ([0, 1], 4, (COND, COND, UNCOND, UNCOND)),
        ([1, 0], 2, (UNCOND, COND)),
        ([1, 0, 1], 3, (UNCOND, COND, UNCOND)),
        ([1], 2, (UNCOND, UNCOND)),
        ((0,), 3, (COND, COND, COND)),
        ([2, 1], 2, (COND, UNCOND)),  # any other value is a cond chunk
        (None, 2, (COND, COND)),  # no entries: one cond chunk
        ([], 1, (COND,)),
    ],
)
def test_kind_of_each_row(order, batch, kinds):
    layout = batch_rows(order, batch)
    assert layout.kinds == kinds
    assert layout.chunk == batch // max(len(order or ()), 1)
    assert layout.chunk_kinds == kinds[:: layout.chunk]


@pytest.mark.parametrize("order, batch", [([0, 1], 3), ([1, 0, 1], 4), ([0], 0)])
def test_uneven_batch_is_refused_naming_the_node(order, batch):
    with pytest.raises(PuLIDError, match=rf"Apply PuLID cannot split a batch of {batch} rows into the {len(order)} "):
        batch_rows(order, batch, who="Apply PuLID")


def test_flux_rows_follow_the_same_rule():
    from pulid_core import flux

    assert flux.batch_rows is batch_rows and flux.UNCOND == UNCOND
