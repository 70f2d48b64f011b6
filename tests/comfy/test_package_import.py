"""Tier 2: the pack imports as ComfyUI imports it, with nothing of the repository on sys.path."""

import subprocess
import sys
from pathlib import Path

import pytest

import comfy_harness

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parents[2]


def test_pack_imports_as_a_package_without_the_repository_on_sys_path():
    if comfy_harness.comfyui_dir() is None:
        pytest.fail("ComfyUI not found: run scripts/setup_env.sh (or set COMFYUI_DIR)")
    script = f"""
import asyncio, sys
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})]
sys.path.insert(0, {str(REPO / 'tests')!r})
import comfy_harness
sys.path.remove({str(REPO / 'tests')!r})
pack = comfy_harness.load_pack_inprocess(share_core=False)
ids = [n.define_schema().node_id for n in asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())]
assert "pulid_core" not in sys.modules, "the pack imported a top-level pulid_core"
assert "comfyui_pulid.pulid_core.identity" in sys.modules
assert {str(REPO)!r} not in sys.path and {str(REPO) + '/'!r} not in sys.path
import nodes
assert hasattr(nodes, "NODE_CLASS_MAPPINGS"), "ComfyUI's nodes module is shadowed"
print(len(ids))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 10
