"""The compiled CPU kernel of the ID branch (pulid_core/csrc/id_branch.c, pulid_core.native): built
with the machine's compiler, cached, checked against torch's ops before use, and never in the way:
no compiler, a failed build, a disagreeing kernel or COMFYUI_PULID_NATIVE=0 leave the torch path.

Its numbers against the authors' are tested with the other paths (tests/attention_paths.py: golden
and unseen vectors, every head width); here: the shapes and options it must cover, its threads,
its build and its fallbacks."""

import contextlib
import ctypes
import logging
import os

import pytest
import torch

from pulid_core import attention, native
from pulid_core.attention import id_attention_prepared, prepare_id_kv, select_rows
from pulid_core.errors import PuLIDError
from tests.attention_paths import native_buildable
from tests.unit.test_attention_profile import count_ops

needs_compiler = pytest.mark.skipif(not native_buildable(), reason="no C compiler: the kernel is not built here")


@pytest.fixture
def fresh_kernel(monkeypatch):
    """native_kernel() decided again in this test (and again after it, for the tests that follow)."""
    attention.native_kernel.cache_clear()
    yield
    attention.native_kernel.cache_clear()


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def case(heads, d, n, tokens, num_zero, rows=(1, 0), weight=0.8, seed=0, batch_weights=False):
    gen = torch.Generator().manual_seed(seed)
    base, q = (torch.randn(len(rows), n, heads * d, generator=gen) for _ in range(2))
    k, v = (torch.randn(2, tokens, heads * d, generator=gen) for _ in range(2))
    if batch_weights:
        weight = torch.tensor([0.6, 1.3])
    kv = select_rows(prepare_id_kv(k, v, heads, weight, num_zero=num_zero), rows=list(rows))
    return base, q, kv


@needs_compiler
def test_kernel_is_built_and_used_where_a_compiler_is():
    kernel = attention.native_kernel()
    assert kernel is not None and kernel.path.is_file()
    # fp32 on the CPU by default: no torch op of its own (the whole ID branch is one library call per row).
    base, q, kv = case(10, 64, 64, 10, 8)
    id_attention_prepared(base.clone(), q, kv, "ortho_v2", workspace={}, inplace=True)
    kernels, syncs, names = count_ops(lambda: id_attention_prepared(base, q, kv, "ortho_v2"))
    assert (kernels, syncs) == (0, 0), names


@needs_compiler
@pytest.mark.parametrize("heads, d", [(10, 64), (20, 64), (2, 16), (3, 8), (2, 40), (1, 128), (2, 144)])
@pytest.mark.parametrize("n", [1, 3, 37, 260])
@pytest.mark.parametrize("projection, tokens, num_zero", [
    ("ortho_v2", 10, 8), ("ortho_v2", 3, 2), ("ortho_v2", 32, 20), ("ortho", 10, 16), ("none", 10, 0),
    ("ortho_v2", 63, 1), ("ortho", 64, 0)])
