"""When a PuLID application is active: its start_at/end_at as a sigma range, read once per step.

Shared by the SDXL attn2 patches and the FLUX block patches. ComfyUI hands every patched
layer of one step the same ``transformer_options["sigmas"]`` tensor, so the decision is
made on the first call of a step and reused by the others (one host read per step, not per
layer); a range that covers the whole schedule never reads the tensor at all.
"""

from __future__ import annotations

import weakref

# ComfyUI's model_sampling.percent_to_sigma(0.0) returns 999999999.9 ("any sigma").
ANY_SIGMA = 999999999.0


class SigmaGate:
    def __init__(self, sigma_start: float, sigma_end: float):
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        # The range covers every sigma a schedule can have: no need to look at the step's sigma.
        self.always_active = self.sigma_end <= 0.0 and self.sigma_start >= ANY_SIGMA
        self._last: tuple = (None, True)  # (weakref to the last step's sigmas, its decision)

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
        decision = self.sigma_end <= sigma <= self.sigma_start
        try:
            self._last = (weakref.ref(sigmas), decision)
        except TypeError:
            pass
        return decision
