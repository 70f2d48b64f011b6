"""Every model file the pack uses, in one place, and the command that checks and fetches them.

The node errors (:func:`missing_file_message`), the README models table
(:func:`markdown_table`), ComfyUI's folder registration (``nodes/folders.py``) and the
command below all read :data:`registry`, so a file name, folder or URL is written once.

    python -m pulid_core.models list
    python -m pulid_core.models check    [--comfyui PATH | --models-dir PATH] [--verify]
    python -m pulid_core.models download NAME... [--comfyui PATH | --models-dir PATH] [--mirror URL]

The nodes never download anything: only ``download`` does, and only when asked.
Imports without ComfyUI (standard library only; PyYAML is used when present to read
``extra_model_paths.yaml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import shlex
import shutil
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import ModelFileError, PuLIDError

log = logging.getLogger(__name__)

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
GITHUB = "https://github.com"
USER_AGENT = "comfyui-pulid-models/1"


@dataclass(frozen=True)
class Folder:
    """A ComfyUI ``folder_paths`` key the pack reads models from."""

    key: str
    extensions: str  # "pt" = folder_paths.supported_pt_extensions, "onnx" = {".onnx"}
    core: bool = False  # registered by ComfyUI itself: reuse it, never re-register


FOLDERS = {
    f.key: f
    for f in (
        Folder("pulid", "pt"),
        Folder("eva_clip", "pt"),
        Folder("insightface", "onnx"),
        Folder("facexlib", "pt"),
        Folder("photomaker", "pt", core=True),
    )
}


@dataclass(frozen=True)
class ModelFile:
    """One file the pack can use.

    ``source`` is ``"hf"`` (``location`` = ``<owner>/<repo>/<path in repo>``, fetched from
    ``HF_ENDPOINT``) or ``"github"`` (``location`` = the path after ``https://github.com/``,
    fetched from the mirror when one is set); the file keeps its published name. Size and
    sha256 apply to ``filename``; ``also_accepted`` names are only checked for corruption.
    Files of an insightface ``pack`` live in ``<insightface dir>/models/<pack>/`` and come
    from the pack's zip archive.
    """

    name: str
    folder: str
    filename: str
    source: str
    location: str
    needed_for: str
    size: int | None = None
    sha256: str | None = None
    approx_size: str = ""
    also_accepted: tuple[str, ...] = ()  # other container formats of the same weights
    pack: str | None = None
    required: bool = True  # False: shipped in a pack but never read by the pack
    choice: str = ""  # entries sharing a choice are alternatives: one of them is enough
    misplaced_in: tuple[str, ...] = ()  # model folders users often put this file in by mistake

    @property
    def accepted_names(self) -> tuple[str, ...]:
        return (self.filename, *self.also_accepted)

    @property
    def relative_dir(self) -> str:
        """Where the file goes, relative to ComfyUI's models directory."""
        return f"{self.folder}/models/{self.pack}" if self.pack else self.folder

    def url(self, hf_endpoint: str | None = None, mirror: str | None = None) -> str:
        """Download URL, honouring ``HF_ENDPOINT`` and a GitHub mirror."""
        return _source_url(self.source, self.location, hf_endpoint, mirror)

    @property
    def page(self) -> str:
        """Public page of the file (for tables and messages; not affected by mirrors)."""
        if self.source == "hf":
            repo, path = _split_hf(self.location)
            return f"{HF_DEFAULT_ENDPOINT}/{repo}/blob/main/{path}"
        return f"{GITHUB}/{self.location}"


def _split_hf(location: str) -> tuple[str, str]:
    owner, repo, path = location.split("/", 2)
    return f"{owner}/{repo}", path


