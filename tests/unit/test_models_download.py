"""``download`` without the network: a small fake of the Hugging Face hub and of GitHub's
release files on 127.0.0.1 (HEAD/GET, Range, cut connections, redirects), and a stand-in
for ``huggingface_hub.hf_hub_download`` where only its arguments matter."""

import dataclasses
import hashlib
import io
import os
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants

from pulid_core import models as M
from pulid_core.errors import ModelFileError, PuLIDError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.command, self.path, rng, self.headers.get("Authorization")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng and self.path not in srv.no_range else 0
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if "/resolve/" in self.path:  # what the hub's HEAD answers carry
            self.send_header("X-Repo-Commit", "c" * 40)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        if self.path in srv.cut_once:  # part of the body, then the connection drops
            srv.cut_once.discard(self.path)
            self.wfile.write(data[start:][: (len(data) - start) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HF_ENDPOINT", "PULID_MODELS_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")  # must never reach an http server
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_once, srv.no_range = {}, [], set(), set()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def refused_url():
    """An address where nothing listens (the 'offline' case)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def onnx_bytes(producer="test"):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, producer_name=producer).SerializeToString()


def safetensors_bytes(seed=0):
    import torch
    from safetensors.torch import save

    return save({"w": torch.arange(64, dtype=torch.float32) + seed})


def torch_bytes(n=8):
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.ones(n)}, buf)
    return buf.getvalue()


def pinned(name, data, **kw):
    """The registry entry with the size and sha256 of a small test file."""
    return dataclasses.replace(M.get(name), size=len(data), sha256=sha(data), **kw)


def hub_path(entry):
    return f"/{entry.hf_repo}/resolve/main/{entry.hf_path}"


def paths_for(tmp_path):
    return M.ModelPaths.for_models_dir(str(tmp_path / "models"), hf_hub_cache=None, facexlib_weights_dir=None)


def tree(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


KW = {"progress": False, "timeout": 5}

# ----------------------------------------------------------------------------- https only


@pytest.mark.parametrize(
    ("kwargs", "env"),
    [
        ({}, {"HF_ENDPOINT": "http://hf-mirror.example"}),
        ({"hf_endpoint": "http://hf-mirror.example"}, {}),
        ({"mirror": "http://gh-mirror.example"}, {}),
        ({}, {"PULID_MODELS_MIRROR": "http://gh-mirror.example/{url}"}),
        ({"hf_endpoint": "ftp://hf-mirror.example"}, {}),
    ],
)
def test_plain_http_mirrors_are_refused(server, tmp_path, monkeypatch, kwargs, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PuLIDError, match="https") as exc:
        M.download(["pulid-v1.1", "facexlib-parsing"], paths_for(tmp_path), **kwargs, **KW)
    assert ("--allow-http" in str(exc.value)) == ("ftp" not in str(kwargs))
    assert not (tmp_path / "models").exists()


def test_download_command_refuses_http_and_names_the_flag(tmp_path):
    out = io.StringIO()
    args = ["download", "pulid-v1.1", "--models-dir", str(tmp_path / "m"), "--hf-endpoint", "http://x.example"]
    assert M.main(args, out=out) == 1
    assert out.getvalue().startswith("error: HF_ENDPOINT 'http://x.example' uses plain http")
    assert "pass --allow-http" in out.getvalue()


def test_token_goes_to_https_endpoints_only(tmp_path, monkeypatch, caplog):
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append(dict(kw, repo_id=repo_id, filename=filename))
        path = Path(kw["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(safetensors_bytes(len(calls)))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    entry = dataclasses.replace(M.get("pulid-v1.1"), size=None, sha256=None)
    M.download(["pulid-v1.1"], paths_for(tmp_path), entries=[entry], **KW)
    os.remove(tmp_path / "models" / "pulid" / "pulid_v1.1.safetensors")
    M.download(
        ["pulid-v1.1"], paths_for(tmp_path), entries=[entry], hf_endpoint="http://m.example", allow_http=True, **KW
    )
    assert "Downloading over plain http from http://m.example (--allow-http)" in caplog.text
    assert [(c["repo_id"], c["filename"], c["endpoint"], c["token"]) for c in calls] == [
        ("guozinan/PuLID", "pulid_v1.1.safetensors", "https://huggingface.co", None),  # HF_TOKEN / login
        ("guozinan/PuLID", "pulid_v1.1.safetensors", "http://m.example", False),  # never a token
    ]
    assert calls[0]["local_dir"] == str(tmp_path / "models" / "pulid" / "pulid_v1.1.safetensors.download")
    assert tree(tmp_path / "models") == ["pulid", "pulid/pulid_v1.1.safetensors"]


# ----------------------------------------------------------------------------- Hugging Face files


def test_hf_file_lands_in_the_models_folder(server, tmp_path):
    data = safetensors_bytes(1)
    entry = pinned("pulid-v1.1", data)
    server.files[hub_path(entry)] = data
    written = M.download(
        ["pulid-v1.1"], paths_for(tmp_path), entries=[entry], hf_endpoint=server.base, allow_http=True, **KW
    )
    dest = tmp_path / "models" / "pulid" / "pulid_v1.1.safetensors"
    assert written == [str(dest)] and dest.read_bytes() == data
    assert not dest.is_symlink()
    # No staging folder, no .cache/ and no hub cache left behind.
    assert tree(tmp_path / "models") == ["pulid", "pulid/pulid_v1.1.safetensors"]
    assert not (tmp_path / "hf-cache").exists()
    # Over http (allowed by the flag) the user's HF_TOKEN was never sent.
    assert [r[3] for r in server.requests] == [None] * len(server.requests)
    assert [r[:2] for r in server.requests] == [("HEAD", hub_path(entry)), ("GET", hub_path(entry))]
    # Present files are not fetched again, and check agrees they are fine.
    assert (
        M.download(["pulid-v1.1"], paths_for(tmp_path), entries=[entry], hf_endpoint=server.base, allow_http=True, **KW)
        == []
    )
    assert len(server.requests) == 2
    assert M.find(entry, paths_for(tmp_path), verify=True)[0].status == M.PRESENT


@pytest.mark.parametrize(
    ("served", "problem"),
    [
        (b"<!DOCTYPE html><html>Please log in</html>", "it is a web page, not the model"),
        (safetensors_bytes(2)[:-40], "it is truncated"),
        (torch_bytes(), "it is not a safetensors file (it is a zip archive"),
    ],
    ids=["html", "truncated", "zip"],
)
def test_unpinned_hf_file_is_checked_by_structure_before_it_replaces_anything(server, tmp_path, served, problem):
    entry = M.get("pulid-v1.1-ipadapter")
    assert entry.sha256 is None  # no published checksum: only the structure can tell
    server.files[hub_path(entry)] = served
    old = tmp_path / "models" / "pulid" / entry.filename
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the user's earlier copy")
    with pytest.raises(ModelFileError) as exc:
        M.download([entry.name], paths_for(tmp_path), hf_endpoint=server.base, allow_http=True, **KW)
    assert str(exc.value).startswith(f"{entry.filename} from {entry.url}: {problem}")
    assert str(exc.value).endswith("; the download was deleted.")
    assert old.read_bytes() == b"the user's earlier copy"
    assert tree(old.parent) == [entry.filename]


def test_pinned_hf_file_with_other_bytes_is_refused(server, tmp_path):
    data = safetensors_bytes(3)
    entry = pinned("pulid-v1", data)
    server.files[hub_path(entry)] = safetensors_bytes(4)  # same size, other bytes
    with pytest.raises(ModelFileError, match=f"checksum mismatch|sha256 {sha(safetensors_bytes(4))}"):
        M.download(["pulid-v1"], paths_for(tmp_path), entries=[entry], hf_endpoint=server.base, allow_http=True, **KW)
    assert tree(tmp_path / "models") == ["pulid"]


def test_hf_errors_say_what_to_do(server, tmp_path, monkeypatch):
    entry = M.get("photomaker-v2")
    with pytest.raises(ModelFileError) as exc:  # 404: the hub has no such file
        M.download([entry.name], paths_for(tmp_path), hf_endpoint=server.base, allow_http=True, **KW)
    assert f"download {entry.url} by hand and put it in {tmp_path / 'models' / 'photomaker'}." in str(exc.value)

    def offline(*args, **kw):  # what huggingface_hub raises once its own retries are spent
        raise OSError("Connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    out = io.StringIO()
    assert M.main(["download", "pulid-v1", "--models-dir", str(tmp_path / "m"), "--no-progress"], out=out) == 1
    assert out.getvalue() == (
        "error: Download of ip-adapter_pulid_sdxl_fp16.safetensors from https://huggingface.co failed (OSError: "
        "Connection refused). Run the same command again to resume, or download "
        f"{M.get('pulid-v1').url} by hand and put it in {tmp_path / 'm' / 'pulid'}.\n"
    )


# ----------------------------------------------------------------------------- GitHub files


def test_github_file_resumes_after_a_cut(server, tmp_path):
    data = torch_bytes(500_000)
    entry = pinned("facexlib-detection", data)
    url_path = f"/{entry.location}"
    server.files[url_path] = data
    server.cut_once.add(url_path)
    dest = tmp_path / "models" / "facexlib" / entry.filename
    part = Path(str(dest) + ".part")
    with pytest.raises(ModelFileError, match="broke off .*Run the same command again to resume") as exc:
        M.download([entry.name], paths_for(tmp_path), entries=[entry], mirror=server.base, allow_http=True, **KW)
    kept = part.stat().st_size
    assert 0 < kept < len(data) and f"{kept:,} bytes are kept in {part}" in str(exc.value)
    assert part.read_bytes() == data[:kept] and not dest.exists()
    # The next run asks only for the rest, checks the whole and moves it into place.
    M.download([entry.name], paths_for(tmp_path), entries=[entry], mirror=server.base, allow_http=True, **KW)
    assert dest.read_bytes() == data and not part.exists()
    assert [r[1:3] for r in server.requests] == [(url_path, None), (url_path, f"bytes={kept}-")]
    assert [r[3] for r in server.requests] == [None, None]  # no token to GitHub, ever


def test_github_file_without_checksum_is_checked_by_structure(server, tmp_path):
    assert M.get("facexlib-parsing").sha256 is None
    entry = dataclasses.replace(M.get("facexlib-parsing"), size=5000)
    server.files[f"/gh/{entry.location}"] = b"\x00" * entry.size  # right size, not a PyTorch file
    with pytest.raises(ModelFileError, match="parsing_bisenet.pth from .*: it is not a PyTorch file"):
        M.download(
            [entry.name], paths_for(tmp_path), entries=[entry], mirror=server.base + "/gh", allow_http=True, **KW
        )
    assert tree(tmp_path / "models") == ["facexlib"]


def test_server_without_range_support_starts_over(server, tmp_path):
    data = torch_bytes()
    entry = pinned("facexlib-detection", data)
    server.files[f"/{entry.location}"] = data
    server.no_range.add(f"/{entry.location}")
    dest = tmp_path / "models" / "facexlib" / entry.filename
    dest.parent.mkdir(parents=True)
    Path(str(dest) + ".part").write_bytes(b"stale")
    M.download([entry.name], paths_for(tmp_path), entries=[entry], mirror=server.base, allow_http=True, **KW)
    assert dest.read_bytes() == data


def test_github_404_and_offline(server, tmp_path, refused_url):
    entry = M.get("facexlib-parsing")
    with pytest.raises(ModelFileError) as exc:
        M.download([entry.name], paths_for(tmp_path), mirror=server.base, allow_http=True, **KW)
    assert str(exc.value) == (
        f"{server.base}/{entry.location} answered HTTP 404 Not Found. Download parsing_bisenet.pth from "
        f"{entry.url} by hand and put it in {tmp_path / 'models' / 'facexlib'}."
    )
    with pytest.raises(ModelFileError, match="broke off .*Connection refused"):
        M.download([entry.name], paths_for(tmp_path), mirror=refused_url + "/{url}", allow_http=True, **KW)


# ----------------------------------------------------------------------------- insightface packs


def pack_zip(files, wrapper="antelopev2/"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        if wrapper:
            z.writestr(wrapper, b"")  # the folder entry that makes in-place unzips nest
        for name, data in files.items():
            z.writestr(wrapper + name, data)
    return buf.getvalue()


def pack_entries(pack, contents, pin=True):
    return [pinned(e.name, contents[e.filename]) if pin and e.sha256 else e for e in M.registry if e.pack == pack]


def test_pack_is_installed_flat(server, tmp_path):
    contents = {e.filename: onnx_bytes(e.filename) for e in M.registry if e.pack == "antelopev2"}
    server.files[f"/{M.PACK_ARCHIVES['antelopev2']}"] = pack_zip(contents)
    written = M.download(
        ["antelopev2"],
        paths_for(tmp_path),
        entries=pack_entries("antelopev2", contents),
        mirror=server.base,
        allow_http=True,
        **KW,
    )
    pack = tmp_path / "models" / "insightface" / "models" / "antelopev2"
    assert sorted(written) == sorted(str(pack / n) for n in contents)
    assert all((pack / n).read_bytes() == d for n, d in contents.items())
    assert tree(pack.parent) == ["antelopev2", *sorted(f"antelopev2/{n}" for n in contents)]


@pytest.mark.parametrize(
    ("pack", "member", "bad", "problem"),
    [
        ("antelopev2", "glintr100.onnx", onnx_bytes("GLINTR100.ONNX"), "checksum mismatch"),
        # No published checksum for buffalo_l's unused members: the ONNX parse refuses a cut file.
        ("buffalo_l", "genderage.onnx", onnx_bytes("genderage.onnx")[:-7], "not a readable ONNX model"),
    ],
    ids=["pinned-member", "unpinned-member"],
)
def test_pack_with_a_bad_member_installs_nothing(server, tmp_path, pack, member, bad, problem):
    contents = {e.filename: onnx_bytes(e.filename) for e in M.registry if e.pack == pack}
    entries = [dataclasses.replace(e, size=None) if not e.sha256 else e for e in pack_entries(pack, contents)]
    server.files[f"/{M.PACK_ARCHIVES[pack]}"] = pack_zip(dict(contents, **{member: bad}), wrapper="")
    with pytest.raises(ModelFileError, match=f"{member} in {pack}.zip: .*{problem}.*; nothing was installed"):
        M.download([pack], paths_for(tmp_path), entries=entries, mirror=server.base, allow_http=True, **KW)
    assert tree(tmp_path / "models" / "insightface") == ["models", f"models/{pack}"]


def test_unknown_names(tmp_path):
    out = io.StringIO()
    assert M.main(["download", "pulid-v9", "--models-dir", str(tmp_path / "m")], out=out) == 1
    assert out.getvalue().startswith("error: Unknown model 'pulid-v9'. Known names: antelopev2, buffalo_l, pulid,")
    assert not (tmp_path / "m").exists()
