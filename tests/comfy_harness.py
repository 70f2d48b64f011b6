"""Finding the pinned ComfyUI and running it in-process or as a headless server.

Used by the test tiers and by scripts/run_workflow.py. ComfyUI comes from
scripts/setup_env.sh (linked at .cache/comfyui) or from COMFYUI_DIR; the frontend
is the one installed with ComfyUI unless PULID_FRONTEND_ROOT names another one's
static folder (scripts/setup_env.sh --frontend VERSION).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTPACK = REPO / "tests" / "comfy_testpack"
PACK_NAME = "comfyui-pulid"
# Model folder keys the graphs of this pack read.
# (ComfyUI's legacy names unet and clip map to diffusion_models and text_encoders; the rest are the
# other model folders of a ComfyUI models folder, so that --models exposes all of it.)
MODEL_KEYS = ("checkpoints", "diffusion_models", "unet", "clip", "loras", "pulid", "eva_clip", "insightface",
              "facexlib", "photomaker", "pulid_embeds", "controlnet", "clip_vision", "upscale_models", "embeddings",
              "style_models", "gligen", "hypernetworks", "vae_approx", "model_patches", "ipadapter", "instantid",
              "text_encoders", "vae")


def comfyui_dir() -> Path | None:
    """The ComfyUI tree to use, or None when setup has not fetched one."""
    env = os.environ.get("COMFYUI_DIR")
    candidates = [Path(env)] if env else [REPO / ".cache" / "comfyui"]
    for path in candidates:
        if (path / "main.py").is_file():
            return path.resolve()
    return None


def init_inprocess(cpu: bool = True) -> Path:
    """Make ComfyUI importable in this process (CPU mode unless ``cpu`` is False).

    CPU mode must be set before comfy.model_management is imported, or a
    CUDA-built torch on a machine without a GPU fails at import.
    """
    root = comfyui_dir()
    if root is None:
        raise RuntimeError("ComfyUI not found: run scripts/setup_env.sh or set COMFYUI_DIR")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_api_nodes = True
    import comfy.model_management  # noqa: F401  (initialised in CPU mode here)

    return root


class SharedCore(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``<pack>.pulid_core[.x]`` to the top-level ``pulid_core[.x]`` (test processes only).

    ComfyUI imports the pack as a package, whose nodes import ``..pulid_core``. Tests and
    benchmarks also import ``pulid_core`` directly; without this they would hold a second copy,
    with its own exception classes and model classes (``pytest.raises`` and ``isinstance`` would
    not match the pack's).
    """

    def __init__(self, package: str):
        self.prefix = f"{package}.pulid_core"

    def find_spec(self, name, path=None, target=None):
        if name == self.prefix or name.startswith(self.prefix + "."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # importlib returns whatever sys.modules holds under the name after exec_module.
        sys.modules[module.__name__] = importlib.import_module("pulid_core" + module.__name__[len(self.prefix):])


def load_pack_inprocess(cpu: bool = True, share_core: bool = True):
    """Import this repository as the ComfyUI pack module ``comfyui_pulid``.

    With ``share_core`` the pack's ``pulid_core`` is the top-level one the tests import (see
    SharedCore); without, the pack is imported exactly as ComfyUI does.
    """
    init_inprocess(cpu)
    if "comfyui_pulid" in sys.modules:
        return sys.modules["comfyui_pulid"]
    if share_core:
        if str(REPO) not in sys.path:
            sys.path.append(str(REPO))
        sys.meta_path.insert(0, SharedCore("comfyui_pulid"))
    spec = importlib.util.spec_from_file_location(
        "comfyui_pulid", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_pulid"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A headless ComfyUI on 127.0.0.1 with this pack and the test pack installed.

    The ComfyUI tree is copied into a temporary base directory (the server writes
    next to its code), this pack is linked into its custom_nodes/, and each of
    ``models_dirs`` (ComfyUI ``models`` layouts) is added through an
    extra_model_paths.yaml, the way users add theirs. The model-type folders are
    created up front in each of ``make_dirs_in`` (default: every models dir), so
    files added after start-up are listed; a user's folder is left untouched.
    """

    def __init__(self, models_dirs: list[Path] = (), with_testpack: bool = True,
                 extra_args: list[str] | None = None, python: str = sys.executable,
                 make_dirs_in: list[Path] | None = None):
        root = comfyui_dir()
        if root is None:
            raise RuntimeError("ComfyUI not found: run scripts/setup_env.sh or set COMFYUI_DIR")
        self.base = Path(tempfile.mkdtemp(prefix="pulid-comfy-"))
        self.tree = self.base / "ComfyUI"
        shutil.copytree(root, self.tree, ignore=_tree_ignore(root), symlinks=True)
        # ComfyUI >= 0.33 keeps its database in <tree>/user and logs an error when it is missing.
        for folder in ("user", "custom_nodes", "input"):
            (self.tree / folder).mkdir(exist_ok=True)
        custom = self.tree / "custom_nodes"
        (custom / PACK_NAME).symlink_to(REPO, target_is_directory=True)
        if with_testpack:
            (custom / "pulid_testpack").symlink_to(TESTPACK, target_is_directory=True)
        self.input_dir = self.tree / "input"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        args = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--disable-api-nodes", "--output-directory", str(self.base / "output")]
        if models_dirs:
            yaml = self.base / "extra_model_paths.yaml"
            write_extra_model_paths(yaml, models_dirs, models_dirs if make_dirs_in is None else make_dirs_in)
            args += ["--extra-model-paths-config", str(yaml)]
        frontend = os.environ.get("PULID_FRONTEND_ROOT")
        if frontend:
            if not (Path(frontend) / "index.html").is_file():
                raise RuntimeError(f"PULID_FRONTEND_ROOT={frontend} holds no index.html")
            args += ["--front-end-root", frontend]
        args += extra_args or []
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=self.tree, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    # -- lifecycle ---------------------------------------------------------
    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not start in {timeout:.0f}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    # -- HTTP --------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=120)

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        """Queue ``prompt``; progress events go to the websocket of ``client_id``."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        if status != 200:
            raise RuntimeError(f"ComfyUI refused the graph ({status}): {refusal(body)}")
        return body["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 600.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")

    def output_files(self, entry: dict, node_ids=None) -> list[Path]:
        """Images the run wrote (of ``node_ids`` only, when given)."""
        files = []
        for node_id, out in entry.get("outputs", {}).items():
            if node_ids is not None and node_id not in node_ids:
                continue
            for img in out.get("images", []):
                folder = {"output": self.base / "output", "temp": self.tree / "temp"}.get(img.get("type"))
                if folder is not None:
                    files.append(folder / img.get("subfolder", "") / img["filename"])
        return files


def _tree_ignore(root: Path):
    """copytree's ignore for the server's copy of a ComfyUI tree (COMFYUI_DIR may be a user's install):
    the code and models/configs only. Not its model files (reached through extra_model_paths), its
    other custom nodes (ComfyUI-Manager would go online; cubiq's pack would take the legacy ids), its
    inputs, outputs, user data, git or virtual environments."""
    root = os.path.abspath(root)
    top = {"custom_nodes", "input", "output", "temp", "user", ".git", "venv", ".venv"}

    def ignore(directory, names):
        skip = {n for n in names if n in ("extra_model_paths.yaml", ".complete", "__pycache__")}
        parts = os.path.relpath(directory, root).split(os.sep)
        if parts == ["."]:
            skip |= {n for n in names if n in top}
        elif parts[0] == "models" and parts[1:2] != ["configs"]:
            skip |= {n for n in names if not os.path.isdir(os.path.join(directory, n))}
        return skip

    return ignore


def write_extra_model_paths(yaml: Path, models_dirs, make_dirs_in=()) -> None:
    """An extra_model_paths.yaml adding each ``models`` layout under every key of MODEL_KEYS."""
    make = {Path(d).resolve() for d in make_dirs_in}
    lines = []
    for n, models in enumerate(models_dirs):
        base = Path(models).resolve()
        lines += [f"pulid_models_{n}:", f"  base_path: {base}"]
        for key in MODEL_KEYS:
            if base in make:
                (base / key).mkdir(parents=True, exist_ok=True)
            lines.append(f"  {key}: {key}")
    Path(yaml).write_text("\n".join(lines) + "\n")


def refusal(body: dict) -> str:
    """ComfyUI's /prompt refusal on one line: each failing node (class, id) and its errors, else the error."""
    parts = []
    for node_id, info in (body.get("node_errors") or {}).items():
        errors = "; ".join(f"{e.get('message', '')}: {e.get('details', '')}".rstrip(": ")
                           for e in info.get("errors", []))
        parts.append(f"{info.get('class_type', '?')} (node {node_id}): {errors}")
    if not parts:
        error = body.get("error") or {}
        parts.append(f"{error.get('message', '')} {error.get('details', '')}".strip() if isinstance(error, dict)
                     else str(error))
    return " | ".join(p for p in parts if p) or json.dumps(body)[:2000]


def execution_error(entry: dict) -> str | None:
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message')}"
    return None


# -- workflows ---------------------------------------------------------------
TINY_LOADER = "PuLIDTestTinySDXLLoader"


def workflow_files() -> list[Path]:
    """The shipped example graphs (UI format)."""
    return sorted((REPO / "workflows").glob("*.json"))


def legacy_workflow_files() -> list[Path]:
    """Workflows saved with the archived cubiq/PuLID_ComfyUI pack (its node ids)."""
    return sorted((REPO / "tests" / "data" / "workflows_cubiq").glob("*.json"))


def to_api(workflow: dict, object_info: dict) -> dict:
    """UI-format workflow → API prompt, with comfy-cli's converter."""
    from comfy_cli.workflow_to_api import convert_ui_to_api

    return convert_ui_to_api(workflow, object_info)


def use_tiny_checkpoints(prompt: dict) -> list[str]:
    """Swap every checkpoint loader for the test-only tiny SDXL (in FLUX graphs the UNet, CLIP and
    VAE loaders for the tiny FLUX ones); returns the swapped ids."""
    from comfy_testpack.stand_ins_flux import tiny_flux_swaps

    swapped = []
    for node_id, (class_type, inputs) in tiny_flux_swaps(prompt).items():
        prompt[node_id].update(class_type=class_type, inputs=inputs)
        swapped.append(node_id)
    for node_id, node in prompt.items():
        if node_id in swapped:
            continue
        if _is_checkpoint_loader(node):  # MODEL is output 0 of each, as of the tiny loader
            node["class_type"] = TINY_LOADER
            node["inputs"] = {"kind": "sdxl", "seed": 0, "v_prediction": False}
            swapped.append(node_id)
    return swapped


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())


CHECKPOINT_LOADERS = {"CheckpointLoaderSimple": ("checkpoints", "ckpt_name"),
                      "CheckpointLoader": ("checkpoints", "ckpt_name"),
                      "UNETLoader": ("diffusion_models", "unet_name")}


def _is_checkpoint_loader(node: dict) -> bool:
    return node["class_type"] in CHECKPOINT_LOADERS


# ComfyUI reads these folders under their legacy names too (folder_paths.map_legacy).
FOLDER_ALIASES = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}


