"""The measurements: the ID branch per call and per step (this pack and the anchor, interleaved),
kernels and syncs per patched call, and the unpatched whole step that a share of a step divides by.

The ID branch of a call is the patched attn2 call minus the unpatched attention on the same
q/k/v (ComfyUI's ``optimized_attention``, which both packs call for the text attention), taken
per repetition. Layers of one shape cost the same, so a step's ID branch is the sum over the
shapes of (calls per step x that shape's ID branch per call): this pack patches all 70 layers,
the anchor's patches fire on 60 (see ``models.anchor_fires``). The step's spread is that of the
per-repetition sums (repetition r of each shape).
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from . import harness, models

log = logging.getLogger("benchmarks")

WEIGHT = 0.8
SIGMA = 1.0  # inside the default start_at/end_at range: the ID term is computed


@dataclass
class Plan:
    resolutions: tuple = (512, 1024)
    modes: tuple = (("v1", "fidelity"),)
    reps: int = 15
    warmup: int = 2
    whole_steps: bool = False
    whole_reps: int = 3
    tiny: bool = False
    profile: str = "quick"
    notes: list = field(default_factory=list)
    device: str = "cpu"  # cuda: fp16 (the dtype SDXL samples in on GPUs), ComfyUI on the GPU

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.device == "cpu" else torch.float16


def unpatched_attention(q, k, v, heads):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads)


def layer_inputs(width: int, heads: int, tokens: int, hw: tuple, key, batch: int = 2, seed: int = 0,
                 device="cpu", dtype=torch.float32):
    """q [B, N, C] and the text k/v [B, 77, C] (after to_q/to_k/to_v), and the extra_options ComfyUI
    passes to an attn2 patch at cfg > 1 (uncond and cond rows in one batch)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, n, width, generator=gen).to(device=device, dtype=dtype)
               for n in (tokens, models.TEXT_TOKENS, models.TEXT_TOKENS))
    eo = {"n_heads": heads, "dim_head": width // heads, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([SIGMA]),
          "original_shape": [batch, 4, hw[0], hw[1]], "activations_shape": [batch, width, *hw],
          "block": key[:2], "block_index": key[2], "attn_precision": None}
    return q, k, v, eo


