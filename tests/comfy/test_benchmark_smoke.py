"""The benchmark script keeps running (tiny models, no whole steps): it is not timed here."""

import json
import subprocess
import sys

import pytest

import comfy_harness

pytestmark = pytest.mark.comfy


def test_benchmark_runs_end_to_end_on_tiny_models(tmp_path):
    script = comfy_harness.REPO / "benchmarks" / "bench_pulid.py"
    run = subprocess.run([sys.executable, str(script), "--tiny", "--skip-steps", "--out-dir", str(tmp_path)],
                         cwd=comfy_harness.REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    results = list(tmp_path.glob("*.json"))
    assert results, run.stdout[-2000:]
    data = json.loads(results[0].read_text())
    assert data
    assert "|" in run.stdout  # the markdown table is printed
