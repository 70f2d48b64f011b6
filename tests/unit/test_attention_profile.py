"""The sampling path's ID attention: equal to the authors' numbers with the zero tokens left out of the
attention, and a fixed, small amount of work per call with no host-device synchronisation.

Kernels and syncs are counted with torch.profiler on the CPU (a GPU runs the same aten ops; only
fp16/bf16 differ, see CPU_CASTS): a regression (a copy, an unfused attention, a ``.item()``, a
per-call ``torch.tensor``) turns this red.
"""


import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

from pulid_core import attention
from pulid_core.attention import id_attention, id_attention_prepared, prepare_id_kv, select_rows
from pulid_core.errors import PuLIDError
from tests import detfill
from tests.attention_paths import native_buildable

TOL = 2e-5  # golden README: attention outputs
HEADS = 10
# golden key -> (num_zero, projection, ID tokens)
MODES = {
    "plain": (0, "none", 10),
    "ortho": (16, "ortho", 10),
    "ortho_v2": (8, "ortho_v2", 10),
    "ortho_v2_z20": (20, "ortho_v2", 32),
}

# Ops that move no data of their own (views, allocation, dispatch wrappers whose work shows up
# as a child op). Everything else the profiler records is a kernel.
NOT_KERNELS = {
    "aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::transpose", "aten::permute", "aten::expand",
    "aten::reshape", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::detach",
    "aten::alias", "aten::t", "aten::resolve_conj", "aten::resolve_neg", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::result_type", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous",
    "aten::matmul", "aten::softmax", "aten::linalg_vecdot", "aten::_reshape_alias", "aten::square",
    "aten::square_", "aten::rsub", "aten::unbind", "aten::split", "aten::chunk", "aten::narrow", "aten::detach_",
    "aten::new_empty", "aten::scaled_dot_product_attention", "aten::mT",
}
# Host reads of a tensor's value: each blocks on a GPU until its queue drains (on the CPU they are
# free, so they are caught by name: the profiler for item(), a torch-function mode for the rest).
SYNC_OPS = {"aten::_local_scalar_dense"}
SYNC_CALLS = {"tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "nonzero", "item"}
# torch.tensor(list) on a device: a host-to-device copy per call.
UPLOAD_OPS = {"aten::lift_fresh"}


class _HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in (*args[1:], kwargs.get("device")))
        if name in SYNC_CALLS or to_cpu:
            self.reads.append(name)
        return func(*args, **kwargs)


def count_ops(fn):
    """(kernels, syncs, names) of one call of ``fn``. A reduction's output initialisation (fill_
    inside sum) belongs to the reduction and is not counted separately; a torch.tensor(list)
    counts as a kernel (an upload)."""
    reads = _HostReads()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, reads:
        fn()
    names, scalar_reads = [], 0
    for event in prof.events():
        name = event.name
        if name in SYNC_OPS:
            scalar_reads += 1
        if not name.startswith("aten::") or name in NOT_KERNELS or name in SYNC_OPS or name == "aten::item":
            continue
        if name == "aten::fill_" and event.cpu_parent is not None:
            continue
        if name == "aten::copy_" and all(not shape for shape in event.input_shapes):
            continue  # a Python scalar wrapped as a 0-d tensor: a kernel argument on a GPU
        names.append(name)
    # float(t) shows up in both; an aten op reading a value internally only in the profiler.
    return len(names), max(scalar_reads, len(reads.reads)), names + reads.reads


def fill(name, shape):
    return torch.from_numpy(detfill.tensor(name, shape, "pub:"))