def shape_groups(layers: list, resolution: int) -> dict:
    """{(width, heads, tokens, grid): [keys]} of the UNet's cross-attention layers at a resolution."""
    latent = resolution // 8
    groups: dict = {}
    for key, width, heads, down in layers:
        grid = (latent // down, latent // down)
        groups.setdefault((width, heads, grid[0] * grid[1], grid), []).append(key)
    return groups


class Subject:
    """One (version, method): this pack's patches and, for v1, the anchor's patch per layer width."""

    def __init__(self, env, version: str, method: str):
        self.version, self.method = version, method
        adapter, state = env.adapters[version]
        embeds = models.id_embeds(adapter)
        self.ours = models.pulid_patches(env.shell, adapter, embeds, method, WEIGHT)
        self.anchor = {}
        if env.anchor is not None and version == "v1" and method in models.ANCHOR_METHODS:
            widths = adapter.model.layer_widths
            for index in sorted(widths):
                self.anchor.setdefault(widths[index], models.anchor_patch(
                    env.anchor, state, index, embeds, method, WEIGHT, env.dtype, env.device))


def compiled_kernel_in_use(env) -> bool:
    """Whether this run's default path is the compiled CPU kernel (pulid_core.native): then the
    same patches are also timed on torch's ops, the path of a machine without a C compiler."""
    from comfyui_pulid.pulid_core import attention

    return env.device.type == "cpu" and env.dtype == torch.float32 and attention.native_kernel() is not None


def on_torch_ops(call):
    """``call`` with the pack's ID branch on torch's ops instead of the compiled kernel (the module
    attribute the patch looks up on every call, swapped for the call: about a microsecond)."""
    from comfyui_pulid.nodes import attn_patch

    default = attn_patch.id_attention_prepared
    torch_ops = functools.partial(default, native=False)

    def run(*args, **kwargs):
        attn_patch.id_attention_prepared = torch_ops
        try:
            return call(*args, **kwargs)
        finally:
            attn_patch.id_attention_prepared = default
    return run


def id_branch(env, subject: Subject, resolution: int, plan: Plan) -> dict:
    """Per layer shape: unpatched, ours (and ours on torch's ops, where the default is the compiled
    kernel) and the anchor's calls, interleaved; ID branch per call and per step."""
    groups = shape_groups(env.layers, resolution)
    rows, steps = [], {}
    both = compiled_kernel_in_use(env)
    for (width, heads, tokens, grid), keys in groups.items():
        q, k, v, eo = layer_inputs(width, heads, tokens, grid, keys[0], device=env.device, dtype=env.dtype)
        ours = subject.ours[keys[0]]
        fns = {"unpatched": lambda: unpatched_attention(q, k, v, heads),
               "ours": lambda: ours(q, k, v, dict(eo))}
        if both:
            fns["ours_torch"] = on_torch_ops(lambda: ours(q, k, v, dict(eo)))
        anchor = subject.anchor.get(width)
        if anchor is not None:
            fns["anchor"] = lambda: anchor(q, k, v, dict(eo))
        times = harness.interleaved(fns, plan.reps, plan.warmup, sync=env.sync)
        n_ours, n_anchor = len(keys), sum(models.anchor_fires(k_) for k_ in keys)
        row = {"width": width, "heads": heads, "tokens": tokens, "layers": n_ours, "anchor_layers": n_anchor,
               "unpatched": harness.Stat.of(times["unpatched"])}
        for name in ("ours", "ours_torch", "anchor"):
            if name in fns:
                diffs = harness.differences(times, name, "unpatched")
                row[f"{name}_id"] = harness.Stat.of(diffs)
                steps[name] = _accumulate(steps.get(name), diffs, n_anchor if name == "anchor" else n_ours)
        rows.append(row)
        log.info("%s %s %d² %d-wide x%d: ours %.2f ms%s%s", subject.version, subject.method, resolution, width,
                 n_ours, row["ours_id"].median * 1e3,
                 f", on torch's ops {row['ours_torch_id'].median * 1e3:.2f} ms" if "ours_torch_id" in row else "",
                 f", anchor {row['anchor_id'].median * 1e3:.2f} ms" if "anchor_id" in row else "")
    return {"per_call": rows, "step_ours": harness.Stat.of(steps["ours"]),
            "step_ours_torch": harness.Stat.of(steps["ours_torch"]) if "ours_torch" in steps else None,
            "step_anchor": harness.Stat.of(steps["anchor"]) if "anchor" in steps else None}


def _accumulate(total, diffs, count):
    scaled = [count * d for d in diffs]
    return scaled if total is None else [a + b for a, b in zip(total, scaled, strict=True)]


def counts(env, subject: Subject) -> dict:
    """Kernels and syncs added per patched call (patched call minus the unpatched attention)."""
    (width, heads, tokens, grid), keys = next(iter(shape_groups(env.layers, 512).items()))
    q, k, v, eo = layer_inputs(width, heads, tokens, grid, keys[0], device=env.device, dtype=env.dtype)
    base = harness.kernels_and_syncs(lambda: unpatched_attention(q, k, v, heads))
    out = {"unpatched": base}
    candidates = {"ours": subject.ours[keys[0]]}
    if width in subject.anchor:
        candidates["anchor"] = subject.anchor[width]
    for name, patch in candidates.items():
        got = harness.kernels_and_syncs(lambda p=patch: p(q, k, v, dict(eo)))
        out[name] = dict(got, kernels_added=got["kernels"] - base["kernels"], syncs_added=got["syncs"] - base["syncs"])
    # The same patched call on the fused path, which GPUs (and fp16/bf16) run: this CPU fp32 run
    # takes the explicit path by default.
    from unittest import mock

    from comfyui_pulid.nodes import attn_patch

    fused = functools.partial(attn_patch.id_attention_prepared, fused=True)
    with mock.patch.object(attn_patch, "id_attention_prepared", fused):
        got = harness.kernels_and_syncs(lambda: candidates["ours"](q, k, v, dict(eo)))
    out["ours_fused"] = dict(got, kernels_added=got["kernels"] - base["kernels"],
                             syncs_added=got["syncs"] - base["syncs"])
    if compiled_kernel_in_use(env):  # "ours" ran the compiled kernel: the torch-ops path too
        got = harness.kernels_and_syncs(on_torch_ops(lambda: candidates["ours"](q, k, v, dict(eo))))
        out["ours_torch"] = dict(got, kernels_added=got["kernels"] - base["kernels"],
                                 syncs_added=got["syncs"] - base["syncs"])
    return out


def whole_step(env, resolution: int, plan: Plan) -> harness.Stat:
    """One unpatched UNet evaluation at cfg > 1 (batch 2: uncond and cond), median over repetitions."""
    unet, cfg = env.unet_with_weights()
    latent = resolution // 8
    gen = torch.Generator().manual_seed(1)
    x, context, y = (torch.randn(*shape, generator=gen).to(env.device, env.dtype) for shape in (
        (2, 4, latent, latent), (2, models.TEXT_TOKENS, cfg["context_dim"]), (2, cfg["adm_in_channels"])))
    t = torch.full((2,), 500.0, device=env.device)
    times = harness.interleaved({"step": lambda: unet(x, timesteps=t, context=context, y=y)}, plan.whole_reps,
                                warmup=1, sync=env.sync)
    return harness.Stat.of(times["step"])


class Env:
    """What every case shares: ComfyUI, the UNet shell and its layers, adapters, the anchor."""

    def __init__(self, plan: Plan, anchor_path):
        self.device = torch.device(plan.device)
        self.dtype = plan.dtype
        self.comfy_root = models.setup_comfy(plan.device)
        self.sync = harness.synchronizer(self.device)
        self.shell, self.cfg = models.sdxl_shell(plan.tiny)
        self.layers = models.attn_layers(self.shell, self.cfg)
        self.adapters = {v: models.build_adapter(v, plan.tiny) for v in sorted({m[0] for m in plan.modes})}
        self.anchor_path = anchor_path
        self.anchor, self.anchor_missing = models.load_anchor(anchor_path)
        self.tiny = plan.tiny
        self._unet = None

    def unet_with_weights(self):
        if self._unet is None:
            unet, cfg = models.sdxl_unet_with_weights(self.tiny)
            self._unet = unet.to(self.device, self.dtype), cfg
        return self._unet


def run(plan: Plan, anchor_path) -> dict:
    env = Env(plan, anchor_path)
    results = {"plan": plan, "env": env, "modes": {}, "steps": {}}
    if env.anchor is None:
        log.warning("%s: printing this pack's numbers only", env.anchor_missing)
    for version, method in plan.modes:
        subject = Subject(env, version, method)
        mode = {"counts": counts(env, subject), "resolutions": {}}
        for resolution in plan.resolutions:
            mode["resolutions"][resolution] = id_branch(env, subject, resolution, plan)
        results["modes"][(version, method)] = mode
    if plan.whole_steps:
        for resolution in plan.resolutions:
            results["steps"][resolution] = whole_step(env, resolution, plan)
            log.info("unpatched step %d²: %.2f s", resolution, results["steps"][resolution].median)
    if env.device.type == "cuda":
        results["vram"] = {"peak_bytes": torch.cuda.max_memory_allocated(), "after_bytes": torch.cuda.memory_allocated()}
    results["native_kernel"] = native_kernel_words(env)
    return results


def native_kernel_words(env) -> str:
    """Which CPU path "ours" ran (fp32 on the CPU only; elsewhere the fused one)."""
    from comfyui_pulid.pulid_core import attention

    if env.device.type != "cpu" or env.dtype != torch.float32:
        return "not used (fused path)"
    kernel = attention.native_kernel()
    if kernel is None:
        return "not built (no C compiler, or COMFYUI_PULID_NATIVE=0): torch's ops"
    return f"compiled kernel `{kernel.path.name}`, " + ("on torch's OpenMP threads" if kernel.threaded else "one thread")


# -- PuLID-FLUX ------------------------------------------------------------------------------
# A step of FLUX.1: 19 double-stream and 38 single-stream blocks (the embedders and the final
# layer are small next to them and left out). PuLID-FLUX adds one CA call after double blocks
# 0, 2, ..., 18 and single blocks 0, 4, ..., 36: 10 + 10 per step.
FLUX_DOUBLE, FLUX_SINGLE = 19, 38


@dataclass
class FluxPlan:
    resolutions: tuple = (512, 1024)
    reps: int = 5
    warmup: int = 1
    tiny: bool = False
    device: str = "cpu"
    profile: str = "flux"


def flux_dtype(device: torch.device) -> torch.dtype:
    """fp32 on the CPU; on a GPU the dtype ComfyUI runs FLUX.1 in (bf16, fp16 where bf16 is missing)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def flux_insertions(adapter, ids, inputs: dict, kind: str) -> list:
    """The pack's 10 block patches of one kind (FluxBlockPatch -> pulid_core.flux.identity_delta), as
    Apply PuLID (FLUX) installs them, each around a stand-in occupant that returns the block's
    output at once: a call of one costs what the insertion adds to its block."""
    from comfyui_pulid.nodes import flux_patch

    from pulid_core import flux as core_flux

    context = flux_patch.FluxIDContext(adapter.patcher, ids, ids, weight=1.0, sigma_start=float("inf"),
                                       sigma_end=0.0)
    img, txt = inputs["img"], inputs["txt"]
    options = {"cond_or_uncond": [0], "sigmas": torch.tensor([SIGMA], device=img.device),
               flux_patch.GRID: inputs["grid"], flux_patch.STREAMS: {"txt": txt.shape[1]}}
    if kind == "double":
        args = {"img": img, "txt": txt, "vec": inputs["vec"], "pe": inputs["pe"], "transformer_options": options}
        blocks = FLUX_DOUBLE
    else:
        joint = torch.cat([txt, img], dim=1)
        args = {"img": joint, "vec": inputs["vec"], "pe": inputs["pe"], "transformer_options": options}
        blocks = FLUX_SINGLE
    out = {k: v for k, v in args.items() if k in ("img", "txt")}
    extra = {"original_block": lambda _args: out}
    patches = [flux_patch.FluxBlockPatch(context, kind, ca) for i in range(blocks)
               if (ca := core_flux.ca_index(kind, i)) is not None]
    with torch.inference_mode():  # a timing of insertions that add nothing would be meaningless
        if torch.equal(patches[0](args, extra)["img"], out["img"]):
            raise RuntimeError(f"the PuLID-FLUX insertion after a {kind} block left the image stream unchanged")
    return [lambda p=p: p(args, extra) for p in patches]


def _each(calls):
    for call in calls:
        call()


def flux_block_call(block, kind: str, inputs: dict):
    if kind == "double":
        return lambda: block(img=inputs["img"], txt=inputs["txt"], vec=inputs["vec"], pe=inputs["pe"])
    joint = torch.cat([inputs["txt"], inputs["img"]], dim=1)
    return lambda: block(joint, vec=inputs["vec"], pe=inputs["pe"])


def flux_resolution(plan: FluxPlan, device, dtype, adapter, ids, resolution: int, sync) -> dict:
    """One double and one single block (built one after the other, ~1.9 GB in fp32 together) and the
    10 insertions that follow blocks of each kind, all four timed round-robin in every repetition,
    so a load change on a shared machine hits blocks and insertions alike; per repetition r,
    step_r = 19 double_r + 38 single_r and CA_r = the 20 insertions of repetition r."""
    inputs = models.flux_inputs(resolution, plan.tiny, dtype, device)
    fns, insertions = {}, {}
    for seed, kind in enumerate(("double", "single")):
        fns[kind] = flux_block_call(models.flux_block(kind, plan.tiny, dtype, device, seed=seed), kind, inputs)
        calls = flux_insertions(adapter, ids, inputs, kind)
        insertions[kind] = len(calls)
        fns[f"ca_{kind}"] = lambda calls=calls: _each(calls)
    times = harness.interleaved(fns, plan.reps, plan.warmup, sync=sync)
    del fns  # frees the blocks
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for kind in ("double", "single"):
        log.info("FLUX %d² %s block %.1f ms, its 10 insertions %.1f ms", resolution, kind,
                 harness.Stat.of(times[kind]).median * 1e3, harness.Stat.of(times[f"ca_{kind}"]).median * 1e3)
    step = [FLUX_DOUBLE * d + FLUX_SINGLE * s for d, s in zip(times["double"], times["single"], strict=True)]
    ca20 = [a + b for a, b in zip(times["ca_double"], times["ca_single"], strict=True)]
    img_tokens = inputs["img"].shape[1]
    return {"image_tokens": img_tokens, "text_tokens": inputs["txt"].shape[1], "insertions": insertions,
            "times_s": times,
            "double": harness.Stat.of(times["double"]), "single": harness.Stat.of(times["single"]),
            "ca_per_call": harness.Stat.of([x / sum(insertions.values()) for x in ca20]), "ca20": harness.Stat.of(ca20),
            "step": harness.Stat.of(step), "ratio": harness.Stat.of([c / s for c, s in zip(ca20, step, strict=True)])}


def run_flux(plan: FluxPlan) -> dict:
    """The 20 PuLID-FLUX insertions per FLUX.1 step next to an estimated step, per resolution;
    on a GPU, the memory the adapter leaves allocated after ComfyUI offloads it."""
    device = torch.device(plan.device)
    comfy_root = models.setup_comfy(device.type)
    dtype = flux_dtype(device)
    sync = harness.synchronizer(device)
    adapter, ids = models.build_flux_adapter(plan.tiny, dtype)
    vram = None
    if device.type == "cuda":
        import comfy.model_management as mm

        torch.cuda.reset_peak_memory_stats()
        mm.load_models_gpu([adapter.patcher], force_full_load=True)
    ids = ids.to(device)
    ca = adapter.model.pulid_ca[0]
    results = {"plan": plan, "comfy_root": comfy_root, "dtype": str(dtype).replace("torch.", ""),
               "ca_sizes": {"dim": adapter.model.ca_dim, "inner": ca.to_q.weight.shape[0],
                            "kv_dim": ids.shape[-1], "tokens": ids.shape[1]},
               "resolutions": {}}
    for resolution in plan.resolutions:
        results["resolutions"][resolution] = flux_resolution(plan, device, dtype, adapter, ids, resolution, sync)
    if device.type == "cuda":
        from comfyui_pulid.nodes.comfy_compat import offload_model

        sync()
        peak = torch.cuda.max_memory_allocated()
        offload_model(adapter.patcher)
        del ids
        torch.cuda.empty_cache()
        vram = {"peak_bytes": peak, "after_offload_bytes": torch.cuda.memory_allocated()}
    results["vram"] = vram
    return results


# -- the face encode -------------------------------------------------------------------------
# The stages of one 'Encode Face' call (nodes.pulid.encode_faces), in the order they run; each is
# timed inside the real call by a wrapper around the function that does it. What no stage covers
# (FFHQ alignment, the masked grey face and its EVA resize, previews, copies) is "the rest".
ENCODE_STAGES = ("image", "scrfd", "arcface", "retinaface", "bisenet", "eva_clip", "id_encoder", "loads")
ENCODE_STAGE_NAMES = {
    "image": "image → uint8 RGB, long side ≤ 1024 px",
    "scrfd": "InsightFace detection (SCRFD)",
    "arcface": "InsightFace embedding (ArcFace)",
    "retinaface": "facexlib RetinaFace-R50 (alignment landmarks)",
    "bisenet": "facexlib BiSeNet (face parsing)",
    "eva_clip": "EVA02-CLIP-L-14-336",
    "id_encoder": "IDFormer (PuLID v1.1 adapter)",
    "loads": "model loads / offloads (ComfyUI model management)",
    "rest": "the rest (alignment, masks, EVA resize, previews, copies)",
}


@dataclass
class EncodePlan:
    reps: int = 5
    warmup: int = 1
    tiny: bool = False
    device: str = "cpu"
    precision: str = ""  # EVA-CLIP: fp32 on the CPU, fp16 on a GPU unless given
    profile: str = "encode"

    def eva_precision(self) -> str:
        return self.precision or ("fp32" if self.device == "cpu" else "fp16")


class StageClock:
    """Seconds per stage of the call in progress: ``wrap`` times a callable into a stage (synchronising
    a GPU around it, so work queued by one stage is not billed to the next)."""

    def __init__(self, sync):
        self.sync, self.current = sync, {}

    def wrap(self, stage: str, fn):
        import functools
        import time

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.current[stage] = self.current.get(stage, 0.0) + time.perf_counter() - t0
        return timed

    def take(self) -> dict:
        out, self.current = self.current, {}
        return out


def _instrumented(clock: StageClock, pipeline, eva, forced_landmarks):
    """The patches (``unittest.mock`` context managers) that time each stage inside encode_faces.

    RetinaFace with random weights finds no face above facexlib's 0.97 score: the network and its
    decoding run in full, then the face's own landmarks are returned (a forced detection)."""
    import contextlib
    from unittest import mock

    import comfy.model_management as mm
    from comfyui_pulid.nodes import loaders
    from comfyui_pulid.nodes import pulid as pulid_nodes

    pipeline_module = sys.modules[type(pipeline).__module__]
    facexlib, analyzer = pipeline.facexlib, pipeline.analyzer
    landmarks = facexlib.landmarks

    def retinaface(image_bgr, *args, **kwargs):
        landmarks(image_bgr, *args, **kwargs)
        return forced_landmarks

    stack = contextlib.ExitStack()
    patches = [
        (pipeline_module, "to_uint8_rgb", "image"),
        (analyzer.detector, "detect", "scrfd"),
        (analyzer.recognizer, "embed_face", "arcface"),
        (facexlib, "parse", "bisenet"),
        (eva.patcher.model, "features", "eva_clip"),
        (pulid_nodes, "encode_identity", "id_encoder"),
        (mm, "load_models_gpu", "loads"),
        (pulid_nodes, "offload_model", "loads"),
        (loaders, "offload_model", "loads"),
    ]
    for owner, name, stage in patches:
        stack.enter_context(mock.patch.object(owner, name, clock.wrap(stage, getattr(owner, name))))
    stack.enter_context(mock.patch.object(facexlib, "landmarks", clock.wrap("retinaface", retinaface)))
    return stack


def run_encode(plan: EncodePlan) -> dict:
    """One face encode ('Encode Face': encode_faces) on ComfyUI's device, per stage: the first call
    (cold: every model still on its offload device, first runs of ONNX Runtime and torch) and
    ``reps`` warm calls (timed after ``warmup`` calls); on a GPU, the memory left allocated."""
    import tempfile
    from pathlib import Path

    device = torch.device(plan.device)
    comfy_root = models.setup_comfy(device.type)
    from comfyui_pulid.nodes.pulid import encode_faces

    from tests.unit import face_models

    sync = harness.synchronizer(device)
    precision = plan.eva_precision()
    tmp = tempfile.TemporaryDirectory(prefix="pulid_encode_bench_")
    root = Path(tmp.name)
    try:
        models.write_face_models(root, plan.tiny)
        pipeline = models.face_pipeline(root, "CPU" if device.type == "cpu" else "CUDA")
    finally:
        tmp.cleanup()  # everything is loaded: sessions and modules no longer need the files
    eva = models.build_eva(plan.tiny, precision)
    adapter, _ = models.build_adapter("v1.1", plan.tiny)
    image = models.encode_photo(plan.tiny)
    box = models.face_box(plan.tiny)
    kps, _ = face_models.kps_for_box(box)
    forced = [(box.astype(np.float32), kps.astype(np.float32), 0.99)]

    clock = StageClock(sync)
    rows = []

    def encode():
        embeds, _ = encode_faces(adapter, eva, pipeline, image, node="Encode Face (benchmark)")
        rows.append(clock.take())
        return embeds

    vram = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with _instrumented(clock, pipeline, eva, forced):
        cold = harness.interleaved({"encode": encode}, 1, warmup=0, sync=sync)["encode"]
        cold_row = rows[-1]
        warm = harness.interleaved({"encode": encode}, plan.reps, warmup=plan.warmup, sync=sync)["encode"]
        warm_rows = rows[-plan.reps:]
        embeds = encode()
    if embeds.cond.shape[1] != models.ID_TOKENS["v1.1"] or not torch.isfinite(embeds.cond).all():
        raise RuntimeError(f"the encode gave ID tokens {tuple(embeds.cond.shape)}, not [1, 32, D] finite values")
    if device.type == "cuda":
        sync()
        torch.cuda.empty_cache()
        vram = {"before_bytes": before, "after_bytes": torch.cuda.memory_allocated(),
                "peak_bytes": torch.cuda.max_memory_allocated()}

    def stages(row_list, totals):
        out = {s: [r.get(s, 0.0) for r in row_list] for s in ENCODE_STAGES}
        out["rest"] = [t - sum(r.get(s, 0.0) for s in ENCODE_STAGES) for r, t in zip(row_list, totals, strict=True)]
        out["total"] = list(totals)
        return out

    eva_model = eva.patcher.model
    return {"plan": plan, "comfy_root": comfy_root, "precision": precision,
            "eva_dtype": str(eva_model.dtype).replace("torch.", ""),
            "adapter_dtype": str(next(adapter.model.parameters()).dtype).replace("torch.", ""),
            "sizes": {"image": list(image.shape[1:3][::-1]), "eva_image": eva_model.image_size,
                      "eva_width": eva_model.trunk.embed_dim, "eva_depth": len(eva_model.trunk.blocks),
                      "id_tokens": list(embeds.cond.shape[1:])},
            "ort_provider": pipeline.analyzer.provider,
            "cold_s": stages([cold_row], cold), "warm_s": stages(warm_rows, warm), "vram": vram}
