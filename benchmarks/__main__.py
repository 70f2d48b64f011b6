"""python -m benchmarks [--quick | --tiny] [--flux | --encode] [--device cuda] [--anchor-dir DIR] [--out-dir DIR]

What PuLID's ID branch costs per attn2 call and per sampling step, next to the archived
cubiq/PuLID_ComfyUI (imported at run time from --anchor-dir, $PULID_ANCHOR_DIR or
../shared/anchors/PuLID_ComfyUI beside the repository), in one process, interleaved.

  --quick   512² and 1024², v1 fidelity, per call and per step of the ID branch, 1 thread (~2 min)
  (default) also v1 style/neutral and v1.1 fidelity, more repetitions, and the unpatched whole
            step for the share of a step (builds the fp32 SDXL UNet: ~10 GB RAM, slow on a CPU)
  --tiny    tiny models: checks that the package runs (numbers mean nothing)
  --flux    instead, PuLID-FLUX: one full-size FLUX.1 double and single block and the 20 insertions
            per step at 512² and 1024² (ComfyUI's block classes, random weights; fp32 on the CPU,
            bf16/fp16 with --device cuda, which also reports VRAM); 1 thread, ~15 min on 2 shared cores
            (not in --quick: over 2 minutes). With --tiny: tiny blocks, a smoke run.
  --encode  instead, one face encode ('Encode Face') per stage on ComfyUI's device: image
            conversion, SCRFD + ArcFace (synthetic stand-ins), RetinaFace-R50 and BiSeNet, EVA02-CLIP-L
            (--precision; fp32 on the CPU) and the v1.1 IDFormer, all full-size with random weights;
            cold and warm, VRAM after use with --device cuda; 1 thread, ~1.5 min on a CPU. With --tiny:
            tiny EVA-CLIP and adapter, a small photo, a smoke run.

Prints a markdown table and writes <out-dir>/cpu.md and cpu.json (default benchmarks/results;
--tiny writes only where --out-dir says); --flux and --encode replace only their own section,
the other runs keep it (--device cuda: gpu.md / gpu.json; --steady-heap: cpu_steady_heap.md / .json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from . import cases, models, report

# glibc malloc: blocks up to 32 MiB (an SDXL attention tensor at 1024², fp32, is 21 MiB) come from the
# heap, and the heap is never trimmed (mallopt(3): M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).
STEADY_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def plan_for(args) -> cases.Plan:
    if args.tiny:
        return cases.Plan(resolutions=(64, 128), reps=3, warmup=1, whole_steps=True, whole_reps=2, tiny=True,
                          profile="tiny")
    if args.quick:
        return cases.Plan(reps=25, profile="quick")
    return cases.Plan(modes=(("v1", "fidelity"), ("v1", "style"), ("v1", "neutral"), ("v1.1", "fidelity")),
                      reps=41, whole_steps=True, whole_reps=5, profile="full")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="512² and 1024², v1 fidelity, no whole step")
    size.add_argument("--tiny", action="store_true", help="tiny models: a smoke run")
    parser.add_argument("--flux", action="store_true",
                        help="PuLID-FLUX: full-size FLUX.1 blocks and the 20 insertions per step (~15 min on 2 cores)")
    parser.add_argument("--encode", action="store_true",
                        help="one face encode per stage on ComfyUI's device, full-size models (~2 min on a CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (cuda: SDXL layers in fp16, FLUX blocks in the model's dtype, and VRAM)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                        help="--encode only: EVA-CLIP's precision (default fp32 on the CPU, fp16 on cuda)")
    parser.add_argument("--anchor-dir", default=None,
                        help=f"the archived PuLID_ComfyUI folder (default ${models.ANCHOR_ENV} or "
                             f"{models.DEFAULT_ANCHOR_DIR})")
    parser.add_argument("--reps", type=int, default=0, help="repetitions per measurement (default per profile)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: 1 for --quick/--tiny, whose small calls a shared machine's "
                             "other jobs would stall at every multi-thread barrier; torch's default otherwise)")
    parser.add_argument("--steady-heap", action="store_true",
                        help="re-run under glibc settings that keep freed memory (no page faults after warm-up), "
                             "so that the comparison measures arithmetic, not the allocator's history")
    parser.add_argument("--note", default="", help="a sentence for the report's header (e.g. what else ran)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.flux and args.encode:
        parser.error("--flux and --encode are separate cases: run one at a time")
    if args.precision and not args.encode:
        parser.error("--precision applies to --encode only (EVA-CLIP's precision)")
    for case in ("flux", "encode"):
        if getattr(args, case) and args.quick:
            parser.error(f"--{case} is its own case, not part of --quick: run it apart")
    if args.steady_heap and STEADY_HEAP.items() - os.environ.items():
        # glibc reads these once, at start-up: run again with them set.
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])],
                  {**os.environ, **STEADY_HEAP})
    given = list(argv if argv is not None else sys.argv[1:])
    shown = [a for a in given if a not in ("--note", args.note) and not a.startswith("--note=")]  # printed apart
    command = "python -m benchmarks" + "".join(f" {a}" for a in shown)
    if args.flux:
        return run_flux(args, command)
    if args.encode:
        return run_encode(args, command)

    plan = plan_for(args)
    plan.device = args.device
    threads = args.threads or (1 if plan.profile in ("quick", "tiny") else 0)
    if threads:
        torch.set_num_threads(threads)
    if args.reps:
        plan.reps = args.reps
    started = time.perf_counter()
    results = cases.run(plan, models.anchor_dir(args.anchor_dir))
    results["machine"] = report.machine(results["env"].comfy_root, plan.device)
    results["machine"]["wall_s"] = round(time.perf_counter() - started)
    text = report.markdown(results, command, note=args.note)
    print(text)
    out_dir = args.out_dir or (None if args.tiny else models.REPO / "benchmarks" / "results")
    if out_dir is not None:
        # A steady-heap run is its own file: it measures arithmetic only (see --steady-heap).
        stem = ("cpu" if plan.device == "cpu" else "gpu") + ("_steady_heap" if args.steady_heap else "")
        write(out_dir, sdxl=(text, report.as_json(results)), stem=stem)
    return 0


def run_flux(args, command: str) -> int:
    plan = cases.FluxPlan(tiny=args.tiny, device=args.device)
    if args.tiny:
        plan.resolutions, plan.reps = (64, 128), 3
    return _run_device_case(args, command, plan, "flux", cases.run_flux, report.flux_markdown, report.flux_json)


def run_encode(args, command: str) -> int:
    plan = cases.EncodePlan(tiny=args.tiny, device=args.device, precision=args.precision or "")
    if args.tiny:
        plan.reps = 3
    return _run_device_case(args, command, plan, "encode", cases.run_encode, report.encode_markdown,
                            report.encode_json)


def _run_device_case(args, command: str, plan, section: str, run, markdown, as_json) -> int:
    """Run a case that measures on ``plan.device``, print its table and write its section of the results."""
    if args.reps:
        plan.reps = args.reps
    torch.set_num_threads(args.threads or 1)  # long calls, but a shared machine's barriers stall several threads
    started = time.perf_counter()
    results = run(plan)
    results["machine"] = report.machine(results["comfy_root"], plan.device)
    results["machine"]["wall_s"] = round(time.perf_counter() - started)
    text = markdown(results, command, note=args.note)
    print(text)
    out_dir = args.out_dir or (None if args.tiny else models.REPO / "benchmarks" / "results")
    if out_dir is not None:
        write(out_dir, **{section: (text, as_json(results))}, stem="cpu" if plan.device == "cpu" else "gpu")
    return 0


def write(out_dir: Path, sdxl=None, flux=None, encode=None, stem: str = "cpu") -> None:
    """<stem>.md / .json in ``out_dir`` (cpu, or gpu for --device cuda): the given parts replaced,
    the others kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    old_md = md.read_text() if md.is_file() else ""
    try:
        old_js = json.loads(js.read_text()) if js.is_file() else {}
    except ValueError:
        old_js = {}
    md.write_text(report.merge_markdown(old_md, sdxl=sdxl and sdxl[0], flux=flux and flux[0],
                                        encode=encode and encode[0]))
    js.write_text(json.dumps(report.merge_json(old_js, sdxl=sdxl and sdxl[1], flux=flux and flux[1],
                                               encode=encode and encode[1]), indent=1, default=str))
    logging.getLogger("benchmarks").info("wrote %s", md)


if __name__ == "__main__":
    sys.exit(main())
