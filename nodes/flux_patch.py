"""PuLID-FLUX inside ComfyUI's DiT block patches.

The authors add ``id_weight * pulid_ca[k](id, img)`` to the image stream after
double blocks 0, 2, ..., 18 and, on the image part of the joint sequence, after
single blocks 0, 4, ..., 36 (ToTheBeginning/PuLID ``flux/model.py``). Here each of
those 20 blocks gets a ``patches_replace["dit"]`` entry (``FluxBlockPatch``) that
runs whatever occupied the block before it (the real block, another PuLID,
another pack's patch) and then adds the identity through ``pulid_core.flux``.

One ``FluxIDContext`` per Apply holds the adapter and the settings. Patches and
contexts never change after creation and ``__deepcopy__`` returns self, so
clones share them and re-running a graph cannot stack an identity twice. An
application that replaces an earlier one leaves it out of the new chains; one it
cannot reach (held inside another pack's patch) is named in the new model's
transformer_options (``SUPERSEDED``), and its patches then pass their occupant's
output through unchanged on that model only.

A keyed DIFFUSION_MODEL wrapper (``grid_wrapper``) hands the patches what the
block arguments lack: the latent's token grid (masks are resized to it exactly;
FLUX Kontext's reference tokens after the grid get no identity) and a per-forward
record of the text length (ComfyUI 0.3.75 passes single blocks ``cat(txt, img)``
without saying where the image starts; newer versions set ``img_slice``).
"""

from __future__ import annotations

import inspect
import logging
import uuid

import torch

from ..pulid_core import flux as core_flux
from ..pulid_core.errors import PuLIDError
from ..pulid_core.options import check_mask_batch, mask_for_area
from .run_options import bind_run_options, chunk_areas, chunk_kinds
from .sigma_gate import SigmaGate

log = logging.getLogger(__name__)

WRAPPER_KEY = "comfyui-pulid.flux"
GRID = "pulid_flux_grid"  # (rows, cols) of the latent's patch tokens, set by grid_wrapper
LATENT = "pulid_flux_latent"  # (height, width) of that latent (odd sizes are padded to the grid)
STREAMS = "pulid_flux_streams"  # per-forward {"txt": text tokens} recorded by the double-block patches
# transformer_options of a patched model: (token, masked) of every PuLID-FLUX application on it,
# bottom first, and the tokens of those a later application replaced.
APPLIED = "pulid_flux_applied"
SUPERSEDED = "pulid_flux_superseded"
# ModelPatcher.additional_models key of one application's adapter: ComfyUI loads these with the
# model before sampling (and clones them with it), whichever patch occupies the blocks by then.
ADAPTER_KEY = "comfyui-pulid.flux_adapter:"


