"""PuLID's ID attention inside ComfyUI's attn2 replace patches.

One ``IDContext`` per Apply holds the adapter, the ID tokens and the settings;
one ``IDAttnPatch`` per cross-attention layer chains onto whatever occupied that
layer before (IPAdapter, InstantID, another PuLID). Both are immutable from the
graph's point of view: cloning a MODEL shares them (``__deepcopy__`` returns
self), so re-running a graph or changing a downstream node never stacks the ID
twice. The only state is caches of pure functions of the immutable inputs (each
layer's ID keys/values per row pattern, device and dtype; the resized mask; the
last step's sigma gate), filled on first use.

Per patched call the ID branch reads nothing back from the device: the weight is a
Python float folded into the cached values, the rows of a cond/uncond batch are
gathered once per pattern, and the sigma range is decided without a read when it
covers the whole schedule, otherwise once per step.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..pulid_core.attention import id_attention_prepared, prepare_id_kv, select_rows
from ..pulid_core.layers import MODULE_INDEX_BY_COMFY_KEY
from ..pulid_core.options import check_mask_batch, mask_for_area
from ..pulid_core.rows import batch_rows
from .run_options import chunk_areas, chunk_kinds
from .sigma_gate import SigmaGate

log = logging.getLogger(__name__)

def _comfy_attention():
    # Looked up at call time: ComfyUI may rebind its backend after import.
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention


# function -> whether it takes transformer_options. A plain dict, not functools.lru_cache: under
# TorchCompileModel dynamo reads a dict hit as a constant, where it would trace the wrapped function.
_ACCEPTS_OPTIONS: dict = {}


def _accepts_transformer_options(fn) -> bool:
    """Whether ComfyUI's attention function takes ``transformer_options`` (newer ComfyUI), resolved once
    per function object (the backend can be rebound, so the function is the key)."""
    known = _ACCEPTS_OPTIONS.get(fn)
    if known is None:
        try:
            params = inspect.signature(fn).parameters.values()
            known = any(p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "transformer_options" for p in params)
        except (TypeError, ValueError):
            known = False
        if len(_ACCEPTS_OPTIONS) >= 16:  # backends are few; never a growing cache
            _ACCEPTS_OPTIONS.clear()
        _ACCEPTS_OPTIONS[fn] = known
    return known


def attention_call(q, k, v, heads, extra_options):
    """ComfyUI's current attention backend, honouring overrides (sage/flash patches)."""
    fn = _comfy_attention()
    if _accepts_transformer_options(fn):
        return fn(q, k, v, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
    return fn(q, k, v, heads, attn_precision=extra_options.get("attn_precision"))


class _Recent:
    """A mapping that keeps its ``limit`` most recently used entries (ComfyUI keeps a patched model
    loaded across queue runs, so a cache keyed by shapes would otherwise grow with every new latent
    size or batch). Thread-safe; a hit costs one lock and one move."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            value = self._items.get(key, default)
            if key in self._items:
                self._items.move_to_end(key)
            return value

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def values(self):
        return list(self._items.values())

    def keep(self, predicate) -> None:
        with self._lock:
            for key in [k for k in self._items if not predicate(k)]:
                del self._items[key]


# How many recent shapes the caches keep: a 1024² SDXL step has 2 layer shapes (3 with a regional
# prompt's crop), each with one cond/uncond pattern; a few more serve a graph that alternates sizes.
RECENT_SHAPES = 4


class IDContext:
    """Everything one PuLID application injects, shared by its 70 layer patches.

    ``cond_tokens``/``uncond_tokens`` are [1, T, D] ID tokens (fp32, any device);
    ``mask`` is None or [M, H, W] in 0..1 (M = 1 or the latent batch).
    """

    def __init__(self, adapter, cond_tokens, uncond_tokens, *, weight: float, projection: str, num_zero: int,
                 sigma_start: float, sigma_end: float, mask: torch.Tensor | None = None,
                 node: str = "Apply PuLID", schedule: tuple[float, float] | None = None):
        self.node = node  # for messages that can only be given at sampling time
        self.adapter = adapter  # comfy ModelPatcher around a pulid_core PuLIDModel
        self.cond_tokens = cond_tokens
        self.uncond_tokens = uncond_tokens
        self.weight = float(weight)
        self.projection = projection
        self.num_zero = int(num_zero)
        self.gate = SigmaGate(sigma_start, sigma_end, schedule)
        self.mask = mask
        # Caches of pure functions of the fields above. Filling one twice from two threads
        # computes the same value twice; the bounded ones (_Recent) take a lock for their order.
        self._kv: dict = {}  # per (layer, device, dtype): bounded by the model's devices and dtypes
        self._rows = _Recent(RECENT_SHAPES * len(MODULE_INDEX_BY_COMFY_KEY))  # per layer and batch pattern
        self._masks = _Recent(2 * RECENT_SHAPES)  # per token grid and batch pattern
        # Scratch buffers of the CPU path, reused across calls (one set per thread and shape).
        self._workspaces: dict = {}

    def active(self, extra_options) -> bool:
        return self.gate(extra_options)

    @property
    def always_active(self) -> bool:
        return self.gate.always_active

    def kv(self, module_index: int, device, dtype):
        """(k, v) each [2, T + num_zero, C]: row COND then row UNCOND, in ``dtype``, zero rows included.

        Projected in fp32 as the authors do, then cast to the UNet's dtype.
        """
        key = (module_index, str(device), dtype)
        cached = self._kv.get(key)
        if cached is None:
            tokens = torch.cat([self.cond_tokens, self.uncond_tokens]).to(device=device, dtype=torch.float32)
            with torch.no_grad():
                k, v = self.adapter.model.id_kv(module_index, tokens, self.num_zero)
            cached = self._kv[key] = (k.to(dtype), v.to(dtype))
        return cached

    def prepared(self, module_index: int, cond_or_uncond: tuple, batch: int, heads: int, device, dtype):
        """The layer's ID keys/values laid out for this batch (one row per q row), cached."""
        key = (module_index, cond_or_uncond, batch, heads, str(device), dtype)
        cached = self._rows.get(key)
        if cached is None:
            k, v = self.kv(module_index, device, dtype)  # row COND, row UNCOND
            tokens = self.cond_tokens.shape[1]
            rows = batch_rows(cond_or_uncond, batch, who=self.node).kinds
            with torch.no_grad():
                # The zero rows become one mask column (see prepare_id_kv).
                kv = prepare_id_kv(k[:, :tokens], v[:, :tokens], heads, self.weight, num_zero=self.num_zero)
                cached = self._rows[key] = select_rows(kv, rows=rows)
        return cached

    def drop_device_caches(self, keep_cpu: bool = True) -> None:
        def keep(device: str) -> bool:
            return keep_cpu and device == "cpu"

        self._kv = {k: v for k, v in self._kv.items() if keep(k[1])}
        self._rows.keep(lambda k: keep(k[4]))
        self._masks.keep(lambda k: keep(k[4]))
        self._workspaces = {}

    def workspace(self, shape) -> dict:
        """This thread's scratch buffers for :func:`id_attention_prepared` on activations of ``shape``
        (batch, tokens, width, device, dtype): one set per shape, for the RECENT_SHAPES last ones."""
        recent = self._workspaces.get(threading.get_ident())
        if recent is None:
            recent = self._workspaces[threading.get_ident()] = _Recent(RECENT_SHAPES)
        buffers = recent.get(shape)
        if buffers is None:
            buffers = {}
            recent[shape] = buffers
        return buffers

    def mask_rows(self, extra_options, batch_per_chunk: int, chunks: int, device, dtype):
        """The mask at this layer's exact token grid, [chunks*batch, N, 1], or None (cached)."""
        if self.mask is None:
            return None
        _, _, height, width = extra_options["activations_shape"]
        # A regional prompt's chunk runs on its area of the latent: the mask of that area (run_options).
        regions = chunk_areas(extra_options, chunks)
        key = (height, width, batch_per_chunk, chunks, str(device), dtype, regions)
        cached = self._masks.get(key)
        if cached is None:
            # The latent batch is first known here: a mask per image or one for all, never a silent mask[0].
            check_mask_batch(self.mask.shape[0], batch_per_chunk, node=self.node)
            areas = regions[1] if regions is not None else (None,) * chunks
            by_area = {}
            for area in dict.fromkeys(areas):  # each distinct area once
                mask = self.mask if area is None else mask_for_area(self.mask, regions[0], area)
                mask = F.interpolate(mask.to(device=device, dtype=torch.float32)[:, None], size=(height, width),
                                     mode="bilinear", align_corners=False)
                by_area[area] = mask.reshape(mask.shape[0], height * width, 1).expand(batch_per_chunk, -1, -1)
            cached = self._masks[key] = torch.cat([by_area[a] for a in areas]).to(dtype)
        return cached


class IDAttnPatch:
    """attn2 replace patch for one layer: the upstream attention plus PuLID's ID term."""

    def __init__(self, context: IDContext, module_index: int, upstream=None):
        self.context = context
        self.module_index = module_index
        self.upstream = upstream

    def __call__(self, q, k, v, extra_options):
        return self._attend(q, k, v, extra_options)[1]

    def _attend(self, q, k, v, extra_options, keep_text: bool = False):
        """(text, out): the attention the ID term is projected against, and the result with it.

        Under another of this pack's patches (several identities, each with its mask) every term
        is projected against the same text attention and added: the ortho projections sum over
        all tokens, so projecting against an H that holds another person's term would make the
        image depend on the order of the Apply nodes. ``keep_text``: a patch above needs ``text``
        unchanged (no writing into it)."""
        heads = extra_options["n_heads"]
        if isinstance(self.upstream, IDAttnPatch):
            text, below = self.upstream._attend(q, k, v, extra_options, keep_text=True)
        else:
            below = text = (self.upstream(q, k, v, extra_options) if self.upstream is not None
                            else attention_call(q, k, v, heads, extra_options))
        ctx = self.context
        if ctx.weight == 0 or not ctx.active(extra_options):
            return text, below
        cond_or_uncond = chunk_kinds(extra_options)  # each chunk's prompt: cond or uncond (run_options)
        batch = q.shape[0]
        kv = ctx.prepared(self.module_index, cond_or_uncond, batch, heads, q.device, q.dtype)
        chunks = max(len(cond_or_uncond), 1)
        mask = ctx.mask_rows(extra_options, batch // chunks, chunks, q.device, q.dtype)
        workspace = ctx.workspace((*q.shape, str(q.device), q.dtype))
        # Into text in place only when it is ComfyUI's new attention output that no patch above
        # still needs: an upstream patch may return a tensor it keeps (a cache).
        out = id_attention_prepared(text, q, kv, ctx.projection, mask=mask, workspace=workspace,
                                    inplace=self.upstream is None and not keep_text)
        if below is text:
            return text, out
        # ``below`` (this chain's own new tensor) already holds the other identities' terms.
        return text, below.add_(out.sub_(text))

    # -- ModelPatcher lifecycle -------------------------------------------------
    def to(self, device_or_dtype):
        # ComfyUI calls this with the UNet's device and then its dtype. The cached K/V are keyed
        # by the query's device and dtype, so a dtype needs no cast here; moving to the CPU frees
        # the accelerator copies. The upstream patch is told too; ComfyUI stores what ``to()``
        # returns, so an upstream that answers with a new object is kept (in a new patch: this one
        # is shared by clones and never changes).
        if isinstance(device_or_dtype, torch.device) and device_or_dtype.type == "cpu":
            self.context.drop_device_caches()
        if self.upstream is not None and hasattr(self.upstream, "to"):
            moved = self.upstream.to(device_or_dtype)
            if moved is not None and moved is not self.upstream:
                return IDAttnPatch(self.context, self.module_index, moved)
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