def compact_kv(c640_model, mode, weight, rows=2):
    """The ID keys/values without zero rows, the zero tokens given as num_zero."""
    num_zero, _, tokens = MODES[mode]
    ids = fill(f"input.attn.c640.id_T{tokens}", (2, tokens, 2048))
    k, v = c640_model.id_kv(1, ids)
    kv = prepare_id_kv(k, v, HEADS, weight, num_zero=num_zero)
    # The matmuls see the ID tokens, one column for all zero tokens, and padding to a multiple
    # of 16 (weight 0; the CPU softmax is slow below 16): 18 -> 16, 26 -> 16, 52 -> 48 columns.
    width = tokens + (num_zero > 0)
    assert kv.k.shape[-2] == kv.v.shape[-2] == kv.v_rest.shape[-2] == kv.mask.shape[-1] == width + (-width % 16)
    return kv


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [0.8, 2.5])
def test_zero_tokens_left_out_still_match_official(c640_model, attn_golden, mode, scale, attention_path):
    kv = compact_kv(c640_model, mode, scale)
    out = id_attention_prepared(attn_golden["c640.base"], attn_golden["c640.q"], kv, MODES[mode][1], **attention_path)
    assert (out - attn_golden[f"c640.{mode}.s{scale}"]).abs().max().item() <= TOL


@pytest.mark.parametrize("rows", [[1, 0, 1], [1, 1, 0, 0], [0, 0, 0]])
@pytest.mark.parametrize("mode", MODES)
def test_rows_are_gathered_per_batch_pattern(c640_model, attn_golden, mode, rows, attention_path):
    # Rows of the golden pair (0 uncond, 1 cond); the explicit path multiplies runs of equal rows at once.
    kv = select_rows(compact_kv(c640_model, mode, 0.8), rows=torch.tensor(rows))
    base, q = attn_golden["c640.base"], attn_golden["c640.q"]
    out = id_attention_prepared(base[rows], q[rows], kv, MODES[mode][1], **attention_path)
    expected = attn_golden[f"c640.{mode}.s0.8"][rows]
    assert (out - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("projection", ["none", "ortho", "ortho_v2"])
@pytest.mark.parametrize("num_zero", [0, 3])
def test_implied_zero_tokens_equal_explicit_zero_rows(projection, num_zero, attention_path):
    gen = torch.Generator().manual_seed(1)
    base, q = torch.randn(2, 48, 128, generator=gen), torch.randn(2, 48, 128, generator=gen) * 4
    k, v = torch.randn(2, 7, 128, generator=gen), torch.randn(2, 7, 128, generator=gen)
    pad = torch.zeros(2, num_zero, 128)
    explicit = id_attention(base, q, torch.cat([k, pad], 1), torch.cat([v, pad], 1), 2, 1.3, projection, **attention_path)
    implied = id_attention(base, q, k, v, 2, 1.3, projection, num_zero=num_zero, **attention_path)
    torch.testing.assert_close(implied, explicit, atol=2e-6, rtol=1e-5)


def test_large_logits_stay_finite(attention_path):
    # ortho_v2's mass uses the unscaled logits: hundreds here, so exp() must see them minus the max.
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 16, 128, generator=gen) * 30
    k = torch.randn(1, 6, 128, generator=gen) * 30
    out = id_attention(torch.randn(1, 16, 128, generator=gen), q, k, k, 2, 0.8, "ortho_v2", num_zero=4, **attention_path)
    assert torch.isfinite(out).all()


# ortho_v2's mass on the explicit path: from the ID softmax's power 1/scale = sqrt(d) where that is a
# power of two up to 16 (squarings), else from a second softmax of the unscaled logits.
POWERS = {1: 0, 4: 2, 16: 4, 32: 0, 64: 8, 128: 0, 256: 16}


@pytest.mark.parametrize("d", sorted(POWERS))
@pytest.mark.parametrize("projection, tokens, num_zero", [
    ("ortho_v2", 7, 8), ("ortho_v2", 7, 0), ("ortho_v2", 32, 20), ("ortho", 7, 16), ("none", 7, 3)])
