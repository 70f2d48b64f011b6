"""Every model file the pack uses, in one place, and the command that checks and fetches them.

The node errors (:func:`missing_file_message`), the README models table
(:func:`markdown_table`), ComfyUI's folder registration (``nodes/folders.py``) and the
command below all read :data:`registry`, so a file name, folder or URL is written once.

    python -m pulid_core.models list
    python -m pulid_core.models check    [--comfyui PATH | --models-dir PATH] [--for USE] [--verify]
    python -m pulid_core.models download NAME... [--comfyui PATH | --models-dir PATH] [--mirror URL]

The nodes never download anything: only ``download`` does, and only when asked. Imports
without ComfyUI or torch; ``download`` uses ``huggingface_hub`` (installed with ComfyUI),
file checks use ``onnx`` for ONNX files and PyYAML (when present) for extra_model_paths.yaml.
"""

from .checks import (
    CHECKSUM,
    CORRUPT,
    MISPLACED,
    MISSING,
    NESTED,
    NOT_NEEDED,
    OPTIONAL,
    PRESENT,
    PROBLEMS,
    USABLE,
    WRONG_SIZE,
    Finding,
    Report,
    check,
    file_problem,
    find,
    format_report,
    inspect_file,
    sha256_of,
)
from .cli import main
from .download import checked_endpoint, download, fetch_hf, fetch_pack, fetch_url
from .paths import ModelPaths, guess_comfyui_root, read_extra_model_paths, shell_quote
from .registry import (
    BUNDLES,
    FOLDERS,
    GITHUB,
    HF,
    PACK_ARCHIVES,
    USES,
    Folder,
    ModelFile,
    get,
    markdown_table,
    missing_file_message,
    registry,
    select,
)

__all__ = [
    "BUNDLES", "CHECKSUM", "CORRUPT", "FOLDERS", "GITHUB", "HF", "MISPLACED", "MISSING", "NESTED", "NOT_NEEDED",
    "OPTIONAL", "PACK_ARCHIVES", "PRESENT", "PROBLEMS", "USABLE", "USES", "WRONG_SIZE", "Finding", "Folder",
    "ModelFile", "ModelPaths", "Report", "check", "checked_endpoint", "download", "fetch_hf", "fetch_pack",
    "fetch_url", "file_problem", "find", "format_report", "get", "guess_comfyui_root", "inspect_file", "main",
    "markdown_table", "missing_file_message", "read_extra_model_paths", "registry", "select", "sha256_of",
    "shell_quote",
]
