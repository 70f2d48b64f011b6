"""Run a shipped workflow headless through ComfyUI and write its image(s) as PNG.

    scripts/run_workflow.sh [workflows/NAME.json] [--models DIR] [--image FACE.jpg] [--out DIR]

Starts the pinned ComfyUI on 127.0.0.1 with this pack installed, converts the UI
workflow to an API prompt against the server's /object_info, queues it and waits.
Model files are taken from --models (a ComfyUI ``models`` folder). Whatever the
graph names but that folder lacks is replaced by a tiny model with the real
structure and random weights: the run then proves the graph works end to end,
and the image is a smoke test, not a picture (the script says so).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import comfy_harness  # noqa: E402

log = logging.getLogger("run_workflow")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", nargs="?", default=str(REPO / "workflows" / "smoke_txt2img.json"))
    parser.add_argument("--models", type=Path, default=None,
                        help="a ComfyUI models folder (default: the pinned ComfyUI's own, usually empty)")
    parser.add_argument("--image", type=Path, default=None,
                        help="reference photo for the graph's Load Image nodes (default: a photo shipped "
                             "with insightface)")
    parser.add_argument("--out", type=Path, default=REPO / "out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    workflow = Path(args.workflow)
    work = Path(tempfile.mkdtemp(prefix="pulid-run-"))
    models = args.models or (comfy_harness.comfyui_dir() / "models")
    # Stand-ins for missing models go to a second, temporary models folder.
    server = comfy_harness.ComfyServer(models_dirs=[models, work / "models"])
    try:
        log.info("starting ComfyUI (log: %s)", server.log_path)
        server.wait_ready()
        prompt = comfy_harness.to_api(comfy_harness.load_workflow(workflow), server.object_info())
        stand_ins = comfy_harness.stand_in_missing_models(prompt, models, work / "models")
        if stand_ins:
            # Tiny stand-ins only fit the tiny SDXL: then the whole graph runs tiny.
            comfy_harness.use_tiny_checkpoints(prompt)
            comfy_harness.shrink_for_tiny_models(prompt)
        comfy_harness.provide_input_images(prompt, server.input_dir, args.image)
        entry = server.wait_history(server.queue(prompt))
        error = comfy_harness.execution_error(entry)
        if error:
            log.error("the workflow failed: %s", error)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for file in server.output_files(entry):
            target = args.out / file.name
            shutil.copyfile(file, target)
            written.append(target)
        if stand_ins:
            log.warning("SMOKE TEST: these models were missing from %s and were replaced by tiny models with "
                        "random weights, so the image shows that the graph runs, not a likeness:\n  %s",
                        models, "\n  ".join(stand_ins))
        for target in written:
            print(target)
        return 0 if written else 1
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
