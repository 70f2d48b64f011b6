"""Markdown and JSON of a run: the machine and its load, the side-by-side table, the targets."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import models

# Targets for the sampling path (v1 fidelity); a benchmark prints them, no timed test asserts them.
TARGET_STEP_VS_ANCHOR = 0.3
TARGET_SYNCS = 0
TARGET_KERNELS = 10


def machine(comfy_root) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "device": "cpu", "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
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
    ours = mode["counts"]["ours"]
    out.append((f"{TARGET_SYNCS} blocking syncs per patched call", str(ours["syncs_added"]),
                "met" if ours["syncs_added"] <= TARGET_SYNCS else "missed"))
    out.append((f"≤ {TARGET_KERNELS} kernels added per call (fidelity)", str(ours["kernels_added"]),
                "met" if ours["kernels_added"] <= TARGET_KERNELS else "missed"))
    return out


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
        f" · fp32, cfg batch 2, weight 0.8 · {plan.reps} interleaved repetitions"
        + (" · **tiny models (a smoke run: not a measurement)**" if plan.tiny else ""),
        "",
    ]
    if note:
        lines += [note, ""]
    if env.anchor is None:
        lines += [f"**Anchor absent**: {env.anchor_missing}. Only this pack's numbers are printed.", ""]
    else:
        stub = f" (its unused `{', '.join(env.anchor.stubbed_modules)}` import stubbed)" \
            if env.anchor.stubbed_modules else ""
        lines += [f"Anchor: its own `Attn2Replace`/`pulid_attention` imported from `{env.anchor_path}`{stub}, "
                  "same process, same q/k/v and extra_options, timed interleaved with this pack's patch.", ""]
    lines += ["Each figure: median [IQR] in ms over repetitions. ID branch = patched attn2 call minus the "
              "unpatched attention on the same inputs, per repetition.", ""]
    for (version, method), mode in results["modes"].items():
        lines += [f"## {version} {method}", "",
                  "| resolution | layer (width × tokens) | layers ours / anchor | unpatched attention | "
                  "ID branch per call, ours | anchor | ours / anchor |",
                  "|---|---|---|---|---|---|---|"]
        for res, r in mode["resolutions"].items():
            for row in r["per_call"]:
                lines.append(f"| {res}² | {row['width']} × {row['tokens']} | {row['layers']} / {row['anchor_layers']}"
                             f" | {ms(row['unpatched'])} | {ms(row['ours_id'])} | {ms(row.get('anchor_id'))} | "
                             f"{ratio(row['ours_id'], row.get('anchor_id'))} |")
        lines += ["", "| resolution | ID branch per step, ours | anchor | ours / anchor | unpatched step | "
                  "share of a step, ours / anchor |", "|---|---|---|---|---|---|"]
        for res, r in mode["resolutions"].items():
            step = results["steps"].get(res)
            if step is None:
                share = "not measured (no whole step in this profile)"
            else:
                share = f"{r['step_ours'].median / step.median:.1%}" + (
                    f" / {r['step_anchor'].median / step.median:.1%}" if r["step_anchor"] else "")
            lines.append(f"| {res}² | {ms(r['step_ours'])} | {ms(r['step_anchor'])} | "
                         f"{ratio(r['step_ours'], r['step_anchor'])} | {ms(step)} | {share} |")
        c = mode["counts"]
        lines += ["", "| per patched call (torch.profiler, CPU) | kernels added | blocking syncs added |",
                  "|---|---|---|", f"| ours | {c['ours']['kernels_added']} | {c['ours']['syncs_added']} |"]
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
                "step_anchor": data["step_anchor"].as_dict() if data["step_anchor"] else None,
            }
        modes[f"{version} {method}"] = {"counts": mode["counts"], "resolutions": res}
    return {"machine": results["machine"], "anchor": str(env.anchor_path) if env.anchor else None,
            "anchor_missing": env.anchor_missing, "modes": modes,
            "steps": {str(k): v.as_dict() for k, v in results["steps"].items()},
            "targets": [{"target": t, "measured": m, "verdict": v} for t, m, v in targets(results)]}
