"""ComfyUI keeps what a patch's ``to()`` returns (``ModelPatcher.model_patches_to``; since 0.33 clones
share patch objects instead of deep-copying them). An upstream patch that answers ``to()`` with a
new object must survive inside our chained patch, and our shared patch must never change."""

from __future__ import annotations

import torch


class MovingUpstream:
    """A patch that, like an immutable patch should, returns a moved copy from ``to()``."""

    def __init__(self, where="cpu"):
        self.where = where

    def to(self, device_or_dtype):
        return MovingUpstream(str(device_or_dtype))


class InPlaceUpstream:
    def __init__(self):
        self.calls = []

    def to(self, device_or_dtype):
        self.calls.append(device_or_dtype)
        return self


def _sdxl_patch(upstream):
    from comfyui_pulid.nodes.attn_patch import IDAttnPatch, IDContext

    tokens = torch.zeros(1, 10, 8)
    ctx = IDContext(None, tokens, tokens, weight=1.0, projection="none", num_zero=0, sigma_start=1e9,
                    sigma_end=0.0)
    return IDAttnPatch(ctx, 1, upstream=upstream)


def _flux_patch(upstream):
    from comfyui_pulid.nodes.flux_patch import FluxBlockPatch, FluxIDContext

    tokens = torch.zeros(1, 32, 8)
    ctx = FluxIDContext(None, tokens, tokens, weight=1.0, sigma_start=1e9, sigma_end=0.0)
    return FluxBlockPatch(ctx, "double", 0, upstream=upstream)


def test_to_keeps_an_upstream_that_returns_a_new_object(pack):
    for make in (_sdxl_patch, _flux_patch):
        upstream = MovingUpstream()
        patch = make(upstream)
        moved = patch.to(torch.float16)
        assert moved is not patch, make.__name__
        assert isinstance(moved.upstream, MovingUpstream) and moved.upstream.where == "torch.float16", make.__name__
        assert moved.context is patch.context
        # The shared original is untouched: other clones still hold it.
        assert patch.upstream is upstream and upstream.where == "cpu", make.__name__


def test_to_returns_self_when_nothing_changes(pack):
    for make in (_sdxl_patch, _flux_patch):
        upstream = InPlaceUpstream()
        patch = make(upstream)
        assert patch.to(torch.float16) is patch, make.__name__
        assert upstream.calls == [torch.float16], make.__name__
        assert make(None).to(torch.float16) is not None
