"""Run a shipped workflow headless through ComfyUI and write its image(s) as PNG.

    scripts/run_workflow.sh [workflows/NAME.json] [--models DIR] [--image FACE.jpg]... [--out DIR]

Starts the pinned ComfyUI on 127.0.0.1 with this pack installed, converts the UI
workflow to an API prompt against the server's /object_info, queues it and waits,
showing the sampling progress. Model files are taken from --models (a ComfyUI
``models`` folder, only read). Whatever the graph names but that folder lacks is
replaced by a tiny model with the real structure and random weights: the run then
proves the graph works end to end, and the image is a smoke test (noise), not a
picture (the script says so). Earlier PNGs in --out are never overwritten; when the
run fails, ComfyUI's log is kept there and its path printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import comfy_harness  # noqa: E402

log = logging.getLogger("run_workflow")
DEFAULT_WORKFLOW = REPO / "workflows" / "smoke_txt2img.json"
DEFAULT_OUT = REPO / "out"


class UsageError(Exception):
    """A bad argument, found before ComfyUI starts."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/run_workflow.sh", description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 images written, 1 the run failed (ComfyUI's log is kept), 2 bad arguments.")
    parser.add_argument("workflow", nargs="?", type=Path, default=DEFAULT_WORKFLOW,
                        help=f"a UI-format workflow (.json) (default: {DEFAULT_WORKFLOW.relative_to(REPO)})")
    parser.add_argument("--models", type=Path, default=None,
                        help="a ComfyUI models folder, only read (default: the pinned ComfyUI's own models "
                             "folder, usually empty, so every model is a tiny stand-in)")
    parser.add_argument("--image", type=Path, action="append", default=None,
                        help="reference photo for the graph's Load Image nodes; repeat it for a graph with "
                             "several (in node order, the last one repeated: --image a.jpg --image b.jpg for "
                             "the two-person workflows) (default: Tom_Hanks_54745.png, a photo shipped with "
                             "the insightface wheel)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the PNGs and, on failure, ComfyUI's log (default: {DEFAULT_OUT.relative_to(REPO)}/)")
    # run_workflow.sh checks the arguments before setting anything up.
    parser.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> dict:
    """Everything that can be checked before ComfyUI starts; returns the workflow."""
    workflow = args.workflow
    if not workflow.is_file():
        shipped = ", ".join(p.name for p in comfy_harness.workflow_files())
        raise UsageError(f"workflow {workflow} not found (shipped ones, in {REPO / 'workflows'}: {shipped})")
    try:
        graph = json.loads(workflow.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"workflow {workflow} is not a JSON file: {e}") from None
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise UsageError(f"workflow {workflow} is not a UI-format ComfyUI workflow (no \"nodes\" list); "
                         "save it from ComfyUI with Workflow > Save, not Export (API)")
    for image in args.image or ():
        if not image.is_file():
            raise UsageError(f"--image {image}: no such file")
    if args.models is not None and not args.models.is_dir():
        raise UsageError(f"--models {args.models}: no such folder (give a ComfyUI models folder)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    return graph


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem_2.png``, ``stem_3.png``… when that file already exists."""
    target = folder / name
    stem, suffix = target.stem, target.suffix
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{stem}_{n}{suffix}"
    return target


def keep_log(server, out: Path) -> Path:
    """Copy ComfyUI's log out of the temporary base before it is removed."""
    out.mkdir(parents=True, exist_ok=True)
    target = unique_path(out, time.strftime("comfyui-%Y%m%d-%H%M%S.log"))
    shutil.copyfile(server.log_path, target)
    return target


def follow_progress(server, client_id: str) -> threading.Event:
    """Log the sampler's steps from ComfyUI's websocket; set the returned event to stop."""
    stop = threading.Event()
    try:
        import websocket  # websocket-client
    except ImportError:
        return stop

    def run():
        try:
            ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=1)
        except OSError:
            return
        last = None
        while not stop.is_set():
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException):
                break
            if not isinstance(message, str):
                continue  # preview images
            event = json.loads(message)
            if event.get("type") == "progress":
                data = event["data"]
                step = (data.get("node"), data["value"], data["max"])
                if step != last:
                    last = step
                    log.info("sampling: step %d/%d (node %s)", data["value"], data["max"], data.get("node"))
        ws.close()

    threading.Thread(target=run, daemon=True).start()
    return stop


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        graph = check_inputs(args)
    except UsageError as e:
        log.error("%s", e)
        return 2
    if args.check_only:
        return 0
    root = comfy_harness.comfyui_dir()
    if root is None:
        log.error("ComfyUI not found: run scripts/setup_env.sh (or set COMFYUI_DIR)")
        return 2

    work = Path(tempfile.mkdtemp(prefix="pulid-run-"))
    models = args.models or (root / "models")
    overlay = work / "models"
    # Stand-ins for missing models go to a second, temporary models folder; the
    # user's folder is only read (no folder is created in it).
    server = comfy_harness.ComfyServer(models_dirs=[models, overlay], make_dirs_in=[overlay])
    ok = False
    try:
        log.info("starting ComfyUI (about a minute)")
        server.wait_ready()
        prompt = comfy_harness.to_api(graph, server.object_info())
        users = []
        stand_ins = comfy_harness.stand_in_missing_models(prompt, models, overlay, found=users)
        tiny_bases = [s for s in stand_ins if "-> tiny SDXL" in s or "-> tiny FLUX" in s]
        if tiny_bases and users:
            # The tiny base model cannot run full-size adapters: refuse instead of failing midway.
            log.error("the workflow's base model is missing from %s:\n  %s\nwhile these model files are yours "
                      "(full size):\n  %s\nThe tiny stand-in model only runs tiny stand-ins: add the base model "
                      "to %s, or run without --models (everything tiny).", models, "\n  ".join(tiny_bases),
                      "\n  ".join(users), models)
            return 1
        if stand_ins:
            # Tiny stand-ins only fit the tiny SDXL: then the whole graph runs tiny.
            comfy_harness.use_tiny_checkpoints(prompt)
            comfy_harness.shrink_for_tiny_models(prompt)
        comfy_harness.provide_input_images(prompt, server.input_dir, args.image)
        client_id = f"run-workflow-{time.time_ns()}"
        stop = follow_progress(server, client_id)
        try:
            entry = server.wait_history(server.queue(prompt, client_id=client_id))
        finally:
            stop.set()
        error = comfy_harness.execution_error(entry)
        if error:
            log.error("the workflow failed: %s", error)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for file in server.output_files(entry):
            target = unique_path(args.out, file.name)
            shutil.copyfile(file, target)
            written.append(target)
        if stand_ins:
            log.warning("SMOKE TEST: these models were missing from %s and were replaced by tiny models with "
                        "random weights, so the image is noise by design: it shows that the graph runs, not a "
                        "likeness:\n  %s", models, "\n  ".join(stand_ins))
        for target in written:
            print(target)
        ok = bool(written)
        if not ok:
            log.error("the workflow ran but showed or saved no image")
        return 0 if ok else 1
    except Exception as e:  # start-up, conversion or server failures: say so, keep the log
        log.error("%s: %s", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return 1
    finally:
        server.stop()
        if not ok:
            log.error("ComfyUI's log: %s", keep_log(server, args.out))
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
