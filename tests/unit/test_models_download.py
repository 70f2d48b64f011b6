"""``download`` against a small HTTP server on 127.0.0.1: normal file, resume after a cut,
servers without Range, wrong checksum, 404, offline, mirrors and insightface zip packs."""

import dataclasses
import hashlib
import io
import os
import random
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pulid_core import models as M
from pulid_core.errors import ModelFileError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        srv.auth.append(self.headers.get("Authorization"))
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and self.path not in srv.no_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.path in srv.cut_once:
            # Send part of the body, then drop the connection, as a flaky network does.
            srv.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # urllib honours proxy variables; the test server is local.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_once, srv.no_range = {}, [], set(), set()
    srv.redirects, srv.auth = {}, []
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


def payload(n, seed=0):
    return random.Random(seed).randbytes(n)


def onnx_bytes(producer):
    """A small valid ONNX model, told apart by its producer name."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, producer_name=producer).SerializeToString()


def sha(data):
    return hashlib.sha256(data).hexdigest()


KW = {"progress": False, "retry_wait": 0, "timeout": 5}


def test_normal_file(server, tmp_path):
    data = payload(300_000)
    server.files["/f.dat"] = data
    dest = tmp_path / "sub" / "f.dat"
    M.fetch_file(server.base + "/f.dat", str(dest), size=len(data), sha256=sha(data), **KW)
    assert dest.read_bytes() == data
    assert not Path(str(dest) + ".part").exists()
    assert server.requests == [("/f.dat", None)]


def test_resume_after_a_cut(server, tmp_path):
    data = payload(3_000_000)
    server.files["/big.dat"] = data
    server.cut_once.add("/big.dat")
    dest = tmp_path / "big.dat"
    part = Path(str(dest) + ".part")
    with pytest.raises(ModelFileError, match="broke off .*Run the same command again to resume") as exc:
        M.fetch_file(server.base + "/big.dat", str(dest), size=len(data), sha256=sha(data), retries=0, **KW)
    kept = part.stat().st_size
    assert 0 < kept < len(data) and f"{kept:,} bytes are kept in {part}" in str(exc.value)
    assert part.read_bytes() == data[:kept] and not dest.exists()
    # The next run asks only for the rest.
    M.fetch_file(server.base + "/big.dat", str(dest), size=len(data), sha256=sha(data), retries=0, **KW)
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests == [("/big.dat", None), ("/big.dat", f"bytes={kept}-")]


def test_retries_resume_within_one_call(server, tmp_path):
    data = payload(2_000_000, seed=3)
    server.files["/r.dat"] = data
    server.cut_once.add("/r.dat")
    dest = tmp_path / "r.dat"
    M.fetch_file(server.base + "/r.dat", str(dest), sha256=sha(data), retries=2, **KW)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2 and server.requests[1][1].startswith("bytes=")


def test_server_without_range_support_restarts(server, tmp_path):
    data = payload(100_000, seed=5)
    server.files["/n.dat"] = data
    server.no_range.add("/n.dat")
    dest = tmp_path / "n.dat"
    Path(str(dest) + ".part").write_bytes(b"stale bytes from another attempt")
    M.fetch_file(server.base + "/n.dat", str(dest), size=len(data), sha256=sha(data), **KW)
    assert dest.read_bytes() == data


def test_complete_part_is_not_fetched_again(server, tmp_path):
    data = payload(5000)
    server.files["/c.dat"] = data
    dest = tmp_path / "c.dat"
    Path(str(dest) + ".part").write_bytes(data)
    M.fetch_file(server.base + "/c.dat", str(dest), sha256=sha(data), **KW)  # size unknown: server says 416
    assert dest.read_bytes() == data
    assert server.requests == [("/c.dat", "bytes=5000-")]


def test_wrong_checksum_deletes_the_download(server, tmp_path):
    data = payload(50_000)
    server.files["/w.dat"] = data
    dest = tmp_path / "w.dat"
    with pytest.raises(ModelFileError) as exc:
        M.fetch_file(server.base + "/w.dat", str(dest), size=len(data), sha256="ab" * 32, **KW)
    assert (
        f"w.dat: checksum mismatch (sha256 {sha(data)}, expected {'ab' * 32}); the download was deleted"
        in str(exc.value)
    )
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_error_page_served_as_the_file_is_not_kept(server, tmp_path):
    server.files["/m.safetensors"] = b"<!DOCTYPE html><html>Please log in</html>"
    dest = tmp_path / "m.safetensors"
    with pytest.raises(ModelFileError) as exc:
        M.fetch_file(server.base + "/m.safetensors", str(dest), **KW)
    assert str(exc.value) == (
        f"m.safetensors from {server.base}/m.safetensors: it is a web page, not the model (a failed or "
        "blocked download); the download was deleted."
    )
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_wrong_length_is_refused_before_downloading(server, tmp_path):
    server.files["/l.dat"] = payload(1000)
    dest = tmp_path / "l.dat"
    with pytest.raises(ModelFileError, match="serves 1,000 bytes but l.dat has 999"):
        M.fetch_file(server.base + "/l.dat", str(dest), size=999, **KW)
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_404(server, tmp_path):
    dest = tmp_path / "models" / "pulid" / "x.safetensors"
    with pytest.raises(ModelFileError) as exc:
        M.fetch_file(server.base + "/missing", str(dest), page="https://example.org/x", **KW)
    assert str(exc.value) == (
        f"{server.base}/missing answered 404 Not Found: the file moved or the mirror lacks it. Download "
        f"x.safetensors from https://example.org/x by hand and put it in {dest.parent}."
    )


def test_offline_message(refused_url, tmp_path):
    dest = tmp_path / "models" / "facexlib" / "detection_Resnet50_Final.pth"
    entry = M.get("facexlib-detection")
    with pytest.raises(ModelFileError) as exc:
        M.fetch_file(refused_url + "/x.pth", str(dest), page=entry.page, **KW)
    msg = str(exc.value)
    assert msg.startswith(f"No network (could not reach {refused_url[len('http://') :]}")
    assert msg.endswith(
        f"Download detection_Resnet50_Final.pth from {entry.page} and put it in {dest.parent}."
    )


def _paths(tmp_path):
    return M.ModelPaths.for_models_dir(str(tmp_path / "models"), hf_hub_cache=None, facexlib_weights_dir=None)


def _safetensors_bytes(seed):
    import torch
    from safetensors.torch import save

    return save({"w": torch.arange(64, dtype=torch.float32) + seed})


def _torch_bytes():
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.ones(8)}, buf)
    return buf.getvalue()


def test_download_uses_hf_endpoint_and_github_mirror(server, tmp_path, monkeypatch):
    pulid, det = _safetensors_bytes(1), _torch_bytes()
    entries = [
        dataclasses.replace(M.get("pulid-v1"), size=len(pulid), sha256=sha(pulid)),
        dataclasses.replace(M.get("facexlib-detection"), size=len(det), sha256=sha(det)),
    ]
    server.files["/huchenlei/ipadapter_pulid/resolve/main/ip-adapter_pulid_sdxl_fp16.safetensors"] = pulid
    server.files["/gh/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"] = det
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("PULID_MODELS_MIRROR", server.base + "/gh")
    paths = _paths(tmp_path)
    written = M.download(["pulid-v1", "facexlib-detection"], paths, entries=entries, **KW)
    models = tmp_path / "models"
    assert written == [
        str(models / "pulid" / "ip-adapter_pulid_sdxl_fp16.safetensors"),
        str(models / "facexlib" / "detection_Resnet50_Final.pth"),
    ]
    assert Path(written[0]).read_bytes() == pulid and Path(written[1]).read_bytes() == det
    # Present files are not fetched again, and check agrees they are fine.
    assert M.download(["pulid-v1", "facexlib-detection"], paths, entries=entries, **KW) == []
    assert len(server.requests) == 2
    assert [f.status for f in M.check(paths, entries, verify=True)] == [M.PRESENT, M.PRESENT]


def test_hf_token_is_sent_to_the_hub_only(server, tmp_path, monkeypatch):
    data = _safetensors_bytes(2)
    entry = dataclasses.replace(M.get("pulid-v1.1"), size=len(data), sha256=sha(data))
    server.redirects["/guozinan/PuLID/resolve/main/pulid_v1.1.safetensors"] = server.base + "/cdn/blob"
    server.files["/cdn/blob"] = data
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    M.download(["pulid-v1.1"], _paths(tmp_path), entries=[entry], hf_endpoint=server.base, **KW)
    assert (tmp_path / "models" / "pulid" / "pulid_v1.1.safetensors").read_bytes() == data
    assert [r[0] for r in server.requests] == [
        "/guozinan/PuLID/resolve/main/pulid_v1.1.safetensors",
        "/cdn/blob",
    ]
    assert server.auth == ["Bearer hf_secret", None]


def _pack_zip(files, wrapper="antelopev2/"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        if wrapper:
            z.writestr(wrapper, b"")  # the folder entry that makes in-place unzips nest
        for name, data in files.items():
            z.writestr(wrapper + name, data)
    return buf.getvalue()


def _pack_entries(contents):
    return [
        dataclasses.replace(e, size=len(contents[e.filename]), sha256=sha(contents[e.filename]))
        for e in M.registry
        if e.pack == "antelopev2"
    ]


def test_download_pack_extracts_flat(server, tmp_path):
    contents = {e.filename: onnx_bytes(e.filename) for e in M.registry if e.pack == "antelopev2"}
    entries = _pack_entries(contents)
    server.files["/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"] = _pack_zip(contents)
    paths = _paths(tmp_path)
    written = M.download(["antelopev2"], paths, entries=entries, mirror=server.base, **KW)
    pack = tmp_path / "models" / "insightface" / "models" / "antelopev2"
    assert sorted(written) == sorted(str(pack / n) for n in contents)
    for name, data in contents.items():
        assert (pack / name).read_bytes() == data
    assert sorted(os.listdir(pack)) == sorted(contents)  # no nested antelopev2/antelopev2, no zip left
    assert os.listdir(pack.parent) == ["antelopev2"]


def test_download_pack_checks_members(server, tmp_path):
    contents = {e.filename: onnx_bytes(e.filename) for e in M.registry if e.pack == "antelopev2"}
    entries = _pack_entries(contents)
    # Same size, other bytes: only the checksum can tell.
    tampered = dict(contents, **{"glintr100.onnx": onnx_bytes("GLINTR100.ONNX")})
    server.files["/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"] = _pack_zip(
        tampered, wrapper=""
    )
    paths = _paths(tmp_path)
    with pytest.raises(ModelFileError, match="glintr100.onnx in antelopev2.zip: checksum mismatch"):
        M.download(["antelopev2"], paths, entries=entries, mirror=server.base, **KW)
    # Nothing of the pack is installed (scrfd comes before glintr100 in the archive), no debris.
    pack_parent = tmp_path / "models" / "insightface" / "models"
    assert os.listdir(pack_parent) == ["antelopev2"] and os.listdir(pack_parent / "antelopev2") == []


def test_download_command_offline_and_unknown_names(refused_url, tmp_path):
    out = io.StringIO()
    code = M.main(
        [
            "download",
            "pulid-v1",
            "--models-dir",
            str(tmp_path / "m"),
            "--hf-endpoint",
            refused_url,
            "--no-progress",
        ],
        out=out,
    )
    assert code == 1
    assert out.getvalue().startswith("error: No network (could not reach 127.0.0.1:")
    assert f"put it in {tmp_path / 'm' / 'pulid'}." in out.getvalue()
    out = io.StringIO()
    assert M.main(["download", "pulid-v9", "--models-dir", str(tmp_path / "m")], out=out) == 1
    assert out.getvalue().startswith(
        "error: Unknown model 'pulid-v9'. Known names: antelopev2, buffalo_l, pulid,"
    )
