"""The model registry, ``check`` on fake ComfyUI trees, and ComfyUI folder registration."""

import hashlib
import io
import json
import math
import os
import re
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

# Where each file is published, written once from the publishers' own pages and code (not
# from the registry): the authors' READMEs name guozinan/PuLID (pulid_v1.bin, pulid_v1.1,
# docs/pulid_for_flux.md: pulid_flux_v0.9.0/0.9.1), cubiq/PuLID_ComfyUI's README names
# huchenlei/ipadapter_pulid, the authors' eva_clip code fetches QuanSun/EVA-CLIP, timm's hub
# page holds the open_clip copy, insightface's v0.7 release holds antelopev2.zip and
# buffalo_l.zip, facexlib's detection/parsing __init__.py fetch its v0.1.0/v0.2.0 release
# assets, TencentARC's model cards name PhotoMaker and PhotoMaker-V2.
_HF, _GH = "https://huggingface.co", "https://github.com"
PUBLISHED_URL = {
    "pulid-v1": f"{_HF}/huchenlei/ipadapter_pulid/resolve/main/ip-adapter_pulid_sdxl_fp16.safetensors",
    "pulid-v1-official": f"{_HF}/guozinan/PuLID/resolve/main/pulid_v1.bin",
    "pulid-v1.1": f"{_HF}/guozinan/PuLID/resolve/main/pulid_v1.1.safetensors",
    "pulid-v1.1-ipadapter": f"{_HF}/Runzy/ip-adapter_pulid/resolve/main/ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
    "pulid-flux-v0.9.1": f"{_HF}/guozinan/PuLID/resolve/main/pulid_flux_v0.9.1.safetensors",
    "pulid-flux-v0.9.0": f"{_HF}/guozinan/PuLID/resolve/main/pulid_flux_v0.9.0.safetensors",
    "eva-clip": f"{_HF}/QuanSun/EVA-CLIP/resolve/main/EVA02_CLIP_L_336_psz14_s6B.pt",
    "eva-clip-open-clip": (
        f"{_HF}/timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/resolve/main/open_clip_model.safetensors"
    ),
    **{
        f"{pack}/{f}": f"{_GH}/deepinsight/insightface/releases/download/v0.7/{pack}.zip"
        for pack, files in {
            "antelopev2": ("scrfd_10g_bnkps", "glintr100", "1k3d68", "2d106det", "genderage"),
            "buffalo_l": ("det_10g", "w600k_r50", "1k3d68", "2d106det", "genderage"),
        }.items()
        for f in (f"{n}.onnx" for n in files)
    },
    "facexlib-detection": f"{_GH}/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "facexlib-parsing": f"{_GH}/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
    "photomaker-v1": f"{_HF}/TencentARC/PhotoMaker/resolve/main/photomaker-v1.bin",
    "photomaker-v2": f"{_HF}/TencentARC/PhotoMaker-V2/resolve/main/photomaker-v2.bin",
}
# Byte sizes and sha256 prefixes from the Hugging Face file pages and commits (LFS pointers:
# "oid sha256", "size") and the GitHub release listings; None where the publisher's figure was
# not at hand.
PUBLISHED_SIZE_SHA = {
    "pulid-v1": (791_372_856, "b258a5cd"),
    "pulid-v1-official": (1_582_858_505, "245d05d8"),
    "pulid-flux-v0.9.1": (1_142_099_520, "92c41c3a"),
    "pulid-flux-v0.9.0": (1_142_099_520, "14e3c257"),
    "photomaker-v1": (None, "529d503f"),
    "photomaker-v2": (None, "0eeac57d"),
    "pulid-v1.1": (984_405_232, "4cb8ceec"),
    "eva-clip": (856_461_210, "84c3a17a"),
    "eva-clip-open-clip": (856_239_456, "f753bca0"),
    "antelopev2/scrfd_10g_bnkps.onnx": (16_923_827, "5838f7fe"),
    "antelopev2/glintr100.onnx": (260_665_334, "4ab1d643"),
    "antelopev2/1k3d68.onnx": (143_607_619, "df5c06b8"),
    "antelopev2/2d106det.onnx": (5_030_888, "f001b856"),
    "antelopev2/genderage.onnx": (1_322_532, "4fde69b1"),
    "buffalo_l/det_10g.onnx": (16_923_827, "5838f7fe"),
    "buffalo_l/w600k_r50.onnx": (174_383_860, "4c06341c"),
    "buffalo_l/1k3d68.onnx": (143_607_619, None),
    "buffalo_l/2d106det.onnx": (5_030_888, None),
    "buffalo_l/genderage.onnx": (1_322_532, None),
    "facexlib-detection": (109_497_761, "6d1de9c2"),
    "facexlib-parsing": (53_289_463, None),
}


