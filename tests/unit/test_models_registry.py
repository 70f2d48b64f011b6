"""The model registry, ``check`` on fake ComfyUI trees, and ComfyUI folder registration."""

import dataclasses
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pulid_core import models as M
from pulid_core.errors import ModelFileError, PuLIDError

ROOT = Path(__file__).resolve().parents[2]


def _folders_module():
    # nodes/ imports ..pulid_core as part of the pack: import it inside a stand-in package
    # (never ComfyUI's own top-level ``nodes``) whose pulid_core is the tests' own module.
    import importlib
    import sys
    import types

    from comfy_harness import SharedCore

    if "pulid_pack" not in sys.modules:
        pack = types.ModuleType("pulid_pack")
        pack.__path__ = [str(ROOT)]
        sys.modules["pulid_pack"] = pack
        sys.meta_path.insert(0, SharedCore("pulid_pack"))
    return importlib.import_module("pulid_pack.nodes.folders")


def sized_safetensors(path, size):
    """A valid safetensors file of exactly ``size`` bytes (one U8 tensor; sparse on disk)."""
    hlen = 128
    n = size - 8 - hlen
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    assert len(header) <= hlen
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", hlen) + header.ljust(hlen, b" "))
        f.truncate(size)
    return path


def torch_file(path, value=1.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"w": torch.full((4,), value)}, path)
    return path


def onnx_bytes():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, producer_name="test").SerializeToString()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(data)
    return path


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- registry facts


def test_registry_entries_are_consistent():
    names = [e.name for e in M.registry]
    assert len(names) == len(set(names))
    for e in M.registry:
        assert e.folder in M.FOLDERS
        assert e.source in ("hf", "github")
        assert e.sha256 is None or (len(e.sha256) == 64 and e.sha256 == e.sha256.lower())
        assert e.size is None or e.size > 0
        assert e.size is not None or e.approx_size, f"{e.name}: give a size or an approximate one"
        if e.pack:
            assert e.folder == "insightface" and e.location == M.PACK_ARCHIVES[e.pack]
        for key in e.misplaced_in:
            assert key != e.folder
    for bundle in M.BUNDLES.values():
        assert set(bundle) <= set(names)


def test_registry_holds_the_spec_facts():
    assert M.get("pulid-v1").size == 791_372_856  # huchenlei/ipadapter_pulid on Hugging Face
    assert M.get("pulid-v1").sha256.startswith("b258a5cd") and M.get("pulid-v1").sha256.endswith("fbf5")
    assert {e.filename for e in M.registry if e.pack == "antelopev2"} == {
        "1k3d68.onnx",
        "2d106det.onnx",
        "genderage.onnx",
        "glintr100.onnx",
        "scrfd_10g_bnkps.onnx",
    }
    assert {e.filename for e in M.registry if e.pack == "antelopev2" and e.required} == {
        "scrfd_10g_bnkps.onnx",
        "glintr100.onnx",
    }
    assert {e.filename for e in M.registry if e.pack == "buffalo_l" and e.required} == {
        "det_10g.onnx",
        "w600k_r50.onnx",
    }
    assert {e.filename for e in M.registry if e.folder == "pulid"} == {
        "ip-adapter_pulid_sdxl_fp16.safetensors",
        "pulid_v1.bin",
        "pulid_v1.1.safetensors",
        "ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
    }
    assert M.FOLDERS["photomaker"].core and not M.FOLDERS["pulid"].core
    assert M.FOLDERS["insightface"].extensions == "onnx"


