"""scripts/setup_env.sh's choice of Python and .ci/run's verdicts, with stand-in programs (nothing is built)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup_env.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _python(bin_dir: Path, name: str, version: str, venv: bool = True, runs: bool = True) -> None:
    """A stand-in python: answers the version and venv probes; has venv once apt-get installed it."""
    marker = bin_dir / f"{name}.venv-installed"
    _stub(bin_dir / name, f"""
[ {int(runs)} = 1 ] || {{ echo "pyenv: {name}: command not found" >&2; exit 127; }}
case "$*" in
  *version_info*) echo {version} ;;
  *ensurepip*) [ {int(venv)} = 1 ] || [ -e {marker} ] ;;
  *"-m venv"*) echo "venv not available in this stand-in" >&2; exit 3 ;;
esac
""")


def _setup(tmp_path, candidates, *args, uid=1000, python=None, apt_ok=True, extra_env=None):
    bin_dir = tmp_path / "bin"
    _stub(bin_dir / "id", f"echo {uid}\n")
    _stub(bin_dir / "apt-get", f"""echo "$@" >> {tmp_path / 'apt.log'}
case "$*" in *python3.13-venv*) touch {bin_dir / 'py13.venv-installed'} ;; esac
[ {int(apt_ok)} = 1 ] || {{ echo "E: Unable to locate package $*"; exit 100; }}
""")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PULID_CACHE=str(tmp_path / "cache"),
               PULID_PYTHON_CANDIDATES=" ".join(candidates))
    # The suite itself may run under test.sh --comfyui, whose variables (the real tarball's
    # checksum, the other venv) must not reach the script under test.
    for name in [n for n in env if n.startswith("PULID_") and n not in ("PULID_CACHE", "PULID_PYTHON_CANDIDATES")]:
        env.pop(name)
    for name in ("PYTHON", "COMFYUI_DIR"):
        env.pop(name, None)
    env.update(extra_env or {})
    if python:
        env["PYTHON"] = str(bin_dir / python)
    return subprocess.run(["bash", str(SETUP), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def bin_dir(tmp_path):
    (tmp_path / "bin").mkdir()
    return tmp_path / "bin"


def _chosen(run) -> str:
    assert run.returncode == 0, run.stderr
    return dict(line.split("=", 1) for line in run.stdout.splitlines())["PYTHON_CHOSEN"]


def test_the_newest_python_is_chosen(tmp_path, bin_dir):
    for name, ver in (("py13", "3.13"), ("py12", "3.12"), ("py11", "3.11")):
        _python(bin_dir, name, ver)
    assert _chosen(_setup(tmp_path, ["py13", "py12", "py11"], "--dry-run")) == "py13"


def test_a_shim_of_an_uninstalled_python_is_skipped(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13", runs=False)
    _python(bin_dir, "py11", "3.11")
    assert _chosen(_setup(tmp_path, ["py13", "py11"], "--dry-run")) == "py11"


def test_PYTHON_wins(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13")
    _python(bin_dir, "py10", "3.10")
    assert _chosen(_setup(tmp_path, ["py13", "py10"], "--dry-run", python="py10")).endswith("/py10")


def test_without_venv_and_not_root_an_older_python_with_venv_is_used(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13", venv=False)
    _python(bin_dir, "py12", "3.12")
    run = _setup(tmp_path, ["py13", "py12"], "--dry-run")
    assert _chosen(run) == "py12"
    assert "python3.13-venv is not installed" in run.stderr


def test_without_venv_and_not_root_it_says_what_to_install(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13", venv=False)
    run = _setup(tmp_path, ["py13"], "--dry-run")
    assert run.returncode == 1
    assert "sudo apt-get install python3.13-venv" in run.stderr
    assert not (tmp_path / "apt.log").exists()


def test_without_venv_as_root_the_venv_package_is_installed(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13", venv=False)
    run = _setup(tmp_path, ["py13"], uid=0)
    apt = (tmp_path / "apt.log").read_text().splitlines()
    assert apt[0] == "update"
    assert apt[1] == "install -y --no-install-recommends python3.13-venv"
    # Then the venv is created with that Python (the stand-in refuses, which ends the run).
    assert "venv not available in this stand-in" in run.stderr and run.returncode != 0


def test_a_failed_apt_get_shows_its_output(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13", venv=False)
    run = _setup(tmp_path, ["py13"], uid=0, apt_ok=False)
    assert run.returncode == 1
    assert "E: Unable to locate package" in run.stderr and "failed (output above)" in run.stderr


def test_no_python_at_all(tmp_path, bin_dir):
    run = _setup(tmp_path, ["py13", "py12"], "--dry-run")
    assert run.returncode == 1
    assert "no Python 3.10-3.13 found" in run.stderr and "PYTHON=" in run.stderr


def test_dry_run_names_the_cached_paths_and_builds_nothing(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13")
    run = _setup(tmp_path, ["py13"], "--dry-run")
    lines = dict(line.split("=", 1) for line in run.stdout.splitlines())
    assert lines["PULID_VENV"].startswith(str(tmp_path / "cache" / "venv-"))
    assert not list((tmp_path / "cache").glob("venv-*"))


def test_another_comfyui_gets_a_venv_keyed_by_its_requirements(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13")
    tree = tmp_path / "ComfyUI"
    tree.mkdir()
    (tree / "main.py").write_text("")
    (tree / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    (tree / "requirements.txt").write_text("torch\ntorchaudio\nsome-package==1\n")
    first = dict(ln.split("=", 1) for ln in _setup(tmp_path, ["py13"], "--dry-run", "--comfyui", str(tree)).stdout.splitlines())
    assert first["COMFYUI_DIR"] == str(tree)
    assert "/venv-comfyui-9.9.9-" in first["PULID_VENV"]
    (tree / "requirements.txt").write_text("torch\nsome-package==2\n")
    second = dict(ln.split("=", 1) for ln in _setup(tmp_path, ["py13"], "--dry-run", "--comfyui", str(tree)).stdout.splitlines())
    assert second["PULID_VENV"] != first["PULID_VENV"]


def test_the_pinned_venv_key_is_unchanged():
    # The cache built from requirements.txt + requirements-dev.txt stays valid.
    script = SETUP.read_text()
    assert 'cat "$here/requirements.txt" "$here/requirements-dev.txt" | sha256sum | cut -c1-12' in script


# -- .ci/run --------------------------------------------------------------------------
def _ci(tmp_path, pinned_rc: int, newer_rc: int, with_tarball: bool):
    repo = tmp_path / "clone"
    (repo / ".ci").mkdir(parents=True)
    (repo / "scripts").mkdir()
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    _stub(repo / "scripts" / "test.sh", f"""echo "test.sh $*" >> {tmp_path / 'calls'}
case "$*" in *--comfyui*) exit {newer_rc} ;; *) exit {pinned_rc} ;; esac
""")
    if with_tarball:
        (tmp_path / "shared" / "comfyui").mkdir(parents=True)
        (tmp_path / "shared" / "comfyui" / "ComfyUI-0.33.0.tar.gz").write_bytes(b"")
    run = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines()
    return run, calls


@pytest.mark.parametrize("pinned_rc, newer_rc, ok", [(0, 0, True), (1, 0, False), (0, 1, False), (0, 5, False),
                                                     (5, 0, False)])
def test_ci_runs_both_versions_and_fails_when_either_fails(tmp_path, pinned_rc, newer_rc, ok):
    run, calls = _ci(tmp_path, pinned_rc, newer_rc, with_tarball=True)
    assert (run.returncode == 0) == ok
    assert len(calls) == 2
    tarball = tmp_path / "shared" / "comfyui" / "ComfyUI-0.33.0.tar.gz"
    assert f"--comfyui {tarball} --frontend 1.58.1" in calls[1]
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("[ci] summary: ComfyUI 0.3.75: ") and "ComfyUI 0.33.0 + frontend 1.58.1: " in summary
    if newer_rc == 5:
        assert "no test ran" in summary


def test_ci_says_when_the_newer_comfyui_is_skipped(tmp_path):
    run, calls = _ci(tmp_path, 0, 0, with_tarball=False)
    assert run.returncode == 0
    assert len(calls) == 1
    assert "SKIPPED" in run.stdout.splitlines()[-1]
    assert "SKIPPING the ComfyUI 0.33.0 run" in run.stderr


# -- the ComfyUI versions CI runs on, as the README and pyproject say ---------------------
def test_versions_agree_between_ci_setup_readme_and_pyproject():
    pinned = re.search(r'^comfy_version="([\d.]+)"', SETUP.read_text(), re.M).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    newer = re.search(r"ComfyUI-([\d.]+)\.tar\.gz", ci).group(1)
    frontend = re.search(r'newer_frontend="([\d.]+)"', ci).group(1)
    # (tomllib is Python >= 3.11; the pack supports 3.10)
    spec = re.search(r'^requires-comfyui = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    # Only a lower bound: the pack patches through ComfyUI's documented hooks, so a newer release
    # is not declared incompatible before anything broke (CI says which versions were run).
    lower, upper = re.fullmatch(r">=([\d.]+)(?:,<([\d.]+))?", spec).groups()
    assert lower == pinned

    def key(v):
        return tuple(int(x) for x in v.split("."))

    assert key(pinned) < key(newer)
    assert upper is None or key(newer) < key(upper)
    readme = (ROOT / "README.md").read_text()
    for words in (f"ComfyUI **{pinned}**", f"ComfyUI **{newer}** with frontend **{frontend}**", f"`{spec}`"):
        assert words in readme


def _tarball(tmp_path) -> tuple[Path, str]:
    import hashlib
    import tarfile

    tree = tmp_path / "src" / "ComfyUI-9.9.9"
    tree.mkdir(parents=True)
    (tree / "main.py").write_text("")
    (tree / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    (tree / "requirements.txt").write_text("torch\nsome-package==1\n")
    tarball = tmp_path / "ComfyUI-9.9.9.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="ComfyUI-9.9.9")
    return tarball, hashlib.sha256(tarball.read_bytes()).hexdigest()


def test_a_tarball_is_extracted_once_into_the_cache_with_a_user_folder(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13")
    tarball, sha = _tarball(tmp_path)
    run = _setup(tmp_path, ["py13"], "--comfyui", str(tarball))  # stops at the stand-in's venv
    tree = tmp_path / "cache" / f"ComfyUI-9.9.9-{sha[:12]}"
    assert (tree / ".complete").is_file() and (tree / "user").is_dir() and (tree / "main.py").is_file()
    assert "venv not available in this stand-in" in run.stderr
    again = _setup(tmp_path, ["py13"], "--dry-run", "--comfyui", str(tarball))
    assert "extracting" not in again.stderr
    assert dict(ln.split("=", 1) for ln in again.stdout.splitlines())["COMFYUI_DIR"] == str(tree)


def test_a_tarball_with_another_checksum_is_refused(tmp_path, bin_dir, monkeypatch):
    _python(bin_dir, "py13", "3.13")
    tarball, sha = _tarball(tmp_path)
    run = _setup(tmp_path, ["py13"], "--dry-run", "--comfyui", str(tarball),
                 extra_env={"PULID_COMFYUI_SHA256": "0" * 64})
    assert run.returncode == 1 and f"sha256 {sha}, expected" in run.stderr


def test_PYTHON_of_another_version_than_the_cached_venv_gets_its_own_venv(tmp_path, bin_dir):
    _python(bin_dir, "py13", "3.13")
    _python(bin_dir, "py11", "3.11")
    first = _setup(tmp_path, ["py11"], "--dry-run")
    cached = Path(dict(line.split("=", 1) for line in first.stdout.splitlines())["PULID_VENV"])
    (cached / "bin").mkdir(parents=True)
    shutil.copy(bin_dir / "py11", cached / "bin" / "python")
    (cached / ".complete").touch()

    def venv_of(run):
        assert run.returncode == 0, run.stderr
        return dict(line.split("=", 1) for line in run.stdout.splitlines())["PULID_VENV"]

    assert venv_of(_setup(tmp_path, ["py13", "py11"], "--dry-run")) == str(cached)  # no PYTHON=: the cache
    assert venv_of(_setup(tmp_path, ["py13"], "--dry-run", python="py11")) == str(cached)  # same version
    assert venv_of(_setup(tmp_path, ["py13"], "--dry-run", python="py13")) == f"{cached}-py3.13"