def test_registry_matches_the_published_facts():
    assert {e.name: e.url for e in M.registry} == PUBLISHED_URL
    pinned = {e.name: (e.size, e.sha256 and e.sha256[:8]) for e in M.registry if e.size is not None or e.sha256}
    assert pinned == PUBLISHED_SIZE_SHA
    for e in M.registry:
        assert e.sha256 is None or (len(e.sha256) == 64 and e.sha256 == e.sha256.lower())
        assert e.size is not None or e.approx_size, f"{e.name}: give a size or an approximate one"


def safetensors_size(layout, bytes_per_value, dtype="F16"):
    """Bytes of a safetensors file holding ``layout`` ({key: shape}) in one dtype, as the
    safetensors library writes it: a compact JSON header sorted by key, padded to 8 bytes."""
    header, offset = {}, 0
    for key in sorted(layout):
        n = math.prod(layout[key]) * bytes_per_value
        header[key] = {"dtype": dtype, "shape": layout[key], "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    return 8 + len(text) + (-len(text)) % 8 + offset


def test_safetensors_sizes_follow_from_the_published_layouts():
    from safetensors.torch import save

    small = {"b.w": [3, 5], "a.x": [7], "c": [2, 2, 3]}
    assert safetensors_size(small, 2) == len(save({k: torch.zeros(s, dtype=torch.float16) for k, s in small.items()}))
    layouts = json.loads((ROOT / "tests" / "data" / "golden" / "checkpoint_layouts.json").read_text())
    layout = {k: v for name, v in layouts.items() if name.startswith("ip-adapter_pulid_sdxl") for k, v in v.items()}
    assert M.get("pulid-v1").size == safetensors_size(layout, 2)
    layout = {k: v for name, v in layouts.items() if name.startswith("pulid_v1.1.safetensors") for k, v in v.items()}
    assert M.get("pulid-v1.1").size == safetensors_size(layout, 2)
    # PuLID-FLUX: both releases hold the same 312 bf16 tensors.
    (layout,) = json.loads((ROOT / "tests" / "data" / "golden" / "pulid_flux_layout.json").read_text()).values()
    assert M.get("pulid-flux-v0.9.1").size == M.get("pulid-flux-v0.9.0").size == safetensors_size(layout, 2, "BF16")


def test_registry_structure():
    names = [e.name for e in M.registry]
    assert len(names) == len(set(names))
    for e in M.registry:
        assert e.folder in M.FOLDERS and e.source in ("hf", "github")
        assert e.uses and set(e.uses) <= set(M.USES), e.name
        assert e.pack is None or (e.folder == "insightface" and e.location == M.PACK_ARCHIVES[e.pack])
        assert e.folder not in e.misplaced_in
    for bundle in M.BUNDLES.values():
        assert set(bundle) <= set(names)
    # Every use has a model file of its own and all of its needed files in a bundle.
    for use in M.USES:
        assert any(use in e.uses for e in M.registry if e.folder in ("pulid", "photomaker")), use
    assert {e.filename for e in M.registry if e.pack == "antelopev2" and e.required} == {
        "scrfd_10g_bnkps.onnx",
        "glintr100.onnx",
    }
    assert {e.filename for e in M.registry if e.pack == "buffalo_l" and e.required} == {
        "det_10g.onnx",
        "w600k_r50.onnx",
    }
    assert M.FOLDERS["photomaker"].core and not M.FOLDERS["pulid"].core
    assert M.FOLDERS["insightface"].extensions == "onnx"


def test_flux_files_and_groups():
    v091, v090 = M.get("pulid_flux_v0.9.1.safetensors"), M.get("pulid-flux-v0.9.0")
    assert (v091.name, v091.relative_dir, v091.hf_repo) == ("pulid-flux-v0.9.1", "pulid", "guozinan/PuLID")
    assert v090.relative_dir == "pulid" and "recommended" in v091.needed_for
    assert v091.group == v090.group == "either pulid-flux-v0.9.1 or pulid-flux-v0.9.0"
    assert M.get("pulid-v1").group == "either pulid-v1 or pulid-v1-official"
    assert M.get("eva-clip-open-clip").group == "either eva-clip or eva-clip-open-clip"
    assert M.get("facexlib-parsing").group == "facexlib-parsing"
    flux = [e.name for e in M.select(["flux"])]
    assert flux[0] == "pulid-flux-v0.9.1" and "pulid-flux-v0.9.0" not in flux
    needed = {e.group for e in M.registry if "pulid-flux" in e.uses and e.required}
    assert {M.get(n).group for n in flux} == needed  # the bundle is everything FLUX needs


def test_readme_table_links_to_the_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- models-table:start -->", 1)[1].split("<!-- models-table:end -->", 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0].strip("`")] = (re.search(r"\]\((.*?)\)", cells[1]).group(1), cells[2], cells[4])
    assert "/blob/" not in block
    assert {name: url for name, (url, _, _) in rows.items()} == PUBLISHED_URL
    assert rows["pulid-flux-v0.9.1"][1:] == ("`models/pulid/`", "1.14 GB")
    assert rows["pulid-flux-v0.9.0"][1:] == ("`models/pulid/`", "1.14 GB")
    assert rows["photomaker-v2"][1:] == ("`models/photomaker/`", "~1.8 GB")
    assert rows["antelopev2/glintr100.onnx"][1] == "`models/insightface/models/antelopev2/`"
    assert rows["pulid-v1"][2] == "791.4 MB"
    assert "`flux`" in block and "--allow-http" in block and "check --comfyui PATH [--for USE]" in block


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
        "https://huggingface.co/huchenlei/ipadapter_pulid/resolve/main/ip-adapter_pulid_sdxl_fp16.safetensors "
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


# ----------------------------------------------------------------------------- file checks


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


def test_a_file_that_is_not_safetensors_says_so(tmp_path):
    # A PyTorch checkpoint renamed: its first 8 bytes read as a header length of ~8e14.
    zipped = torch_file(str(tmp_path / "z.safetensors"))
    assert (
        M.inspect_file(zipped)
        == "it is not a safetensors file (it is a zip archive, e.g. a PyTorch checkpoint renamed)"
    )
    legacy = str(tmp_path / "p.safetensors")
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert M.inspect_file(legacy) == "it is not a safetensors file (it is a pickle, e.g. a PyTorch checkpoint renamed)"
    gguf = write(str(tmp_path / "g.safetensors"), b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    assert M.inspect_file(gguf) == "it is not a safetensors file"


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
    assert M.inspect_file(path).startswith("it is not a readable ONNX model, probably truncated")
    # Cut exactly where a top-level field ends: protobuf parses it, the opsets are gone.
    import onnx

    model = onnx.load_from_string(data)
    cut = len(data) - sum(len(o.SerializeToString()) + 2 for o in model.opset_import)
    assert onnx.load_from_string(data[:cut]).graph.node  # the parse alone cannot tell
    write(path, data[:cut])
    assert M.inspect_file(path) == "it is truncated or not an ONNX model (no graph)"
    write(path, b"\x08\x07\x12\x04test")  # ir_version and producer, but no graph
    assert M.inspect_file(path) == "it is truncated or not an ONNX model (no graph)"
    write(path, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
    assert "not a readable ONNX model" in M.inspect_file(path)


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
    (comfy / "main.py").write_text("")
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


def test_a_folder_that_is_not_comfyui_is_refused_unless_forced(tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)  # a models/ folder alone is not a ComfyUI
    for folder, lacks in ((home, "main.py"), (tmp_path / "nothing", "main.py and no models/")):
        with pytest.raises(PuLIDError) as exc:
            M.ModelPaths.for_comfyui(str(folder))
        assert str(exc.value).startswith(f"{folder} does not look like a ComfyUI folder (it has no {lacks}).")
        assert "--force" in str(exc.value)
    out = io.StringIO()
    assert M.main(["download", "pulid-v1", "--comfyui", str(home)], out=out) == 1
    assert "does not look like a ComfyUI folder" in out.getvalue() and not (home / "models" / "pulid").exists()
    forced = M.ModelPaths.for_comfyui(str(home), force=True, hf_hub_cache=None, facexlib_weights_dir=None)
    assert forced.dirs("pulid") == [str(home / "models" / "pulid")]
    assert forced.origin == f"--comfyui {home} --force"  # the fix commands repeat the flag
    assert M.find(M.get("pulid-v1"), forced)[0].fix.endswith(f"download pulid-v1 --comfyui {home} --force")


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
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
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