def test_equals_torch_ops(heads, d, n, projection, tokens, num_zero):
    # Head widths: 64 (SDXL; registers), other multiples of 16 up to 128, and the generic loop (8, 40,
    # 144); tokens: a partial group of four, a partial chunk; columns 12 to 64 (63 + the zero column).
    base, q, kv = case(heads, d, n, tokens, num_zero, rows=(1, 0, 1), batch_weights=True)
    want = id_attention_prepared(base, q, kv, projection, fused=False, native=False)
    got = id_attention_prepared(base, q, kv, projection, fused=False, native=True, workspace={})
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@needs_compiler
@pytest.mark.parametrize("projection", ["none", "ortho", "ortho_v2"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_in_place_masked_strided_and_threads(projection, threads, masked, torch_threads):
    torch_threads(threads)
    base, q, kv = case(10, 64, 100, 10, 8 if projection != "none" else 0)
    mask = torch.rand(2, 100, 1, generator=torch.Generator().manual_seed(5)) if masked else None
    want = id_attention_prepared(base, q, kv, projection, mask, fused=False, native=False)
    workspace = {}
    for _ in range(2):  # the second call on the workspace's buffers
        into = base.clone()
        out = id_attention_prepared(into, q, kv, projection, mask, fused=False, native=True, workspace=workspace,
                                    inplace=True)
        assert out.data_ptr() == into.data_ptr()
        torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    # Rows of a bigger tensor (a token stride other than the width), as ComfyUI's views can be.
    wide_q = torch.zeros(2, 100, 700)
    wide_q[..., :640] = q
    out = id_attention_prepared(base, wide_q[..., :640], kv, projection, mask, fused=False, native=True)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


@needs_compiler
def test_calls_it_cannot_take_go_to_torch_or_are_refused():
    # 65 columns (64 tokens + the zero column), channels not contiguous: torch's ops, same numbers;
    # native=True names the reason.
    base, q, kv = case(2, 64, 20, 64, 3)
    want = id_attention_prepared(base, q, kv, "ortho_v2", fused=True)
    torch.testing.assert_close(id_attention_prepared(base, q, kv, "ortho_v2"), want, atol=2e-5, rtol=2e-5)
    with pytest.raises(PuLIDError, match="at most 64 ID columns"):
        id_attention_prepared(base, q, kv, "ortho_v2", native=True)
    base, q, kv = case(2, 64, 20, 10, 3)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)
    want = id_attention_prepared(base, q, kv, "ortho_v2", fused=True)
    torch.testing.assert_close(id_attention_prepared(base, q_t, kv, "ortho_v2"), want, atol=2e-5, rtol=2e-5)
    with pytest.raises(PuLIDError, match="contiguous channels"):
        id_attention_prepared(base, q_t, kv, "ortho_v2", native=True)


@needs_compiler
def test_kernel_refuses_arguments_it_was_not_built_for():
    # The C entry point checks its sizes itself (nothing written): more than 64 columns, out == h
    # with a projection but no buffer for I, an unknown mode.
    lib = attention.native_kernel().lib
    buf = (ctypes.c_float * 4096)()
    scratch = (ctypes.c_float * 100000)()
    p = ctypes.addressof(buf)
    args = dict(q=p, qs=64, h=p, hs=64, out=p, os=64, ibuf=None, kt=p, v=p, bias=p, restw=p, rest=p,
                scratch=ctypes.addressof(scratch), n=4, heads=1, d=64, width=16, v_cols=12, v_head=1024,
                scale=0.125, tiny=1e-38, mode=1, threads=1)
    assert lib.pulid_id_row(*args.values()) == 1  # in place with a projection and no ibuf
    for bad in ({"width": 80}, {"width": 20}, {"mode": 3}, {"threads": 0}, {"v_cols": 17}, {"n": 0}):
        assert lib.pulid_id_row(*dict(args, out=p + 4096, **bad).values()) == 1, bad


@needs_compiler
def test_threads_are_torchs_own(torch_threads, monkeypatch):
    # Linux torch wheels ship libgomp.so.1: the kernel's OpenMP is that same runtime (one pool), even
    # with another package's renamed libgomp loaded first (sentencepiece's, in ComfyUI).
    with contextlib.suppress(ImportError):
        import sentencepiece  # noqa: F401
    kernel = native.load()
    if "OpenMP" in torch.__config__.parallel_info() and kernel.lib.pulid_openmp():
        assert kernel.threaded
    torch_threads(3)
    assert kernel.threads(3) == (3 if kernel.threaded else None)
    # A kernel on a runtime other than torch's runs on one thread (torch's ops where torch has several).
    monkeypatch.setattr(native, "_torch_openmp_function", lambda: 1)
    assert not native.load().threaded


def test_one_thread_kernel_leaves_several_torch_threads_to_torch():
    fake = native.Kernel(lib=None, path=None, threaded=False)
    assert fake.threads(1) == 1 and fake.threads(4) is None
    assert native.Kernel(lib=None, path=None, threaded=True).threads(200) == 64


# -- building and falling back ---------------------------------------------------------------------


@needs_compiler
def test_build_caches_by_source_compiler_and_cpu(tmp_path, monkeypatch):
    cc, flags = native.compiler(), native.FLAG_SETS[0]
    first = native.build(cc, tmp_path, flags)
    assert first is not None and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert native.build(cc, tmp_path, flags) == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    # The library and its digest; no temporary file left.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, first.with_suffix(".sha256").name])
    # Another CPU (a home folder shared between machines): another file.
    monkeypatch.setattr(native, "_cpu_signature", lambda: "flags : sse2")
    other = native.build(cc, tmp_path, flags)
    assert other is not None and other != first


def test_cpu_signature_holds_the_instruction_set_flags(tmp_path, monkeypatch):
    # -march=native builds for the CPU's flags: two machines with the same model name (VMs with other
    # feature masks) must not share a build (an instruction the other lacks would kill the process).
    # /proc/cpuinfo lists "model name" before "flags"; the signature held only the model name.
    cpuinfo = tmp_path / "cpuinfo"
    lines = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 {}\nprocessor\t: 1\n"
    real_open = open

    def signature(extra):
        cpuinfo.write_text(lines.format(extra))
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
            cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
        try:
            return native._cpu_signature()
        finally:
            monkeypatch.setattr("builtins.open", real_open)

    with_avx512, without = signature("avx512f"), signature("")
    assert "AMD EPYC" in with_avx512 and "avx512f" in with_avx512 and with_avx512 != without


@needs_compiler
@pytest.mark.parametrize("damage", ["truncated", "empty", "no-digest"])
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, damage):
    # A library cut short (a crash, a full disk) would kill the process that maps it (SIGBUS): its digest,
    # recorded after the build, no longer matches, and it is built again.
    cc, flags = native.compiler(), native.FLAG_SETS[0]
    path = native.build(cc, tmp_path, flags)
    whole = path.read_bytes()
    if damage == "no-digest":
        path.with_suffix(".sha256").unlink()
    else:
        path.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"")
    assert native.build(cc, tmp_path, flags) == path
    assert path.read_bytes() == whole and native._intact(path)


