"""Timing and counting: interleaved repetitions, median and IQR, kernels and syncs per call.

Candidates are timed round-robin (the order rotates every repetition), so a load spike on a
shared machine hits all of them alike; each figure is the median over repetitions with its
interquartile range. Differences (patched minus unpatched) are taken per repetition, then
summarised, so both terms of a difference come from the same moment.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Stat:
    """Median and interquartile range of repeated measurements (seconds)."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, values) -> Stat:
        values = sorted(values)
        if len(values) == 1:
            return cls(values[0], values[0], values[0], 1)
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3, len(values))

    def scaled(self, factor: float) -> Stat:
        return Stat(self.median * factor, self.q1 * factor, self.q3 * factor, self.n)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "n": self.n}


def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved(fns: dict, reps: int, warmup: int = 2, number: int = 1, sync=lambda: None) -> dict:
    """{name: [seconds per call, one per repetition]}; each repetition calls every fn ``number``
    times in a rotating order (torch.utils.benchmark.Timer times one statement at a time, so it
    cannot interleave candidates)."""
    names = list(fns)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        sync()
        times = {name: [] for name in names}
        for r in range(reps):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn = fns[name]
                sync()
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                sync()
                times[name].append((time.perf_counter() - t0) / number)
    return times


def differences(times: dict, minuend: str, subtrahend: str) -> list:
    """Per-repetition differences (the extra cost of ``minuend`` over ``subtrahend``)."""
    return [a - b for a, b in zip(times[minuend], times[subtrahend], strict=True)]


# Ops that only make a new view or read metadata: no kernel on any device.
VIEW_OPS = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::transpose", "aten::t", "aten::mT", "aten::permute",
    "aten::expand", "aten::expand_as", "aten::as_strided", "aten::slice", "aten::select", "aten::unsqueeze",
    "aten::squeeze", "aten::detach", "aten::alias", "aten::split", "aten::chunk", "aten::unbind", "aten::narrow",
    "aten::unflatten", "aten::flatten", "aten::view_as", "aten::lift_fresh", "aten::empty", "aten::empty_strided",
    "aten::empty_like", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::size",
    "aten::stride", "aten::numel", "aten::dim", "aten::contiguous", "aten::_unsafe_view",
    "aten::detach_", "aten::to",  # a no-op when nothing changes; a real cast shows its aten::copy_ child
    "aten::unfold", "aten::resize_",  # a strided view; an allocation
}
# Host-device synchronisations: a tensor's value read on the host (item, float(), bool(), if t:),
# data-dependent shapes (nonzero) and tensors built from Python data (a blocking copy from pageable
# host memory on a GPU). On the CPU they cost nothing, but they are the same ops on a GPU.
# (item(), float() and is_nonzero all end in one aten::_local_scalar_dense.)
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::lift_fresh"}


def kernels_and_syncs(fn) -> dict:
    """Kernels (leaf ops that compute: no views, no allocation) and host syncs in one call of ``fn``,
    counted with torch.profiler on the CPU; the same ops launch kernels on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn()  # warm caches first: the steady state is what a sampling step sees
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    events = list(prof.events())
    ids = {id(e) for e in events}
    has_child = set()
    for e in events:
        parent = getattr(e, "cpu_parent", None)
        # A parent is a dispatch wrapper when a child computes; one whose children only make
        # views or allocate (a fused kernel such as SDPA's) is itself the kernel.
        if parent is not None and id(parent) in ids and e.name not in VIEW_OPS:
            has_child.add(id(parent))
    kernels, syncs, ops = 0, 0, {}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        if e.name in SYNC_OPS:
            syncs += 1
        if id(e) in has_child or e.name in VIEW_OPS or e.name in SYNC_OPS:
            continue
        kernels += 1
        ops[e.name] = ops.get(e.name, 0) + 1
    return {"kernels": kernels, "syncs": syncs, "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}
