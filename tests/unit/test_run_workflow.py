"""scripts/run_workflow.py without starting ComfyUI: argument checks, the user's files, the log, progress."""

import json
import logging
import sys
import types
from pathlib import Path

import pytest

import comfy_harness
from tests.runner_fakes import install, run_workflow

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "workflows" / "smoke_txt2img.json"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    return install(monkeypatch, tmp_path, {"1": {"class_type": "SaveImage", "inputs": {}}})


@pytest.fixture
def no_server(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ComfyUI was started")

    monkeypatch.setattr(comfy_harness, "ComfyServer", refuse)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- checked before ComfyUI starts ---------------------------------------------------
def test_missing_workflow_is_refused_before_comfyui_starts(no_server, tmp_path, caplog):
    assert run_workflow.main([str(tmp_path / "pulid_v1.json")]) == 2
    assert "pulid_v1.json not found" in caplog.text and "smoke_txt2img.json" in caplog.text


@pytest.mark.parametrize("content, words", [("{not json", "not a JSON file"),
                                            ('{"1": {"class_type": "KSampler"}}', "not a UI-format")])
def test_a_file_that_is_not_a_ui_workflow_is_refused(no_server, tmp_path, caplog, content, words):
    path = tmp_path / "graph.json"
    path.write_text(content)
    assert run_workflow.main([str(path)]) == 2
    assert words in caplog.text


def test_missing_image_is_refused_before_comfyui_starts(no_server, tmp_path, caplog):
    assert run_workflow.main([str(SMOKE), "--image", str(tmp_path / "face.jpg")]) == 2
    assert "face.jpg: no such file" in caplog.text


def test_missing_models_folder_is_refused(no_server, tmp_path, caplog):
    assert run_workflow.main([str(SMOKE), "--models", str(tmp_path / "modles")]) == 2
    assert "modles: no such folder" in caplog.text


def test_check_only_stops_after_the_checks(no_server):
    assert run_workflow.main([str(SMOKE), "--check-only"]) == 0


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        run_workflow.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    parser_options = ("workflow", "--models", "--image", "--out")
    assert all(option in text for option in parser_options)
    assert text.count("(default:") == len(parser_options)
    for default in ("workflows/smoke_txt2img.json", "out/", "Tom_Hanks_54745.png", "models folder"):
        assert default in text


# -- the user's files ---------------------------------------------------------------
def test_earlier_pngs_are_never_overwritten(fake, tmp_path):
    out = tmp_path / "out"
    assert run_workflow.main([str(SMOKE), "--out", str(out)]) == 0
    assert run_workflow.main([str(SMOKE), "--out", str(out)]) == 0
    assert _tree(out) == ["ComfyUI_00001_.png", "ComfyUI_00001__2.png"]
    assert (out / "ComfyUI_00001_.png").read_bytes() == b"image of run 1"
    assert (out / "ComfyUI_00001__2.png").read_bytes() == b"image of run 2"


def test_unique_path_counts_past_taken_names(tmp_path):
    for name in ("a.png", "a_2.png", "a_3.png"):
        (tmp_path / name).write_bytes(b"x")
    assert run_workflow.unique_path(tmp_path, "a.png") == tmp_path / "a_4.png"
    assert run_workflow.unique_path(tmp_path, "b.png") == tmp_path / "b.png"


def test_the_users_models_folder_is_only_read(fake, tmp_path):
    models = tmp_path / "my_models"
    (models / "checkpoints").mkdir(parents=True)
    before = _tree(models)
    assert run_workflow.main([str(SMOKE), "--models", str(models), "--out", str(tmp_path / "out")]) == 0
    assert _tree(models) == before
    # The stand-ins' overlay folder does get the model-type folders (files appear there after start-up).
    overlay = fake.instances[0].base / "extra.yaml"
    assert str(models.resolve()) in overlay.read_text()


def test_write_extra_model_paths_creates_folders_only_where_asked(tmp_path):
    user, overlay = tmp_path / "user", tmp_path / "overlay"
    user.mkdir()
    comfy_harness.write_extra_model_paths(tmp_path / "x.yaml", [user, overlay], [overlay])
    assert _tree(user) == []
    assert (overlay / "pulid").is_dir() and (overlay / "checkpoints").is_dir()
    text = (tmp_path / "x.yaml").read_text()
    assert f"base_path: {user.resolve()}" in text and "  pulid: pulid" in text


# -- failures keep the log ----------------------------------------------------------
def test_a_failed_start_keeps_the_server_log_and_prints_its_path(fake, tmp_path, caplog):
    fake.fail_start = True
    out = tmp_path / "out"
    assert run_workflow.main([str(SMOKE), "--out", str(out)]) == 1
    logs = list(out.glob("comfyui-*.log"))
    assert len(logs) == 1
    assert "the real cause" in logs[0].read_text()
    assert str(logs[0]) in caplog.text
    assert "RuntimeError: ComfyUI exited with 1" in caplog.text


def test_a_successful_run_keeps_no_log(fake, tmp_path):
    out = tmp_path / "out"
    assert run_workflow.main([str(SMOKE), "--out", str(out)]) == 0
    assert not list(out.glob("*.log"))


# -- progress -----------------------------------------------------------------------
def test_sampling_progress_is_shown(monkeypatch, caplog):
    events = [b"preview", json.dumps({"type": "executing", "data": {"node": "5"}}),
              json.dumps({"type": "progress", "data": {"value": 1, "max": 4, "node": "5"}}),
              json.dumps({"type": "progress", "data": {"value": 2, "max": 4, "node": "5"}})]
    done = []

    class Socket:
        def recv(self):
            if events:
                return events.pop(0)
            done.append(True)
            raise OSError("closed")

        def close(self):
            pass

    fake_ws = types.SimpleNamespace(create_connection=lambda url, timeout: Socket(),
                                    WebSocketTimeoutException=TimeoutError, WebSocketException=RuntimeError)
    monkeypatch.setitem(sys.modules, "websocket", fake_ws)
    caplog.set_level(logging.INFO)
    stop = run_workflow.follow_progress(types.SimpleNamespace(port=1), "client")
    for _ in range(200):
        if done:
            break
        stop.wait(0.01)
    stop.set()
    assert "sampling: step 1/4 (node 5)" in caplog.text
    assert "sampling: step 2/4 (node 5)" in caplog.text


def test_repeated_image_options_feed_the_load_image_nodes_in_order(tmp_path):
    """Before: one --image, copied to every Load Image node, so a two-person workflow always got the
    same face twice. Now repeated --image options go to the distinct Load Image files in node order
    (the last one repeated), and a second missing one is refused too."""
    import comfy_harness

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    prompt = {"12": {"class_type": "LoadImage", "inputs": {"image": "face_b.png"}},
              "5": {"class_type": "LoadImage", "inputs": {"image": "face_a.png"}},
              "6": {"class_type": "LoadImage", "inputs": {"image": "face_a.png"}},
              "7": {"class_type": "KSampler", "inputs": {}}}
    args = run_workflow.parse_args([str(SMOKE), "--image", str(a), "--image", str(b)])
    comfy_harness.provide_input_images(prompt, tmp_path / "in", args.image)
    assert (tmp_path / "in" / "face_a.png").read_bytes() == b"A"
    assert (tmp_path / "in" / "face_b.png").read_bytes() == b"B"
    comfy_harness.provide_input_images(prompt, tmp_path / "one", [a])
    assert (tmp_path / "one" / "face_b.png").read_bytes() == b"A"  # the last one repeated


def test_every_image_option_is_checked(no_server, tmp_path, caplog):
    face = tmp_path / "a.png"
    face.write_bytes(b"A")
    assert run_workflow.main([str(SMOKE), "--image", str(face), "--image", str(tmp_path / "b.jpg")]) == 2
    assert "b.jpg: no such file" in caplog.text