@needs_compiler
def test_cc_with_arguments(tmp_path, monkeypatch, fresh_kernel, caplog):
    # $CC may carry arguments (ccache gcc, gcc -m64); a CC that is not a command is named in the log.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", f"{native.compiler()[0]} -g0")
    assert native.compiler()[1:] == ["-g0"]
    assert attention.native_kernel() is not None
    attention.native_kernel.cache_clear()
    monkeypatch.setenv("CC", "no-such-cc --flag")
    with caplog.at_level(logging.INFO, logger="pulid_core"):
        assert attention.native_kernel() is None
    assert "CC='no-such-cc --flag' is not a command on PATH" in caplog.text


def test_a_hung_compiler_is_given_up_once(tmp_path, monkeypatch, fresh_kernel, caplog):
    # One timeout ends the attempt (the other flag sets would hang as well), within BUILD_TIMEOUT_S.
    if os.name == "nt":
        pytest.skip("no kernel on Windows")
    hung = tmp_path / "cc"
    hung.write_text("#!/bin/sh\ncase \"$1\" in --version) echo cc 1.0;; *) sleep 30;; esac\n")
    hung.chmod(0o755)
    monkeypatch.setenv("CC", str(hung))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 1)
    with caplog.at_level(logging.INFO, logger="pulid_core"):
        assert attention.native_kernel() is None
    assert caplog.text.count("did not finish in 1 s") == 1


def test_no_compiler_no_kernel_same_numbers(monkeypatch, fresh_kernel, caplog):
    monkeypatch.setattr(native, "compiler", lambda: None)
    with caplog.at_level(logging.INFO, logger="pulid_core"):
        assert attention.native_kernel() is None
    assert "no C compiler" in caplog.text
    base, q, kv = case(10, 64, 40, 10, 8)
    want = id_attention_prepared(base, q, kv, "ortho_v2", fused=False, native=False)
    torch.testing.assert_close(id_attention_prepared(base, q, kv, "ortho_v2"), want, rtol=0, atol=0)
    with pytest.raises(PuLIDError, match="not built on this machine"):
        id_attention_prepared(base, q, kv, "ortho_v2", native=True)


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_switched_off_by_environment(monkeypatch, fresh_kernel, value):
    monkeypatch.setenv(native.SWITCH, value)
    monkeypatch.setattr(native, "build", lambda *a: pytest.fail("built although switched off"))
    assert native.load() is None and attention.native_kernel() is None


