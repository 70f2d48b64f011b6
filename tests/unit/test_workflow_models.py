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
LOADERS = {"CheckpointLoaderSimple": "checkpoints", "UNETLoader": "diffusion_models", "PuLIDModelLoader": "pulid",
           "PuLIDEvaClipLoader": "eva_clip", "PuLIDPhotoMakerLoader": "photomaker"}


def _nodes(path):
    return json.loads(path.read_text())["nodes"]


def _loaders(path):
    return [n for n in _nodes(path) if n["type"] in LOADERS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_loader_declares_the_file_it_names(path):
    for node in _loaders(path):
        declared = node.get("properties", {}).get("models")
        assert declared, f"{path.name} node {node['id']} {node['type']} declares no properties.models"
        assert [(m["name"], m["directory"]) for m in declared] == [(node["widgets_values"][0], LOADERS[node["type"]])]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_declared_models_are_direct_links_to_files_the_node_names(path):
    for node in _nodes(path):
        declared = node.get("properties", {}).get("models", [])
        # The frontend only offers entries whose name is one of the node's widget values.
        widget_values = {v for v in node.get("widgets_values") or [] if isinstance(v, str)}
        for model in declared:
            assert model["name"] in widget_values, f"{path.name} node {node['id']}: {model['name']}"
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
        for node in _nodes(path):
            for model in node.get("properties", {}).get("models", []):
                entry = by_file.get((model["directory"], model["name"]))
                if entry is None:  # checkpoints and other files the pack's registry does not list
                    continue
                assert model["url"] == entry.url, (path.name, model["name"])
                seen += 1
    assert seen >= 8
