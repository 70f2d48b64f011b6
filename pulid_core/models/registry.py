"""The registry: every model file the pack uses, where it goes, where it comes from and what
it is needed for; the messages and the README table made from it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import PuLIDError

HF = "https://huggingface.co"
GITHUB = "https://github.com"


@dataclass(frozen=True)
class Folder:
    """A ComfyUI ``folder_paths`` key the pack reads models from."""

    key: str
    extensions: str  # "pt" = folder_paths.supported_pt_extensions, "onnx" = {".onnx"}
    core: bool = False  # registered by ComfyUI itself: reuse it, never re-register
    misplaced_in: tuple[str, ...] = ()  # model folders users often put these files in by mistake


FOLDERS = {
    f.key: f
    for f in (
        Folder("pulid", "pt", misplaced_in=("ipadapter", "clip_vision", "checkpoints", "loras", "instantid")),
        Folder("eva_clip", "pt", misplaced_in=("clip", "text_encoders", "clip_vision", "pulid")),
        Folder("insightface", "onnx"),
        Folder("facexlib", "pt"),
        Folder("photomaker", "pt", core=True, misplaced_in=("pulid", "ipadapter", "loras", "checkpoints")),
    )
}

# What a user runs; each file lists the uses that need it. `check --for` picks among these.
USES = {
    "pulid-v1": "PuLID v1 on SDXL",
    "pulid-v1.1": "PuLID v1.1 on SDXL",
    "pulid-flux": "PuLID-FLUX on FLUX.1",
    "photomaker-v1": "PhotoMaker v1",
    "photomaker-v2": "PhotoMaker v2",
}
_FACE = ("pulid-v1", "pulid-v1.1", "pulid-flux")  # EVA-CLIP, antelopev2 and facexlib


@dataclass(frozen=True)
class ModelFile:
    """One file the pack can use.

    ``source`` is ``"hf"`` (``location`` = ``<owner>/<repo>/<path in repo>``) or ``"github"``
    (``location`` = the path after ``https://github.com/``); the file keeps its published
    name. Size and sha256 are the publisher's and apply to ``filename``; ``also_accepted``
    names are only checked by structure. Files of an insightface ``pack`` live in
    ``<insightface dir>/models/<pack>/`` and come from the pack's zip archive. Entries that
    share a ``choice`` are alternatives: one of them is enough.
    """

    name: str
    folder: str
    filename: str
    source: str
    location: str
    needed_for: str
    uses: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    approx_size: str = ""
    also_accepted: tuple[str, ...] = ()  # other container formats of the same weights
    pack: str | None = None
    required: bool = True  # False: shipped in a pack but never opened by the pack
    choice: str = ""

    @property
    def misplaced_in(self) -> tuple[str, ...]:
        return FOLDERS[self.folder].misplaced_in

    @property
    def accepted_names(self) -> tuple[str, ...]:
        return (self.filename, *self.also_accepted)

    @property
    def relative_dir(self) -> str:
        """Where the file goes, relative to ComfyUI's models directory."""
        return f"{self.folder}/models/{self.pack}" if self.pack else self.folder

    @property
    def hf_repo(self) -> str:
        return "/".join(self.location.split("/", 2)[:2])

    @property
    def hf_path(self) -> str:
        return self.location.split("/", 2)[2]

    @property
    def url(self) -> str:
        """The file itself (Hugging Face ``/resolve/``, not the ``/blob/`` web page)."""
        if self.source == "hf":
            return f"{HF}/{self.hf_repo}/resolve/main/{self.hf_path}"
        return f"{GITHUB}/{self.location}"

    @property
    def group(self) -> str:
        """The alternatives this entry belongs to, as the user reads them."""
        names = [e.name for e in registry if e.choice and e.choice == self.choice] or [self.name]
        return names[0] if len(names) == 1 else "either " + " or ".join(names)


# insightface publishes its packs only as zip archives (GitHub release v0.7).
PACK_ARCHIVES = {
    "antelopev2": "deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
    "buffalo_l": "deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
}



def _hf(name: str, folder: str, location: str, needed_for: str, uses, **kw) -> ModelFile:
    return ModelFile(name, folder, location.rsplit("/", 1)[1], "hf", location, needed_for, uses, **kw)


def _gh(name: str, folder: str, location: str, needed_for: str, uses, **kw) -> ModelFile:
    return ModelFile(name, folder, location.rsplit("/", 1)[1], "github", location, needed_for, uses, **kw)


def _pack(pack: str, filename: str, needed_for: str, size: int, sha256: str | None, uses, required=True):
    return ModelFile(
        name=f"{pack}/{filename}", folder="insightface", filename=filename, source="github",
        location=PACK_ARCHIVES[pack], needed_for=needed_for, uses=uses, size=size, sha256=sha256,
        pack=pack, required=required,
    )


def _unused(pack: str, filename: str, size: int, sha256: str | None, uses):
    return _pack(pack, filename, f"nothing: in the {pack} pack, never opened", size, sha256, uses, False)


# Sizes and sha256 are the published files' (Hugging Face / GitHub listings); None where
# no figure could be sourced. Never edit one without the publisher's number.
registry: tuple[ModelFile, ...] = (
    _hf(
        "pulid-v1", "pulid", "huchenlei/ipadapter_pulid/ip-adapter_pulid_sdxl_fp16.safetensors",
        "PuLID v1 (fp16, IPAdapter-format keys; the file cubiq's PuLID_ComfyUI uses)", ("pulid-v1",),
        size=791_372_856, sha256="b258a5cd2c0c7d35f4d3e59909d7648498686afae4d0c74917e9c47d7704fbf5",
        choice="PuLID v1",
    ),
    _hf(
        "pulid-v1-official", "pulid", "guozinan/PuLID/pulid_v1.bin",
        "PuLID v1, the authors' fp32 release (same weights as pulid-v1)", ("pulid-v1",),
        size=1_582_858_505, sha256="245d05d8f11cd030d52562282332f912a2d5001b111873a40214163f33ab3f5d",
        choice="PuLID v1",
    ),
    _hf(
        "pulid-v1.1", "pulid", "guozinan/PuLID/pulid_v1.1.safetensors",
        "PuLID v1.1 (the authors' fp16 release)", ("pulid-v1.1",),
        size=984_405_232, sha256="4cb8ceec1078e0165399b88332ab3c5971619111b8e1730e6bae64144aabae41",
        choice="PuLID v1.1",
    ),
    _hf(
        "pulid-v1.1-ipadapter", "pulid", "Runzy/ip-adapter_pulid/ip-adapter_pulidv1.1_sdxl_fp16.safetensors",
        "PuLID v1.1, community IPAdapter-format conversion (same weights as pulid-v1.1)", ("pulid-v1.1",),
        approx_size="984 MB", choice="PuLID v1.1",
    ),
    _hf(
        "pulid-flux-v0.9.1", "pulid", "guozinan/PuLID/pulid_flux_v0.9.1.safetensors",
        "PuLID-FLUX v0.9.1 (recommended: the authors' newer release)", ("pulid-flux",),
        size=1_142_099_520, sha256="92c41c3af322b02e58e1b32842e4601e08c8f16ec1fe80089dbe957df510f51d",
        choice="PuLID-FLUX",
    ),
    _hf(
        "pulid-flux-v0.9.0", "pulid", "guozinan/PuLID/pulid_flux_v0.9.0.safetensors",
        "PuLID-FLUX v0.9.0 (the first release, same layout)", ("pulid-flux",),
        size=1_142_099_520, sha256="14e3c257ae88643412db0f6d239f55132cd5487107ed33944c54339284cbe1e6",
        choice="PuLID-FLUX",
    ),
    _hf(
        "eva-clip", "eva_clip", "QuanSun/EVA-CLIP/EVA02_CLIP_L_336_psz14_s6B.pt",
        "PuLID: EVA02-CLIP-L-14-336 face features (the authors' format)", _FACE,
        size=856_461_210, sha256="84c3a17a228c567a155259b2245b0b59072bf7da510260a0a02ec54de6d50b05",
        choice="EVA-CLIP",
    ),
    _hf(
        "eva-clip-open-clip", "eva_clip",
        "timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/open_clip_model.safetensors",
        "PuLID: the same EVA-CLIP weights in open_clip/timm format (either EVA file works)", _FACE,
        size=856_239_456, sha256="f753bca0e8327f77e8845b0af2510d599c3e4614237007b48078c791f2cf391c",
        also_accepted=("open_clip_pytorch_model.bin",), choice="EVA-CLIP",
    ),
    _pack(
        "antelopev2", "scrfd_10g_bnkps.onnx", "PuLID: face detection (SCRFD)", 16_923_827,
        "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", _FACE,
    ),
    _pack(
        "antelopev2", "glintr100.onnx", "PuLID: face embedding (ArcFace glintr100)", 260_665_334,
        "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf", _FACE,
    ),
    _unused(
        "antelopev2", "1k3d68.onnx", 143_607_619,
        "df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc", _FACE,
    ),
    _unused(
        "antelopev2", "2d106det.onnx", 5_030_888,
        "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf", _FACE,
    ),
    _unused(
        "antelopev2", "genderage.onnx", 1_322_532,
        "4fde69b1c810857b88c64a335084f1c3fe8f01246c9a191b48c7bb756d6652fb", _FACE,
    ),
    _pack(
        "buffalo_l", "det_10g.onnx", "PhotoMaker v2: face detection (SCRFD)", 16_923_827,
        "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", ("photomaker-v2",),
    ),
    _pack(
        "buffalo_l", "w600k_r50.onnx", "PhotoMaker v2: face embedding (ArcFace w600k_r50)",
        174_383_860,
        "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43", ("photomaker-v2",),
    ),
    _unused("buffalo_l", "1k3d68.onnx", 143_607_619, None, ("photomaker-v2",)),
    _unused("buffalo_l", "2d106det.onnx", 5_030_888, None, ("photomaker-v2",)),
    _unused("buffalo_l", "genderage.onnx", 1_322_532, None, ("photomaker-v2",)),
    _gh(
        "facexlib-detection", "facexlib", "xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
        "PuLID: face alignment (RetinaFace-R50)", _FACE,
        size=109_497_761, sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    ),
    _gh(
        "facexlib-parsing", "facexlib", "xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
        "PuLID: face parsing (BiSeNet)", _FACE,
        size=53_289_463,
    ),
    _hf(
        "photomaker-v1", "photomaker", "TencentARC/PhotoMaker/photomaker-v1.bin",
        "PhotoMaker v1", ("photomaker-v1",),
        approx_size="934 MB", sha256="529d503fa378bfb3a74e3384ab2064d7269d59f0638324555d22067c31e275bc",
    ),
    _hf(
        "photomaker-v2", "photomaker", "TencentARC/PhotoMaker-V2/photomaker-v2.bin",
        "PhotoMaker v2", ("photomaker-v2",),
        approx_size="1.8 GB", sha256="0eeac57d7e09b95cee670a18e0d939ff303dd6f76d317c950bf584c6c9bdb8f5",
    ),
)

_FACE_FILES = (
    "eva-clip",
    "antelopev2/scrfd_10g_bnkps.onnx",
    "antelopev2/glintr100.onnx",
    "facexlib-detection",
    "facexlib-parsing",
)
# Names `download` accepts besides the entries' own: whole packs and the usual sets.
BUNDLES = {
    "antelopev2": tuple(e.name for e in registry if e.pack == "antelopev2"),
    "buffalo_l": tuple(e.name for e in registry if e.pack == "buffalo_l"),
    "pulid": ("pulid-v1", "pulid-v1.1", *_FACE_FILES),
    "flux": ("pulid-flux-v0.9.1", *_FACE_FILES),
    "photomaker": ("photomaker-v1", "photomaker-v2", "buffalo_l/det_10g.onnx", "buffalo_l/w600k_r50.onnx"),
}


def get(name: str, entries: Iterable[ModelFile] = registry) -> ModelFile:
    """The entry with this registry name, file name or accepted alternative name."""
    entries = tuple(entries)
    base = os.path.basename(name.replace("\\", "/"))
    for e in entries:
        if e.name == name:
            return e
    for e in entries:
        if base in e.accepted_names:
            return e
    raise PuLIDError(f"Unknown model {name!r}. Known names: {', '.join(e.name for e in entries)}.")


def select(names: Sequence[str], entries: Iterable[ModelFile] = registry) -> list[ModelFile]:
    """Entries for registry names and bundle names, in order, without repeats."""
    by_name = {e.name: e for e in entries}
    out: dict[str, ModelFile] = {}
    for name in names:
        for n in BUNDLES.get(name, (name,)):
            if n not in by_name:
                raise PuLIDError(f"Unknown model {n!r}. Known names: {', '.join([*BUNDLES, *by_name])}.")
            out.setdefault(n, by_name[n])
    return list(out.values())


def missing_file_message(entry_or_name: ModelFile | str, searched_dirs: Sequence[str]) -> str:
    """The message a node raises when a model file is not where ComfyUI looks."""
    dirs = ", ".join(searched_dirs) if searched_dirs else "the ComfyUI model folders"
    try:
        entry = entry_or_name if isinstance(entry_or_name, ModelFile) else get(entry_or_name)
    except PuLIDError:
        return f"{entry_or_name} not found in {dirs}. Put the file in one of these folders."
    base = searched_dirs[0] if searched_dirs else f"models/{entry.folder}"
    if entry.pack:
        return (
            f"{entry.pack}/{entry.filename} not found in {dirs}. Download {entry.url}, and put its "
            f".onnx files directly in {os.path.join(base, 'models', entry.pack)} (not in a nested "
            f"{entry.pack}/{entry.pack} folder) (or run `python -m pulid_core.models download {entry.pack}`)."
        )
    return (
        f"{entry.filename} not found in {dirs}. Download it from {entry.url} and put it in {base} "
        f"(or run `python -m pulid_core.models download {entry.name}`)."
    )


def _fmt_size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"


def markdown_table(entries: Iterable[ModelFile] = registry) -> str:
    """The README models table (tests/unit/test_readme_models_table.py keeps them equal)."""
    rows = [
        "| Name (for `download`) | File | Put it in | Needed for | Size | sha256 |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        size = _fmt_size(e.size) if e.size is not None else f"~{e.approx_size}"
        sha = f"`{e.sha256[:12]}…`" if e.sha256 else "not pinned"
        src = f"{e.filename} (in [{e.pack}.zip]({e.url}))" if e.pack else f"[{e.filename}]({e.url})"
        rows.append(f"| `{e.name}` | {src} | `models/{e.relative_dir}/` | {e.needed_for} | {size} | {sha} |")
    bundles = ", ".join(f"`{b}`" for b in BUNDLES)
    rows += [
        "",
        "`python -m pulid_core.models check --comfyui PATH [--for USE]` (with ComfyUI's Python, in this "
        "pack's folder) reports each file as present, missing, optional, not needed (for the use), corrupt or "
        "misplaced with the "
        "command that fixes it, and exits non-zero when a file needed for the use (by default: the "
        f"models found; one of {', '.join(f'`{u}`' for u in USES)}) is missing or broken.",
        "`python -m pulid_core.models download NAME... --comfyui PATH` fetches files (names from the "
        f"table, or {bundles}) over https, checked by size and sha256 where published and by structure "
        "otherwise, and resumes after a break; `HF_ENDPOINT` (Hugging Face) and `--mirror` or "
        "`PULID_MODELS_MIRROR` (GitHub files) select mirrors; an `http://` mirror needs `--allow-http`, "
        "and no token is ever sent over http.",
    ]
    return "\n".join(rows) + "\n"