def test_failed_build_leaves_torch(tmp_path, monkeypatch, fresh_kernel, caplog):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: no input' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if os.name == "nt":
        pytest.skip("no kernel on Windows")
    with caplog.at_level(logging.INFO, logger="pulid_core"):
        assert attention.native_kernel() is None
    assert "did not compile" in caplog.text and "no input" in caplog.text
    assert "could not be built here; torch's ops are used" in caplog.text
    assert not list((tmp_path / "cache" / "comfyui-pulid" / "native").glob("*.so"))


@needs_compiler
def test_disagreeing_kernel_is_not_used(monkeypatch, fresh_kernel, caplog):
    # A miscompiled library (here: one that writes nothing) fails the check against torch's ops.
    real = native.load()

    class Silent:
        def __getattr__(self, name):
            return getattr(real.lib, name)

        @staticmethod
        def pulid_id_row(*args):
            return 0

    monkeypatch.setattr(native, "load", lambda: native.Kernel(Silent(), real.path, real.threaded))
    with caplog.at_level(logging.WARNING, logger="pulid_core"):
        assert attention.native_kernel() is None
    assert "disagrees with torch" in caplog.text


def test_private_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = native.cache_dir()
    assert folder == tmp_path / "comfyui-pulid" / "native"
    # A folder others can write is never used (a library loaded from it could be anyone's).
    folder.chmod(0o777)
    assert native.cache_dir() != folder


@needs_compiler
def test_activations_that_do_not_fit_the_keys_are_refused():
    # The kernel trusts its pointers: every size is checked before the call (a wrong size would read or
    # write outside the tensors). 130 channels of keys for 2 heads (d 65) against 131-channel activations.
    base, q, kv = case(2, 65, 8, 4, 0)
    with pytest.raises(PuLIDError, match="do not fit"):
        attention._explicit_native(attention.native_kernel(), torch.zeros(2, 8, 131), torch.zeros(2, 8, 131), kv,
                                   "ortho", torch.zeros(2, 8, 131), None)
    with pytest.raises(PuLIDError, match="do not fit"):  # one row of keys for a batch of two
        attention._explicit_native(attention.native_kernel(), base, q, select_rows(kv, rows=[0]), "ortho",
                                   torch.empty_like(base), None)


def test_no_id_tokens_is_refused_by_name():
    # An identity of width 0 (never from this pack's nodes: the embeds loader refuses it) is named, not a
    # ZeroDivisionError deep in the layout.
    with pytest.raises(PuLIDError, match="no ID tokens"):
        prepare_id_kv(torch.zeros(1, 0, 32), torch.zeros(1, 0, 32), 2, 0.8, num_zero=3)


@needs_compiler
@pytest.mark.parametrize("flags", native.FLAG_SETS, ids=["native-openmp", "native", "baseline"])
def test_every_flag_set_gives_the_same_numbers(tmp_path, flags, torch_threads):
    # The fallback builds (no OpenMP: Apple's clang; no -march=native: the compiler's default CPU, e.g.
    # SSE2 on x86-64, where the 16 lanes become four registers) compute the same numbers.
    torch_threads(1)
    path = native.build(native.compiler(), tmp_path, flags)
    assert path is not None
    lib = ctypes.CDLL(str(path))
    native._declare(lib)
    kernel = native.Kernel(lib, path, threaded=False)
    for heads, d, tokens, num_zero in ((10, 64, 10, 8), (3, 40, 33, 0)):
        base, q, kv = case(heads, d, 45, tokens, num_zero)
        for projection in attention.PROJECTIONS:
            want = id_attention_prepared(base, q, kv, projection, fused=False, native=False)
            got = torch.empty_like(base)
            attention._explicit_native(kernel, base, q, kv, projection, got, None)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_windows_says_why(monkeypatch, fresh_kernel, caplog):
    # Its compilers do not take GCC's vector extensions: never built there, and the log says so (not
    # "no C compiler found", which a Windows user with gcc installed would not believe).
    monkeypatch.setattr(native, "_windows", lambda: True)
    monkeypatch.setattr(native, "build", lambda *a: pytest.fail("built on Windows"))
    with caplog.at_level(logging.INFO, logger="pulid_core"):
        assert attention.native_kernel() is None
    assert "not built on Windows" in caplog.text