def _model_present(models: Path, folder: str, name: str) -> bool:
    for alias in FOLDER_ALIASES.get(folder, (folder,)):
        base = Path(models) / alias
        # InsightFace packs live in <insightface>/models/<pack>.
        if (base / name).exists() or (folder == "insightface" and (base / "models" / name).is_dir()):
            return True
    return False


def _model_file(models: Path, folder: str, name: str) -> bool:
    for alias in FOLDER_ALIASES.get(folder, (folder,)):
        path = Path(models) / alias / name
        if path.is_file() and path.stat().st_size > 0:  # empty: a test placeholder
            return True
    return False


FACE_LOADERS = ("PuLIDInsightFaceLoader", "PulidInsightFaceLoader")


def stand_in_missing_models(prompt: dict, models: Path, overlay: Path, found: list | None = None) -> list[str]:
    """Replace what ``models`` lacks by tiny stand-ins (files in ``overlay``); returns what was replaced.
    ``found`` (a list) collects the "folder/name" of the user's own files the graph uses."""
    from comfy_testpack.stand_ins import WRITERS
    from comfy_testpack.stand_ins_flux import FILES, tiny_flux_swaps
    from comfy_testpack.stand_ins_pulid import FACEXLIB_WRITERS, IMPLICIT, IMPLICIT_WRITERS

    replaced = []
    flux = tiny_flux_swaps(prompt)
    found = [] if found is None else found
    # The legacy EVA-CLIP loader takes any file of models/eva_clip (nodes.legacy.default_eva_file).
    implicit_ids = {i for i, n in prompt.items() if n["class_type"] == "PulidEvaClipLoader"}

    def ensure(folder, name, write, node_id):
        if _model_present(models, folder, name) or (
                folder == "eva_clip" and node_id in implicit_ids and _any_file(Path(models) / folder)):
            found.append(f"{folder}/{name}")
            return
        target = Path(overlay) / folder / name
        if not _model_present(overlay, folder, name):
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
        replaced.append(f"{folder}/{name} -> tiny stand-in (node {node_id})")

    for node_id, node in prompt.items():
        if node_id in flux:  # tiny FLUX loaders for missing FLUX files
            missing = [f"{folder}/{node['inputs'].get(key)}" for folder, key, _ in FILES[node["class_type"]]
                       if not _model_file(models, folder, node["inputs"].get(key, ""))]
            if missing:
                node.update(class_type=flux[node_id][0], inputs=flux[node_id][1])
                replaced += [f"{m} -> tiny FLUX stand-in (node {node_id})" for m in missing]
            continue
        if _is_checkpoint_loader(node):
            folder, name = CHECKPOINT_LOADERS[node["class_type"]]
            value = node["inputs"].get(name, "")
            if not _model_file(models, folder, value):
                use_tiny_checkpoints({node_id: node})
                replaced.append(f"{folder}/{value} -> tiny SDXL (node {node_id})")
            continue
        if node["class_type"] in IMPLICIT:
            folder, name = IMPLICIT[node["class_type"]]
            ensure(folder, name, IMPLICIT_WRITERS[folder], node_id)
        if node["class_type"] in FACE_LOADERS:  # facexlib's two files, read by every face loader
            for name, write in FACEXLIB_WRITERS.items():
                ensure("facexlib", name, write, node_id)
        for name, value in node["inputs"].items():
            entry = WRITERS.get((node["class_type"], name))
            if entry is not None and isinstance(value, str):
                ensure(entry[0], value, entry[1], node_id)
    return replaced


