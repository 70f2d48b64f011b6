"""When a PuLID application is active: its start_at/end_at as a sigma range, read once per step.

Shared by the SDXL attn2 patches and the FLUX block patches. ComfyUI hands every patched
layer of one step the same ``transformer_options["sigmas"]`` tensor, so the decision is
made on the first call of a step and reused by the others (one host read per step, not per
layer); a range that covers the whole schedule never reads the tensor at all.

start_at/end_at are fractions of the schedule of the model that is *sampled*, as for
ComfyUI's own timestep ranges (ConditioningSetTimestepRange, ControlNet start/end), which
``comfy.samplers`` resolves at sampling time: a ModelSamplingFlux / ModelSamplingDiscrete
node placed after the Apply node changes the sigmas they mean. An OUTER_SAMPLE wrapper
(:mod:`.run_options`) puts the sampled model's ``model_sampling`` into the run's own copy of
the model options; the gate converts the fractions with it (once per run). Without it (a
caller that runs the model outside ComfyUI's samplers) the Apply node's model's schedule is
used.
"""

from __future__ import annotations

import weakref

from .run_options import RUN_SAMPLING

# ComfyUI's model_sampling.percent_to_sigma(0.0) returns 999999999.9 ("any sigma").
ANY_SIGMA = 999999999.0


def _weak(obj):
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


class SigmaGate:
    """``sigma_start``/``sigma_end``: the range on the Apply node's model; ``schedule``: the
    (start_at, end_at) fractions they came from, converted again on the sampled model."""

    def __init__(self, sigma_start: float, sigma_end: float, schedule: tuple[float, float] | None = None):
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self.schedule = None if schedule is None else (float(schedule[0]), float(schedule[1]))
        # The range covers every sigma a schedule can have: no need to look at the step's sigma.
        if self.schedule is not None:
            self.always_active = self.schedule[0] <= 0.0 and self.schedule[1] >= 1.0
        else:
            self.always_active = self.sigma_end <= 0.0 and self.sigma_start >= ANY_SIGMA
        self._last: tuple = (None, True)  # (weakref to the last step's sigmas, its decision)
        self._resolved: tuple = (None, (self.sigma_start, self.sigma_end))  # (weakref to a model_sampling, range)

    def bounds(self, options) -> tuple[float, float]:
        """(sigma_start, sigma_end) on the model being sampled (see the module docstring)."""
        sampling = options.get(RUN_SAMPLING) if self.schedule is not None else None
        if sampling is None:
            return self.sigma_start, self.sigma_end
        ref, bounds = self._resolved
        if ref is not None and ref() is sampling:
            return bounds
        bounds = (float(sampling.percent_to_sigma(self.schedule[0])), float(sampling.percent_to_sigma(self.schedule[1])))
        self._resolved = (_weak(sampling), bounds)
        return bounds

    def __call__(self, options) -> bool:
        if self.always_active:
            return True
        sigmas = options.get("sigmas")
        if sigmas is None:
            return True
        ref, decision = self._last
        if ref is not None and ref() is sigmas:
            return decision
        sigma = float(sigmas.reshape(-1)[0])
        start, end = self.bounds(options)
        decision = end <= sigma <= start
        self._last = (_weak(sigmas), decision)
        return decision
