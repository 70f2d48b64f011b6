"""`python -m benchmarks` keeps running (tiny models, numbers not checked): with the archived
anchor when its folder is there, and saying it is absent when it is not."""

import json
import os
import subprocess
import sys

import pytest

import comfy_harness

pytestmark = pytest.mark.comfy


def run_benchmark(out_dir, anchor_dir=None):
    env = dict(os.environ)
    env.pop("PULID_ANCHOR_DIR", None)
    args = [sys.executable, "-m", "benchmarks", "--tiny", "--out-dir", str(out_dir)]
    if anchor_dir is not None:
        args += ["--anchor-dir", str(anchor_dir)]
    run = subprocess.run(args, cwd=comfy_harness.REPO, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    data = json.loads((out_dir / "cpu.json").read_text())
    assert (out_dir / "cpu.md").read_text().strip() == run.stdout.strip()
    assert "| 64² |" in run.stdout and "## Targets (v1 fidelity)" in run.stdout
    return run.stdout, data


def test_benchmark_package_runs_with_the_anchor_when_present(tmp_path):
    from benchmarks import models

    stdout, data = run_benchmark(tmp_path)
    fidelity = data["modes"]["v1 fidelity"]
    assert fidelity["counts"]["ours"]["kernels"] > 0
    step = fidelity["resolutions"]["64"]["step_ours"]
    assert step["n"] == 3 and step["q1_s"] <= step["median_s"] <= step["q3_s"]
    assert data["steps"]["64"]["median_s"] > 0  # the unpatched whole step, the share's denominator
    if (models.DEFAULT_ANCHOR_DIR / "pulid.py").is_file():
        assert data["anchor"] and "Anchor: its own" in stdout
        assert fidelity["resolutions"]["64"]["step_anchor"]["n"] == 3
        assert "anchor" in fidelity["counts"]
    else:
        assert "**Anchor absent**" in stdout


def test_benchmark_says_when_the_anchor_is_absent(tmp_path):
    stdout, data = run_benchmark(tmp_path / "out", anchor_dir=tmp_path / "no_anchor_here")
    assert "**Anchor absent**" in stdout and "no_anchor_here" in stdout
    assert data["anchor"] is None
    assert all(r["step_anchor"] is None for r in data["modes"]["v1 fidelity"]["resolutions"].values())
    assert "| ID branch per step ≤ 0.3× the anchor at 64² | anchor absent | not measured |" in stdout