def _source_url(source: str, location: str, hf_endpoint: str | None, mirror: str | None) -> str:
    if source == "hf":
        endpoint = (hf_endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
        repo, path = _split_hf(location)
        return f"{endpoint}/{repo}/resolve/main/{path}"
    url = f"{GITHUB}/{location}"
    mirror = mirror or os.environ.get("PULID_MODELS_MIRROR")
    if not mirror:
        return url
    # "{url}" style mirrors (https://proxy/{url}) wrap the whole address; others replace the host.
    return mirror.replace("{url}", url) if "{url}" in mirror else f"{mirror.rstrip('/')}/{location}"


# insightface publishes its packs only as zip archives (GitHub release v0.7).
PACK_ARCHIVES = {
    "antelopev2": "deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
    "buffalo_l": "deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
}

_PULID_WRONG = ("ipadapter", "clip_vision", "checkpoints", "loras", "instantid")
_EVA_WRONG = ("clip", "text_encoders", "clip_vision", "pulid")
_PM_WRONG = ("pulid", "ipadapter", "loras", "checkpoints")
_ANTELOPE_UNUSED = "PuLID (antelopev2 pack)"
_BUFFALO_UNUSED = "PhotoMaker v2 (buffalo_l pack)"


def _pack(*, pack: str, filename: str, needed_for: str, size: int, sha256: str | None, required: bool):
    return ModelFile(
        name=f"{pack}/{filename}",
        folder="insightface",
        filename=filename,
        source="github",
        location=PACK_ARCHIVES[pack],
        needed_for=needed_for,
        size=size,
        sha256=sha256,
        pack=pack,
        required=required,
    )


# Sizes and sha256 are the published files' (Hugging Face / GitHub listings); None where
# no figure could be sourced. Never edit one without the publisher's number.
registry: tuple[ModelFile, ...] = (
    ModelFile(
        name="pulid-v1",
        folder="pulid",
        filename="ip-adapter_pulid_sdxl_fp16.safetensors",
        source="hf",
        location="huchenlei/ipadapter_pulid/ip-adapter_pulid_sdxl_fp16.safetensors",
        needed_for="PuLID v1 (fp16, IPAdapter-format keys; the file cubiq's PuLID_ComfyUI uses)",
        size=791_372_856,
        sha256="b258a5cd2c0c7d35f4d3e59909d7648498686afae4d0c74917e9c47d7704fbf5",
        choice="PuLID v1",
        misplaced_in=_PULID_WRONG,
    ),
    ModelFile(
        name="pulid-v1-official",
        folder="pulid",
        filename="pulid_v1.bin",
        source="hf",
        location="guozinan/PuLID/pulid_v1.bin",
        needed_for="PuLID v1, the authors' fp32 release (same weights as pulid-v1)",
        approx_size="1.58 GB",
        choice="PuLID v1",
        misplaced_in=_PULID_WRONG,
    ),
    ModelFile(
        name="pulid-v1.1",
        folder="pulid",
        filename="pulid_v1.1.safetensors",
        source="hf",
        location="guozinan/PuLID/pulid_v1.1.safetensors",
        needed_for="PuLID v1.1 (the authors' fp16 release)",
        size=984_405_232,
        sha256="4cb8ceec1078e0165399b88332ab3c5971619111b8e1730e6bae64144aabae41",
        choice="PuLID v1.1",
        misplaced_in=_PULID_WRONG,
    ),
    ModelFile(
        name="pulid-v1.1-ipadapter",
        folder="pulid",
        filename="ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
        source="hf",
        location="Runzy/ip-adapter_pulid/ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
        needed_for="PuLID v1.1, community IPAdapter-format conversion (same weights as pulid-v1.1)",
        approx_size="984 MB",
        choice="PuLID v1.1",
        misplaced_in=_PULID_WRONG,
    ),
    ModelFile(
        name="eva-clip",
        folder="eva_clip",
        filename="EVA02_CLIP_L_336_psz14_s6B.pt",
        source="hf",
        location="QuanSun/EVA-CLIP/EVA02_CLIP_L_336_psz14_s6B.pt",
        needed_for="PuLID: EVA02-CLIP-L-14-336 face features (the authors' format)",
        size=856_461_210,
        sha256="84c3a17a228c567a155259b2245b0b59072bf7da510260a0a02ec54de6d50b05",
        choice="EVA-CLIP",
        misplaced_in=_EVA_WRONG,
    ),
    ModelFile(
        name="eva-clip-open-clip",
        folder="eva_clip",
        filename="open_clip_model.safetensors",
        source="hf",
        location="timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/open_clip_model.safetensors",
        needed_for="PuLID: the same EVA-CLIP weights in open_clip/timm format (either EVA file works)",
        size=856_239_456,
        also_accepted=("open_clip_pytorch_model.bin",),
        choice="EVA-CLIP",
        misplaced_in=_EVA_WRONG,
    ),
    _pack(
        pack="antelopev2",
        filename="scrfd_10g_bnkps.onnx",
        needed_for="PuLID: face detection (SCRFD)",
        size=16_923_827,
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        required=True,
    ),
    _pack(
        pack="antelopev2",
        filename="glintr100.onnx",
        needed_for="PuLID: face embedding (ArcFace glintr100)",
        size=260_665_334,
        sha256="4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf",
        required=True,
    ),
    _pack(
        pack="antelopev2",
        filename="1k3d68.onnx",
        needed_for=f"{_ANTELOPE_UNUSED}, not used",
        size=143_607_619,
        sha256="df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc",
        required=False,
    ),
    _pack(
        pack="antelopev2",
        filename="2d106det.onnx",
        needed_for=f"{_ANTELOPE_UNUSED}, not used",
        size=5_030_888,
        sha256="f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf",
        required=False,
    ),
    _pack(
        pack="antelopev2",
        filename="genderage.onnx",
        needed_for=f"{_ANTELOPE_UNUSED}, not used",
        size=1_322_532,
        sha256="4fde69b1c810857b88c64a335084f1c3fe8f01246c9a191b48c7bb756d6652fb",
        required=False,
    ),
    _pack(
        pack="buffalo_l",
        filename="det_10g.onnx",
        needed_for="PhotoMaker v2: face detection (SCRFD)",
        size=16_923_827,
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        required=True,
    ),
    _pack(
        pack="buffalo_l",
        filename="w600k_r50.onnx",
        needed_for="PhotoMaker v2: face embedding (ArcFace w600k_r50)",
        size=174_383_860,
        sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        required=True,
    ),
    _pack(
        pack="buffalo_l",
        filename="1k3d68.onnx",
        needed_for=f"{_BUFFALO_UNUSED}, not used",
        size=143_607_619,
        sha256=None,
        required=False,
    ),
    _pack(
        pack="buffalo_l",
        filename="2d106det.onnx",
        needed_for=f"{_BUFFALO_UNUSED}, not used",
        size=5_030_888,
        sha256=None,
        required=False,
    ),
    _pack(
        pack="buffalo_l",
        filename="genderage.onnx",
        needed_for=f"{_BUFFALO_UNUSED}, not used",
        size=1_322_532,
        sha256=None,
        required=False,
    ),
    ModelFile(
        name="facexlib-detection",
        folder="facexlib",
        filename="detection_Resnet50_Final.pth",
        source="github",
        location="xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
        needed_for="PuLID: face alignment (RetinaFace-R50)",
        size=109_497_761,
        sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    ),
    ModelFile(
        name="facexlib-parsing",
        folder="facexlib",
        filename="parsing_bisenet.pth",
        source="github",
        location="xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
        needed_for="PuLID: face parsing (BiSeNet)",
        size=53_289_463,
    ),
    ModelFile(
        name="photomaker-v1",
        folder="photomaker",
        filename="photomaker-v1.bin",
        source="hf",
        location="TencentARC/PhotoMaker/photomaker-v1.bin",
        needed_for="PhotoMaker v1",
        approx_size="934 MB",
        misplaced_in=_PM_WRONG,
    ),
    ModelFile(
        name="photomaker-v2",
        folder="photomaker",
        filename="photomaker-v2.bin",
        source="hf",
        location="TencentARC/PhotoMaker-V2/photomaker-v2.bin",
        needed_for="PhotoMaker v2",
        approx_size="1.8 GB",
        misplaced_in=_PM_WRONG,
    ),
)

# Names `download` accepts besides the entries' own: whole packs and the usual sets.
BUNDLES = {
    "antelopev2": tuple(e.name for e in registry if e.pack == "antelopev2"),
    "buffalo_l": tuple(e.name for e in registry if e.pack == "buffalo_l"),
    "pulid": (
        "pulid-v1",
        "pulid-v1.1",
        "eva-clip",
        "antelopev2/scrfd_10g_bnkps.onnx",
        "antelopev2/glintr100.onnx",
        "facexlib-detection",
        "facexlib-parsing",
    ),
    "photomaker": ("photomaker-v1", "photomaker-v2", "buffalo_l/det_10g.onnx", "buffalo_l/w600k_r50.onnx"),
}


def get(name: str, entries: Iterable[ModelFile] = registry) -> ModelFile:
    """The entry with this registry name, file name or accepted alternative name."""
    entries = tuple(entries)
    for e in entries:
        if e.name == name:
            return e
    base = os.path.basename(name.replace("\\", "/"))
    for e in entries:
        if base in e.accepted_names:
            return e
    raise PuLIDError(f"Unknown model {name!r}. Known names: {', '.join(e.name for e in entries)}.")


def select(names: Sequence[str], entries: Iterable[ModelFile] = registry) -> list[ModelFile]:
    """Entries for registry names and bundle names, in order, without repeats."""
    entries = tuple(entries)
    by_name = {e.name: e for e in entries}
    out: dict[str, ModelFile] = {}
    for name in names:
        wanted = BUNDLES.get(name, (name,))
        for n in wanted:
            if n not in by_name:
                known = ", ".join(list(BUNDLES) + list(by_name))
                raise PuLIDError(f"Unknown model {n!r}. Known names: {known}.")
            out.setdefault(n, by_name[n])
    return list(out.values())


# ---------------------------------------------------------------------------- where models live


def _hf_hub_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _facexlib_weights_dir() -> str | None:
    # find_spec of a top-level package reads no module code, so facexlib is not imported.
    spec = importlib.util.find_spec("facexlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "weights")


@dataclass
class ModelPaths:
    """Search directories per folder key, ordered as ComfyUI orders them.

    ``folders`` holds explicit lists (from ``folder_paths`` or extra_model_paths.yaml);
    a key without one falls back to ``<models_dir>/<key>``. ``hf_hub_cache`` and
    ``facexlib_weights_dir`` are where stray copies are looked for.
    """

    models_dir: str
    folders: dict[str, list[str]] = field(default_factory=dict)
    origin: str = ""  # the command-line options that reproduce these paths, for fix commands
    hf_hub_cache: str | None = field(default_factory=lambda: _hf_hub_cache())
    facexlib_weights_dir: str | None = field(default_factory=lambda: _facexlib_weights_dir())

    def dirs(self, key: str) -> list[str]:
        return list(self.folders.get(key) or [os.path.join(self.models_dir, key)])

    def target_dir(self, entry: ModelFile) -> str:
        """Where ``download`` writes (and messages tell the user to put) this file."""
        base = self.dirs(entry.folder)[0]
        return os.path.join(base, "models", entry.pack) if entry.pack else base

    @classmethod
    def for_models_dir(cls, models_dir: str, extra_yaml: str | None = None, **kw) -> ModelPaths:
        models_dir = os.path.abspath(models_dir)
        extra = {}
        origin = f"--models-dir {shell_quote(models_dir)}"
        if extra_yaml and os.path.isfile(extra_yaml):
            extra = read_extra_model_paths(extra_yaml)
            origin += f" --extra-model-paths {shell_quote(os.path.abspath(extra_yaml))}"
        kw.setdefault("origin", origin)
        folders = {}
        for key in set(FOLDERS) | set(extra):
            default = os.path.join(models_dir, key)
            defaults = [p for p, is_default in extra.get(key, []) if is_default]
            others = [p for p, is_default in extra.get(key, []) if not is_default]
            # ComfyUI registers its own keys first and appends yaml dirs; for our keys the
            # yaml creates the entry and the pack appends its default dir.
            core = key not in FOLDERS or FOLDERS[key].core
            ordered = defaults + ([default] + others if core else others + [default])
            folders[key] = list(dict.fromkeys(os.path.normpath(p) for p in ordered))
        return cls(models_dir, folders, **kw)

    @classmethod
    def for_comfyui(cls, root: str, **kw) -> ModelPaths:
        root = os.path.abspath(root)
        if not os.path.isdir(os.path.join(root, "models")):
            raise PuLIDError(f"{root} does not look like a ComfyUI folder (it has no models/ folder).")
        kw.setdefault("origin", f"--comfyui {shell_quote(root)}")
        return cls.for_models_dir(
            os.path.join(root, "models"), os.path.join(root, "extra_model_paths.yaml"), **kw
        )


def read_extra_model_paths(path: str) -> dict[str, list[tuple[str, bool]]]:
    """``{key: [(dir, is_default), ...]}`` from a ComfyUI extra_model_paths.yaml.

    Follows ComfyUI's rules: per section an optional ``base_path`` (relative to the
    yaml's folder) and ``is_default``; each other key holds one or more lines of dirs.
    """
    try:
        import yaml
    except ImportError:
        log.warning("Not reading %s: PyYAML is not installed.", path)
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise PuLIDError(f"{path} is not valid YAML ({exc}).") from exc
    yaml_dir = os.path.dirname(os.path.abspath(path))
    out: dict[str, list[tuple[str, bool]]] = {}
    for section in config.values():
        if not isinstance(section, dict):
            continue
        section = dict(section)
        base = section.pop("base_path", None)
        if base:
            base = os.path.expandvars(os.path.expanduser(str(base)))
            base = base if os.path.isabs(base) else os.path.join(yaml_dir, base)
        is_default = bool(section.pop("is_default", False))
        for key, value in section.items():
            for line in str(value).split("\n"):
                line = line.strip()
                if not line:
                    continue
                full = os.path.join(base, line) if base else line
                full = full if os.path.isabs(full) else os.path.join(yaml_dir, full)
                out.setdefault(key, []).append((os.path.normpath(full), is_default))
    return out


def _guess_comfyui_root() -> str | None:
    # Installed as ComfyUI/custom_nodes/<pack>/pulid_core/models.py.
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    return root if os.path.isfile(os.path.join(root, "folder_paths.py")) else None


# ---------------------------------------------------------------------------- messages


def missing_file_message(entry_or_name: ModelFile | str, searched_dirs: Sequence[str]) -> str:
    """The message a node raises when a model file is not where ComfyUI looks."""
    dirs = ", ".join(searched_dirs) if searched_dirs else "the ComfyUI model folders"
    try:
        entry = entry_or_name if isinstance(entry_or_name, ModelFile) else get(entry_or_name)
    except PuLIDError:
        return f"{entry_or_name} not found in {dirs}. Put the file in one of these folders."
    if entry.pack:
        base = searched_dirs[0] if searched_dirs else f"models/{entry.folder}"
        dest = os.path.join(base, "models", entry.pack)
        return (
            f"{entry.pack}/{entry.filename} not found in {dirs}. Download {entry.page}, and put its "
            f".onnx files directly in {dest} (not in a nested {entry.pack}/{entry.pack} folder) "
            f"(or run `python -m pulid_core.models download {entry.pack}`)."
        )
    dest = searched_dirs[0] if searched_dirs else f"models/{entry.folder}"
    return (
        f"{entry.filename} not found in {dirs}. Download it from {entry.page} and put it in {dest} "
        f"(or run `python -m pulid_core.models download {entry.name}`)."
    )


def _fmt_size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"


def markdown_table(entries: Iterable[ModelFile] = registry) -> str:
    """The README models table (tests/unit/test_readme_models_table.py keeps them equal)."""
    rows = [
        "| Name (for `download`) | File | Put it in | Needed for | Size | sha256 |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        size = _fmt_size(e.size) if e.size is not None else f"~{e.approx_size}"
        sha = f"`{e.sha256[:12]}…`" if e.sha256 else "not pinned"
        src = f"{e.filename} (in [{e.pack}.zip]({e.page}))" if e.pack else f"[{e.filename}]({e.page})"
        rows.append(f"| `{e.name}` | {src} | `models/{e.relative_dir}/` | {e.needed_for} | {size} | {sha} |")
    rows += [
        "",
        (
            "`python -m pulid_core.models check --comfyui PATH` (with ComfyUI's Python, in this pack's "
            "folder) reports each file as present, missing, wrong size, corrupt or misplaced, with the "
            "command that fixes it."
        ),
        (
            "`python -m pulid_core.models download NAME... --comfyui PATH` fetches files (names from the "
            f"table, or {', '.join(f'`{b}`' for b in BUNDLES)}) with resume and checksum checks; "
            "`HF_ENDPOINT` and `--mirror` (or `PULID_MODELS_MIRROR`, for GitHub files) select mirrors."
        ),
    ]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- cheap file checks

_ONNX_WIRE = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def inspect_file(path: str, name: str | None = None) -> str | None:
    """What is wrong with a model file, judged from its header and structure, or None.

    Cheap: reads headers and seeks, never the weights. Catches truncated downloads,
    HTML error pages and Git LFS pointers saved under a model's name. The format comes
    from the extension of ``name`` (default: ``path``).
    """
    size = os.path.getsize(path)
    if size == 0:
        return "it is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the model (the repository was cloned without git-lfs)"
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "it is a web page, not the model (a failed or blocked download)"
    ext = os.path.splitext(name or path)[1].lower()
    if ext in (".safetensors", ".sft"):
        return _safetensors_problem(path, size)
    if ext in (".bin", ".pt", ".pth", ".ckpt"):
        return _torch_problem(path, head)
    if ext == ".onnx":
        return _onnx_problem(path, size)
    if ext == ".zip":
        return _zip_problem(path)
    return None


def _safetensors_problem(path: str, size: int) -> str | None:
    with open(path, "rb") as f:
        if size < 8:
            return f"it is truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            return f"it is truncated ({size:,} bytes; its header alone needs {n + 8:,})"
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its safetensors header is unreadable"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"it is truncated ({size:,} bytes; its header says {expected:,})"
    if size > expected:
        return f"it has {size - expected:,} bytes more than its header says"
    return None


def _torch_problem(path: str, head: bytes) -> str | None:
    if head.startswith(b"PK"):
        return _zip_problem(path)
    if head[:1] == b"\x80":
        return None  # legacy (pre-zip) torch pickle: only its size can be checked cheaply
    return "it is not a PyTorch file (unknown header)"


def _zip_problem(path: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError):
        return "it is truncated or corrupt (its zip central directory is missing)"
    return None


def _read_varint(f) -> int | None:
    value, shift = 0, 0
    while True:
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            return None


def _onnx_problem(path: str, size: int) -> str | None:
    # Walk the top-level protobuf fields of ModelProto, seeking over their bodies: a
    # truncated file ends inside a field, and a non-ONNX file has no graph (field 7).
    seen = set()
    with open(path, "rb") as f:
        while f.tell() < size:
            tag = _read_varint(f)
            if not tag or tag >> 3 == 0:
                return "it is not an ONNX model (bad protobuf)"
            number, wire = tag >> 3, tag & 7
            if _ONNX_WIRE.get(number, wire) != wire:
                return "it is not an ONNX model (bad protobuf)"
            if wire == 0:
                if _read_varint(f) is None:
                    return "it is truncated"
            elif wire in (1, 2, 5):
                length = {1: 8, 5: 4}.get(wire) or _read_varint(f)
                if length is None or f.tell() + length > size:
                    return "it is truncated"
                f.seek(length, os.SEEK_CUR)
            else:
                return "it is not an ONNX model (bad protobuf)"
            seen.add(number)
    return None if 7 in seen else "it is not an ONNX model (no graph)"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- check

PRESENT = "present"
MISSING = "missing"
NOT_NEEDED = "not needed"
WRONG_SIZE = "wrong size"
CORRUPT = "corrupt"
CHECKSUM = "checksum mismatch"
MISPLACED = "misplaced"
PROBLEMS = (WRONG_SIZE, CORRUPT, CHECKSUM, MISPLACED)


@dataclass(frozen=True)
class Finding:
    entry: ModelFile
    status: str
    path: str | None = None
    detail: str = ""
    fix: str = ""


def shell_quote(path: str) -> str:
    """A path quoted for the fix commands (POSIX shell, or cmd.exe on Windows)."""
    return f'"{path}"' if os.name == "nt" else shlex.quote(path)


def _move_cmd(src: str, dst: str, copy: bool = False) -> str:
    if os.name == "nt":
        return f"{'copy' if copy else 'move'} {shell_quote(src)} {shell_quote(dst)}"
    return f"{'cp -L' if copy else 'mv'} {shell_quote(src)} {shell_quote(dst)}"


def _download_cmd(entry: ModelFile, paths: ModelPaths) -> str:
    name = entry.pack if entry.pack else entry.name
    return f"python -m pulid_core.models download {name} {paths.origin}".rstrip()


def _redownload_cmd(entry: ModelFile, path: str, paths: ModelPaths) -> str:
    rm = "del" if os.name == "nt" else "rm"
    return f"{rm} {shell_quote(path)} && {_download_cmd(entry, paths)}"


class _Walker:
    """Recursive file listings, one walk per directory per check."""

    def __init__(self):
        self._cache: dict[str, dict[str, list[str]]] = {}

    def find(self, directory: str, names: Sequence[str]) -> list[str]:
        if directory not in self._cache:
            index: dict[str, list[str]] = {}
            for root, _dirs, files in os.walk(directory, followlinks=True):
                for name in files:
                    index.setdefault(name, []).append(os.path.join(root, name))
            self._cache[directory] = index
        found = []
        for name in names:
            found.extend(sorted(self._cache[directory].get(name, [])))
        return found


def _validate(entry: ModelFile, path: str, verify: bool) -> tuple[str, str]:
    """(status, detail) for a file found under one of the entry's names."""
    exact = os.path.basename(path) == entry.filename
    size = os.path.getsize(path)
    problem = inspect_file(path)
    if problem:
        return CORRUPT, problem
    if exact and entry.size is not None and size != entry.size:
        return WRONG_SIZE, f"{size:,} bytes, expected {entry.size:,} (an incomplete or different file)"
    if verify and exact and entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return CHECKSUM, f"sha256 {digest}, expected {entry.sha256}"
    return PRESENT, f"{size:,} bytes"


def _locate(entry: ModelFile, paths: ModelPaths, walker: _Walker) -> list[str]:
    if entry.pack:
        return [
            p
            for d in paths.dirs(entry.folder)
            for p in [os.path.join(d, "models", entry.pack, n) for n in entry.accepted_names]
            if os.path.isfile(p)
        ]
    return [p for d in paths.dirs(entry.folder) for p in walker.find(d, entry.accepted_names)]


def _stray(entry: ModelFile, paths: ModelPaths, walker: _Walker) -> list[tuple[str, bool]]:
    """Copies in places the pack does not read: (path, copy instead of move)."""
    out: list[tuple[str, bool]] = []
    if entry.pack:
        # A pack file is stray in a folder named after its pack (the nested
        # antelopev2/antelopev2 of an unzip, or a pack folder missing the models/ level),
        # or loose in the insightface folder when no other pack has a file of that name.
        unique = sum(1 for e in registry if e.pack and e.filename == entry.filename) <= 1
        for d in paths.dirs(entry.folder):
            right = os.path.join(d, "models", entry.pack)
            for p in walker.find(d, entry.accepted_names):
                parent = os.path.dirname(p)
                loose = parent in (d, os.path.join(d, "models")) and unique
                if parent != right and (os.path.basename(parent) == entry.pack or loose):
                    out.append((p, False))
        return out
    for key in entry.misplaced_in:
        for d in paths.dirs(key):
            out.extend((p, False) for p in walker.find(d, entry.accepted_names))
    if entry.folder == "facexlib" and paths.facexlib_weights_dir:
        out.extend((p, False) for p in walker.find(paths.facexlib_weights_dir, entry.accepted_names))
    if entry.source == "hf" and paths.hf_hub_cache:
        repo, path = _split_hf(entry.location)
        pattern = os.path.join(
            paths.hf_hub_cache, "models--" + repo.replace("/", "--"), "snapshots", "*", path
        )
        # The hub cache may serve other programs: copy out of it instead of moving.
        out.extend((p, True) for p in sorted(glob.glob(pattern)))
    return out


def check(paths: ModelPaths, entries: Iterable[ModelFile] = registry, verify: bool = False) -> list[Finding]:
    """One finding per entry (more when several stray copies exist), in registry order.

    ``verify`` also hashes files whose sha256 is known (slow: reads every byte).
    """
    entries = tuple(entries)
    walker = _Walker()
    findings: list[Finding] = []
    for entry in entries:
        target = paths.target_dir(entry)
        found = _locate(entry, paths, walker)
        if found:
            status, detail = _validate(entry, found[0], verify)
            fix = "" if status == PRESENT else _redownload_cmd(entry, found[0], paths)
            findings.append(Finding(entry, status, found[0], detail, fix))
            continue
        strays = _stray(entry, paths, walker)
        for path, copy in strays:
            status, detail = _validate(entry, path, verify)
            if status == PRESENT:
                status = MISPLACED
                detail = f"in {'the Hugging Face cache' if copy else 'a folder the pack does not read'}"
                fix = _move_cmd(path, os.path.join(target, entry.filename), copy)
                if not os.path.isdir(target):
                    fix = f"{'mkdir' if os.name == 'nt' else 'mkdir -p'} {shell_quote(target)} && {fix}"
            else:
                fix = _redownload_cmd(entry, path, paths)
            findings.append(Finding(entry, status, path, detail, fix))
        if strays:
            continue
        part = os.path.join(target, entry.filename + ".part")
        detail = f"goes in {target}" + (
            f"; a partial download ({os.path.getsize(part):,} bytes) is in {part}"
            if os.path.isfile(part)
            else ""
        )
        findings.append(Finding(entry, MISSING, None, detail, _download_cmd(entry, paths)))
    return _mark_not_needed(findings)


def _mark_not_needed(findings: list[Finding]) -> list[Finding]:
    have = {f.entry.choice for f in findings if f.status == PRESENT and f.entry.choice}
    out = []
    for f in findings:
        if f.status == MISSING and (not f.entry.required or (f.entry.choice and f.entry.choice in have)):
            reason = "optional" if not f.entry.required else f"another {f.entry.choice} file is present"
            f = dataclasses.replace(f, status=NOT_NEEDED, detail=reason, fix="")
        out.append(f)
    return out


def format_findings(findings: Sequence[Finding]) -> str:
    lines = []
    for f in findings:
        where = f" {f.path}" if f.path else ""
        detail = f" ({f.detail})" if f.detail else ""
        lines.append(f"{f.status.upper():<17} {f.entry.name}:{where}{detail}")
        if f.fix:
            lines.append(f"{'':<17}   fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in (PRESENT, MISSING, *PROBLEMS)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return "\n".join(lines + [summary or "nothing to check"]) + "\n"


# ---------------------------------------------------------------------------- download

CHUNK = 1 << 20


class _Interrupted(Exception):
    """The transfer broke off; the .part file keeps what arrived."""


class _Progress:
    """A tqdm bar when tqdm is installed, else a log line every few seconds."""

    def __init__(self, total: int | None, done: int, label: str, enabled: bool):
        self._bar = None
        self._log_at = 0.0
        self.total, self.done, self.label, self.enabled = total, done, label, enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            log.info("Downloading %s (%s bytes)", label, f"{total:,}" if total else "unknown")
            return
        self._bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=label)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.total and time.monotonic() - self._log_at > 5:
            self._log_at = time.monotonic()
            log.info("%s: %.0f%% of %s bytes", self.label, 100 * self.done / self.total, f"{self.total:,}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _request(url: str, offset: int, token: str | None) -> urllib.request.Request:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    if token:
        # Unredirected: the token must not follow the redirect to the storage host.
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    return req


def _transfer(
    url: str, part: str, size: int | None, timeout: float, progress: bool, label: str, token: str | None
) -> None:
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    if size is not None and offset > size:
        os.remove(part)
        offset = 0
    if size is not None and offset == size:
        return
    try:
        resp = urllib.request.urlopen(_request(url, offset, token), timeout=timeout)
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        # Connected, then dropped before the headers arrived: transient. (Failures to
        # connect at all arrive as URLError and mean there is no network.)
        raise _Interrupted(str(exc) or type(exc).__name__) from exc
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The .part already holds everything the server has, or is not from this file.
            total = _range_total(exc.headers.get("Content-Range", ""))
            if total == offset:
                return
            os.remove(part)
            raise _Interrupted("the server refused to resume; starting over") from exc
        raise
    with resp:
        if offset and resp.status == 206:
            start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
            if start != str(offset):
                raise ModelFileError(f"{url} resumed at byte {start}, not {offset}: delete {part} and retry.")
            total = _range_total(resp.headers.get("Content-Range", ""))
        else:
            offset = 0  # no Range support (200): start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise ModelFileError(
                f"{url} serves {total:,} bytes but {label} has {size:,}: the mirror serves another "
                "file or the file changed upstream. Nothing was saved."
            )
        bar = _Progress(total or size, offset, label, progress)
        try:
            with open(part, "ab" if offset else "wb") as out:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                        raise _Interrupted(str(exc) or type(exc).__name__) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    got = os.path.getsize(part)
    expected = total if total is not None else size
    if expected is not None and got < expected:
        raise _Interrupted(f"the connection closed after {got:,} of {expected:,} bytes")


def _range_total(content_range: str) -> int | None:
    total = content_range.rsplit("/", 1)[-1]
    return int(total) if total.isdigit() else None


def fetch_file(
    url: str,
    dest: str,
    *,
    size: int | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    progress: bool = True,
    page: str | None = None,
    token: str | None = None,
) -> str:
    """Download ``url`` to ``dest`` through ``dest + '.part'``, resuming what is there.

    A broken transfer is resumed (HTTP Range) up to ``retries`` times; a later call
    resumes too. The result is checked against ``size`` and ``sha256`` when given (a
    mismatch deletes the .part) and moved into place atomically. ``page`` is the address
    named in error messages; ``token`` is sent as a bearer token (not across redirects).
    """
    name = os.path.basename(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    part = dest + ".part"
    os.makedirs(directory, exist_ok=True)
    attempt = 0
    while True:
        try:
            _transfer(url, part, size, timeout, progress, name, token)
            break
        except _Interrupted as exc:
            have = os.path.getsize(part) if os.path.isfile(part) else 0
            if attempt >= retries:
                raise ModelFileError(
                    f"Download of {name} broke off ({exc}); {have:,} bytes are kept in {part}. "
                    "Run the same command again to resume."
                ) from exc
            attempt += 1
            log.warning(
                "Download of %s broke off (%s); resuming (try %d of %d).", name, exc, attempt, retries
            )
            time.sleep(retry_wait * attempt)
        except urllib.error.HTTPError as exc:
            raise ModelFileError(_http_message(exc, url, name, directory, page)) from exc
        except urllib.error.URLError as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelFileError(
                f"No network (could not reach {urllib.parse.urlsplit(url).netloc}: {reason}). "
                f"Download {name} from {page or url} and put it in {directory}."
            ) from exc
    got = os.path.getsize(part)
    if size is not None and got != size:
        os.remove(part)
        raise ModelFileError(
            f"{name}: downloaded {got:,} bytes, expected {size:,}; the partial file was deleted."
        )
    if sha256:
        digest = sha256_of(part)
        if digest != sha256:
            os.remove(part)
            raise ModelFileError(
                f"{name}: checksum mismatch (sha256 {digest}, expected {sha256}); the download was "
                "deleted. The mirror may serve another file: try again without it, or download "
                f"{page or url} by hand."
            )
    problem = inspect_file(part, dest)
    if problem:
        os.remove(part)
        raise ModelFileError(f"{name} from {url}: {problem}; the download was deleted.")
    os.replace(part, dest)
    return dest


def _http_message(exc: urllib.error.HTTPError, url: str, name: str, directory: str, page: str | None) -> str:
    if exc.code == 404:
        return (
            f"{url} answered 404 Not Found: the file moved or the mirror lacks it. Download {name} "
            f"from {page or url} by hand and put it in {directory}."
        )
    if exc.code in (401, 403):
        return (
            f"{url} refused access (HTTP {exc.code}). If the repository asks you to accept its terms, "
            "do so on its page and set HF_TOKEN to a Hugging Face access token."
        )
    return f"{url} answered HTTP {exc.code} {exc.reason}. Try again later, or download {name} by hand."


def _fetch_pack(pack: str, members: Sequence[ModelFile], paths: ModelPaths, url: str, **kw) -> list[str]:
    """Fetch a pack's zip and install the members flat in ``models/<pack>/``, whatever
    folders the archive wraps them in. All members are checked before any is installed."""
    entry = members[0]
    target = paths.target_dir(entry)
    zip_path = os.path.join(os.path.dirname(target), f"{pack}.zip")
    fetch_file(url, zip_path, page=entry.page, **kw)  # checks the zip's central directory
    parts = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            by_base = {}
            for info in archive.infolist():
                if not info.is_dir():
                    by_base.setdefault(os.path.basename(info.filename), info)
            os.makedirs(target, exist_ok=True)
            for m in members:
                info = by_base.get(m.filename)
                if info is None:
                    raise ModelFileError(
                        f"{pack}.zip from {entry.page} has no {m.filename}; nothing was installed."
                    )
                part = os.path.join(target, m.filename + ".part")
                parts.append(part)
                with archive.open(info) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                problem = _member_problem(m, part)
                if problem:
                    raise ModelFileError(f"{m.filename} in {pack}.zip: {problem}; nothing was installed.")
        written = []
        for part in parts:
            os.replace(part, part[: -len(".part")])
            written.append(part[: -len(".part")])
        return written
    finally:
        for path in [zip_path, *parts]:
            if os.path.exists(path):
                os.remove(path)


def _member_problem(entry: ModelFile, path: str) -> str | None:
    size = os.path.getsize(path)
    problem = inspect_file(path, entry.filename)
    if problem:
        return problem
    if entry.size is not None and size != entry.size:
        return f"{size:,} bytes, expected {entry.size:,}"
    if entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return f"checksum mismatch (sha256 {digest}, expected {entry.sha256})"
    return None


def download(
    names: Sequence[str],
    paths: ModelPaths,
    *,
    entries: Iterable[ModelFile] = registry,
    hf_endpoint: str | None = None,
    mirror: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> list[str]:
    """Fetch the named files (registry or bundle names) that are not already in place.

    Returns the paths written. Files already in place, of the right size and not corrupt,
    are skipped.
    """
    wanted = select(names, entries)
    kw = {"timeout": timeout, "retries": retries, "retry_wait": retry_wait, "progress": progress}
    walker = _Walker()
    todo = []
    for e in wanted:
        found = _locate(e, paths, walker)
        if found and _validate(e, found[0], verify=False)[0] == PRESENT:
            log.info("%s is already in %s", e.name, found[0])
        else:
            todo.append(e)
    written: list[str] = []
    packs: dict[str, list[ModelFile]] = {}
    for e in todo:
        if e.pack:
            packs.setdefault(e.pack, []).append(e)
            continue
        dest = os.path.join(paths.target_dir(e), e.filename)
        log.info("Fetching %s -> %s", e.name, dest)
        written.append(
            fetch_file(
                e.url(hf_endpoint, mirror),
                dest,
                size=e.size,
                sha256=e.sha256,
                page=e.page,
                # A Hugging Face token (for gated repositories) goes to the hub or its mirror only.
                token=os.environ.get("HF_TOKEN") if e.source == "hf" else None,
                **kw,
            )
        )
    for pack, members in packs.items():
        log.info("Fetching the %s pack -> %s", pack, paths.target_dir(members[0]))
        url = members[0].url(hf_endpoint, mirror)
        written.extend(_fetch_pack(pack, members, paths, url, **kw))
    return written


# ---------------------------------------------------------------------------- command line


def _paths_from_args(args) -> ModelPaths:
    if args.models_dir:
        return ModelPaths.for_models_dir(args.models_dir, args.extra_model_paths)
    root = args.comfyui or os.environ.get("COMFYUI_PATH") or _guess_comfyui_root()
    if not root:
        raise PuLIDError(
            "Where is ComfyUI? Pass --comfyui PATH (the folder with main.py) or --models-dir PATH."
        )
    return ModelPaths.for_comfyui(root)


def main(argv: Sequence[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m pulid_core.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list every model file and where it goes")
    sub.add_parser("table", help="print the README models table")
    for name in ("check", "download"):
        p = sub.add_parser(name)
        p.add_argument("--comfyui", help="ComfyUI folder (reads its extra_model_paths.yaml)")
        p.add_argument("--models-dir", help="a models folder, for --models-directory setups")
        p.add_argument("--extra-model-paths", help="an extra_model_paths.yaml to read with --models-dir")
        if name == "check":
            p.add_argument("--verify", action="store_true", help="also compare sha256 (reads every byte)")
        else:
            p.add_argument("names", nargs="*", help=f"model names or bundles ({', '.join(BUNDLES)})")
            p.add_argument("--all", action="store_true", help="every file in the registry")
            p.add_argument("--mirror", help="base URL for GitHub-hosted files (or a template with {url})")
            p.add_argument("--hf-endpoint", help="Hugging Face mirror (default: $HF_ENDPOINT)")
            p.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation")
            p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            for e in registry:
                out.write(f"{e.name:<32} models/{e.relative_dir}/{e.filename}\n")
            return 0
        if args.command == "table":
            out.write(markdown_table())
            return 0
        paths = _paths_from_args(args)
        if args.command == "check":
            findings = check(paths, verify=args.verify)
            out.write(format_findings(findings))
            return 1 if any(f.status in PROBLEMS for f in findings) else 0
        names = [e.name for e in registry] if args.all else args.names
        if not names:
            parser.error(f"name the models to fetch (e.g. {', '.join(BUNDLES)}), or pass --all")
        written = download(
            names,
            paths,
            hf_endpoint=args.hf_endpoint,
            mirror=args.mirror,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
        out.write("".join(f"saved {p}\n" for p in written) or "everything was already in place\n")
        return 0
    except PuLIDError as exc:
        out.write(f"error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
