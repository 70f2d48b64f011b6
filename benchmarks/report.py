"""Markdown and JSON of a run: the machine and its load, the side-by-side table, the targets."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import harness, models
from .cases import ENCODE_STAGE_NAMES, ENCODE_STAGES

# Targets for the sampling path (v1 fidelity); a benchmark prints them, no timed test asserts them.
TARGET_STEP_VS_ANCHOR = 0.3
TARGET_SYNCS = 0
TARGET_KERNELS = 10


def machine(comfy_root, device: str = "cpu") -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "device": device, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["commit"] = subprocess.run(["git", "-C", str(models.REPO), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, timeout=10).stdout.strip()
    with contextlib.suppress(OSError, IndexError):
        text = (Path(comfy_root) / "comfyui_version.py").read_text()
        info["comfyui"] = text.split("__version__ =", 1)[1].strip().strip('"')
    return info


def ms(stat) -> str:
    """'median ms [IQR ms]'."""
    if stat is None:
        return "—"
    return f"{stat.median * 1e3:.2f} [{stat.iqr * 1e3:.2f}]"


def ratio(a, b) -> str:
    return f"{a.median / b.median:.2f}×" if a is not None and b is not None and b.median > 0 else "—"


def targets(results: dict) -> list:
    """[(target, measured, 'met' | 'missed' | 'not measured')] for v1 fidelity."""
    mode = results["modes"].get(("v1", "fidelity"))
    out = []
    if mode is None:
        return [("v1 fidelity targets", "v1 fidelity not run", "not measured")]
    for res, r in mode["resolutions"].items():
        name = f"ID branch per step ≤ {TARGET_STEP_VS_ANCHOR}× the anchor at {res}²"
        if r["step_anchor"] is None:
            out.append((name, "anchor absent", "not measured"))
        else:
            x = r["step_ours"].median / r["step_anchor"].median
            out.append((name, f"{x:.2f}×", "met" if x <= TARGET_STEP_VS_ANCHOR else "missed"))
            if r.get("step_ours_torch") is not None:
                x = r["step_ours_torch"].median / r["step_anchor"].median
                out.append((name + ", on torch's ops (no C compiler)", f"{x:.2f}×",
                            "met" if x <= TARGET_STEP_VS_ANCHOR else "missed"))
    ours = mode["counts"]["ours"]
    out.append((f"{TARGET_SYNCS} blocking syncs per patched call", str(ours["syncs_added"]),
                "met" if ours["syncs_added"] <= TARGET_SYNCS else "missed"))
    fused = mode["counts"].get("ours_fused")
    if fused is not None:
        out.append((f"≤ {TARGET_KERNELS} kernels added per call (fidelity), fused path (GPUs)",
                    str(fused["kernels_added"]), "met" if fused["kernels_added"] <= TARGET_KERNELS else "missed"))
    if results["plan"].device == "cpu":
        for key, words in (("ours", "CPU fp32 path"), ("ours_torch", "CPU fp32 path on torch's ops")):
            if key in mode["counts"]:
                added = mode["counts"][key]["kernels_added"]
                out.append((f"≤ {TARGET_KERNELS} kernels added per call (fidelity), {words}",
                            f"{added}" + ("" if added <= TARGET_KERNELS else " (by design: a CPU op costs no launch)"),
                            "met" if added <= TARGET_KERNELS else "missed"))
    return out


def _device_words(results: dict) -> str:
    info = results["machine"]
    return f"GPU {info['gpu']}" if info.get("gpu") else "on the CPU"


def _vram_words(vram) -> str:
    if not vram:
        return "VRAM: not measured."
    return (f"VRAM: peak {_mib(vram['peak_bytes'])} during the run, {_mib(vram['after_bytes'])} "
            "still allocated at its end (the adapter, the patches' cached keys/values and the run's inputs).")


def allocator(info: dict) -> str:
    """How freed CPU memory behaved in this run (it decides how many fresh pages fault)."""
    env = info.get("malloc_env") or {}
    if not env:
        return "glibc malloc defaults (freed blocks may go back to the OS; fresh pages fault on first touch)"
    return "steady heap: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())) + \
        " (freed memory is kept and reused: no page faults after warm-up)"


def markdown(results: dict, command: str, note: str = "") -> str:
    plan, env = results["plan"], results["env"]
    info = results["machine"]
    load = info.get("load_average")
    lines = [
        f"# PuLID ID branch: this pack vs the archived cubiq/PuLID_ComfyUI ({plan.profile} profile)",
        "",
        f"`{command}` · CPU {info.get('cpu', '?')}, {info['cores']} cores, torch threads {info['threads']}"
        f" (OMP_NUM_THREADS={info['omp_num_threads']}) · load average {load} at the end of the run"
        f" · torch {info['torch']}, ComfyUI {info.get('comfyui', '?')}, commit {info.get('commit', '?')}"
        f" · {_device_words(results)}, {str(plan.dtype).replace('torch.', '')}, cfg batch 2, weight 0.8"
        f" · {plan.reps} interleaved repetitions"
        + (" · **tiny models (a smoke run: not a measurement)**" if plan.tiny else ""),
        "",
        f"CPU memory: {allocator(info)}." if plan.device == "cpu" else _vram_words(results.get("vram")),
        "",
    ]
    if plan.device == "cpu" and results.get("native_kernel"):
        lines += [f"This pack's CPU ID branch (\"ours\"): {results['native_kernel']}.", ""]
    if note:
        lines += [note, ""]
    if env.anchor is None:
        lines += [f"**Anchor absent**: {env.anchor_missing}. Only this pack's numbers are printed.", ""]
    else:
        stubbed = env.anchor.stubbed_modules
        stub = (f" (its unused `{'`, `'.join(stubbed)}` import{'s' if len(stubbed) > 1 else ''} stubbed)"
                if stubbed else "")
        lines += [f"Anchor: its own `Attn2Replace`/`pulid_attention` imported from `{env.anchor_path}`{stub}, "
                  "same process, same q/k/v and extra_options, timed interleaved with this pack's patch.", ""]
    lines += ["Each figure: median [IQR] in ms over repetitions. ID branch = patched attn2 call minus the "
              "unpatched attention on the same inputs, per repetition.", ""]
    for (version, method), mode in results["modes"].items():
        # Where "ours" ran the compiled CPU kernel, the same patches on torch's ops (no C compiler) too.
        torch_ops = any(r.get("step_ours_torch") is not None for r in mode["resolutions"].values())
        extra_head, extra_rule = (" ours, torch's ops | torch's ops / anchor |", "---|---|") if torch_ops else ("", "")
        lines += [f"## {version} {method}", "",
                  "| resolution | layer (width × tokens) | layers ours / anchor | unpatched attention | "
                  f"ID branch per call, ours | anchor | ours / anchor |{extra_head}",
                  f"|---|---|---|---|---|---|---|{extra_rule}"]
        for res, r in mode["resolutions"].items():
            for row in r["per_call"]:
                extra = (f" {ms(row.get('ours_torch_id'))} | {ratio(row.get('ours_torch_id'), row.get('anchor_id'))} |"
                         if torch_ops else "")
                lines.append(f"| {res}² | {row['width']} × {row['tokens']} | {row['layers']} / {row['anchor_layers']}"
                             f" | {ms(row['unpatched'])} | {ms(row['ours_id'])} | {ms(row.get('anchor_id'))} | "
                             f"{ratio(row['ours_id'], row.get('anchor_id'))} |{extra}")
        lines += ["", "| resolution | ID branch per step, ours | anchor | ours / anchor | unpatched step | "
                  f"share of a step, ours / anchor |{extra_head}", f"|---|---|---|---|---|---|{extra_rule}"]
        for res, r in mode["resolutions"].items():
            step = results["steps"].get(res)
            if step is None:
                share = "not measured (no whole step in this profile)"
            else:
                share = f"{r['step_ours'].median / step.median:.1%}" + (
                    f" / {r['step_anchor'].median / step.median:.1%}" if r["step_anchor"] else "")
            extra = (f" {ms(r.get('step_ours_torch'))} | {ratio(r.get('step_ours_torch'), r['step_anchor'])} |"
                     if torch_ops else "")
            lines.append(f"| {res}² | {ms(r['step_ours'])} | {ms(r['step_anchor'])} | "
                         f"{ratio(r['step_ours'], r['step_anchor'])} | {ms(step)} | {share} |{extra}")
        c = mode["counts"]
        path = ("CPU fp32 path (explicit)" + (", compiled kernel" if "ours_torch" in c else "")
                if plan.device == "cpu" else "this run's path (fused)")
        lines += ["", f"| per patched call (torch.profiler, {plan.device}) | ops added | blocking syncs added |",
                  "|---|---|---|",
                  f"| ours, {path} | {c['ours']['kernels_added']} | {c['ours']['syncs_added']} |"]
        if "ours_torch" in c:
            lines.append(f"| ours, CPU fp32 path on torch's ops (no C compiler) | {c['ours_torch']['kernels_added']} | "
                         f"{c['ours_torch']['syncs_added']} |")
        if "ours_fused" in c:
            lines.append(f"| ours, fused path (GPUs, fp16/bf16) | {c['ours_fused']['kernels_added']} | "
                         f"{c['ours_fused']['syncs_added']} |")
        if "anchor" in c:
            lines.append(f"| anchor | {c['anchor']['kernels_added']} | {c['anchor']['syncs_added']} |")
        lines += ["", f"Ops in ours (patched call): {_ops(c['ours']['ops'])}", ""]
    lines += ["## Targets (v1 fidelity)", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(results)]
    lines.append("")
    return "\n".join(lines)


def _ops(ops: dict) -> str:
    return ", ".join(f"{k.replace('aten::', '')} ×{v}" for k, v in ops.items()) or "—"


def as_json(results: dict) -> dict:
    env = results["env"]
    modes = {}
    for (version, method), mode in results["modes"].items():
        res = {}
        for r, data in mode["resolutions"].items():
            res[str(r)] = {
                "per_call": [{k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in row.items()}
                             for row in data["per_call"]],
                "step_ours": data["step_ours"].as_dict(),
                "step_ours_torch": data["step_ours_torch"].as_dict() if data.get("step_ours_torch") else None,
                "step_anchor": data["step_anchor"].as_dict() if data["step_anchor"] else None,
            }
        modes[f"{version} {method}"] = {"counts": mode["counts"], "resolutions": res}
    return {"machine": results["machine"], "native_kernel": results.get("native_kernel"),
            "anchor": str(env.anchor_path) if env.anchor else None,
            "anchor_missing": env.anchor_missing, "modes": modes,
            "steps": {str(k): v.as_dict() for k, v in results["steps"].items()}, "vram": results.get("vram"),
            "device": results["plan"].device, "dtype": str(results["plan"].dtype).replace("torch.", ""),
            "targets": [{"target": t, "measured": m, "verdict": v} for t, m, v in targets(results)]}


# -- PuLID-FLUX ------------------------------------------------------------------------------
FLUX_BEGIN = "<!-- PuLID-FLUX section: written by python -m benchmarks --flux -->"
FLUX_END = "<!-- end of the PuLID-FLUX section -->"


def _mib(n) -> str:
    return f"{n / 2**20:,.0f} MiB"


def flux_markdown(results: dict, command: str, note: str = "") -> str:
    plan, info = results["plan"], results["machine"]
    load = info.get("load_average")
    where = (f"CPU {info.get('cpu', '?')}, {info['cores']} cores, torch threads {info['threads']}"
             f" (OMP_NUM_THREADS={info['omp_num_threads']})" if plan.device == "cpu" else
             f"GPU {info.get('gpu', '?')}")
    lines = [
        "## PuLID-FLUX: the 20 insertions per FLUX.1 step", "",
        f"`{command}` · {where} · load average {load} at the end of the run · torch {info['torch']}, "
        f"ComfyUI {info.get('comfyui', '?')}, commit {info.get('commit', '?')} · {results['dtype']}, batch 1 "
        f"(cfg 1, as FLUX.1-dev runs) · {plan.reps} interleaved repetitions · wall {info.get('wall_s', '?')} s"
        + (" · **tiny models (a smoke run: not a measurement)**" if plan.tiny else ""),
        "",
    ]
    if note:
        lines += [note, ""]
    sizes = models.TINY_FLUX_BLOCK if plan.tiny else models.FLUX_BLOCK
    ca = results["ca_sizes"]
    lines += [
        f"A whole FLUX.1 step does not fit a small machine's time, so one {'tiny' if plan.tiny else 'full-size'} "
        "double-stream and one single-stream block (ComfyUI's own `DoubleStreamBlock` / `SingleStreamBlock`, "
        f"{sizes['hidden_size']} wide, {sizes['num_heads']} heads, MLP ratio {sizes['mlp_ratio']:g}, random "
        "weights), and the PuLID-FLUX insertions that follow blocks of each kind are timed round-robin in "
        "every repetition: the pack's own block patches (`FluxBlockPatch` -> `pulid_core.flux.identity_delta`; "
        f"`PerceiverAttentionCA` {ca['dim']} wide, inner {ca['inner']}, ID tokens {ca['tokens']} × "
        f"{ca['kv_dim']}) around a stand-in occupant that returns the block's output. Step ≈ 19 double + 38 single blocks "
        "(embedders and final layer left out); 20 insertions = 10 after double + 10 after single blocks, "
        "summed per repetition. Median [IQR] in ms.", "",
        "| resolution | tokens (text + image) | double block | single block | step ≈ 19 d + 38 s | "
        "one insertion (CA call) | 20 insertions | 20 insertions / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res, r in results["resolutions"].items():
        ratio = r["ratio"]
        lines.append(f"| {res}² | {r['text_tokens']} + {r['image_tokens']} | {ms(r['double'])} | {ms(r['single'])} "
                     f"| {ms(r['step'])} | {ms(r['ca_per_call'])} | {ms(r['ca20'])} | {ratio.median:.1%} "
                     f"[{ratio.q1:.1%}–{ratio.q3:.1%}] |")
    lines.append("")
    vram = results.get("vram")
    if vram is None:
        lines += ["VRAM: not measured (CPU run).", ""]
    else:
        lines += [f"VRAM: peak allocated {_mib(vram['peak_bytes'])} (adapter, one block and activations); "
                  f"allocated after ComfyUI offloaded the adapter and the blocks were freed: "
                  f"{_mib(vram['after_offload_bytes'])}.", ""]
    return "\n".join(lines)


def flux_json(results: dict) -> dict:
    plan = results["plan"]
    return {"machine": results["machine"], "dtype": results["dtype"], "device": plan.device, "reps": plan.reps,
            "tiny": plan.tiny, "vram": results.get("vram"), "ca_sizes": results["ca_sizes"],
            "resolutions": {str(res): {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in r.items()}
                            for res, r in results["resolutions"].items()}}


# -- the face encode -------------------------------------------------------------------------
ENCODE_BEGIN = "<!-- Face encode section: written by python -m benchmarks --encode -->"
ENCODE_END = "<!-- end of the face encode section -->"
# What stands in for what in the encode case (the report says it next to the numbers).
ENCODE_STAND_INS = (
    "SCRFD and ArcFace are the tests' synthetic ONNX graphs (`tests/unit/face_models.py`: the real "
    "input/output signatures, a few kFLOPs; the detector reports the photo's face box), so their rows "
    "time insightface's pre- and post-processing (letterbox, blob, anchor decoding, NMS; `norm_crop`) "
    "and an almost empty ONNX Runtime call, not the real networks (SCRFD-10G-KPS: ~10 GFLOPs at "
    "640 px; antelopev2's glintr100, an IResNet-100: ~24 GFLOPs at 112 px)")


def encode_markdown(results: dict, command: str, note: str = "") -> str:
    plan, info, sizes = results["plan"], results["machine"], results["sizes"]
    load = info.get("load_average")
    where = (f"CPU {info.get('cpu', '?')}, {info['cores']} cores, torch threads {info['threads']}"
             f" (OMP_NUM_THREADS={info['omp_num_threads']})" if plan.device == "cpu" else
             f"GPU {info.get('gpu', '?')}")
    full = "tiny" if plan.tiny else "full-size"
    lines = [
        "## Face encode: one photo through 'Encode Face', per stage", "",
        f"`{command}` · {where} · load average {load} at the end of the run · torch {info['torch']}, "
        f"ComfyUI {info.get('comfyui', '?')}, commit {info.get('commit', '?')} · ONNX Runtime "
        f"{results['ort_provider']} · {plan.reps} warm repetitions after {plan.warmup} warm-up · wall "
        f"{info.get('wall_s', '?')} s" + (" · **tiny models (a smoke run: not a measurement)**" if plan.tiny else ""),
        "",
    ]
    if note:
        lines += [note, ""]
    w, h = sizes["image"]
    lines += [
        f"One {w}×{h} synthetic photo, one face, through the pack's `encode_faces` (the 'Encode Face' and "
        "'Apply PuLID' path) on ComfyUI's device; each stage is timed inside that call by a wrapper around "
        "the function doing it. Models: "
        f"EVA02-CLIP-L-14-336 {full} ({sizes['eva_width']} wide, {sizes['eva_depth']} blocks, "
        f"{sizes['eva_image']} px) in {results['eva_dtype']}; the PuLID v1.1 adapter {full} in its file's "
        f"{results['adapter_dtype']} (IDFormer, ID tokens {sizes['id_tokens'][0]} × {sizes['id_tokens'][1]}); "
        "facexlib RetinaFace-R50 and BiSeNet full-size; all with random weights. Random-weight RetinaFace "
        "finds no face above facexlib's 0.97 score, so after the network and its decoding ran the face's own "
        f"landmarks are returned (a forced detection). Stand-ins: {ENCODE_STAND_INS}. Cold: the first call "
        "(one sample; models on their offload device, first runs of ONNX Runtime and torch). Warm: median "
        "[IQR] in ms. The rest = total minus the stages, per repetition.", "",
        "| stage | cold (first call) | warm | share of warm total |", "|---|---|---|---|",
    ]
    cold, warm = results["cold_s"], results["warm_s"]
    total = harness.Stat.of(warm["total"])
    for stage in (*ENCODE_STAGES, "rest", "total"):
        stat = harness.Stat.of(warm[stage])
        name = "**total**" if stage == "total" else ENCODE_STAGE_NAMES[stage]
        share = f"{stat.median / total.median:.1%}" if total.median > 0 else "—"
        lines.append(f"| {name} | {cold[stage][0] * 1e3:.1f} | {ms(stat)} | {share} |")
    lines.append("")
    vram = results.get("vram")
    if vram is None:
        lines += ["VRAM: not measured (CPU run).", ""]
    else:
        lines += [f"VRAM (torch.cuda.memory_allocated): {_mib(vram['before_bytes'])} before the first encode, "
                  f"{_mib(vram['after_bytes'])} after the last (face models, EVA-CLIP and the adapter "
                  f"offloaded); peak {_mib(vram['peak_bytes'])}.", ""]
    return "\n".join(lines)


def encode_json(results: dict) -> dict:
    plan = results["plan"]
    return {"machine": results["machine"], "device": plan.device, "tiny": plan.tiny, "reps": plan.reps,
            "precision": results["precision"], "eva_dtype": results["eva_dtype"],
            "adapter_dtype": results["adapter_dtype"], "sizes": results["sizes"],
            "ort_provider": results["ort_provider"], "stand_ins": ENCODE_STAND_INS, "vram": results["vram"],
            "cold_s": results["cold_s"], "warm_s": results["warm_s"],
            "warm": {k: harness.Stat.of(v).as_dict() for k, v in results["warm_s"].items()}}


# -- cpu.md / cpu.json: each run replaces its own part ------------------------------------------
SECTIONS = {"flux": (FLUX_BEGIN, FLUX_END), "encode": (ENCODE_BEGIN, ENCODE_END)}


def merge_markdown(existing: str, sdxl: str | None = None, flux: str | None = None,
                   encode: str | None = None) -> str:
    """cpu.md with its SDXL part and/or its marked sections (PuLID-FLUX, face encode) replaced; the
    other parts are kept, so ``--quick``, ``--flux`` and ``--encode`` runs do not overwrite each other."""
    rest, old = existing, {}
    for key, (begin, end) in SECTIONS.items():
        if begin in rest:
            head, tail = rest.split(begin, 1)
            old[key], after = tail.split(end, 1) if end in tail else (tail, "")
            rest = head.rstrip("\n") + ("\n" + after.lstrip("\n") if after.strip() else "")
    new = {"flux": flux, "encode": encode}
    out = (sdxl if sdxl is not None else rest).rstrip("\n")
    for key, (begin, end) in SECTIONS.items():
        part = (new[key] if new[key] is not None else old.get(key, "")).strip("\n")
        if part:
            out = f"{out}\n\n{begin}\n{part}\n{end}".lstrip("\n")
    return out + "\n"


def merge_json(existing: dict, sdxl: dict | None = None, flux: dict | None = None, encode: dict | None = None) -> dict:
    out = dict(sdxl) if sdxl is not None else {k: v for k, v in existing.items() if k not in SECTIONS}
    for key, part in (("flux", flux), ("encode", encode)):
        if part is not None:
            out[key] = part
        elif key in existing:
            out[key] = existing[key]
    return out
