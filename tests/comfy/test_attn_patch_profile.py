"""The attn2 patch's per-call cost inside ComfyUI: after the first call of a layer, a patched call
adds the ID branch's kernels only (no per-call uploads, gathers or casts) and reads nothing back
from the device; the sigma gate costs no read when the range is the whole schedule and one read
per step otherwise."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from tests.attention_paths import native_buildable
from tests.unit.test_attention_profile import budget, count_ops

HEADS, WIDTH, TOKENS = 4, 64, 64


class FixedBase:
    """An upstream patch returning a fixed text-attention output, so only the ID branch is counted."""

    def __init__(self, base):
        self.base = base
        self.moved = []

    def __call__(self, q, k, v, extra_options):
        return self.base

    def to(self, device_or_dtype):
        self.moved.append(device_or_dtype)
        return self

    def models(self):
        return ["upstream-model"]


@pytest.fixture(scope="module")
def adapter(pack, tmp_path_factory):
    from comfy_testpack import stand_ins_pulid as s
    from pulid_core import load_pulid

    path = tmp_path_factory.mktemp("pulid") / "pulid_v1.safetensors"
    s.write_tiny_pulid(path)
    model = load_pulid(str(path))

    class Holder:  # what IDContext uses of a ModelPatcher
        pass

    holder = Holder()
    holder.model = model
    return holder


def make_patch(adapter, projection="ortho_v2", num_zero=8, sigma_start=999999999.9, sigma_end=0.0, weight=0.8):
    from comfyui_pulid.nodes.attn_patch import IDAttnPatch, IDContext

    gen = torch.Generator().manual_seed(5)
    dim = adapter.model.context_dim
    ctx = IDContext(adapter, torch.randn(1, 10, dim, generator=gen), torch.randn(1, 10, dim, generator=gen),
                    weight=weight, projection=projection, num_zero=num_zero, sigma_start=sigma_start,
                    sigma_end=sigma_end)
    base = torch.randn(2, TOKENS, WIDTH, generator=gen)
    return IDAttnPatch(ctx, 1, upstream=FixedBase(base)), base


def extra(sigmas=None):
    return {"n_heads": HEADS, "dim_head": WIDTH // HEADS, "cond_or_uncond": [1, 0],
            "sigmas": torch.tensor([3.0]) if sigmas is None else sigmas,
            "activations_shape": [2, WIDTH, 8, 8]}


@pytest.mark.parametrize("projection, num_zero", [("ortho_v2", 8), ("ortho", 16), ("none", 0)])
@pytest.mark.parametrize("native", [False, True], ids=["torch-ops", "compiled"])
def test_patched_call_adds_only_the_id_branch(adapter, projection, num_zero, native, monkeypatch):
    # CPU fp32: the explicit path, on torch's ops or in the compiled kernel (pulid_core.native; then
    # the patched call adds no torch op at all).
    from comfyui_pulid.nodes import attn_patch

    if native and not native_buildable():
        pytest.skip("no C compiler: the compiled ID-branch kernel is not built here")
    monkeypatch.setattr(attn_patch, "id_attention_prepared",
                        functools.partial(attn_patch.id_attention_prepared, native=native))
    patch, _ = make_patch(adapter, projection, num_zero)
    q = torch.randn(2, TOKENS, WIDTH)
    eo = extra()
    patch(q, q, q, eo)  # fills the layer's cache
    kernels, syncs, names = count_ops(lambda: patch(q, q, q, eo))
    assert syncs == 0, names
    if native:
        assert kernels == 0, names
    else:
        assert kernels <= budget(projection, fused=False), names


def test_upstream_output_is_never_written(adapter):
    # An upstream patch may return a tensor it keeps (a cache): the ID term goes into a new tensor.
    patch, base = make_patch(adapter)
    kept = base.clone()
    q = torch.randn(2, TOKENS, WIDTH)
    first = patch(q, q, q, extra())
    second = patch(q, q, q, extra())
    assert torch.equal(base, kept)
    assert torch.equal(first, second) and first.data_ptr() != base.data_ptr()


def test_comfy_attention_output_is_written_in_place(adapter, monkeypatch):
    # Without an upstream, base is ComfyUI's new attention output: the result is written into it
    # (no new tensor of the layer's size per call), equal to the upstream case's result.
    from comfyui_pulid.nodes import attn_patch

    patch, base = make_patch(adapter)
    q = torch.randn(2, TOKENS, WIDTH)
    want = patch(q, q, q, extra())
    fresh = []

    def attention(q, k, v, heads, extra_options):
        fresh.append(base.clone())
        return fresh[-1]

    monkeypatch.setattr(attn_patch, "attention_call", attention)
    alone = attn_patch.IDAttnPatch(patch.context, patch.module_index)
    out = alone(q, q, q, extra())
    assert out is fresh[-1]
    torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-5)


def test_sigma_gate_reads_once_per_step(adapter):
    patch, base = make_patch(adapter, sigma_start=5.0, sigma_end=2.0)
    q = torch.randn(2, TOKENS, WIDTH)
    step = extra(torch.tensor([3.0]))
    patch(q, q, q, step)
    # The other layers of the same step: the same sigmas tensor, no read.
    assert count_ops(lambda: patch(q, q, q, step))[1] == 0
    # A new step: one read.
    assert count_ops(lambda: patch(q, q, q, extra(torch.tensor([4.0]))))[1] == 1
    outside = extra(torch.tensor([9.0]))
    assert torch.equal(patch(q, q, q, outside), base)
    assert torch.equal(patch(q, q, q, outside), base)  # cached decision, same result
    assert not torch.equal(patch(q, q, q, extra(torch.tensor([2.5]))), base)


def test_full_range_never_reads_sigma(adapter):
    patch, _ = make_patch(adapter)
    q = torch.randn(2, TOKENS, WIDTH)
    assert patch.context.always_active
    patch(q, q, q, extra())
    for sigma in (0.1, 14.6):
        assert count_ops(lambda s=sigma: patch(q, q, q, extra(torch.tensor([s]))))[1] == 0


def test_cache_follows_the_batch_pattern(adapter):
    from pulid_core.attention import id_attention

    patch, base = make_patch(adapter)
    ctx = patch.context
    q = torch.randn(2, TOKENS, WIDTH)
    ab = patch(q, q, q, extra())
    ba = patch(q, q, q, dict(extra(), cond_or_uncond=[0, 1]))
    k, v = ctx.kv(1, q.device, q.dtype)
    for out, order in ((ab, [1, 0]), (ba, [0, 1])):
        for row, kind in enumerate(order):
            want = id_attention(base[row:row + 1], q[row:row + 1], k[kind:kind + 1], v[kind:kind + 1], HEADS, 0.8,
                                "ortho_v2")
            torch.testing.assert_close(out[row:row + 1], want, atol=1e-5, rtol=1e-4)
    assert len(ctx._rows) == 2  # one entry per (layer, pattern, batch, device, dtype)


def test_patch_lifecycle(adapter):
    patch, base = make_patch(adapter)
    q = torch.randn(2, TOKENS, WIDTH)
    before = patch(q, q, q, extra())
    assert copy.deepcopy(patch) is patch
    assert patch.to(torch.float16) is patch and patch.to(torch.device("cpu")) is patch
    assert patch.upstream.moved == [torch.float16, torch.device("cpu")]
    assert torch.equal(patch(q, q, q, extra()), before)  # a dtype/device move changes no result
    assert patch.models() == ["upstream-model"]


def test_uneven_batch_is_refused_naming_the_node(adapter):
    from pulid_core.errors import PuLIDError

    patch, _ = make_patch(adapter)
    q = torch.randn(3, TOKENS, WIDTH)
    with pytest.raises(PuLIDError, match=r"Apply PuLID cannot split a batch of 3 rows into the 2 chunk\(s\)"):
        patch(q, q, q, extra())


def test_attention_signature_is_resolved_once(pack, monkeypatch):
    from comfyui_pulid.nodes import attn_patch

    q = torch.randn(1, 8, WIDTH)
    eo = extra()
    attn_patch.attention_call(q, q, q, HEADS, eo)
    calls = []
    real = attn_patch.inspect.signature
    monkeypatch.setattr(attn_patch.inspect, "signature", lambda fn: calls.append(fn) or real(fn))
    for _ in range(3):
        attn_patch.attention_call(q, q, q, HEADS, eo)
    assert calls == []


def test_patched_call_records_gradients_for_training(adapter):
    # ComfyUI's Train LoRA node runs the model with autograd on: the patched call is differentiable
    # (before: the out= ops raised), equal to the sampling result, and leaves base alone.
    patch, base = make_patch(adapter)
    kept = base.clone()
    q0 = torch.randn(2, TOKENS, WIDTH, generator=torch.Generator().manual_seed(2))
    want = patch(q0, q0, q0, extra())
    q = q0.clone().requires_grad_()
    with torch.enable_grad():
        out = patch(q, q, q, extra())
        out.sum().backward()
    torch.testing.assert_close(out.detach(), want, atol=2e-6, rtol=1e-5)
    assert q.grad is not None and q.grad.abs().sum() > 0 and torch.equal(base, kept)