def grid_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: a per-forward copy of transformer_options with the token grid."""
    try:
        bound = inspect.signature(executor.original).bind(*args, **kwargs)
    except TypeError:
        return executor(*args, **kwargs)
    x = bound.arguments.get("x")
    options = bound.arguments.get("transformer_options")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not isinstance(options, dict):
        return executor(*args, **kwargs)
    grid = core_flux.token_grid(x.shape[-2], x.shape[-1])
    # The text length the double blocks will record; seeded from the context for a forward whose
    # PuLID double blocks do not run (SkipLayerGuidanceDiT skipping all of them).
    context = bound.arguments.get("context")
    streams = {"txt": int(context.shape[1])} if isinstance(context, torch.Tensor) and context.ndim == 3 else {}
    bound.arguments["transformer_options"] = {**options, GRID: grid, LATENT: tuple(x.shape[-2:]), STREAMS: streams}
    return executor(*bound.args, **bound.kwargs)


class FluxIDContext:
    """Everything one PuLID-FLUX application adds: adapter, ID tokens, weight, sigma range, mask.

    ``cond``/``uncond`` are [1, 32, 2048] ID tokens (uncond = the IDFormer of zero inputs, the
    authors' true-CFG negative); ``mask`` is None or [M, H, W] in 0..1.
    """

    def __init__(self, adapter, cond, uncond, *, weight: float, sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None = None, node: str = "Apply PuLID (FLUX)",
                 schedule: tuple[float, float] | None = None):
        self.node = node  # for messages that can only be given at sampling time
        self.adapter = adapter  # comfy ModelPatcher around pulid_core's PuLIDFluxModel
        self.cond = cond
        self.uncond = uncond
        self.weight = float(weight)
        self.gate = SigmaGate(sigma_start, sigma_end, schedule)
        self.mask = mask
        # Names this application in model options (which ComfyUI deep-copies with every clone).
        self.token = uuid.uuid4().hex

    @property
    def sigma_start(self) -> float:
        return self.gate.sigma_start

    @property
    def sigma_end(self) -> float:
        return self.gate.sigma_end

    def active(self, options) -> bool:
        return self.weight != 0 and self.token not in options.get(SUPERSEDED, ()) and self.gate(options)

    def delta(self, img: torch.Tensor, ca: int, options) -> torch.Tensor:
        """What this identity adds to ``img`` [B, N, C] (only the image tokens of the latent grid)."""
        chunks = chunk_kinds(options) or (0,)  # each chunk's prompt: cond or uncond (run_options)
        rows = core_flux.select_rows(chunks, img.shape[0], self.cond, self.uncond)
        mask = None
        if self.mask is not None:
            grid = options.get(GRID)
            if grid is None:
                raise PuLIDError("PuLID-FLUX: the attention mask needs the token grid; the pack's "
                                   "DIFFUSION_MODEL wrapper did not run (model patched outside Apply PuLID?).")
            # One mask for all latents, or one per latent (the same in every cond/uncond chunk); the
            # latent batch is first known here, so a mismatch is refused here, never mask[0] silently.
            per_chunk = img.shape[0] // len(chunks)
            check_mask_batch(self.mask.shape[0], per_chunk, node=self.node)
            # A regional prompt's chunk runs on its area of the latent: the mask of that area (run_options).
            regions = chunk_areas(options, len(chunks))
            latent = options.get(LATENT)
            if regions is None:
                mask = core_flux.mask_to_tokens(self.mask, grid[0], grid[1], per_chunk, img.dtype, img.device, latent)
                mask = mask.repeat(len(chunks), 1, 1)
            else:
                mask = torch.cat([core_flux.mask_to_tokens(
                    self.mask if area is None else mask_for_area(self.mask, regions[0], area), grid[0], grid[1],
                    per_chunk, img.dtype, img.device, latent) for area in regions[1]])
        return core_flux.identity_delta(img, self.adapter.model, ca, rows, self.weight, mask=mask)


def _grid_tokens(options, available: int) -> int:
    grid = options.get(GRID)
    return min(available, grid[0] * grid[1]) if grid else available


class FluxBlockPatch:
    """``patches_replace["dit"]`` entry of one block: the block's occupant, then ``ca`` adds the ID."""

    def __init__(self, context: FluxIDContext, block_type: str, ca: int, upstream=None):
        self.context = context
        self.block_type = block_type  # "double" or "single"
        self.ca = ca
        self.upstream = upstream

    def __call__(self, args, extra):
        return self._run(args, extra)[1]

    def _run(self, args, extra):
        """(base, out): the block's output before this chain's PuLID identities, and with them.

        Each identity of a chain (several people, each with a mask) reads ``base``: with two soft
        masks that overlap, the second would otherwise read the first's addition where both are
        non-zero, and the image would depend on the order of the Apply nodes."""
        if isinstance(self.upstream, FluxBlockPatch):
            base, out = self.upstream._run(args, extra)
        else:
            base = out = self.upstream(args, extra) if self.upstream is not None else extra["original_block"](args)
        options = args.get("transformer_options") or {}
        if self.block_type == "double":
            streams = options.get(STREAMS)
            if streams is not None:
                streams["txt"] = out["txt"].shape[1]
        if not self.context.active(options):
            return base, out
        img, now = base["img"], out["img"]
        start = 0 if self.block_type == "double" else _text_tokens(options)
        end = start + _grid_tokens(options, img.shape[1] - start)
        # No no_grad(): ComfyUI samples in inference mode; its Train LoRA node records gradients, which
        # then flow through the CA to the image stream (the adapter's weights are frozen).
        delta = self.context.delta(img[:, start:end], self.ca, options)
        # (One identity: now is img, and this is img + weight * CA, as the authors add it.)
        return base, {**out, "img": torch.cat([now[:, :start], now[:, start:end] + delta, now[:, end:]], dim=1)}

    # -- ModelPatcher lifecycle ---------------------------------------------------
    def to(self, device_or_dtype):
        # The adapter is loaded and offloaded by ComfyUI (an additional model of the patched
        # ModelPatcher, see install); dtype casts (fp8 storage
        # dtypes included) are ignored: the CA runs in the activations' dtype. ComfyUI stores what
        # ``to()`` returns, so an upstream that answers with a new object is kept (in a new patch).
        if self.upstream is not None and hasattr(self.upstream, "to"):
            moved = self.upstream.to(device_or_dtype)
            if moved is not None and moved is not self.upstream:
                return FluxBlockPatch(self.context, self.block_type, self.ca, moved)
        return self

    def models(self):
        # Only the upstream's: the adapter is an additional model of the patched ModelPatcher
        # (listing it here too would hand ComfyUI the same weights under two patchers).
        if self.upstream is not None and hasattr(self.upstream, "models"):
            return list(self.upstream.models())
        return []

    def __deepcopy__(self, memo):
        return self


def _text_tokens(options) -> int:
    """Where the image starts in a single block's ``cat(txt, img)``."""
    if options.get("img_slice"):
        return int(options["img_slice"][0])
    streams = options.get(STREAMS) or {}
    if "txt" in streams:
        return streams["txt"]
    raise PuLIDError("PuLID-FLUX: the text length of this forward is unknown (no img_slice and no double-block "
                       "patch ran); apply PuLID-FLUX with the pack's Apply node.")


def applications(model) -> list[tuple[str, bool]]:
    """(token, masked) of the PuLID-FLUX applications that act on ``model``, bottom first
    (also those held inside another pack's patch)."""
    options = model.model_options.get("transformer_options", {})
    superseded = options.get(SUPERSEDED, ())
    return [(token, masked) for token, masked in options.get(APPLIED, ()) if token not in superseded]


def install(model, context: FluxIDContext, *, replace) -> object:
    """A clone of ``model`` with ``context`` on the 20 PuLID blocks, chained onto their occupants.

    ``replace(earlier_masked: bool) -> bool`` says which PuLID-FLUX applications already on the
    model this one supersedes: they are left out of the new chains (never mutated), and named
    in the clone's ``SUPERSEDED`` so that one held inside another pack's patch, which no chain
    here can reach, adds nothing on the clone either.
    """
    patched = model.clone()
    applied = applications(patched)
    options = patched.model_options.setdefault("transformer_options", {})
    superseded = set(options.get(SUPERSEDED, ())) | {token for token, masked in applied if replace(masked)}
    options[SUPERSEDED] = frozenset(superseded)
    options[APPLIED] = (*[(t, m) for t, m in applied if t not in superseded], (context.token, context.mask is not None))
    # The adapter is registered on the model, not only answered by the patches' models(): another
    # pack's patch wrapped around ours without a models() of its own would hide it from ComfyUI,
    # which then never loads it onto the sampling device.
    for token in superseded:
        patched.remove_additional_models(ADAPTER_KEY + token)
    patched.set_additional_models(ADAPTER_KEY + context.token, [context.adapter])
    dit = options.get("patches_replace", {}).get("dit", {})
    keys = [("double_block", i) for i in range(19)] + [("single_block", i) for i in range(38)]
    for key in keys:
        ca = core_flux.ca_index(key[0].split("_")[0], key[1])
        if ca is None:
            continue
        upstream = _without(dit.get(key), replace)
        patched.set_model_patch_replace(FluxBlockPatch(context, key[0].split("_")[0], ca, upstream), "dit", key[0],
                                        key[1])
    import comfy.patcher_extension as ext

    patched.remove_wrappers_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, grid_wrapper)
    bind_run_options(patched)
    return patched


def _without(patch, replace):
    """``patch``'s chain without the PuLID-FLUX applications ``replace`` selects (new objects)."""
    if not isinstance(patch, FluxBlockPatch):
        return patch  # empty, or another pack's patch (opaque: kept as it is)
    below = _without(patch.upstream, replace)
    if replace(patch.context.mask is not None):
        return below
    if below is patch.upstream:
        return patch
    return FluxBlockPatch(patch.context, patch.block_type, patch.ca, below)