def test_urls_follow_hf_endpoint_and_github_mirror(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("PULID_MODELS_MIRROR", raising=False)
    pulid, det = M.get("pulid-v1"), M.get("facexlib-detection")
    assert pulid.url() == (
        "https://huggingface.co/huchenlei/ipadapter_pulid/resolve/main/ip-adapter_pulid_sdxl_fp16.safetensors"
    )
    assert (
        det.url()
        == "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
    )
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert pulid.url().startswith("https://hf-mirror.example/huchenlei/ipadapter_pulid/resolve/main/")
    assert pulid.url(hf_endpoint="http://h").startswith("http://h/huchenlei/")
    assert (
        det.url(mirror="http://m/gh/")
        == "http://m/gh/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
    )
    assert det.url(mirror="http://p/{url}") == f"http://p/{M.GITHUB}/{det.location}"
    monkeypatch.setenv("PULID_MODELS_MIRROR", "http://env")
    assert det.url().startswith("http://env/xinntao/")
    assert (
        pulid.page
        == "https://huggingface.co/huchenlei/ipadapter_pulid/blob/main/ip-adapter_pulid_sdxl_fp16.safetensors"
    )


def test_get_and_select():
    assert M.get("pulid_v1.1.safetensors").name == "pulid-v1.1"
    assert M.get("sub/dir/pulid_v1.bin").name == "pulid-v1-official"
    assert M.get("open_clip_pytorch_model.bin").name == "eva-clip-open-clip"
    with pytest.raises(PuLIDError, match="Unknown model 'nope'"):
        M.get("nope")
    chosen = [e.name for e in M.select(["antelopev2", "antelopev2/glintr100.onnx", "pulid-v1"])]
    assert chosen[:5] == list(M.BUNDLES["antelopev2"]) and chosen[5:] == ["pulid-v1"]
    with pytest.raises(PuLIDError, match="Unknown model 'pulid-v3'"):
        M.select(["pulid-v3"])


def test_missing_file_message():
    msg = M.missing_file_message("ip-adapter_pulid_sdxl_fp16.safetensors", ["/c/models/pulid", "/mnt/pulid"])
    assert msg == (
        "ip-adapter_pulid_sdxl_fp16.safetensors not found in /c/models/pulid, /mnt/pulid. Download it from "
        "https://huggingface.co/huchenlei/ipadapter_pulid/blob/main/ip-adapter_pulid_sdxl_fp16.safetensors "
        "and put it in /c/models/pulid (or run `python -m pulid_core.models download pulid-v1`)."
    )
    msg = M.missing_file_message(M.get("antelopev2/glintr100.onnx"), ["/c/models/insightface"])
    assert "antelopev2/glintr100.onnx not found in /c/models/insightface" in msg
    assert "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip" in msg
    assert "/c/models/insightface/models/antelopev2 (not in a nested antelopev2/antelopev2 folder)" in msg
    assert "download antelopev2`" in msg
    assert M.missing_file_message("mine.safetensors", ["/x"]) == (
        "mine.safetensors not found in /x. Put the file in one of these folders."
    )


def test_markdown_table_rows():
    table = M.markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(M.registry)
    assert rows[0].startswith(
        "| `pulid-v1` | [ip-adapter_pulid_sdxl_fp16.safetensors](https://huggingface.co/"
    )
    assert "| 791.4 MB | `b258a5cd2c0c…` |" in rows[0]
    assert "| ~1.58 GB | not pinned |" in table
    assert "`models/insightface/models/antelopev2/`" in table


# ----------------------------------------------------------------------------- cheap file checks


def test_inspect_safetensors(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_file({"w": torch.ones(64)}, path)
    assert M.inspect_file(path) is None
    data = Path(path).read_bytes()
    write(path, data[:-10])
    assert "truncated" in M.inspect_file(path)
    write(path, data + b"xx")
    assert "2 bytes more" in M.inspect_file(path)
    write(path, data[:6])
    assert "truncated" in M.inspect_file(path)
    write(path, struct.pack("<Q", 5) + b"{oops")
    assert "header is unreadable" in M.inspect_file(path)
    # The sparse helper used below is a real safetensors file.
    from safetensors import safe_open

    sized_safetensors(str(tmp_path / "s.safetensors"), 4096)
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        assert f.get_tensor("w").shape == (4096 - 136,)
    assert M.inspect_file(str(tmp_path / "s.safetensors")) is None


def test_inspect_torch_files(tmp_path):
    path = torch_file(str(tmp_path / "a.pth"))
    assert M.inspect_file(path) is None
    data = Path(path).read_bytes()
    write(path, data[: len(data) // 2])
    assert "zip central directory is missing" in M.inspect_file(path)
    legacy = str(tmp_path / "legacy.pt")
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert M.inspect_file(legacy) is None
    assert "not a PyTorch file" in M.inspect_file(write(str(tmp_path / "x.bin"), b"GGUF\x00\x00"))


def test_inspect_onnx(tmp_path):
    data = onnx_bytes()
    path = write(str(tmp_path / "m.onnx"), data)
    assert M.inspect_file(path) is None
    write(path, data[:-3])
    assert M.inspect_file(path) == "it is truncated"
    write(path, b"\x08\x07\x12\x04test")  # ir_version and producer, but no graph
    assert "no graph" in M.inspect_file(path)
    write(path, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
    assert "not an ONNX model" in M.inspect_file(path)


def test_inspect_download_debris(tmp_path):
    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    assert "Git LFS pointer" in M.inspect_file(write(str(tmp_path / "a.safetensors"), lfs))
    html = b"\n<!DOCTYPE html><html><body>Rate limited</body></html>"
    assert "web page" in M.inspect_file(write(str(tmp_path / "b.onnx"), html))
    assert "empty" in M.inspect_file(write(str(tmp_path / "c.pth"), b""))
    zpath = str(tmp_path / "p.zip")
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("a/b.onnx", b"1234")
    assert M.inspect_file(zpath) is None
    write(zpath, Path(zpath).read_bytes()[:20])
    assert "central directory" in M.inspect_file(zpath)


# ----------------------------------------------------------------------------- where models live


def test_extra_model_paths_order(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    (comfy / "extra_model_paths.yaml").write_text(
        textwrap.dedent(f"""\
        shared:
            base_path: ../shared
            pulid: |
                pulid
                pulid2
            photomaker: pm
            ipadapter: ipa
        fast:
            base_path: {tmp_path}/fast
            is_default: true
            eva_clip: eva
        plain:
            facexlib: relative/facexlib
        empty:
    """)
    )
    paths = M.ModelPaths.for_comfyui(str(comfy))
    models, shared = str(comfy / "models"), str(tmp_path / "shared")
    assert paths.dirs("pulid") == [f"{shared}/pulid", f"{shared}/pulid2", f"{models}/pulid"]
    assert paths.dirs("eva_clip") == [f"{tmp_path}/fast/eva", f"{models}/eva_clip"]
    assert paths.dirs("facexlib") == [f"{comfy}/relative/facexlib", f"{models}/facexlib"]
    # ComfyUI's own keys keep their default first.
    assert paths.dirs("photomaker") == [f"{models}/photomaker", f"{shared}/pm"]
    assert paths.dirs("ipadapter") == [f"{models}/ipadapter", f"{shared}/ipa"]
    assert paths.dirs("insightface") == [f"{models}/insightface"]
    assert paths.target_dir(M.get("antelopev2/glintr100.onnx")) == f"{models}/insightface/models/antelopev2"
    assert paths.origin == f"--comfyui {comfy}"
    with pytest.raises(PuLIDError, match="does not look like a ComfyUI folder"):
        M.ModelPaths.for_comfyui(str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- check


def _small(name, path=None, **kw):
    """The registry entry with the size (and sha256) of a small test file."""
    if path is not None:
        kw.setdefault("size", os.path.getsize(path))
        kw.setdefault("sha256", sha(path))
    return dataclasses.replace(M.get(name), **kw)


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
        "eva-clip": torch_file(
            f"{hub}/models--QuanSun--EVA-CLIP/snapshots/abc123/EVA02_CLIP_L_336_psz14_s6B.pt"
        ),
        "eva-clip-open-clip": sized_safetensors(f"{tmp_path}/shared/eva/open_clip_model.safetensors", 1000),
        "facexlib-detection": torch_file(f"{site}/detection_Resnet50_Final.pth"),
        "photomaker-v1": torch_file(f"{m}/pulid/photomaker-v1.bin"),
        "pulid-v1.1-ipadapter": write(
            f"{m}/pulid/ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
            b"version https://git-lfs.github.com/spec/v1\n",
        ),
    }
    for fname in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "genderage.onnx"):
        files[f"antelopev2/{fname}"] = write(
            f"{m}/insightface/models/antelopev2/antelopev2/{fname}", onnx_bytes()
        )
    files["buffalo_l/w600k_r50.onnx"] = write(
        f"{m}/insightface/models/buffalo_l/w600k_r50.onnx", onnx_bytes()[:-5]
    )
    files["buffalo_l/det_10g.onnx"] = write(f"{m}/insightface/models/buffalo_l/det_10g.onnx", onnx_bytes())
    write(f"{m}/facexlib/parsing_bisenet.pth.part", b"x" * 1234)
    (comfy / "extra_model_paths.yaml").write_text(f"other:\n    eva_clip: {tmp_path}/shared/eva\n")

    entries = [_small(n, files.get(n)) if n in files else _small(n) for n in (e.name for e in M.registry)]
    entries = [
        dataclasses.replace(e, size=e.size + 1) if e.name == "buffalo_l/det_10g.onnx" else e for e in entries
    ]
    entries = [
        dataclasses.replace(e, size=None) if e.name == "buffalo_l/w600k_r50.onnx" else e for e in entries
    ]
    paths = M.ModelPaths.for_comfyui(str(comfy), hf_hub_cache=str(hub), facexlib_weights_dir=str(site))
    return types.SimpleNamespace(comfy=comfy, models=m, paths=paths, entries=entries, files=files)


def _by_name(findings):
    out = {}
    for f in findings:
        out.setdefault(f.entry.name, []).append(f)
    return out


def test_check_reports_every_problem_with_its_fix(comfy_tree):
    t = comfy_tree
    m = t.models
    found = _by_name(M.check(t.paths, t.entries))
    status = {name: [f.status for f in fs] for name, fs in found.items()}

    assert status["pulid-v1"] == [M.PRESENT]  # a subfolder is fine: ComfyUI recurses
    assert found["pulid-v1"][0].path == t.files["pulid-v1"]
    assert status["pulid-v1-official"] == [M.NOT_NEEDED]  # pulid-v1 is present
    assert found["pulid-v1.1"][0].status == M.MISPLACED
    assert (
        found["pulid-v1.1"][0].fix
        == f"mv '{m}/ipadapter/pulid_v1.1.safetensors' '{m}/pulid/pulid_v1.1.safetensors'"
    )
    lfs = found["pulid-v1.1-ipadapter"][0]
    assert lfs.status == M.CORRUPT and "Git LFS pointer" in lfs.detail
    eva = found["eva-clip"][0]
    assert eva.status == M.MISPLACED and "Hugging Face cache" in eva.detail
    # The user's yaml dir for eva_clip comes first, so that is where it goes.
    shared_eva = os.path.dirname(t.files["eva-clip-open-clip"])
    assert eva.fix == f"cp -L {t.files['eva-clip']} {shared_eva}/EVA02_CLIP_L_336_psz14_s6B.pt"
    assert status["eva-clip-open-clip"] == [M.PRESENT]  # from extra_model_paths.yaml
    for fname in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "genderage.onnx"):
        f = found[f"antelopev2/{fname}"][0]
        assert f.status == M.MISPLACED
        assert f.fix == (
            f"mv '{m}/insightface/models/antelopev2/antelopev2/{fname}' "
            f"'{m}/insightface/models/antelopev2/{fname}'"
        )
    assert status["antelopev2/1k3d68.onnx"] == [M.NOT_NEEDED]  # optional member
    assert found["buffalo_l/w600k_r50.onnx"][0].status == M.CORRUPT
    assert found["buffalo_l/w600k_r50.onnx"][0].detail == "it is truncated"
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
    assert parsing.status == M.MISSING and "partial download (1,234 bytes)" in parsing.detail
    assert parsing.fix == f"python -m pulid_core.models download facexlib-parsing --comfyui '{t.comfy}'"
    pm1 = found["photomaker-v1"][0]
    assert pm1.status == M.MISPLACED
    assert (
        pm1.fix
        == f"mkdir -p '{m}/photomaker' && mv '{m}/pulid/photomaker-v1.bin' '{m}/photomaker/photomaker-v1.bin'"
    )
    assert status["photomaker-v2"] == [M.MISSING]

    text = M.format_findings(M.check(t.paths, t.entries))
    assert "MISPLACED         pulid-v1.1:" in text and "fix: mv " in text

    # The printed fixes are exact: running the move commands fixes every misplaced file.
    for f in M.check(t.paths, t.entries):
        if f.status == M.MISPLACED:
            subprocess.run(["bash", "-c", f.fix], check=True)
    found = _by_name(M.check(t.paths, t.entries))
    for name in (
        "pulid-v1.1",
        "eva-clip",
        "antelopev2/glintr100.onnx",
        "facexlib-detection",
        "photomaker-v1",
    ):
        assert [f.status for f in found[name]] == [M.PRESENT], name


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("pulid-v1", "ipadapter"),
        ("pulid-v1", "clip_vision"),
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
    [finding] = M.check(paths, [_small(name, stray)])
    assert finding.status == M.MISPLACED and finding.path == stray
    right = models / entry.folder
    assert finding.fix == f"mkdir -p {right} && mv {stray} {right / entry.filename}"


def test_check_verify_compares_sha256(tmp_path):
    path = sized_safetensors(str(tmp_path / "models/pulid/pulid_v1.1.safetensors"), 500)
    paths = M.ModelPaths.for_models_dir(
        str(tmp_path / "models"), hf_hub_cache=None, facexlib_weights_dir=None
    )
    good = _small("pulid-v1.1", path)
    bad = dataclasses.replace(good, sha256="0" * 64)
    assert M.check(paths, [bad])[0].status == M.PRESENT  # no hashing without verify
    assert M.check(paths, [good], verify=True)[0].status == M.PRESENT
    finding = M.check(paths, [bad], verify=True)[0]
    assert finding.status == M.CHECKSUM and finding.detail == f"sha256 {sha(path)}, expected {'0' * 64}"


def test_check_command(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(M.paths, "_facexlib_weights_dir", lambda: None)
    models = tmp_path / "models"
    models.mkdir()
    out = io.StringIO()
    assert M.main(["check", "--models-dir", str(models)], out=out) == 0
    text = out.getvalue()
    assert "MISSING           pulid-v1:" in text
    assert f"fix: python -m pulid_core.models download pulid-v1 --models-dir {models}" in text
    assert text.rstrip().endswith("missing")
    write(str(models / "pulid/pulid_v1.1.safetensors"), b"<html>502 Bad Gateway</html>")
    out = io.StringIO()
    assert M.main(["check", "--models-dir", str(models)], out=out) == 1
    assert "CORRUPT           pulid-v1.1:" in out.getvalue()
    out = io.StringIO()
    assert M.main(["check"], out=out) == 1
    assert "Pass --comfyui PATH" in out.getvalue()
    out = io.StringIO()
    assert M.main(["table"], out=out) == 0 and out.getvalue() == M.markdown_table()


# ----------------------------------------------------------------------------- ComfyUI folders


def _fake_folder_paths(models_dir, preset=None):
    """The parts of ComfyUI's folder_paths that the pack uses, as ComfyUI defines them."""
    fp = types.SimpleNamespace()
    fp.models_dir = models_dir
    fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {
        "photomaker": ([os.path.join(models_dir, "photomaker")], set(fp.supported_pt_extensions)),
        **(preset or {}),
    }
    fp.get_folder_paths = lambda key: list(fp.folder_names_and_paths[key][0])

    def get_full_path(key, filename):
        for d in fp.folder_names_and_paths[key][0]:
            p = os.path.join(d, filename)
            if os.path.isfile(p):
                return p
        return None

    fp.get_full_path = get_full_path
    return fp


def test_register_folders(tmp_path):
    folders = _folders_module()
    models = str(tmp_path / "models")
    user = str(tmp_path / "mnt" / "pulid")
    fp = _fake_folder_paths(models, {"pulid": ([user], set())})
    photomaker_before = fp.folder_names_and_paths["photomaker"]
    folders.register_folders(fp)
    folders.register_folders(fp)  # idempotent
    assert fp.folder_names_and_paths["pulid"] == ([user, f"{models}/pulid"], fp.supported_pt_extensions)
    assert fp.folder_names_and_paths["eva_clip"] == ([f"{models}/eva_clip"], fp.supported_pt_extensions)
    assert fp.folder_names_and_paths["facexlib"] == ([f"{models}/facexlib"], fp.supported_pt_extensions)
    assert fp.folder_names_and_paths["insightface"] == ([f"{models}/insightface"], {".onnx"})
    assert fp.folder_names_and_paths["photomaker"] is photomaker_before
    paths = folders.model_paths(fp)
    assert paths.dirs("pulid") == [user, f"{models}/pulid"] and paths.models_dir == models


def test_resolve_and_insightface_packs(tmp_path, caplog):
    folders = _folders_module()
    models = str(tmp_path / "models")
    fp = _fake_folder_paths(models)
    folders.register_folders(fp)
    write(f"{models}/pulid/pulid_v1.1.safetensors", b"x")
    assert folders.resolve("pulid", "pulid_v1.1.safetensors", fp) == f"{models}/pulid/pulid_v1.1.safetensors"
    with pytest.raises(ModelFileError) as exc:
        folders.resolve("pulid", "ip-adapter_pulid_sdxl_fp16.safetensors", fp)
    assert str(exc.value) == M.missing_file_message(M.get("pulid-v1"), [f"{models}/pulid"])

    ins = f"{models}/insightface"
    for f in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        write(f"{ins}/models/antelopev2/antelopev2/{f}", b"x")  # nested by an unzip in place
    write(f"{ins}/models/buffalo_l/det_10g.onnx", b"x")
    write(f"{ins}/models/empty/readme.txt", b"x")
    write(f"{ins}/mypack/det.onnx", b"x")  # missing the models/ level
    assert folders.list_insightface_packs(fp) == ["antelopev2", "buffalo_l", "mypack"]
    assert "belongs in" in caplog.text
    assert folders.insightface_pack_dir("antelopev2", fp) == f"{ins}/models/antelopev2/antelopev2"
    with pytest.raises(ModelFileError, match="buffalo_l/w600k_r50.onnx not found in"):
        folders.insightface_pack_dir("buffalo_l", fp)
    with pytest.raises(ModelFileError, match="insightface pack 'nope' not found"):
        folders.insightface_pack_dir("nope", fp)
    with pytest.raises(ModelFileError, match="detection_Resnet50_Final.pth not found in"):
        folders.facexlib_dir(fp)
    write(f"{models}/facexlib/detection_Resnet50_Final.pth", b"x")
    with pytest.raises(ModelFileError, match="parsing_bisenet.pth not found in"):
        folders.facexlib_dir(fp)
    write(f"{models}/facexlib/parsing_bisenet.pth", b"x")
    assert folders.facexlib_dir(fp) == f"{models}/facexlib"
    # A correctly placed copy in a later dir wins over a nested one.
    other = str(tmp_path / "other")
    fp.folder_names_and_paths["insightface"][0].append(other)
    for f in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        write(f"{other}/models/antelopev2/{f}", b"x")
    assert folders.insightface_pack_dir("antelopev2", fp) == f"{other}/models/antelopev2"


def _comfyui_dir():
    for candidate in (
        os.environ.get("COMFYUI_DIR"),
        ROOT / ".cache/comfyui",
        ROOT / ".cache/comfyui/ComfyUI-0.3.75",
    ):
        if candidate and (Path(candidate) / "folder_paths.py").is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_comfyui_dir() is None, reason="pinned ComfyUI tree not set up (scripts/setup_env.sh)")
def test_register_folders_with_real_folder_paths(tmp_path):
    # A fresh interpreter: folder_paths is module-level state.
    yaml_file = tmp_path / "extra.yaml"
    yaml_file.write_text(f"mine:\n    pulid: {tmp_path}/mnt/pulid\n")
    write(f"{tmp_path}/m/insightface/models/antelopev2/glintr100.onnx", b"x")
    write(f"{tmp_path}/m/insightface/models/antelopev2/notes.txt", b"x")
    code = textwrap.dedent(f"""
        import importlib, json, sys, types
        sys.path[:0] = [{str(_comfyui_dir())!r}]
        import folder_paths
        from utils.extra_config import load_extra_path_config
        folder_paths.models_dir = {str(tmp_path / "m")!r}
        load_extra_path_config({str(yaml_file)!r})
        pack = types.ModuleType("pulid_pack"); pack.__path__ = [{str(ROOT)!r}]; sys.modules["pulid_pack"] = pack
        f = importlib.import_module("pulid_pack.nodes.folders")  # as ComfyUI imports the pack: a package
        before = folder_paths.folder_names_and_paths["photomaker"]
        f.register_folders()
        fnp = folder_paths.folder_names_and_paths
        print(json.dumps(dict(
            pulid=fnp["pulid"][0], pulid_ext=sorted(fnp["pulid"][1]),
            pt=sorted(folder_paths.supported_pt_extensions),
            insightface=folder_paths.get_filename_list("insightface"),
            photomaker_same=fnp["photomaker"] is before,
            packs=f.list_insightface_packs(),
        )))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["pulid"] == [f"{tmp_path}/mnt/pulid", f"{tmp_path}/m/pulid"]
    assert got["pulid_ext"] == got["pt"]
    assert got["insightface"] == ["models/antelopev2/glintr100.onnx"]
    assert got["photomaker_same"] is True
    assert got["packs"] == ["antelopev2"]


def test_models_module_imports_without_comfyui_or_torch():
    code = "import sys, pulid_core.models, pulid_core; assert 'torch' not in sys.modules; assert 'folder_paths' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
