"""What a patch can only know once sampling runs, handed to it through the run's model options.

Two wrappers registered on the Apply node's own clone (ComfyUI's documented wrapper hooks,
``comfy.patcher_extension``); both write into copies of the model options that belong to one
sampling run or one batched model call, never into the model's own options:

- OUTER_SAMPLE: the ``model_sampling`` of the model that is sampled (a ModelSampling node
  after the Apply node changes it), for start_at/end_at (see sigma_gate); and the kind of each of
  the guider's prompts by uuid. ComfyUI's ``cond_or_uncond`` is each chunk's *position* in the
  list a guider hands ``calc_cond_batch`` (comfy/samplers.py), which means cond 0 / uncond 1 only
  for CFGGuider's [positive, negative]: DualCFGGuider runs [negative, middle, positive],
  PerpNegGuider [positive, negative, empty], Self-Attention Guidance [negative] alone. A prompt is
  an uncond one when the guider holds it as "negative" or ComfyUI marks it ``prompt_type:
  negative`` (DualCFG's middle, PerpNeg's empty prompt), as ``encode_model_conds`` reads them.
- CALC_COND_BATCH: the latent area of every area-restricted cond (ConditioningSetArea, or
  ConditioningSetMask with "mask bounds"), keyed by the cond's uuid. ComfyUI runs such a cond
  on the cropped latent only, so a patch sees a smaller token grid; an attn_mask given for the
  whole image must then be cut to that area before it is resized to the grid.
"""

from __future__ import annotations

from ..pulid_core.rows import COND, UNCOND

# transformer_options keys
RUN_SAMPLING = "comfyui_pulid.model_sampling"
COND_AREAS = "comfyui_pulid.cond_areas"  # ((latent height, width), {uuid: (y, x, h, w)})
COND_KINDS = "comfyui_pulid.cond_kinds"  # {uuid: 0 (cond) or 1 (uncond)} of the guider's prompts
WRAPPER_KEY = "comfyui-pulid.run"


def _with_run_sampling(executor, *args, **kwargs):
    """OUTER_SAMPLE: the sampled model's model_sampling into this run's model options (the guider's
    copy for this run, dropped when it ends)."""
    guider = executor.class_obj
    patcher = getattr(guider, "model_patcher", None)
    options = getattr(guider, "model_options", None)
    if patcher is not None and isinstance(options, dict):
        transformer = options.setdefault("transformer_options", {})
        transformer[RUN_SAMPLING] = patcher.get_model_object("model_sampling")
        transformer[COND_KINDS] = _prompt_kinds(getattr(guider, "conds", None) or getattr(guider, "original_conds", None))
    return executor(*args, **kwargs)


def _prompt_kinds(conds) -> dict:
    """{uuid: COND or UNCOND} of a guider's prompts ({name: [cond dicts]})."""
    kinds = {}
    for name, group in (conds.items() if isinstance(conds, dict) else ()):
        for cond in group or ():
            if isinstance(cond, dict) and cond.get("uuid") is not None:
                negative = name == "negative" or cond.get("prompt_type") == "negative"
                kinds[cond["uuid"]] = UNCOND if negative else COND
    return kinds


def chunk_kinds(options) -> tuple:
    """Per cond/uncond chunk of a patched call, COND or UNCOND: the kind of its prompt where the
    guider's prompts are known (by uuid), else ComfyUI's cond_or_uncond entry (1 = uncond)."""
    positions = tuple(options.get("cond_or_uncond") or ())
    kinds, uuids = options.get(COND_KINDS), options.get("uuids")
    if not kinds or not uuids or len(uuids) != len(positions):
        return positions
    return tuple(kinds.get(u, p) for u, p in zip(uuids, positions))


def _latent_area(area, height: int, width: int):
    """ComfyUI's cond area (h, w, y, x) on a 2-D latent as the crop it runs on, clamped to the latent
    as comfy.samplers.get_area_and_mult clamps it; None where it is not a 2-D area."""
    if not isinstance(area, (list, tuple)) or len(area) != 4:
        return None
    h, w, y, x = (int(a) for a in area)
    return y, x, max(0, min(height - y, h)), max(0, min(width - x, w))


def _with_cond_areas(executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
    """CALC_COND_BATCH: the areas of this call's area-restricted conds into a copy of the model options."""
    if getattr(x_in, "ndim", 0) == 4 and isinstance(model_options, dict):
        height, width = int(x_in.shape[-2]), int(x_in.shape[-1])
        areas = {}
        for group in conds or ():
            for cond in group or ():
                if isinstance(cond, dict) and "area" in cond and cond.get("uuid") is not None:
                    area = _latent_area(cond["area"], height, width)
                    if area is not None and area != (0, 0, height, width):
                        areas[cond["uuid"]] = area
        if areas:
            options = dict(model_options.get("transformer_options", {}))
            options[COND_AREAS] = ((height, width), areas)
            model_options = {**model_options, "transformer_options": options}
    return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)


def chunk_areas(options, chunks: int):
    """((latent height, width), (area or None per cond/uncond chunk)) for a patched call, or None when
    every chunk runs on the whole latent."""
    found = options.get(COND_AREAS)
    uuids = options.get("uuids")
    if not found or not uuids or len(uuids) != chunks:
        return None
    latent, areas = found
    per_chunk = tuple(areas.get(u) for u in uuids)
    return (latent, per_chunk) if any(a is not None for a in per_chunk) else None


def bind_run_options(patcher) -> None:
    """Register both wrappers on a ModelPatcher (the Apply node's own clone), once."""
    import comfy.patcher_extension as ext

    for kind, wrapper in ((ext.WrappersMP.OUTER_SAMPLE, _with_run_sampling),
                          (ext.WrappersMP.CALC_COND_BATCH, _with_cond_areas)):
        if not patcher.get_wrappers(kind, WRAPPER_KEY):
            patcher.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
