"""``python -m pulid_core.models check`` on fake ComfyUI trees: what is found where, the fix
for each file, and whether the files a use needs are all there (the exit code)."""

import dataclasses
import functools
import io
import os
import subprocess
import types

import pytest

from pulid_core import models as M
from tests.unit.test_models_registry import onnx_bytes, sha, sized_safetensors, torch_file, write


def small(name, path=None, **kw):
    """The registry entry with the size (and sha256) of a small test file."""
    if path is not None:
        kw.setdefault("size", os.path.getsize(path))
        kw.setdefault("sha256", sha(path))
    return dataclasses.replace(M.get(name), **kw)


def by_name(findings):
    out = {}
    for f in findings:
        out.setdefault(f.entry.name, []).append(f)
    return out


@pytest.fixture
def comfy_tree(tmp_path):
    """A ComfyUI tree (with a space in its path) holding one example of every problem."""
    comfy = tmp_path / "Comfy UI"
    models = comfy / "models"
    hub = tmp_path / "hub"
    site = tmp_path / "site-packages" / "facexlib" / "weights"
    m = str(models)
    files = {
        "pulid-v1": sized_safetensors(f"{m}/pulid/sub/ip-adapter_pulid_sdxl_fp16.safetensors", 3000),
        "pulid-v1.1": sized_safetensors(f"{m}/ipadapter/pulid_v1.1.safetensors", 2000),
        "eva-clip": torch_file(f"{hub}/models--QuanSun--EVA-CLIP/snapshots/abc123/EVA02_CLIP_L_336_psz14_s6B.pt"),
        "eva-clip-open-clip": sized_safetensors(f"{tmp_path}/shared/eva/open_clip_model.safetensors", 1000),
        "facexlib-detection": torch_file(f"{site}/detection_Resnet50_Final.pth"),
        "photomaker-v1": torch_file(f"{m}/pulid/photomaker-v1.bin"),
        "pulid-v1.1-ipadapter": write(
            f"{m}/pulid/ip-adapter_pulidv1.1_sdxl_fp16.safetensors", b"version https://git-lfs.github.com/spec/v1\n"
        ),
    }
    for fname in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "genderage.onnx"):
        files[f"antelopev2/{fname}"] = write(f"{m}/insightface/models/antelopev2/antelopev2/{fname}", onnx_bytes())
    files["buffalo_l/w600k_r50.onnx"] = write(f"{m}/insightface/models/buffalo_l/w600k_r50.onnx", onnx_bytes()[:-5])
    files["buffalo_l/det_10g.onnx"] = write(f"{m}/insightface/models/buffalo_l/det_10g.onnx", onnx_bytes())
    write(f"{m}/facexlib/parsing_bisenet.pth.part", b"x" * 1234)
    write(f"{comfy}/main.py", b"")
    (comfy / "extra_model_paths.yaml").write_text(f"other:\n    eva_clip: {tmp_path}/shared/eva\n")

    entries = [small(e.name, files.get(e.name)) for e in M.registry]
    entries = [dataclasses.replace(e, size=e.size + 1) if e.name == "buffalo_l/det_10g.onnx" else e for e in entries]
    paths = M.ModelPaths.for_comfyui(str(comfy), hf_hub_cache=str(hub), facexlib_weights_dir=str(site))
    return types.SimpleNamespace(comfy=comfy, models=m, paths=paths, entries=entries, files=files)


