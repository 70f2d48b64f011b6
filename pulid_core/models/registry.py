"""The registry: every model file the pack uses, where it goes and where it comes from;
the messages and the README table made from it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import PuLIDError

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
