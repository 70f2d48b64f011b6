"""scripts/run_workflow.py without a ComfyUI process: the module, and a stand-in for ComfyServer."""

import copy
import importlib.util
import types
from pathlib import Path

import comfy_harness

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_workflow", ROOT / "scripts" / "run_workflow.py")
run_workflow = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_workflow)

REAL_QUEUE = comfy_harness.ComfyServer.queue


class FakeServer:
    """Stands in for comfy_harness.ComfyServer: writes its yaml like the real one, records the queued
    prompts, serves one PNG per run. ``queue_response`` (status, body) makes /prompt answer that,
    through ComfyServer.queue's own handling; ``fail_start`` makes the start fail."""

    instances = []
    fail_start = False
    queue_response = None
    tmp = None

    def __init__(self, models_dirs=(), make_dirs_in=None, **kwargs):
        self.base = Path(FakeServer.tmp) / f"base{len(FakeServer.instances)}"
        (self.base / "output").mkdir(parents=True)
        self.input_dir = self.base / "input"
        self.port = 1
        self.log_path = self.base / "server.log"
        self.log_path.write_text("ComfyUI log line\nTraceback: the real cause\n")
        comfy_harness.write_extra_model_paths(self.base / "extra.yaml", models_dirs,
                                              models_dirs if make_dirs_in is None else make_dirs_in)
        self.queued = []
        FakeServer.instances.append(self)

    def wait_ready(self):
        if FakeServer.fail_start:
            raise RuntimeError("ComfyUI exited with 1:\n...")

    def object_info(self):
        return {}

    def post(self, path, payload, timeout=30):
        return FakeServer.queue_response

    def queue(self, prompt, client_id=None):
        self.queued.append(copy.deepcopy(prompt))
        if FakeServer.queue_response is not None:
            return REAL_QUEUE(self, prompt, client_id)
        return "id"

    def wait_history(self, prompt_id):
        png = self.base / "output" / "ComfyUI_00001_.png"
        png.write_bytes(f"image of run {len(FakeServer.instances)}".encode())
        return {"outputs": {}, "status": {"status_str": "success", "messages": []}}

    def output_files(self, entry):
        return sorted((self.base / "output").glob("*.png"))

    def stop(self):
        pass

    def cleanup(self):
        pass


def install(monkeypatch, tmp_path, prompt: dict) -> type:
    """Run the runner against FakeServer, with ``prompt`` as the converted graph; returns FakeServer."""
    FakeServer.instances = []
    FakeServer.fail_start = False
    FakeServer.queue_response = None
    FakeServer.tmp = tmp_path / "servers"
    monkeypatch.setattr(comfy_harness, "ComfyServer", FakeServer)
    monkeypatch.setattr(comfy_harness, "comfyui_dir", lambda: tmp_path / "comfyui")
    monkeypatch.setattr(comfy_harness, "to_api", lambda graph, info: copy.deepcopy(prompt))
    monkeypatch.setattr(comfy_harness, "provide_input_images", lambda prompt, folder, image: None)
    monkeypatch.setattr(run_workflow, "follow_progress", lambda server, client_id: types.SimpleNamespace(set=lambda: None))
    return FakeServer