def test_check_reports_every_file_with_its_fix(comfy_tree):
    t, m = comfy_tree, comfy_tree.models
    report = M.check(t.paths, t.entries)
    found = by_name(report.findings)
    status = {name: [f.status for f in fs] for name, fs in found.items()}

    assert status["pulid-v1"] == [M.PRESENT]  # a subfolder is fine: ComfyUI recurses
    assert found["pulid-v1"][0].path == t.files["pulid-v1"]
    assert found["pulid-v1-official"][0].status == M.NOT_NEEDED
    assert found["pulid-v1-official"][0].detail == "either pulid-v1 or pulid-v1-official: another one is present"
    v11 = found["pulid-v1.1"][0]
    assert v11.status == M.MISPLACED
    assert v11.fix == f"mv '{m}/ipadapter/pulid_v1.1.safetensors' '{m}/pulid/pulid_v1.1.safetensors'"
    lfs = found["pulid-v1.1-ipadapter"][0]
    assert lfs.status == M.CORRUPT and "Git LFS pointer" in lfs.detail
    eva = found["eva-clip"][0]
    assert eva.status == M.MISPLACED and "Hugging Face cache" in eva.detail
    shared_eva = os.path.dirname(t.files["eva-clip-open-clip"])  # the yaml's dir comes first
    assert eva.fix == f"cp -L {t.files['eva-clip']} {shared_eva}/EVA02_CLIP_L_336_psz14_s6B.pt"
    assert status["eva-clip-open-clip"] == [M.PRESENT]
    # The nested antelopev2/antelopev2 of an unzip in place: usable (the nodes find it), with a warning.
    for fname in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        f = found[f"antelopev2/{fname}"][0]
        assert f.status == M.NESTED and "the nodes find it there, with a warning" in f.detail
        assert f.fix == (
            f"mv '{m}/insightface/models/antelopev2/antelopev2/{fname}' '{m}/insightface/models/antelopev2/{fname}'"
        )
    # Files the pack never opens are optional, whatever their state.
    assert status["antelopev2/1k3d68.onnx"] == [M.OPTIONAL]
    assert (
        found["antelopev2/1k3d68.onnx"][0].detail == "never opened by the pack"
        and not found["antelopev2/1k3d68.onnx"][0].fix
    )
    assert status["antelopev2/genderage.onnx"] == [M.OPTIONAL]
    assert found["antelopev2/genderage.onnx"][0].fix.startswith("mv ")  # moved with its pack
    assert found["buffalo_l/w600k_r50.onnx"][0].status == M.CORRUPT
    assert found["buffalo_l/w600k_r50.onnx"][0].detail.startswith("it is not a readable ONNX model")
    det = found["buffalo_l/det_10g.onnx"][0]
    assert det.status == M.WRONG_SIZE
    assert det.fix == (
        f"rm '{m}/insightface/models/buffalo_l/det_10g.onnx' && python -m pulid_core.models download "
        f"buffalo_l --comfyui '{t.comfy}'"
    )
    facex = found["facexlib-detection"][0]
    assert facex.status == M.MISPLACED
    assert facex.fix == f"mv {t.files['facexlib-detection']} '{m}/facexlib/detection_Resnet50_Final.pth'"
    parsing = found["facexlib-parsing"][0]
    assert parsing.status == M.MISSING
    assert f"an interrupted download is in {m}/facexlib/parsing_bisenet.pth.part" in parsing.detail
    assert parsing.fix == f"python -m pulid_core.models download facexlib-parsing --comfyui '{t.comfy}'"
    pm1 = found["photomaker-v1"][0]
    assert pm1.status == M.MISPLACED
    assert (
        pm1.fix == f"mkdir -p '{m}/photomaker' && mv '{m}/pulid/photomaker-v1.bin' '{m}/photomaker/photomaker-v1.bin'"
    )

    # Checked for the uses whose model files are on disk; PhotoMaker v2 and FLUX are not among them.
    assert report.uses == ("pulid-v1", "pulid-v1.1", "photomaker-v1")
    assert status["photomaker-v2"] == status["pulid-flux-v0.9.1"] == [M.NOT_NEEDED]
    assert found["photomaker-v2"][0].detail == "only for photomaker-v2"
    assert not report.ok
    assert {(u, g) for u, g, _ in report.unmet} == {
        (u, g) for u in ("pulid-v1", "pulid-v1.1") for g in ("facexlib-detection", "facexlib-parsing")
    } | {("pulid-v1.1", "either pulid-v1.1 or pulid-v1.1-ipadapter"), ("photomaker-v1", "photomaker-v1")}
    # Broken buffalo_l files are reported, but PhotoMaker v2 is not what was checked.
    assert {f.entry.name for f in report.problems} == {
        "pulid-v1.1",
        "pulid-v1.1-ipadapter",
        "facexlib-detection",
        "photomaker-v1",
    }
    text = M.format_report(report)
    assert "MISPLACED         pulid-v1.1:" in text and "fix: mv " in text
    assert "pulid-v1.1 (PuLID v1.1 on SDXL): NOT READY." in text
    assert "  needs either pulid-v1.1 or pulid-v1.1-ipadapter: mv " in text
    assert (
        f"  needs facexlib-parsing: python -m pulid_core.models download facexlib-parsing --comfyui '{t.comfy}'" in text
    )

    # The printed fixes are exact: running the moves fixes every misplaced or nested file.
    for f in report.findings:
        if f.status in (M.MISPLACED, M.NESTED):
            subprocess.run(["bash", "-c", f.fix], check=True)
    found = by_name(M.check(t.paths, t.entries).findings)
    for name in ("pulid-v1.1", "eva-clip", "antelopev2/glintr100.onnx", "facexlib-detection", "photomaker-v1"):
        assert [f.status for f in found[name]] == [M.PRESENT], name


