"""cubiq-workflow compatibility (legacy node ids) and the headless runner, from an adversarial
review (2026-11-27).

Each test asserts the behaviour the README promises and failed on the code it was written against.
All offline and fast: the runner tests use a stand-in server or call the runner's own helpers.
"""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

import comfy_harness
from tests.runner_fakes import FakeServer, install, run_workflow

pytestmark = pytest.mark.comfy

ROOT = Path(__file__).resolve().parents[2]
CUBIQ_SIMPLE = ROOT / "tests" / "data" / "workflows_cubiq" / "PuLID_simple.json"
CUBIQ_LIGHTNING = ROOT / "tests" / "data" / "workflows_cubiq" / "PuLID_4-Step_lightning.json"

def cubiq_simple_prompt() -> dict:
    """tests/data/workflows_cubiq/PuLID_simple.json as the converter turns it into an API prompt
    (printed from comfy_harness.to_api against a 0.3.75 server's /object_info)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/Proteus-RunDiffusion.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 1024, "batch_size": 1}},
        "12": {"class_type": "LoadImage", "inputs": {"image": "monalisa.png"}},
        "16": {"class_type": "PulidModelLoader", "inputs": {"pulid_file": "ip-adapter_pulid_sdxl_fp16.safetensors"}},
        "17": {"class_type": "PulidInsightFaceLoader", "inputs": {"provider": "CPU"}},
        "19": {"class_type": "PulidEvaClipLoader", "inputs": {}},
        "22": {"class_type": "CLIPTextEncode", "inputs": {"text": "closeup portrait", "clip": ["4", 1]}},
        "23": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "33": {"class_type": "ApplyPulid", "inputs": {"method": "fidelity", "weight": 0.8, "start_at": 0, "end_at": 1,
                                                      "model": ["4", 0], "pulid": ["16", 0], "eva_clip": ["19", 0],
                                                      "face_analysis": ["17", 0], "image": ["12", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 51, "steps": 30, "cfg": 6, "sampler_name": "dpmpp_2m",
                                                   "scheduler": "sgm_uniform", "denoise": 1, "model": ["33", 0],
                                                   "positive": ["22", 0], "negative": ["23", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


@pytest.fixture
def fake(monkeypatch, tmp_path):
    return install(monkeypatch, tmp_path, cubiq_simple_prompt())


def _extra_path_loader():
    """ComfyUI's own utils/extra_config.load_extra_path_config, loaded from its file (another ``utils``
    module may already be imported in this process)."""
    spec = importlib.util.spec_from_file_location("comfy_extra_config",
                                                  comfy_harness.comfyui_dir() / "utils" / "extra_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_extra_path_config


def _write(path: Path, data: bytes = b"\0" * 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _user_face_models(models: Path) -> None:
    """A cubiq user's face models: antelopev2 where cubiq's README puts it."""
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        _write(models / "insightface" / "models" / "antelopev2" / name)


# -- runner ----------------------------------------------------------------------------------------
def test_runner_validation_failure_names_the_node_and_reason(fake, tmp_path, caplog):
    """/prompt refusing the graph (a model not in the list, an unknown node type...) must be reported with
    the node and the reason; before the fix the message was cut to its first line: '... (400): {'."""
    FakeServer.queue_response = (400, {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"16": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                           "details": "pulid_file: 'ip-adapter_pulid_sdxl_fp16.safetensors' "
                                                      "not in ['other.safetensors']",
                                           "extra_info": {"input_name": "pulid_file"}}],
                               "dependent_outputs": ["10"], "class_type": "PulidModelLoader"}}})
    assert run_workflow.main([str(CUBIQ_SIMPLE), "--out", str(tmp_path / "out")]) == 1
    assert "PulidModelLoader" in caplog.text, caplog.text
    assert "Value not in list" in caplog.text or "not in [" in caplog.text, caplog.text


def test_runner_stand_in_message_keeps_the_checkpoint_subfolder(pack, tmp_path):
    """The SMOKE TEST list must name the path the user has to fill: checkpoints/sdxl/..., not checkpoints/..."""
    models, overlay = tmp_path / "models", tmp_path / "overlay"
    models.mkdir()
    prompt = {"4": {"class_type": "CheckpointLoaderSimple",
                    "inputs": {"ckpt_name": "sdxl/sd_xl_base_1.0_0.9vae.safetensors"}}}
    replaced = comfy_harness.stand_in_missing_models(prompt, models, overlay)
    assert replaced and "checkpoints/sdxl/sd_xl_base_1.0_0.9vae.safetensors" in replaced[0], replaced


def test_runner_reads_the_unet_folder_of_a_comfyui_models_folder(pack, tmp_path):
    """ComfyUI's UNETLoader reads models/unet (the folder cubiq-era setups use, e.g. for the Lightning
    workflow); the runner must not call that file missing nor hide it from the server."""
    models, overlay = tmp_path / "models", tmp_path / "overlay"
    _write(models / "unet" / "sdxl_lightning_4step_unet.safetensors")
    prompt = {"41": {"class_type": "UNETLoader",
                     "inputs": {"unet_name": "sdxl_lightning_4step_unet.safetensors", "weight_dtype": "default"}}}
    replaced = comfy_harness.stand_in_missing_models(prompt, models, overlay)
    assert replaced == [] and prompt["41"]["class_type"] == "UNETLoader", replaced

    import folder_paths
    load_extra_path_config = _extra_path_loader()

    yaml = tmp_path / "extra.yaml"
    comfy_harness.write_extra_model_paths(yaml, [models], [])
    saved = copy.deepcopy(folder_paths.folder_names_and_paths)
    try:
        load_extra_path_config(str(yaml))
        assert folder_paths.get_full_path("diffusion_models", "sdxl_lightning_4step_unet.safetensors"), \
            yaml.read_text()
    finally:
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update(saved)
        folder_paths.filename_list_cache.clear()


@pytest.mark.parametrize("key, folder", [("controlnet", "controlnet"), ("clip_vision", "clip_vision"),
                                         ("upscale_models", "upscale_models"), ("text_encoders", "clip")])
def test_runner_exposes_every_model_folder_of_models(pack, tmp_path, key, folder):
    """--models is 'a ComfyUI models folder': a workflow's ControlNet / CLIP vision / upscaler / text encoder
    (models/clip) must be found there, not refused by the server as 'Value not in list'."""
    import folder_paths
    load_extra_path_config = _extra_path_loader()

    models = tmp_path / "models"
    _write(models / folder / "user_file.safetensors")
    yaml = tmp_path / "extra.yaml"
    comfy_harness.write_extra_model_paths(yaml, [models], [])
    saved = copy.deepcopy(folder_paths.folder_names_and_paths)
    try:
        load_extra_path_config(str(yaml))
        folder_paths.filename_list_cache.clear()
        assert "user_file.safetensors" in folder_paths.get_filename_list(key), yaml.read_text()
    finally:
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update(saved)
        folder_paths.filename_list_cache.clear()


def test_runner_keeps_an_accepted_eva_clip_file_of_models(pack, tmp_path):
    """open_clip_model.safetensors is an EVA-CLIP file the pack accepts (README Models table); the runner
    calls it missing and writes a tiny EVA02_CLIP_L_336_psz14_s6B.pt, which the legacy loader then prefers."""
    models, overlay = tmp_path / "models", tmp_path / "overlay"
    _write(models / "eva_clip" / "open_clip_model.safetensors")
    prompt = {"19": {"class_type": "PulidEvaClipLoader", "inputs": {}}}
    replaced = comfy_harness.stand_in_missing_models(prompt, models, overlay)
    assert replaced == [], replaced


def test_runner_stands_in_facexlib_when_only_facexlib_is_missing(pack, tmp_path):
    """A cubiq setup has antelopev2 in models/insightface/models but facexlib's weights in facexlib's own
    package folder (cubiq's pack downloaded them there). The facexlib files are missing from --models, so
    they must get stand-ins like every other missing file; before the fix nothing was written and the Load InsightFace
    node fails on the missing facexlib file."""
    models, overlay = tmp_path / "models", tmp_path / "overlay"
    _user_face_models(models)
    prompt = {"17": {"class_type": "PulidInsightFaceLoader", "inputs": {"provider": "CPU"}}}
    replaced = comfy_harness.stand_in_missing_models(prompt, models, overlay)
    have = {p.name for p in (overlay / "facexlib").glob("*.pth")} if (overlay / "facexlib").is_dir() else set()
    assert {"detection_Resnet50_Final.pth", "parsing_bisenet.pth"} <= have, (replaced, have)


def test_runner_never_pairs_the_tiny_sdxl_with_the_users_pulid_file(fake, tmp_path, caplog):
    """The user has the PuLID/EVA/face models but not the workflow's checkpoint (Proteus): the runner swaps in
    the tiny SDXL but keeps the user's full-size PuLID file, so the run fails with 'The PuLID adapter ... does
    not fit this UNet' (end to end: exit 1). It must either stand in the whole PuLID side too or refuse up
    front naming the missing checkpoint."""
    models = tmp_path / "models"
    _write(models / "pulid" / "ip-adapter_pulid_sdxl_fp16.safetensors")
    _write(models / "eva_clip" / "EVA02_CLIP_L_336_psz14_s6B.pt")
    _user_face_models(models)
    for name in ("detection_Resnet50_Final.pth", "parsing_bisenet.pth"):
        _write(models / "facexlib" / name)
    rc = run_workflow.main([str(CUBIQ_SIMPLE), "--models", str(models), "--out", str(tmp_path / "out")])
    queued = [p for server in fake.instances for p in server.queued]
    if not queued:
        assert rc != 0 and "Proteus-RunDiffusion" in caplog.text, caplog.text
        return
    prompt = queued[0]
    tiny = prompt["4"]["class_type"] == comfy_harness.TINY_LOADER
    users_file = (models / "pulid" / prompt["16"]["inputs"]["pulid_file"]).is_file()
    assert not (tiny and users_file), "the tiny SDXL is queued with the user's full-size PuLID adapter"


def test_runner_does_not_copy_models_or_other_custom_nodes_of_comfyui_dir(monkeypatch, tmp_path):
    """COMFYUI_DIR may name 'any other ComfyUI' (README): the server copy must not duplicate its models
    (often hundreds of GB) nor start its other custom nodes (ComfyUI-Manager goes online; an installed
    cubiq pack would take the legacy ids and download EVA-CLIP)."""
    root = tmp_path / "MyComfyUI"
    (root / "main.py").parent.mkdir(parents=True)
    (root / "main.py").write_text("import sys\nsys.exit(0)\n")
    _write(root / "models" / "checkpoints" / "big.safetensors", b"\0" * (1 << 20))
    _write(root / "custom_nodes" / "ComfyUI-Manager" / "__init__.py", b"# goes online at start-up\n")
    monkeypatch.setenv("COMFYUI_DIR", str(root))
    server = comfy_harness.ComfyServer(models_dirs=[tmp_path / "user_models"], make_dirs_in=[tmp_path / "user_models"])
    try:
        server.proc.wait(timeout=30)
        copied = server.tree / "models" / "checkpoints" / "big.safetensors"
        assert not (copied.is_file() and not copied.is_symlink()), "the user's model files were copied"
        others = sorted(p.name for p in (server.tree / "custom_nodes").iterdir()
                        if p.name not in (comfy_harness.PACK_NAME, "pulid_testpack"))
        assert "ComfyUI-Manager" not in others, others
    finally:
        server.cleanup()


# -- legacy node ids ---------------------------------------------------------------------------------
def _context(model):
    attn2 = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    return next(iter(attn2.values())).context


def test_legacy_apply_pulid_takes_a_channel_last_mask_like_cubiq(pack, models_dir, face_image, tiny_sdxl):
    """cubiq's ApplyPulid squeezes a [B, H, W, 1] attn_mask to [B, H, W]; here it becomes H masks of W x 1,
    and sampling then stops with 'holds 64 masks but the latent batch is 1'."""
    from comfyui_pulid.nodes import legacy

    pulid = legacy.PulidModelLoader.execute("ip-adapter_pulid_sdxl_fp16.safetensors").result[0]
    eva = legacy.PulidEvaClipLoader.execute().result[0]
    face = legacy.PulidInsightFaceLoader.execute("CPU").result[0]
    mask = torch.ones(1, 64, 48, 1)
    out = legacy.ApplyPulid.execute(tiny_sdxl[0], pulid, eva, face, face_image, "fidelity", 0.8, 0.0, 1.0,
                                    attn_mask=mask).result[0]
    assert tuple(_context(out).mask.shape) == (1, 64, 48)
