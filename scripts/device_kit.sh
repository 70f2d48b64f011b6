#!/usr/bin/env bash
# Builds .devkit/ (git-ignored, about 30 MB): what the GPU benchmarks need on a device machine that
# has PyTorch, onnxruntime and OpenCV but neither ComfyUI nor this pack's other dependencies, and
# cannot download anything. Run it here, then run scripts/device_bench.sh there with .devkit
# carried along (see the README's Performance section).
#
#   scripts/device_kit.sh
#
# It copies: the ComfyUI 0.3.75 tree that scripts/setup_env.sh unpacked (COMFYUI_DIR to pick
# another), the archived anchor (PULID_ANCHOR_DIR, default ../shared/anchors/PuLID_ComfyUI), the
# pure-Python package facexlib (a requirement of this pack) from this checkout's .venv, and writes a
# stand-in for PyAV (ComfyUI imports it for video types; the benchmarks decode no video, and its wheel is 35 MB).
# PULID_DEVKIT puts the kit elsewhere (scripts/device_bench.sh reads the same variable).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PULID_CACHE:-$HOME/.cache/comfyui-pulid}"
comfy="${COMFYUI_DIR:-$cache/ComfyUI-0.3.75}"
anchor="${PULID_ANCHOR_DIR:-$here/../shared/anchors/PuLID_ComfyUI}"
python="${PYTHON:-$here/.venv/bin/python}"
kit="${PULID_DEVKIT:-$here/.devkit}"
[ -f "$comfy/comfy/model_management.py" ] || { echo "no ComfyUI at $comfy: run scripts/setup_env.sh first" >&2; exit 1; }
[ -f "$anchor/pulid.py" ] || { echo "no anchor at $anchor (set PULID_ANCHOR_DIR)" >&2; exit 1; }
[ -x "$python" ] || { echo "no $python: run scripts/setup_env.sh first" >&2; exit 1; }

rm -rf "$kit"
mkdir -p "$kit/site/av" "$kit/anchor"
# ComfyUI without its own tests, models, user data and API-node code (none of it is imported).
tar -C "$comfy" --exclude=./.git --exclude=./tests --exclude=./tests-unit --exclude=./models \
    --exclude=./user --exclude=./output --exclude=./input --exclude=./comfy_api_nodes \
    --exclude='__pycache__' -cf - . | { mkdir -p "$kit/comfyui"; tar -C "$kit/comfyui" -xf -; }
mkdir -p "$kit/comfyui/models" "$kit/comfyui/comfy_api_nodes"
cp -r "$anchor" "$kit/anchor/"
site_packages="$("$python" -c 'import facexlib, os; print(os.path.dirname(os.path.dirname(facexlib.__file__)))')"
cp -r "$site_packages/facexlib" "$kit/site/"
find "$kit" -name __pycache__ -prune -exec rm -rf {} +
cat > "$kit/site/av/__init__.py" <<'PY'
"""Stand-in for PyAV (device kit of comfyui-pulid's benchmarks): ComfyUI imports it for video types
that the benchmarks never use. Every submodule exists; every name in them (and every attribute of
those) is a placeholder class that cannot be instantiated."""
import importlib.abc
import importlib.machinery
import sys
import types


class _Names(type):
    def __getattr__(cls, name):  # enum members and nested names: placeholders too
        return __getattr__(name)


class _Placeholder(metaclass=_Names):
    def __init__(self, *args, **kwargs):
        raise ImportError("PyAV is not installed here (benchmark device kit)")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Names(name, (_Placeholder,), {})


class _Submodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self, is_package=True) if name.startswith("av.") else None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__, module.__getattr__ = [], __getattr__
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Submodules())
PY
du -sh "$kit"