@pytest.fixture
def ready(tmp_path, monkeypatch):
    """A ComfyUI with everything PuLID v1.1 needs, as small files, and ``check`` on it."""
    comfy = tmp_path / "ComfyUI"
    m = comfy / "models"
    write(str(comfy / "main.py"), b"")
    files = {
        "pulid-v1.1": sized_safetensors(str(m / "pulid" / "pulid_v1.1.safetensors"), 2000),
        "eva-clip-open-clip": sized_safetensors(str(m / "eva_clip" / "open_clip_model.safetensors"), 1000),
        "facexlib-detection": torch_file(str(m / "facexlib" / "detection_Resnet50_Final.pth")),
        "facexlib-parsing": torch_file(str(m / "facexlib" / "parsing_bisenet.pth")),
    }
    pack = m / "insightface" / "models" / "antelopev2"
    for fname in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        files[f"antelopev2/{fname}"] = write(str(pack / fname), onnx_bytes())
    write(str(pack / "genderage.onnx"), b"\x00garbage")  # never opened: must not matter
    entries = [small(e.name, files.get(e.name)) for e in M.registry]
    monkeypatch.setattr(M.paths, "_hf_hub_cache", lambda: str(tmp_path / "no-hub"))
    monkeypatch.setattr(M.paths, "_facexlib_weights_dir", lambda: None)
    monkeypatch.setattr(M.cli, "check", functools.partial(M.check, entries=entries))

    def run(*args):
        out = io.StringIO()
        code = M.main(["check", "--comfyui", str(comfy), *args], out=out)
        return code, out.getvalue()

    return types.SimpleNamespace(comfy=comfy, models=m, pack=pack, files=files, run=run, entries=entries)


def test_check_passes_when_the_use_has_its_files(ready):
    code, text = ready.run()
    assert code == 0, text
    assert "pulid-v1.1 (PuLID v1.1 on SDXL): every file it needs is in place." in text
    assert "OPTIONAL          antelopev2/genderage.onnx:" in text
    assert "(never opened by the pack; it is not a readable ONNX model" in text
    assert "NOT NEEDED        pulid-v1: (only for pulid-v1)" in text
    assert "CORRUPT" not in text and "MISSING" not in text


def test_check_fails_when_a_needed_file_is_missing_or_broken(ready):
    os.remove(ready.files["facexlib-parsing"])
    code, text = ready.run()
    assert code == 1
    assert "MISSING           facexlib-parsing:" in text
    assert "  needs facexlib-parsing: python -m pulid_core.models download facexlib-parsing --comfyui" in text
    torch_file(ready.files["facexlib-parsing"])
    write(ready.files["antelopev2/glintr100.onnx"], onnx_bytes()[:-9])
    code, text = ready.run()
    assert code == 1 and "CORRUPT           antelopev2/glintr100.onnx:" in text
    assert "  fix antelopev2/glintr100.onnx (see above)" in text


def test_check_groups_the_alternatives(ready, monkeypatch):
    os.remove(ready.files["eva-clip-open-clip"])
    code, text = ready.run("--for", "pulid-flux", "--for", "pulid-v1.1")
    assert code == 1
    assert (
        "  needs either pulid-flux-v0.9.1 or pulid-flux-v0.9.0: python -m pulid_core.models download pulid-flux-v0.9.1"
        in text
    )
    assert text.count("  needs either eva-clip or eva-clip-open-clip: ") == 2  # once per use
    # Either EVA file satisfies the group.
    eva = torch_file(str(ready.models / "eva_clip" / "EVA02_CLIP_L_336_psz14_s6B.pt"))
    entries = [small(e.name, eva) if e.name == "eva-clip" else e for e in ready.entries]
    monkeypatch.setattr(M.cli, "check", functools.partial(M.check, entries=entries))
    code, text = ready.run("--for", "pulid-v1.1")
    assert code == 0, text
    assert (
        "NOT NEEDED        eva-clip-open-clip: (either eva-clip or eva-clip-open-clip: another one is present)" in text
    )


