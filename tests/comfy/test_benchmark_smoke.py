"""`python -m benchmarks` keeps running (tiny models, numbers not checked): with the archived
anchor when its folder is there, and saying it is absent when it is not."""

import json
import os
import subprocess
import sys

import pytest

import comfy_harness

pytestmark = pytest.mark.comfy


def run_benchmark(out_dir, anchor_dir=None, extra=(), pythonpath=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("PULID_ANCHOR_DIR", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    args = [sys.executable, "-m", "benchmarks", "--tiny", "--out-dir", str(out_dir), *extra]
    if anchor_dir is not None:
        args += ["--anchor-dir", str(anchor_dir)]
    run = subprocess.run(args, cwd=comfy_harness.REPO, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    stem = "cpu_steady_heap" if "--steady-heap" in extra else "cpu"  # a steady-heap run has its own file
    data = json.loads((out_dir / f"{stem}.json").read_text())
    assert (out_dir / f"{stem}.md").read_text().strip() == run.stdout.strip()
    assert not (out_dir / ("cpu.md" if stem != "cpu" else "cpu_steady_heap.md")).exists()
    assert "| 64² |" in run.stdout and "## Targets (v1 fidelity)" in run.stdout
    return run.stdout, data


def test_benchmark_package_runs_with_the_anchor_when_present(tmp_path):
    from benchmarks import models

    stdout, data = run_benchmark(tmp_path)
    fidelity = data["modes"]["v1 fidelity"]
    assert fidelity["counts"]["ours"]["kernels"] > 0
    # The CPU fp32 call and the fused path GPUs run are both counted, neither reads back.
    assert fidelity["counts"]["ours_fused"]["kernels_added"] <= 10
    assert fidelity["counts"]["ours"]["syncs_added"] == fidelity["counts"]["ours_fused"]["syncs_added"] == 0
    assert "CPU memory: glibc malloc defaults" in stdout
    step = fidelity["resolutions"]["64"]["step_ours"]
    assert step["n"] == 3 and step["q1_s"] <= step["median_s"] <= step["q3_s"]
    assert data["steps"]["64"]["median_s"] > 0  # the unpatched whole step, the share's denominator
    if (models.DEFAULT_ANCHOR_DIR / "pulid.py").is_file():
        assert data["anchor"] and "Anchor: its own" in stdout
        assert fidelity["resolutions"]["64"]["step_anchor"]["n"] == 3
        assert "anchor" in fidelity["counts"]
    else:
        assert "**Anchor absent**" in stdout


def test_steady_heap_reruns_with_the_allocator_settings(tmp_path):
    stdout, data = run_benchmark(tmp_path / "out", anchor_dir=tmp_path / "no_anchor_here", extra=("--steady-heap",))
    assert "CPU memory: steady heap: MALLOC_MMAP_THRESHOLD_=33554432, MALLOC_TRIM_THRESHOLD_=" in stdout
    assert data["machine"]["malloc_env"]["MALLOC_MMAP_THRESHOLD_"] == "33554432"


def test_benchmark_says_when_the_anchor_is_absent(tmp_path):
    stdout, data = run_benchmark(tmp_path / "out", anchor_dir=tmp_path / "no_anchor_here")
    assert "**Anchor absent**" in stdout and "no_anchor_here" in stdout
    assert data["anchor"] is None
    assert all(r["step_anchor"] is None for r in data["modes"]["v1 fidelity"]["resolutions"].values())
    assert "| ID branch per step ≤ 0.3× the anchor at 64² | anchor absent | not measured |" in stdout


# -- PuLID-FLUX --------------------------------------------------------------------------------

def test_flux_benchmark_runs_and_its_step_and_ratio_add_up(tmp_path):
    """`--flux --tiny`: ComfyUI's FLUX blocks and the pack's 20 insertions at tiny sizes; the step is
    19 double + 38 single blocks and the ratio is the 20 insertions over it, per repetition; a
    cpu.md written by another run keeps its part."""
    import statistics

    (tmp_path / "cpu.md").write_text("# the SDXL table of an earlier run\n")
    (tmp_path / "cpu.json").write_text(json.dumps({"modes": {"v1 fidelity": {}}}))
    args = [sys.executable, "-m", "benchmarks", "--flux", "--tiny", "--out-dir", str(tmp_path)]
    run = subprocess.run(args, cwd=comfy_harness.REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "## PuLID-FLUX: the 20 insertions per FLUX.1 step" in run.stdout and "| 64² | 8 + 16 |" in run.stdout
    md = (tmp_path / "cpu.md").read_text()
    assert md.startswith("# the SDXL table of an earlier run\n") and run.stdout.strip() in md
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["modes"] == {"v1 fidelity": {}}  # the other run's results are kept
    flux = data["flux"]
    assert flux["tiny"] and flux["vram"] is None and flux["ca_sizes"]["tokens"] == 32
    for res, tokens in (("64", 16), ("128", 64)):
        r = flux["resolutions"][res]
        assert r["image_tokens"] == tokens and r["insertions"] == {"double": 10, "single": 10}
        t = r["times_s"]
        assert all(len(v) == 3 and min(v) > 0 for v in t.values())
        step = [19 * d + 38 * s for d, s in zip(t["double"], t["single"])]
        ca20 = [a + b for a, b in zip(t["ca_double"], t["ca_single"])]
        assert r["step"]["median_s"] == pytest.approx(statistics.median(step))
        assert r["ca20"]["median_s"] == pytest.approx(statistics.median(ca20))
        assert r["ratio"]["median_s"] == pytest.approx(statistics.median(c / s for c, s in zip(ca20, step)))
        assert r["double"]["median_s"] == pytest.approx(statistics.median(t["double"]))


def test_the_sdxl_and_flux_parts_of_cpu_md_replace_only_themselves():
    from benchmarks import report

    both = report.merge_markdown("", sdxl="# SDXL v1\n", flux="## FLUX v1\n")
    assert both.index("# SDXL v1") < both.index("## FLUX v1")
    assert report.merge_markdown(both, sdxl="# SDXL v2") == both.replace("# SDXL v1", "# SDXL v2")
    assert report.merge_markdown(both, flux="## FLUX v2") == both.replace("## FLUX v1", "## FLUX v2")
    assert report.merge_json({"modes": 1, "flux": 2}, sdxl={"modes": 3}) == {"modes": 3, "flux": 2}
    assert report.merge_json({"modes": 1, "flux": 2}, flux=4) == {"modes": 1, "flux": 4}


# -- the face encode ---------------------------------------------------------------------------

def test_encode_benchmark_times_every_stage_and_they_add_up_to_the_total(tmp_path):
    """`--encode --tiny`: one 'Encode Face' call per repetition, each stage timed inside it; the stages
    plus the rest are the measured total, per repetition, for the cold call and the warm ones; cpu.md
    written by other runs keeps their parts."""
    import statistics

    from benchmarks import cases

    (tmp_path / "cpu.md").write_text("# the SDXL table of an earlier run\n")
    (tmp_path / "cpu.json").write_text(json.dumps({"modes": {"v1 fidelity": {}}, "flux": {"tiny": True}}))
    args = [sys.executable, "-m", "benchmarks", "--encode", "--tiny", "--out-dir", str(tmp_path)]
    run = subprocess.run(args, cwd=comfy_harness.REPO, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "## Face encode: one photo through 'Encode Face', per stage" in run.stdout
    assert "SCRFD and ArcFace are the tests' synthetic ONNX graphs" in run.stdout  # stand-ins said
    md = (tmp_path / "cpu.md").read_text()
    assert md.startswith("# the SDXL table of an earlier run\n") and run.stdout.strip() in md
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["modes"] == {"v1 fidelity": {}} and data["flux"] == {"tiny": True}
    enc = data["encode"]
    assert enc["tiny"] and enc["vram"] is None and enc["sizes"]["id_tokens"][0] == 32
    stages = (*cases.ENCODE_STAGES, "rest")
    for key, n in (("cold_s", 1), ("warm_s", 3)):
        t = enc[key]
        assert set(t) == {*stages, "total"} and all(len(v) == n for v in t.values())
        for name in cases.ENCODE_STAGES:  # every stage ran inside every timed call
            assert min(t[name]) > 0, (key, name)
        for r in range(n):
            assert sum(t[s][r] for s in stages) == pytest.approx(t["total"][r], rel=1e-9)
            assert t["rest"][r] >= 0  # the stages happen inside the total: none counted twice
    assert enc["warm"]["total"]["median_s"] == pytest.approx(statistics.median(enc["warm_s"]["total"]))
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "|---" not in line]
    assert len(rows) == 1 + len(stages) + 1  # header, the stages and the rest, the total
    assert rows[-1].startswith("| **total** |") and rows[-1].endswith("| 100.0% |")


def test_the_encode_section_of_cpu_md_replaces_only_itself():
    from benchmarks import report

    every = report.merge_markdown("", sdxl="# SDXL v1\n", flux="## FLUX v1\n", encode="## encode v1\n")
    assert every.index("# SDXL v1") < every.index("## FLUX v1") < every.index("## encode v1")
    assert report.merge_markdown(every, encode="## encode v2") == every.replace("## encode v1", "## encode v2")
    assert report.merge_markdown(every, flux="## FLUX v2") == every.replace("## FLUX v1", "## FLUX v2")
    assert report.merge_markdown(every, sdxl="# SDXL v2") == every.replace("# SDXL v1", "# SDXL v2")
    only_encode = report.merge_markdown("# SDXL v1\n", encode="## encode v1")
    assert report.merge_markdown(only_encode, flux="## FLUX v1") == every
    assert report.merge_json({"modes": 1, "flux": 2, "encode": 5}, sdxl={"modes": 3}) == \
        {"modes": 3, "flux": 2, "encode": 5}
    assert report.merge_json({"modes": 1, "flux": 2}, encode=6) == {"modes": 1, "flux": 2, "encode": 6}


# Packages an image may lack (the GPU image has none of these): hidden from the import system,
# except where found under a folder named in KIT.
HIDE_PACKAGES = """
import importlib.machinery, sys
HIDDEN = {hidden!r}
KIT = {kit!r}
class Hidden(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and name.split(".")[0] in HIDDEN and not (KIT and str(spec.origin).startswith(KIT)):
            return None
        return spec
sys.meta_path[:] = [Hidden if m is importlib.machinery.PathFinder else m for m in sys.meta_path]
"""


def hiding(folder, hidden, kit=""):
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HIDE_PACKAGES.format(hidden=set(hidden), kit=str(kit)))
    return folder


def test_anchor_imports_without_its_face_pipeline_packages(tmp_path):
    from benchmarks import models

    if not (models.DEFAULT_ANCHOR_DIR / "pulid.py").is_file():
        pytest.skip("the archived anchor is not beside the repository")
    hide = hiding(tmp_path / "hide", {"insightface", "facexlib", "ftfy"})
    stdout, data = run_benchmark(tmp_path / "out", pythonpath=hide)
    assert data["anchor"], stdout
    assert "(its unused `ftfy`, `insightface`, `facexlib` imports stubbed)" in stdout
    assert "anchor" in data["modes"]["v1 fidelity"]["counts"]


def test_device_kit_carries_what_the_gpu_image_lacks(tmp_path):
    """scripts/device_kit.sh + device_bench.sh (the GPU session's one command), here on the CPU with
    tiny models, where the packages the GPU image lacks and the kit carries or stands in for are hidden."""
    from benchmarks import models

    if not (models.DEFAULT_ANCHOR_DIR / "pulid.py").is_file():
        pytest.skip("the archived anchor is not beside the repository")
    kit = tmp_path / "kit"
    env = {**os.environ, "PULID_DEVKIT": str(kit), "PYTHON": sys.executable,
           "COMFYUI_DIR": str(comfy_harness.comfyui_dir()), "PULID_ANCHOR_DIR": str(models.DEFAULT_ANCHOR_DIR)}
    built = subprocess.run(["bash", str(comfy_harness.REPO / "scripts" / "device_kit.sh")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    hide = hiding(tmp_path / "hide", {"av", "facexlib", "insightface", "ftfy"}, kit=kit)
    env.update(DEVICE="cpu", TINY="1", OUT=str(tmp_path / "out"), PYTHONPATH=str(hide))
    env.pop("COMFYUI_DIR"), env.pop("PULID_ANCHOR_DIR")  # the kit's own, as on the device
    ran = subprocess.run(["bash", str(comfy_harness.REPO / "scripts" / "device_bench.sh")], env=env,
                         capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    report = (tmp_path / "out" / "cpu.md").read_text()
    for section in ("## v1 fidelity", "## PuLID-FLUX", "## Face encode"):
        assert section in report
    assert f"imported from `{kit}/anchor/PuLID_ComfyUI`" in report
