"""Install and integration: what a user installing the pack with ComfyUI Manager (or git clone + pip
install -r requirements.txt + install.py) meets. From an adversarial review (2026-11-27); each test
failed on the code it was written against. No network: wheels are synthesized, metadata is read from
the installed venv."""

import base64
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: comfy-cli's TOML reader (requirements-dev.txt)
    import tomlkit as tomllib

import comfy_harness

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _req_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _node(workflow: str, node_type: str) -> dict:
    nodes = [n for n in json.loads((WORKFLOWS / workflow).read_text())["nodes"] if n["type"] == node_type]
    assert len(nodes) == 1, (workflow, node_type)
    return nodes[0]


# -- 1. the two embeddings workflows do not fit together -------------------------------------------


def test_embeds_load_workflow_names_the_file_the_save_workflow_writes(pack, model_folders):
    """README: pulid_embeds_encode_save.json / pulid_embeds_load.json "encode a face once, save the
    embeddings, apply them later". Save writes <prefix>_00001_.safetensors (ComfyUI's counter, trailing
    underscore); the load workflow asks for pulid_face_00001.safetensors, a name nothing writes."""
    import torch
    from comfyui_pulid.nodes.embeds import PuLIDSaveEmbeds
    from comfyui_pulid.nodes.pulid import IDEmbeds

    root = model_folders("review_embeds", "pulid_embeds")
    pack.nodes.node_list()
    prefix = _node("pulid_embeds_encode_save.json", "PuLIDSaveEmbeds")["widgets_values"][0]
    gen = torch.Generator().manual_seed(0)
    embeds = IDEmbeds("v1.1", torch.randn(1, 32, 48, generator=gen), torch.randn(1, 32, 48, generator=gen),
                      1, "idformer", {})
    PuLIDSaveEmbeds.execute(embeds, prefix)
    written = sorted(p.name for p in (root / "pulid_embeds").glob("*.safetensors"))
    wanted = _node("pulid_embeds_load.json", "PuLIDLoadEmbeds")["widgets_values"][0]
    assert written == [wanted], f"save workflow writes {written}; load workflow loads {wanted!r}"


# -- 2. requirements.txt vs the README's onnxruntime-gpu advice -----------------------------------


def _fake_wheel(folder: Path, dist: str, version: str, module: str) -> None:
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {f"{module}/__init__.py": f"DIST = {dist!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: review\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text)}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{norm}-{version}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)


def test_reinstalling_requirements_keeps_the_onnxruntime_gpu_the_readme_tells_cuda_users_to_install(tmp_path):
    """README: "For the CUDA face-detection provider install onnxruntime-gpu *instead of* onnxruntime
    (never both)". ComfyUI Manager re-runs pip install -r requirements.txt on every install/update/fix;
    the unconditional onnxruntime line then installs the CPU build over it (both end up installed, the
    CPU one owning the onnxruntime module), so the CUDA provider silently falls back to CPU."""
    ort = [r for r in _requirements() if _req_name(r) == "onnxruntime"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, "onnxruntime-gpu", "1.20.0", "onnxruntime")
    _fake_wheel(wheels, "onnxruntime", "1.20.0", "onnxruntime")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index", "--find-links", str(wheels)]
    subprocess.run(pip + ["onnxruntime-gpu"], check=True, timeout=60)  # the README's CUDA setup
    (tmp_path / "req.txt").write_text("\n".join(ort) + "\n")
    subprocess.run(pip + ["-r", str(tmp_path / "req.txt")], check=True, timeout=60)  # what Manager re-runs
    subprocess.run([py, str(REPO / "install.py")], check=True, timeout=60)  # and then install.py
    owner = subprocess.run([py, "-c", "import onnxruntime; print(onnxruntime.DIST)"], capture_output=True,
                           text=True, timeout=60).stdout.strip()
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", py, "list", "--format=json"],
                            capture_output=True, text=True, timeout=60).stdout
    names = {d["name"].lower() for d in json.loads(listed)}
    assert owner == "onnxruntime-gpu" and "onnxruntime" not in names, \
        f"after pip install -r requirements.txt: installed {sorted(names)}, onnxruntime module from {owner}"