def test_check_with_nothing_found_asks_what_to_check(ready):
    os.remove(ready.files["pulid-v1.1"])
    code, text = ready.run()
    assert code == 1
    assert "No PuLID or PhotoMaker model file was found. Pass --for USE" in text
    code, text = ready.run("--for", "photomaker-v2")
    assert code == 1 and "  needs buffalo_l/det_10g.onnx: python -m pulid_core.models download buffalo_l" in text


def test_nested_pack_passes_with_a_warning(ready):
    nested = ready.pack / "antelopev2"
    nested.mkdir()
    for fname in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        os.replace(ready.pack / fname, nested / fname)
    code, text = ready.run()
    assert code == 0, text
    assert f"NESTED            antelopev2/glintr100.onnx: {nested}/glintr100.onnx" in text
    assert f"fix: mv {nested}/glintr100.onnx {ready.pack}/glintr100.onnx" in text


def test_check_refuses_a_folder_that_is_not_comfyui(ready):
    os.remove(ready.comfy / "main.py")
    code, text = ready.run()
    assert code == 1 and "does not look like a ComfyUI folder (it has no main.py)" in text
    code, text = ready.run("--force")
    assert code == 0, text


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("pulid-v1", "ipadapter"),
        ("pulid-v1", "clip_vision"),
        ("pulid-flux-v0.9.1", "checkpoints"),
        ("eva-clip", "clip"),
        ("eva-clip", "text_encoders"),
        ("photomaker-v2", "pulid"),
    ],
)
def test_check_finds_files_in_the_wrong_model_folder(tmp_path, name, wrong):
    models = tmp_path / "models"
    entry = M.get(name)
    path = str(models / wrong / "sub" / entry.filename)
    stray = sized_safetensors(path, 400) if path.endswith(".safetensors") else torch_file(path)
    paths = M.ModelPaths.for_models_dir(str(models), hf_hub_cache=None, facexlib_weights_dir=None)
    [finding] = M.find(small(name, stray), paths)
    assert finding.status == M.MISPLACED and finding.path == stray
    right = models / entry.folder
    assert finding.fix == f"mkdir -p {right} && mv {stray} {right / entry.filename}"


def test_check_verify_compares_sha256(tmp_path):
    path = sized_safetensors(str(tmp_path / "models/pulid/pulid_v1.1.safetensors"), 500)
    paths = M.ModelPaths.for_models_dir(str(tmp_path / "models"), hf_hub_cache=None, facexlib_weights_dir=None)
    good = small("pulid-v1.1", path)
    bad = dataclasses.replace(good, sha256="0" * 64)
    assert M.find(bad, paths)[0].status == M.PRESENT  # no hashing without verify
    assert M.find(good, paths, verify=True)[0].status == M.PRESENT
    finding = M.find(bad, paths, verify=True)[0]
    assert finding.status == M.CHECKSUM
    assert finding.detail == f"checksum mismatch: sha256 {sha(path)}, expected {'0' * 64}"


def test_an_interrupted_download_is_named(tmp_path):
    paths = M.ModelPaths.for_models_dir(str(tmp_path / "models"), hf_hub_cache=None, facexlib_weights_dir=None)
    staging = tmp_path / "models" / "pulid" / "pulid_flux_v0.9.1.safetensors.download"
    write(str(staging / ".cache" / "huggingface" / "download" / "x.incomplete"), b"partial")
    [finding] = M.find(M.get("pulid-flux-v0.9.1"), paths)
    assert finding.status == M.MISSING
    assert finding.detail == f"goes in {staging.parent}; an interrupted download is in {staging}"
    assert finding.fix == f"python -m pulid_core.models download pulid-flux-v0.9.1 --models-dir {tmp_path / 'models'}"