@pytest.mark.parametrize("sizes", [None, (16, 48)], ids=["default", "small-blocks"])
@pytest.mark.parametrize("native", [False, True], ids=["torch-ops", "compiled"])
def test_explicit_path_equals_fused_for_every_head_width(d, projection, tokens, num_zero, sizes, native, monkeypatch):
    # 100 tokens: with blocks of 16 and segments of 48 tokens, three uneven segments of 7 blocks
    # (the torch-ops path; the compiled kernel's own groups and chunks are tested in test_native_kernel).
    if native and not native_buildable():
        pytest.skip("no C compiler: the compiled ID-branch kernel is not built here")
    if sizes:
        monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", sizes[0] * 2 * d)
        monkeypatch.setattr(attention, "_SEGMENT_ELEMENTS", sizes[1] * 2 * d)
    gen = torch.Generator().manual_seed(d)
    base, q = torch.randn(3, 100, 2 * d, generator=gen), torch.randn(3, 100, 2 * d, generator=gen) * 2
    k, v = torch.randn(2, tokens, 2 * d, generator=gen), torch.randn(2, tokens, 2 * d, generator=gen)
    kv = select_rows(prepare_id_kv(k, v, 2, 0.9, num_zero=num_zero), rows=[1, 0, 1])
    # d = 256 with 16 or 20 zero tokens: the zero column's weight num_zero ** -15 times P ** 16 could
    # underflow, so the second softmax.
    assert kv.power == (0 if d == 256 and num_zero >= 16 else POWERS[d])
    fused = id_attention_prepared(base, q, kv, projection, fused=True)
    explicit = id_attention_prepared(base, q, kv, projection, fused=False, native=native)
    torch.testing.assert_close(explicit, fused, atol=2e-5, rtol=2e-5)


# Kernels per call of the ID branch (ComfyUI's own attention not included), fused path (GPUs):
# fidelity = ortho_v2: the fused ID attention; ortho_v2's mass (a second fused attention with the
# unscaled logits) and its sum over the heads; the energy and <H, I> as product + sum each (one
# fp32 scratch); c = <H, I> / energy; the factor; the result, in place. style = ortho: the
# attention, energy and dot, the factor (one addcdiv), the result. neutral = none: the attention
# and one add.
KERNEL_BUDGET = {"ortho_v2": 10, "ortho": 7, "none": 2}
# The explicit path (CPU fp32), per batch row. Per segment of tokens: the logits and I (one matmul
# each), bias + scale and the softmax; fidelity adds ortho_v2's mass from the softmax's 8th power
# (d = 64: three squarings, one matmul for each head's weighted sums, their ratio, its sum over
# the heads); neutral adds I to H. Per block of tokens: the energy and <H, I> (product + sum each),
# and in fidelity the factor and the result. Per row: the sums over the blocks, then c (fidelity)
# or the factor and the result (style).
EXPLICIT_PER_SEGMENT = {"ortho_v2": 10, "ortho": 4, "none": 5}
EXPLICIT_PER_BLOCK = {"ortho_v2": 6, "ortho": 4, "none": 0}
EXPLICIT_PER_ROW = {"ortho_v2": 2, "ortho": 3, "none": 0}
# The fused attention kernels (CPU; CUDA runs flash or memory-efficient ones).
FUSED_ATTENTION = "_scaled_dot_product_"
ATTENTIONS = {"ortho_v2": 2, "ortho": 1, "none": 1}
# fp16/bf16 on the CPU: H and I converted to fp32 once, the mass summed from fp16, the result
# rounded back (CPU kernels copy mixed-dtype operands; CUDA ones convert them as they load them).
CPU_CASTS = {"ortho_v2": 4, "ortho": 3, "none": 0}


def budget(projection: str, fused: bool, rows: int = 2, segments: int = 1, blocks: int = 1) -> int:
    if fused:
        return KERNEL_BUDGET[projection]
    return rows * (segments * EXPLICIT_PER_SEGMENT[projection] + blocks * EXPLICIT_PER_BLOCK[projection]
                   + EXPLICIT_PER_ROW[projection])


