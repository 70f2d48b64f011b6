"""Peak resident memory of this process (Linux /proc), for the loaders' full-size memory tests."""

import gc
from pathlib import Path


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` field given in kB (``VmRSS``, ``VmHWM``), in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1]) * 1024


def rss_peak_reset() -> int | None:
    """Reset the kernel's peak-RSS counter (Linux); returns the current RSS in bytes, or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return status_bytes("VmRSS")
    except OSError:
        return None


def load_with_peak(load, path):
    """``load(path)`` and how far this process's peak RSS rose above its RSS before the call, in bytes
    (None where the peak cannot be reset). Drop your own copy of the file's tensors first."""
    gc.collect()
    before = rss_peak_reset()
    result = load(path)
    return result, None if before is None else status_bytes("VmHWM") - before