def _any_file(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and p.stat().st_size > 0 for p in folder.iterdir())


def shrink_for_tiny_models(prompt: dict, size: int = 128, max_steps: int = 4) -> None:
    """Tiny models run the graph at a small size and few steps (CPU test time), same settings otherwise."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
        elif node["class_type"] == "SolidMask":
            inputs["width"] = size if inputs["width"] > size // 2 else size // 2
            inputs["height"] = size
        elif node["class_type"] == "MaskComposite" and inputs.get("x", 0):
            inputs["x"] = size // 2
        elif node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = min(inputs["steps"], max_steps)


def provide_input_images(prompt: dict, input_dir: Path, image=None) -> None:
    """Put the reference photos where the graph's Load Image nodes look for them.

    ``image``: None (the bundled photo), a path, or a list of paths: the graph's distinct Load Image
    file names, in node-id order, get them in turn (the last repeated), so a two-person graph takes
    ``--image a.jpg --image b.jpg``.
    """
    images = [image] if image is None or isinstance(image, (str, Path)) else list(image) or [None]
    names = []
    for node_id in sorted(prompt, key=lambda k: (len(str(k)), str(k))):
        node = prompt[node_id]
        if node["class_type"] == "LoadImage" and node["inputs"]["image"] not in names:
            names.append(node["inputs"]["image"])
    for i, name in enumerate(names):
        chosen = images[min(i, len(images) - 1)]
        target = Path(input_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(chosen) if chosen else default_face_image(), target)


def default_face_image() -> Path:
    """A one-face photo that ships with the insightface wheel."""
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"


def prepare_models_dir(models: Path) -> None:
    """Stand-ins for the model files the shipped workflows name.

    Checkpoint files are empty placeholders, so the frontend finds the names in
    its combos; the graphs run with the tiny test SDXL swapped in for them.
    """
    from comfy_testpack.stand_ins_flux import ui_files

    for workflow in workflow_files() + legacy_workflow_files():
        for node in json.loads(workflow.read_text())["nodes"]:
            for folder, name in ui_files(node):  # FLUX's text encoders and VAE
                (models / folder).mkdir(parents=True, exist_ok=True)
                (models / folder / name).touch()
            if node["type"] in CHECKPOINT_LOADERS:
                placeholder = models / CHECKPOINT_LOADERS[node["type"]][0] / node["widgets_values"][0]
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                placeholder.touch()