@pytest.fixture
def torch_threads():
    """Sets torch's intra-op thread count for one test, restoring it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def layer_inputs(dtype=torch.float32, num_zero=8, rows=(1, 0), tokens=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base, q = (torch.randn(len(rows), tokens, 640, generator=gen).to(dtype) for _ in range(2))
    k, v = torch.randn(2, 10, 640, generator=gen), torch.randn(2, 10, 640, generator=gen)
    kv = select_rows(prepare_id_kv(k, v, HEADS, 0.8, num_zero=num_zero, dtype=dtype), rows=list(rows))
    return base, q, kv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("projection, num_zero", [("ortho_v2", 8), ("ortho_v2", 20), ("ortho", 16), ("none", 0)])
def test_kernels_and_syncs_per_call(projection, num_zero, dtype):
    base, q, kv = layer_inputs(dtype, num_zero)
    id_attention_prepared(base, q, kv, projection, fused=True)  # warm-up
    kernels, syncs, names = count_ops(lambda: id_attention_prepared(base, q, kv, projection, fused=True))
    assert syncs == 0, names
    casts = 0 if dtype == torch.float32 else CPU_CASTS[projection]
    assert kernels <= KERNEL_BUDGET[projection] + casts, names
    assert names.count("aten::copy_") <= casts, names
    # Fused attention only: no QK^T, softmax or attention bmm of its own, no fallback to the
    # unfused (math) path.
    assert sum(FUSED_ATTENTION in n for n in names) == ATTENTIONS[projection], names
    assert not {"aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_safe_softmax"} & set(names), names


@pytest.mark.parametrize("rows", [(1, 0), (1, 1, 0, 0), (0, 1, 0)])
@pytest.mark.parametrize("projection, num_zero", [("ortho_v2", 8), ("ortho_v2", 20), ("ortho", 16), ("none", 0)])
@pytest.mark.parametrize("sizes", [None, (64, 128)], ids=["default", "small-blocks"])
@pytest.mark.parametrize("threads", [1, 2])
def test_explicit_kernels_and_syncs_per_call(projection, num_zero, rows, sizes, threads, monkeypatch, torch_threads):
    # 256 tokens of 640 channels on one thread: by default one segment and two blocks (204 + 52
    # tokens); with blocks of 64 tokens and segments of 128, two segments of two blocks each. On
    # several threads, whole rows.
    torch_threads(threads)
    if sizes:
        monkeypatch.setattr(attention, "_BLOCK_ELEMENTS", sizes[0] * 640)
        monkeypatch.setattr(attention, "_SEGMENT_ELEMENTS", sizes[1] * 640)
    segments, blocks = (1, 1) if threads > 1 else (2, 4) if sizes else (1, 2)
    base, q, kv = layer_inputs(num_zero=num_zero, rows=rows)
    workspace = {}
    call = lambda: id_attention_prepared(base.clone(), q, kv, projection, fused=False, native=False, workspace=workspace,  # noqa: E731
                                         inplace=True)
    call()
    held = {key: t.data_ptr() for key, t in workspace.items()}
    kernels, syncs, names = count_ops(lambda: id_attention_prepared(base, q, kv, projection, fused=False, native=False,
                                                                    workspace=workspace, inplace=True))
    assert syncs == 0, names
    assert kernels == budget(projection, False, len(rows), segments, blocks), names
    # Per row and segment one matmul for the logits, one for I (+ the mass's); no copies, no fused attention.
    assert names.count("aten::bmm") == len(rows) * segments * (2 + (projection == "ortho_v2")), names
    assert "aten::copy_" not in names and not any(FUSED_ATTENTION in n for n in names), names
    # The second call reused every buffer.
    assert {key: t.data_ptr() for key, t in workspace.items()} == held


def test_default_path_follows_device_and_dtype():
    for dtype, fused in ((torch.float32, False), (torch.float16, True), (torch.bfloat16, True)):
        base, q, kv = layer_inputs(dtype)
        names = count_ops(lambda: id_attention_prepared(base, q, kv, "ortho_v2"))[2]
        assert any(FUSED_ATTENTION in n for n in names) == fused, (dtype, names)


@pytest.mark.parametrize("projection", ["ortho_v2", "ortho", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_in_place_result_and_workspace(projection, masked):
    base, q, kv = layer_inputs(num_zero=8 if projection != "none" else 0, tokens=64)
    mask = torch.rand(2, 64, 1, generator=torch.Generator().manual_seed(3)) if masked else None
    want = id_attention_prepared(base, q, kv, projection, mask)
    assert not torch.equal(want, base)
    workspace = {}
    for path in ({"fused": False, "native": False}, {"fused": False}, {"fused": True}):
        into = base.clone()
        out = id_attention_prepared(into, q, kv, projection, mask, **path, workspace=workspace, inplace=True)
        assert out.data_ptr() == into.data_ptr()  # written into base: no new tensor of the layer's size
        torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-5)
    # Without inplace the result is a new tensor each call, never a workspace buffer that the
    # next call would overwrite.
    first = id_attention_prepared(base, q, kv, projection, mask, fused=False, workspace=workspace)
    kept = first.clone()
    second = id_attention_prepared(base * 0.5, q, kv, projection, mask, fused=False, workspace=workspace)
    assert torch.equal(first, kept) and not torch.equal(second, first)
    assert all(t.data_ptr() != first.data_ptr() for t in workspace.values())


def test_explicit_path_refuses_half_precision_and_takes_strided_inputs():
    base, q, kv = layer_inputs(torch.float16, tokens=64)
    with pytest.raises(PuLIDError, match="fp32 only"):
        id_attention_prepared(base, q, kv, "ortho_v2", fused=False)
    base, q, kv = layer_inputs(tokens=64)
    want = id_attention_prepared(base, q, kv, "ortho_v2", fused=True)
    # q and base as strided views (channels-major storage), base written in place.
    q_t, into = q.transpose(1, 2).contiguous().transpose(1, 2), base.transpose(1, 2).contiguous().transpose(1, 2)
    out = id_attention_prepared(into, q_t, kv, "ortho_v2", fused=False, workspace={}, inplace=True)
    assert out.data_ptr() == into.data_ptr()
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_fp16_cpu_is_never_written_in_place():
    # CPU fp16/bf16 results are computed in fp32 copies: base keeps its value, the result is new.
    base, q, kv = layer_inputs(torch.float16, tokens=64)
    kept = base.clone()
    out = id_attention_prepared(base, q, kv, "ortho_v2", inplace=True)
    assert torch.equal(base, kept) and out.data_ptr() != base.data_ptr()


def test_masked_call_adds_one_kernel(attention_path):
    gen = torch.Generator().manual_seed(0)
    base, q = torch.randn(2, 64, 640, generator=gen), torch.randn(2, 64, 640, generator=gen)
    k = torch.randn(2, 10, 640, generator=gen)
    kv = prepare_id_kv(k, k, HEADS, 0.8, num_zero=8)
    mask = torch.rand(2, 64, 1, generator=gen)
    id_attention_prepared(base, q, kv, "ortho_v2", mask=mask, **attention_path)
    unmasked = count_ops(lambda: id_attention_prepared(base, q, kv, "ortho_v2", **attention_path))
    kernels, syncs, names = count_ops(lambda: id_attention_prepared(base, q, kv, "ortho_v2", mask=mask, **attention_path))
    assert (kernels, syncs) == (unmasked[0] + 1, 0), names
    # The compiled kernel is no torch op at all: only the blend of the mask shows.
    limit = 0 if attention_path.get("native") else budget("ortho_v2", attention_path["fused"])
    assert unmasked[0] <= limit, unmasked[2]


@pytest.mark.parametrize("read", [
    lambda x: x.sum().item(), lambda x: float(x[0, 0]), lambda x: x.tolist(), lambda x: x.cpu(),
    lambda x: x.to("cpu"), lambda x: bool((x > 0).any()), lambda x: x.nonzero(),
])
def test_counter_sees_host_reads(read):
    x = torch.randn(4, 4)
    assert count_ops(lambda: read(x))[1] >= 1


def test_counter_counts_kernels_not_views():
    x = torch.randn(4, 4)
    assert count_ops(lambda: x.view(16).transpose(0, 0).reshape(4, 4))[:2] == (0, 0)
    assert count_ops(lambda: (x * 2).sum(dim=0))[0] == 2
    assert count_ops(lambda: torch.tensor([1, 0]))[0] == 1  # an upload per call
    assert count_ops(lambda: x.transpose(0, 1).reshape(16))[0] == 1  # the copy of a non-viewable reshape
