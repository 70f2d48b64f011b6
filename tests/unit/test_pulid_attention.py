"""PuLID ID attention (none / ortho / ortho_v2) against the official IDAttnProcessor2_0 outputs.

The layer-1 ID K/V weights of a reduced adapter are the golden ``attn.c640.id_to_k/v``
weights, so the ID keys and values come from the public ``PuLIDModel.id_kv``.
"""


import pytest
import torch

from pulid_core import id_attention
from pulid_core.errors import PuLIDError
from tests import detfill

TOL = 2e-5  # golden README: attention outputs
HEADS = 10  # C = 640 = 10 x 64

# golden key -> (num_zero, projection, ID tokens); README table
MODES = {
    "plain": (0, "none", "id_T10"),
    "ortho": (16, "ortho", "id_T10"),
    "ortho_v2": (8, "ortho_v2", "id_T10"),
    "ortho_v2_z20": (20, "ortho_v2", "id_T32"),
}
CASES = [(mode, scale) for mode in MODES for scale in (0.8, 2.5)]


def fill(name, shape):
    return torch.from_numpy(detfill.tensor(name, shape, "pub:"))


def id_tokens(name):
    return fill(f"input.attn.c640.{name}", (2, 10 if name == "id_T10" else 32, 2048))


def kv(c640_model, mode):
    num_zero, _, tokens = MODES[mode]
    return c640_model.id_kv(1, id_tokens(tokens), num_zero=num_zero)


def test_id_kv_zero_rows_and_shapes(c640_model):
    assert c640_model.layer_widths[1] == 640
    tokens = id_tokens("id_T10")
    k, v = c640_model.id_kv(1, tokens, num_zero=16)
    assert k.shape == v.shape == (2, 26, 640)
    assert torch.count_nonzero(k[:, 10:]) == 0 and torch.count_nonzero(v[:, 10:]) == 0
    # Bias-free projection E W^T, written out independently.
    wk = fill("attn.c640.id_to_k.weight", (640, 2048)).double()
    assert (k[:, :10].double() - tokens.double() @ wk.T).abs().max() <= 1e-4
    assert c640_model.id_kv(1, tokens)[0].shape == (2, 10, 640)
    with pytest.raises(PuLIDError, match="odd numbers"):
        c640_model.id_kv(2, tokens)
    with pytest.raises(PuLIDError, match="num_zero"):
        c640_model.id_kv(1, tokens, num_zero=-1)


@pytest.mark.parametrize("mode, scale", CASES)
def test_matches_official(c640_model, attn_golden, mode, scale):
    k, v = kv(c640_model, mode)
    out = id_attention(attn_golden["c640.base"], attn_golden["c640.q"], k, v, HEADS, scale, MODES[mode][1])
    expected = attn_golden[f"c640.{mode}.s{scale}"]
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert (out - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_per_row_weight(c640_model, attn_golden, mode):
    # Row 0 (uncond) at 0.8 and row 1 (cond) at 2.5 in one call.
    k, v = kv(c640_model, mode)
    for weight in (torch.tensor([0.8, 2.5]), torch.tensor([0.8, 2.5]).view(2, 1, 1)):
        out = id_attention(attn_golden["c640.base"], attn_golden["c640.q"], k, v, HEADS, weight, MODES[mode][1])
        assert (out[0] - attn_golden[f"c640.{mode}.s0.8"][0]).abs().max() <= TOL
        assert (out[1] - attn_golden[f"c640.{mode}.s2.5"][1]).abs().max() <= TOL


def reference_attention(q, k, v, heads):
    """Softmax attention written out."""
    b, n, c = q.shape
    q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    w = (q @ k.transpose(-2, -1) / (c // heads) ** 0.5).softmax(-1)
    return (w @ v).transpose(1, 2).reshape(b, n, c)


def test_mask_and_zero_weight(c640_model, attn_golden):
    base, q = attn_golden["c640.base"], attn_golden["c640.q"]
    k, v = kv(c640_model, "ortho")
    full = id_attention(base, q, k, v, HEADS, 2.5, "ortho")
    assert torch.equal(id_attention(base, q, k, v, HEADS, 0.0, "ortho"), base)
    assert torch.equal(id_attention(base, q, k, v, HEADS, 2.5, "ortho", mask=torch.ones(2, 64, 1)), full)
    mask = torch.zeros(2, 64)
    mask[:, :32] = 1.0
    masked = id_attention(base, q, k, v, HEADS, 2.5, "ortho", mask=mask)
    assert torch.equal(masked[:, :32], full[:, :32])
    assert torch.equal(masked[:, 32:], base[:, 32:])


def test_single_row_keys_serve_the_batch(c640_model, attn_golden):
    base, q = attn_golden["c640.base"], attn_golden["c640.q"]
    k, v = kv(c640_model, "plain")
    out = id_attention(base, q, k[1:], v[1:], HEADS, 0.8, "none")
    assert (out[1] - attn_golden["c640.plain.s0.8"][1]).abs().max() <= TOL
    with pytest.raises(PuLIDError, match="cannot serve"):
        id_attention(base, q, torch.cat([k, k]), torch.cat([v, v]), HEADS, 0.8, "none")


# fp16 keeps 11 significant bits (eps 2^-11 = 4.9e-4): rounding q, base and the ID K/V to fp16 and
# rounding the output costs a few eps of the output's largest value (measured 0.6-0.85 eps on
# these vectors); 4 eps leaves room for other CPUs' kernels and is still far below an ID term
# computed in the wrong precision or with a wrong factor.
FP16_TOL_EPS = 4 * 2.0**-11


@pytest.mark.parametrize("mode", MODES)
def test_fp16_matches_the_fp32_golden(c640_model, attn_golden, mode):
    base, q = attn_golden["c640.base"].half(), attn_golden["c640.q"].half()
    k, v = kv(c640_model, mode)
    out = id_attention(base, q, k, v, HEADS, 0.8, MODES[mode][1])
    assert out.dtype == torch.float16
    expected = attn_golden[f"c640.{mode}.s0.8"]
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=FP16_TOL_EPS * float(expected.abs().max()))


def test_rejects_bad_arguments(c640_model, attn_golden):
    base, q = attn_golden["c640.base"], attn_golden["c640.q"]
    k, v = kv(c640_model, "plain")
    with pytest.raises(PuLIDError, match="Unknown PuLID projection"):
        id_attention(base, q, k, v, HEADS, 1.0, "orthogonal")
    with pytest.raises(PuLIDError, match="shapes do not fit"):
        id_attention(base, q, k[..., :320], v[..., :320], HEADS, 1.0, "none")


def _written_out(base, q, k, v, heads, weight, projection):
    """The authors' formulas in float64, term by term; channels with H = 0 at every token get
    the ID term unprojected (the authors divide 0 by 0 there)."""
    base, q, k, v = (t.double() for t in (base, q, k, v))
    ident = reference_attention(q, k, v, heads)
    if projection == "none":
        return base + weight * ident
    energy = (base * base).sum(-2, keepdim=True)
    coeff = torch.where(energy > 0, (base * ident).sum(-2, keepdim=True) / energy.clamp_min(1e-300), 0.0)
    proj = coeff * base
    if projection == "ortho":
        return base + weight * (ident - proj)
    b, n, c = q.shape
    qh, kh = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k))
    mass = (qh @ kh.transpose(-2, -1)).softmax(-1).mean(1)[..., :5].sum(-1, keepdim=True)
    return base + weight * (ident + (mass - 1) * proj)


