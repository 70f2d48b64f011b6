"""PuLID's ID attention inside ComfyUI's attn2 replace patches.

One ``IDContext`` per Apply holds the adapter, the ID tokens and the settings;
one ``IDAttnPatch`` per cross-attention layer chains onto whatever occupied that
layer before (IPAdapter, InstantID, another PuLID). Both are immutable from the
graph's point of view: cloning a MODEL shares them (``__deepcopy__`` returns
self), so re-running a graph or changing a downstream node never stacks the ID
twice. The only state is a cache of each layer's ID keys/values per device and
dtype, a pure function of the immutable inputs, computed on first use.
"""

from __future__ import annotations

import inspect
import logging
import threading

import torch
import torch.nn.functional as F

from ..pulid_core.attention import id_attention

log = logging.getLogger(__name__)

COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond values


def _comfy_attention():
    # Looked up at call time: ComfyUI may rebind its backend after import.
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention


def _accepts_transformer_options(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "transformer_options" for p in params)


def attention_call(q, k, v, heads, extra_options):
    """ComfyUI's current attention backend, honouring overrides (sage/flash patches)."""
    fn = _comfy_attention()
    kwargs = {"attn_precision": extra_options.get("attn_precision")}
    if _accepts_transformer_options(fn):
        kwargs["transformer_options"] = extra_options
    return fn(q, k, v, heads, **kwargs)


class IDContext:
    """Everything one PuLID application injects, shared by its 70 layer patches.

    ``cond_tokens``/``uncond_tokens`` are [1, T, D] ID tokens (fp32, any device);
    ``mask`` is None or [M, H, W] in 0..1 (M = 1 or the latent batch).
    """

    def __init__(self, adapter, cond_tokens, uncond_tokens, *, weight: float, projection: str, num_zero: int,
                 sigma_start: float, sigma_end: float, mask: torch.Tensor | None = None):
        self.adapter = adapter  # comfy ModelPatcher around a pulid_core PuLIDModel
        self.cond_tokens = cond_tokens
        self.uncond_tokens = uncond_tokens
        self.weight = float(weight)
        self.projection = projection
        self.num_zero = int(num_zero)
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self.mask = mask
        self._kv: dict = {}
        self._lock = threading.Lock()

    def active(self, extra_options) -> bool:
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.reshape(-1)[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def kv(self, module_index: int, device, dtype):
        """(k, v) each [2, T + num_zero, C]: row COND then row UNCOND, in ``dtype``.

        Projected in fp32 as the authors do, then cast to the UNet's dtype.
        """
        key = (module_index, str(device), dtype)
        cached = self._kv.get(key)
        if cached is None:
            model = self.adapter.model
            tokens = torch.cat([self.cond_tokens, self.uncond_tokens]).to(device=device, dtype=torch.float32)
            with torch.no_grad():
                k, v = model.id_kv(module_index, tokens, self.num_zero)
            cached = (k.to(dtype), v.to(dtype))
            with self._lock:
                self._kv[key] = cached
        return cached

    def drop_device_caches(self, keep_cpu: bool = True) -> None:
        with self._lock:
            self._kv = {k: v for k, v in self._kv.items() if keep_cpu and k[1] == "cpu"}

    def mask_rows(self, extra_options, batch_per_chunk: int, chunks: int, device, dtype):
        """The mask at this layer's exact token grid, [chunks*batch, N, 1], or None."""
        if self.mask is None:
            return None
        _, _, height, width = extra_options["activations_shape"]
        mask = self.mask.to(device=device, dtype=torch.float32)
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)
        mask = mask.reshape(mask.shape[0], height * width, 1)
        if mask.shape[0] == 1:
            mask = mask.expand(batch_per_chunk, -1, -1)
        elif mask.shape[0] != batch_per_chunk:
            mask = mask[:1].expand(batch_per_chunk, -1, -1)
        return mask.repeat(chunks, 1, 1).to(dtype)


class IDAttnPatch:
    """attn2 replace patch for one layer: the upstream attention plus PuLID's ID term."""

    def __init__(self, context: IDContext, module_index: int, upstream=None):
        self.context = context
        self.module_index = module_index
        self.upstream = upstream

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if self.upstream is not None:
            base = self.upstream(q, k, v, extra_options)
        else:
            base = attention_call(q, k, v, heads, extra_options)
        ctx = self.context
        if ctx.weight == 0 or not ctx.active(extra_options):
            return base
        cond_or_uncond = extra_options.get("cond_or_uncond") or [COND]
        chunks = len(cond_or_uncond)
        per_chunk = q.shape[0] // chunks
        id_k, id_v = ctx.kv(self.module_index, q.device, q.dtype)
        rows = torch.tensor([UNCOND if c == UNCOND else COND for c in cond_or_uncond], device=q.device)
        rows = rows.repeat_interleave(per_chunk)
        mask = ctx.mask_rows(extra_options, per_chunk, chunks, q.device, q.dtype)

        def attend(q_, k_, v_, heads_):
            return attention_call(q_, k_, v_, heads_, extra_options)

        return id_attention(base, q, id_k[rows], id_v[rows], heads, ctx.weight, ctx.projection,
                            mask=mask, attention=attend)

    # -- ModelPatcher lifecycle -------------------------------------------------
    def to(self, device_or_dtype):
        # Dtype casts (possibly fp8 storage dtypes) are ignored: K/V follow q's dtype.
        if isinstance(device_or_dtype, torch.device) and device_or_dtype.type == "cpu":
            self.context.drop_device_caches()
        if self.upstream is not None and hasattr(self.upstream, "to"):
            self.upstream.to(device_or_dtype)
        return self

    def models(self):
        # The adapter is not among them: ComfyUI would load all of it next to the UNet, while
        # sampling only needs each layer's ID K/V, projected once from the weights where they
        # are (cast to the query's device on that first call) and cached.
        if self.upstream is not None and hasattr(self.upstream, "models"):
            return list(self.upstream.models())
        return []

    def __deepcopy__(self, memo):
        return self
