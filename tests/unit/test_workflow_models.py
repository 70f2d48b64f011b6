"""The shipped workflows declare the model files their loader nodes name (``properties.models``).

ComfyUI's frontend reads ``name``/``url``/``directory`` from there to offer a download when a
file is missing; the browser tier checks that it does. Here: every loader declares exactly the
file its widget names, with the model registry's folder and direct link.
"""

import json
from pathlib import Path

import pytest

from pulid_core.models.registry import registry

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Loader node -> the models folder its first widget names a file in.
LOADERS = {"CheckpointLoaderSimple": "checkpoints", "PuLIDModelLoader": "pulid", "PuLIDEvaClipLoader": "eva_clip",
           "PuLIDPhotoMakerLoader": "photomaker"}


def _loaders(path):
    return [n for n in json.loads(path.read_text())["nodes"] if n["type"] in LOADERS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_loader_declares_the_file_it_names(path):
    loaders = _loaders(path)
    assert loaders, f"{path.name} loads no model"
    for node in loaders:
        declared = node.get("properties", {}).get("models")
        assert declared, f"{path.name} node {node['id']} {node['type']} declares no properties.models"
        assert [(m["name"], m["directory"]) for m in declared] == [(node["widgets_values"][0], LOADERS[node["type"]])]
        for model in declared:
            assert set(model) == {"name", "url", "directory"}
            # The frontend downloads the url itself: a file link, never a web page.
            assert model["url"].startswith("https://") and "/blob/" not in model["url"]
            if "huggingface.co" in model["url"]:
                assert f"/resolve/main/{model['name']}" in model["url"] or model["url"].endswith("/" + model["name"])


def test_pack_files_are_declared_with_the_registrys_link(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("PULID_MODELS_MIRROR", raising=False)
    by_file = {(e.folder, e.filename): e for e in registry if not getattr(e, "pack", None)}
    seen = 0
    for path in WORKFLOWS:
        for node in _loaders(path):
            for model in node["properties"]["models"]:
                if model["directory"] == "checkpoints":
                    continue
                entry = by_file[(model["directory"], model["name"])]
                assert model["url"] == entry.url(hf_endpoint="https://huggingface.co"), (path.name, model["name"])
                seen += 1
    assert seen >= 8