@pytest.mark.parametrize("projection", ["ortho", "ortho_v2"])
def test_zero_text_attention_row_gets_the_unprojected_id_term(projection, attention_path):
    # A zeroed negative prompt gives H = 0 at every token of that row: nothing to project
    # onto, so the ID term is added unprojected instead of 0/0 = NaN. Row 1 has one channel
    # at 0 everywhere and is projected elsewhere.
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 16, 64, generator=gen)
    k = torch.randn(2, 6, 64, generator=gen)
    base = torch.randn(2, 16, 64, generator=gen)
    base[0] = 0.0
    base[1, :, 5] = 0.0
    out = id_attention(base, q, k, k, 4, 0.8, projection, **attention_path)
    plain = id_attention(base, q, k, k, 4, 0.8, "none", **attention_path)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], plain[0])
    assert (out[0] - base[0]).abs().max() > 0.1  # the ID term is there
    expected = _written_out(base, q, k, k, 4, 0.8, projection).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("projection", ["none", "ortho", "ortho_v2"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_flow_when_autograd_records(projection, masked):
    """ComfyUI's Train LoRA node runs the model outside inference mode, recording gradients through the
    patched attention. Before: every path's out= ops raised ("functions with out=... arguments don't
    support automatic differentiation"). Now the fused path runs, differentiable, never writing into base;
    its gradients equal those of the authors' formulas in float64."""
    from pulid_core.attention import id_attention_prepared, prepare_id_kv, select_rows

    gen = torch.Generator().manual_seed(3)
    heads, weight = 2, 0.8
    q0, base0 = torch.randn(2, 12, 32, generator=gen), torch.randn(2, 12, 32, generator=gen)
    k, v = torch.randn(2, 6, 32, generator=gen), torch.randn(2, 6, 32, generator=gen)
    mask = torch.rand(2, 12, 1, generator=gen) if masked else None
    kv = select_rows(prepare_id_kv(k, v, heads, weight), rows=[0, 1])
    want = id_attention_prepared(base0, q0, kv, projection, mask)
    q, base = q0.clone().requires_grad_(), base0.clone().requires_grad_()
    out = id_attention_prepared(base, q, kv, projection, mask, workspace={}, inplace=True)
    assert out.requires_grad and torch.equal(base.detach(), base0)  # base is never written
    torch.testing.assert_close(out.detach(), want, atol=2e-6, rtol=1e-5)
    probe = torch.randn(out.shape, generator=gen)
    (out * probe).sum().backward()
    q64, base64 = q0.double().requires_grad_(), base0.double().requires_grad_()
    ref = _written_out(base64, q64, k, v, heads, weight, projection)
    if masked:
        ref = base64 + mask.double() * (ref - base64)
    (ref * probe.double()).sum().backward()
    torch.testing.assert_close(q.grad, q64.grad.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(base.grad, base64.grad.float(), atol=1e-5, rtol=1e-4)
    with pytest.raises(PuLIDError, match="does not record gradients"):
        id_attention_prepared(base, q, kv, projection, mask, fused=False)
