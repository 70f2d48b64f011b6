"""Tier 3: a headless ComfyUI server with this pack installed runs every shipped workflow."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import comfy_harness

pytestmark = pytest.mark.server

WORKFLOWS = comfy_harness.workflow_files() + comfy_harness.legacy_workflow_files()


def test_pack_imports_cleanly(comfy_server):
    # ComfyUI lists each custom node dir with its import time, "(IMPORT FAILED)" when it broke.
    lines = [ln for ln in comfy_server.log().splitlines() if "seconds" in ln and "custom_nodes" in ln]
    ours = [ln for ln in lines if ln.rstrip().endswith(comfy_harness.PACK_NAME)]
    assert ours, "\n".join(lines) or comfy_server.log()[-3000:]
    assert not any("IMPORT FAILED" in ln for ln in lines), "\n".join(lines)
    assert comfy_harness.TINY_LOADER in comfy_server.info


def _expected_size(prompt: dict) -> tuple[int, int]:
    latent = next(n for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    return latent["inputs"]["width"], latent["inputs"]["height"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_runs(comfy_server, path: Path):
    workflow = json.loads(path.read_text())
    prompt = comfy_harness.to_api(workflow, comfy_server.info)
    assert comfy_harness.use_tiny_checkpoints(prompt), "every shipped workflow starts from a checkpoint"
    comfy_harness.shrink_for_tiny_models(prompt)
    comfy_harness.provide_input_images(prompt, comfy_server.input_dir, None)
    entry = comfy_server.wait_history(comfy_server.queue(prompt))
    assert entry["status"]["status_str"] == "success", comfy_harness.execution_error(entry)
    assert comfy_server.output_files(entry), f"{path.name} showed or saved no image"
    decoded = {node_id for node_id, node in prompt.items() if node["class_type"] in ("SaveImage", "PreviewImage")
               and prompt[node["inputs"]["images"][0]]["class_type"] == "VAEDecode"}
    files = comfy_server.output_files(entry, decoded)
    assert files, f"{path.name} produced no generated image"
    width, height = _expected_size(prompt)
    for file in files:
        image = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32)
        assert image.shape == (height, width, 3)
        assert np.isfinite(image).all()
        assert image.std() > 0, f"{file.name} is a flat image"
