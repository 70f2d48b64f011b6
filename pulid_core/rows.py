"""Which rows of a ComfyUI batch are conditional and which unconditional.

ComfyUI runs the positive and negative prompts in one batch: ``transformer_options
["cond_or_uncond"]`` lists one entry per chunk, in batch order, 0 for a cond chunk and 1
for an uncond one, each chunk ``batch // len(cond_or_uncond)`` rows long
(``comfy/samplers.py``, ``_calc_cond_batch``). The SDXL and FLUX patches both give each
row the ID tokens of its kind through :func:`batch_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .errors import PuLIDError

# ComfyUI's values in cond_or_uncond; anything else is treated as a cond chunk.
COND, UNCOND = 0, 1


class BatchRows(NamedTuple):
    """``kinds``: COND or UNCOND for each row of the batch; ``chunk``: rows per chunk."""

    kinds: tuple[int, ...]
    chunk: int

    @property
    def chunk_kinds(self) -> tuple[int, ...]:
        """COND or UNCOND for each chunk, in batch order."""
        return self.kinds[:: self.chunk]


def batch_rows(cond_or_uncond: Sequence[int] | None, batch: int, *, who: str = "PuLID") -> BatchRows:
    """The kind of each row of a batch of ``batch`` rows laid out as ``cond_or_uncond`` says.

    No entries (an older ComfyUI or a caller that does not set them) means one cond chunk.
    A batch that does not split into equal chunks is refused with a message naming ``who``.
    """
    entries = [UNCOND if int(e) == UNCOND else COND for e in (cond_or_uncond or (COND,))]
    if batch <= 0 or batch % len(entries):
        raise PuLIDError(
            f"{who} cannot split a batch of {batch} rows into the {len(entries)} chunk(s) of "
            f"cond_or_uncond {list(cond_or_uncond or ())}."
        )
    chunk = batch // len(entries)
    return BatchRows(tuple(kind for kind in entries for _ in range(chunk)), chunk)