def test_install_py_installs_the_cpu_onnxruntime_where_none_is_installed(tmp_path):
    """install.py (run by ComfyUI Manager after requirements.txt) installs onnxruntime where no build of
    it is present, with the Python that runs it (here a venv; pip finds only a local stand-in wheel)."""
    import os

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, "onnxruntime", "1.20.0", "onnxruntime")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_CONSTRAINT", None)
    subprocess.run([py, str(REPO / "install.py")], check=True, timeout=120, env=env, capture_output=True)
    owner = subprocess.run([py, "-c", "import onnxruntime; print(onnxruntime.DIST)"], capture_output=True,
                           text=True, timeout=60).stdout.strip()
    assert owner == "onnxruntime"


# -- 3. two OpenCV distributions --------------------------------------------------------------------


def _closure(names) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_req_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_requirements_install_one_opencv_distribution():
    """requirements.txt asks for opencv-python-headless, but facexlib requires opencv-python: pip installs
    both, both write site-packages/cv2 (the last one wins; the GUI/Qt build here), and uninstalling or
    upgrading either leaves a broken or mismatched cv2."""
    closure = _closure(_req_name(r) for r in _requirements())
    providers = sorted(d for d in closure
                       if d.startswith("opencv-") and _installed(d)
                       and any(str(f).startswith("cv2/") for f in metadata.files(d) or []))
    assert len(providers) == 1, f"the requirements pull in {providers}, each installing the cv2 package"


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


# -- 4. registry / ComfyUI view of pyproject.toml ---------------------------------------------------


def _comfy_config():
    root = comfy_harness.init_inprocess()
    assert root is not None
    from comfy_config import config_parser

    return config_parser.extract_node_configuration(str(REPO))


def test_comfy_config_parser_sees_the_runtime_dependencies(pack):
    """dependencies are `dynamic` (setuptools reads requirements.txt). ComfyUI's comfy_config parser and
    comfy-cli's registry parser (comfy node publish) read only [project].dependencies: both see []."""
    config = _comfy_config()
    declared = sorted(_req_name(d) for d in config.project.dependencies)
    assert declared == sorted(_req_name(r) for r in _requirements())


def test_registry_description_and_display_name_cover_flux():
    """The README (and the nodes: Apply PuLID (FLUX), workflows pulid_flux_*.json) support FLUX.1, but the
    registry listing says SDXL only: DisplayName "PuLID & PhotoMaker (SDXL)", description "... for SDXL"."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "FLUX" in (REPO / "README.md").read_text().split("\n## ", 1)[0]
    assert "FLUX" in data["project"]["description"]
    assert "FLUX" in data["tool"]["comfy"]["DisplayName"] or "SDXL" not in data["tool"]["comfy"]["DisplayName"]


# -- 5. an older ComfyUI (no V3 API) gets no reason ------------------------------------------------

OLD_COMFY = r"""
import asyncio, logging, sys
sys.path.insert(0, {tests!r})
import comfy_harness
comfy_harness.init_inprocess()
import nodes
# A ComfyUI from before the V3 API: comfy_api.latest cannot be imported.
for name in [m for m in sys.modules if m == "comfy_api.latest" or m.startswith("comfy_api.latest.")]:
    sys.modules[name] = None
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)
ok = asyncio.run(nodes.load_custom_node({pack!r}, set()))
print("LOADED", ok)
for r in records:
    print("LOG", r.replace("\n", " ")[:300])
"""


def test_comfyui_without_the_v3_api_says_which_comfyui_the_pack_needs(tmp_path):
    """__init__.py swallows the ImportError of comfy_api.latest (meant for test collection), so on a
    ComfyUI older than the V3 API the pack registers nothing and the only log line is ComfyUI's own
    "Skip ... due to the lack of NODE_CLASS_MAPPINGS or NODES_LIST": nothing says ComfyUI >= 0.3.75."""
    need = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    version = need.lstrip(">=~ ")
    script = OLD_COMFY.format(tests=str(REPO / "tests"), pack=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert "LOADED False" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    logs = [line for line in done.stdout.splitlines() if line.startswith("LOG ")]
    assert any(version in line for line in logs), "no message names the ComfyUI the pack needs:\n" + "\n".join(logs)


# -- 6. LICENSE ---------------------------------------------------------------------------------------


def test_license_file_holds_the_apache_license_text():
    """pyproject.toml points the registry at license = { file = "LICENSE" } and the README says Apache-2.0,
    but LICENSE holds only the 15-line "how to apply" notice: no terms (Apache-2.0 section 4(a) asks that
    recipients get a copy of the License), so the registry and GitHub show no recognisable license."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    text = (REPO / data["project"]["license"]["file"]).read_text()
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
