"""The optional compiled kernel of the ID branch on the CPU (fp32): ``csrc/id_branch.c``.

Built on first use with the machine's C compiler (``$CC``, else cc, gcc or clang), for this CPU
(``-march=native``), and cached per user with the digest of what was built (a library cut short,
which would crash the process that maps it, is rebuilt); the next process only loads it. Where there is no
compiler (typically Windows), or it fails, or ``COMFYUI_PULID_NATIVE=0`` is set, nothing is
built and the ID branch runs on torch's ops, with the same numbers (:mod:`.attention` checks the
kernel against them once before using it). Nothing here reads the network.

Threads: the kernel is built with OpenMP where the compiler has it. Where its OpenMP runtime is
torch's (Linux wheels ship ``libgomp.so.1``, which the loader shares by name with the kernel's
own ``libgomp.so.1``), its parallel passes run on torch's own thread pool; with a runtime of its
own its threads would fight torch's waiting ones for the cores, so it then runs on one thread.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "id_branch.c"
SWITCH = "COMFYUI_PULID_NATIVE"  # "0": never build or load the kernel
# Flag sets tried in order: for this CPU with OpenMP; without OpenMP (Apple's clang has none);
# for the compiler's default CPU (a compiler that does not know -march=native).
FLAG_SETS = (
    ("-O3", "-march=native", "-fno-math-errno", "-fopenmp"),
    ("-O3", "-march=native", "-fno-math-errno"),
    ("-O3", "-fno-math-errno"),
)
_COMMON = ("-shared", "-fPIC", "-Wno-psabi")
BUILD_TIMEOUT_S = 60  # about a second is usual
VERSION_TIMEOUT_S = 10


@dataclass(frozen=True)
class Kernel:
    """The loaded library. ``threaded``: its passes may use torch's thread count (see module doc)."""

    lib: ctypes.CDLL
    path: Path
    threaded: bool

    def threads(self, torch_threads: int) -> int | None:
        """How many threads to run on, or None where torch's ops are the better choice (several
        torch threads but a kernel confined to one)."""
        if self.threaded:
            return max(1, min(torch_threads, 64))
        return 1 if torch_threads <= 1 else None


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` (which may carry arguments, e.g. ``ccache gcc``), else the first
    of cc, gcc, clang on PATH; None where there is none, and on Windows (its compilers do not take
    GCC's vector extensions)."""
    if _windows():
        return None
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            words = shlex.split(cc)
        except ValueError:
            return None
        found = shutil.which(words[0]) if words else None
        return [found, *words[1:]] if found else None
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _windows() -> bool:
    return os.name == "nt"


def cache_dir() -> Path:
    """A folder only this user can write: ``$XDG_CACHE_HOME`` (or ~/.cache)/comfyui-pulid/native,
    else one in the temporary folder. A library is loaded only from such a folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (Path(base) / "comfyui-pulid" / "native",
                   Path(tempfile.gettempdir()) / f"comfyui-pulid-native-{_uid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if _private(folder):
                return folder
        except OSError:
            continue
    raise OSError("no private folder to build the ID-branch kernel in")


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else "user"


def _private(folder: Path) -> bool:
    st = folder.stat()
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return mine and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _cpu_signature() -> str:
    """What -march=native depends on, the CPU's model and its instruction-set flags (x86 "flags",
    ARM "Features"): a home folder shared by different machines gets one build each."""
    found = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                kind = line.split(":", 1)[0].strip()
                if kind in ("model name", "flags", "Features"):
                    found.setdefault(kind, line.strip())
    except OSError:
        pass
    return "\n".join(found[k] for k in sorted(found)) or platform.processor()


@functools.cache
def _version(cc: tuple) -> bytes:
    """``cc --version``, asked once per process (each flag set's key needs it)."""
    try:
        return subprocess.run([*cc, "--version"], capture_output=True, timeout=VERSION_TIMEOUT_S, check=False,
                              stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return b""


def _key(cc: list, flags: tuple) -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(cc).encode(), _version(tuple(cc)), " ".join(flags + _COMMON).encode(),
                 platform.machine().encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(target: Path) -> bool:
    """A library this module wrote whole: its digest, recorded after the build, still matches (a file
    cut short by a crash or a full disk would kill the process that maps it, with SIGBUS)."""
    stamp = target.with_suffix(".sha256")
    try:
        return target.is_file() and stamp.read_text().strip() == _digest(target)
    except OSError:
        return False


def _write_synced(path: Path, data: bytes | None = None) -> None:
    """Flush ``path`` (after writing ``data`` to it) to the disk before it is renamed into place."""
    with open(path, "r+b" if data is None else "wb") as f:
        if data is not None:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


class BuildTimeout(Exception):
    """The compiler did not finish: no other flag set is tried (it would hang as well)."""


def build(cc: list, folder: Path, flags: tuple) -> Path | None:
    """The library built from SOURCE with ``flags`` (or found already built, whole) in ``folder``;
    None if it does not compile (the compiler's message is logged)."""
    target = folder / f"id_branch-{_key(cc, flags)}.so"
    if _intact(target):
        return target
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *flags, *_COMMON, "-o", tmp, str(SOURCE)], capture_output=True,
                              timeout=BUILD_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log.info("comfyui-pulid: the CPU ID-branch kernel did not compile with %s %s: %s", " ".join(cc),
                     " ".join(flags), done.stderr.decode(errors="replace").strip()[-2000:])
            return None
        _write_synced(Path(tmp))
        stamp_tmp = Path(tmp).with_suffix(".sha256")
        _write_synced(stamp_tmp, _digest(Path(tmp)).encode())
        # The library first, then its digest: a crash in between leaves a library without a matching
        # digest, rebuilt next time; each rename is atomic, so a process beside this one sees whole files.
        os.replace(tmp, target)
        os.replace(stamp_tmp, target.with_suffix(".sha256"))
        log.info("comfyui-pulid: built the CPU ID-branch kernel with %s %s", " ".join(cc), " ".join(flags))
        return target
    except subprocess.TimeoutExpired as exc:
        raise BuildTimeout(f"{' '.join(cc)} did not finish in {BUILD_TIMEOUT_S} s") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("comfyui-pulid: the CPU ID-branch kernel could not be built with %s: %s", " ".join(cc), exc)
        return None
    finally:
        for leftover in (tmp, tmp[:-3] + ".sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _openmp_function(lib) -> int | None:
    """Where ``lib``'s own symbol lookup (the library, then what it links) finds omp_get_max_threads:
    one address per OpenMP runtime in the process; None without one."""
    try:
        return ctypes.cast(lib.omp_get_max_threads, ctypes.c_void_p).value
    except AttributeError:
        return None


def _torch_openmp_function() -> int | None:
    """The same for torch's CPU library (None where it is not a shared library beside torch, or has
    no OpenMP)."""
    import torch

    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = Path(torch.__file__).parent / "lib" / name
        if path.is_file():
            try:
                return _openmp_function(ctypes.CDLL(str(path)))  # already loaded: its handle
            except OSError:
                return None
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, n, f, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    lib.pulid_id_row.argtypes = [p, n, p, n, p, n, p, p, p, p, p, p, p, n, n, n, n, n, n, f, f, i, i]
    lib.pulid_id_row.restype = i
    lib.pulid_scratch_floats.argtypes = [n, n, i]
    lib.pulid_scratch_floats.restype = n
    lib.pulid_openmp.argtypes = []
    lib.pulid_openmp.restype = i


def load(folder: Path | None = None) -> Kernel | None:
    """Build (or find) and load the kernel, trying each flag set until one builds and loads; None
    where it is switched off or none does (torch's ops are used then)."""
    if not enabled():
        log.info("comfyui-pulid: %s=0: the CPU ID branch runs on torch's ops", SWITCH)
        return None
    cc = compiler()
    if cc is None:
        cc_env = os.environ.get("CC", "").strip()
        why = ("the compiled kernel is not built on Windows" if _windows() else
               f"CC={cc_env!r} is not a command on PATH" if cc_env else "no C compiler found")
        log.info("comfyui-pulid: %s; the CPU ID branch runs on torch's ops (same numbers)", why)
        return None
    try:
        folder = folder or cache_dir()
    except OSError as exc:
        log.info("comfyui-pulid: %s; the CPU ID branch runs on torch's ops", exc)
        return None
    for flags in FLAG_SETS:
        try:
            path = build(cc, folder, flags)
        except BuildTimeout as exc:
            log.info("comfyui-pulid: %s; the CPU ID branch runs on torch's ops", exc)
            return None
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(str(path))
            _declare(lib)
        except (OSError, AttributeError) as exc:
            log.info("comfyui-pulid: the CPU ID-branch kernel %s could not be loaded (%s)", path.name, exc)
            continue
        # Other packages may bring OpenMP runtimes of their own (sentencepiece, a ComfyUI dependency,
        # ships a renamed libgomp): what counts is that the kernel's runtime is torch's.
        ours = _openmp_function(lib) if lib.pulid_openmp() else None
        threaded = ours is not None and ours == _torch_openmp_function()
        return Kernel(lib, path, threaded)
    log.info("comfyui-pulid: the CPU ID-branch kernel could not be built here; torch's ops are used (same numbers)")
    return None
