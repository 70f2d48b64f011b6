"""Edge cases of the compiled CPU ID-branch kernel (pulid_core/csrc/id_branch.c, pulid_core.native, the native
path of pulid_core.attention.id_attention_prepared): cases where it parts from torch's ops (native=False)
or took the process down. Each test failed on the code it was written against (8ec9d3b); its docstring says why."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pulid_core import attention, native
from pulid_core.attention import PROJECTIONS, id_attention_prepared, prepare_id_kv
from tests.attention_paths import native_buildable

needs_compiler = pytest.mark.skipif(not native_buildable(), reason="no C compiler: the kernel is not built here")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@needs_compiler
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_nan_in_an_id_key_gives_nan_like_torch(projection):
    """A NaN in one ID key (a broken face embedding) makes every logit of that column NaN. torch's ops
    (and the fused path, the authors' SDPA) then give NaN for the whole head, so the failure is visible.
    Before (8ec9d3b) the kernel returned finite numbers instead: exp_nonpos() clamps with vmax(x, -100), and a
    comparison with NaN is false, so NaN becomes -100 and exp gives 0: the broken token is silently
    dropped from the softmax (and hmax/vmax drop NaN lanes the same way). Correct: NaN exactly where
    native=False gives NaN (the kernel must not change what an invalid input produces)."""
    gen = torch.Generator().manual_seed(0)
    base, q = (torch.randn(2, 10, 128, generator=gen) for _ in range(2))
    k, v = (torch.randn(2, 10, 128, generator=gen) for _ in range(2))
    k[:, 3, 5] = float("nan")
    kv = prepare_id_kv(k, v, 2, 0.8, num_zero=3)
    want = id_attention_prepared(base, q, kv, projection, fused=False, native=False)
    assert want.isnan().any()  # torch's ops: the head that reads the NaN key is NaN
    got = id_attention_prepared(base, q, kv, projection, fused=False, native=True)
    assert torch.equal(got.isnan(), want.isnan()), (
        f"kernel NaN at {int(got.isnan().sum())} values, torch's ops at {int(want.isnan().sum())}")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5, equal_nan=True)


@needs_compiler
@pytest.mark.parametrize("projection", ["ortho", "ortho_v2"])
def test_projection_sums_stay_accurate_over_many_tokens(projection, one_torch_thread):
    """The projection's per-channel sums (the energy of H and <H, I>) over the tokens. A 2048x2048 SDXL
    image has 16384 tokens at its first attention level. The kernel added each token into one fp32
    accumulator per channel and thread (pass_one: energy[c] += h*h + tiny; dot[c] += h*i), so its rounding
    error grows with the token count; torch's path sums in blocks of tokens, then sums the blocks. With H
    and I having a per-channel offset (as real activations do), torch's path stays within 2e-5 of an fp64
    reference, while the kernel differs from native=False by up to ~7e-5 (beyond atol/rtol 2e-5 at
    hundreds (ortho) to thousands (ortho_v2) of values; about 10x torch's error against fp64). Correct: the same numbers as torch's ops
    (e.g. blocked or pairwise sums per thread)."""
    gen = torch.Generator().manual_seed(0)
    n, heads, d, offset = 16384, 2, 64, 10.0
    base = torch.randn(1, n, heads * d, generator=gen) + offset
    q = torch.randn(1, n, heads * d, generator=gen)
    k = torch.randn(1, 32, heads * d, generator=gen)
    v = torch.randn(1, 32, heads * d, generator=gen) - 2 * offset
    kv = prepare_id_kv(k, v, heads, 1.0, num_zero=20)
    exact = id_attention_prepared(base.double(), q.double(), prepare_id_kv(k.double(), v.double(), heads, 1.0,
                                                                           num_zero=20), projection, fused=True)
    want = id_attention_prepared(base, q, kv, projection, fused=False, native=False)
    # torch's ops are right (within the tolerance of the fp64 result): the reference is sound.
    torch.testing.assert_close(want, exact.float(), atol=2e-5, rtol=2e-5)
    got = id_attention_prepared(base, q, kv, projection, fused=False, native=True)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@needs_compiler
def test_truncated_library_in_the_cache_does_not_crash_the_process(tmp_path):
    """A library in the cache under the right name but cut short (a crash or power loss after build()'s
    os.replace, which was not preceded by an fsync, a full disk while a home folder was copied, a sync
    tool). build() accepted any existing file (target.is_file()) and load() handed it to ctypes.CDLL:
    dlopen maps the ELF's segments beyond the end of the file and the process dies of SIGBUS on the
    first ComfyUI sampling step on the CPU (the except OSError around the load never runs). Correct:
    a damaged library is detected (size/digest recorded after the build, or a probe load in a child
    process) and rebuilt, or skipped with a log message, the ID branch then running on torch's ops."""
    built = attention.native_kernel()
    assert built is not None
    cc = native.compiler()
    folder = tmp_path / "comfyui-pulid" / "native"
    folder.mkdir(parents=True, mode=0o700)
    data = built.path.read_bytes()
    # The name build() looks for first (the first flag set's key), holding half of a real library.
    (folder / f"id_branch-{native._key(cc, native.FLAG_SETS[0])}.so").write_bytes(data[: len(data) // 2])
    script = (
        "import torch\n"
        "from pulid_core import attention\n"
        "from pulid_core.attention import id_attention_prepared, prepare_id_kv\n"
        "attention.native_kernel()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "base, q, k, v = (torch.randn(1, 20, 128, generator=g) for _ in range(4))\n"
        "kv = prepare_id_kv(k, v, 2, 1.0, num_zero=3)\n"
        "out = id_attention_prepared(base, q, kv, 'ortho_v2')\n"
        "ref = id_attention_prepared(base, q, kv, 'ortho_v2', fused=False, native=False)\n"
        "torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)\n"
        "print('survived')\n"
    )
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "survived" in done.stdout, (
        f"the process died (exit status {done.returncode}) loading a truncated cached library: "
        f"{done.stderr[-1500:]}")
