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

from .checks import (
                     CHECKSUM,
                     CORRUPT,
                     MISPLACED,
                     MISSING,
                     NOT_NEEDED,
                     PRESENT,
                     PROBLEMS,
                     WRONG_SIZE,
                     Finding,
                     check,
                     format_findings,
                     inspect_file,
                     sha256_of,
)
from .cli import main
from .download import download, fetch_file
from .paths import ModelPaths, read_extra_model_paths, shell_quote
from .registry import (
                     BUNDLES,
                     FOLDERS,
                     GITHUB,
                     HF_DEFAULT_ENDPOINT,
                     PACK_ARCHIVES,
                     Folder,
                     ModelFile,
                     get,
                     markdown_table,
                     missing_file_message,
                     registry,
                     select,
)

__all__ = [
    "BUNDLES", "CHECKSUM", "CORRUPT", "FOLDERS", "GITHUB", "HF_DEFAULT_ENDPOINT", "MISPLACED", "MISSING",
    "NOT_NEEDED", "PACK_ARCHIVES", "PRESENT", "PROBLEMS", "WRONG_SIZE", "Finding", "Folder", "ModelFile",
    "ModelPaths", "check", "download", "fetch_file", "format_findings", "get", "inspect_file", "main",
    "markdown_table", "missing_file_message", "read_extra_model_paths", "registry", "select", "sha256_of",
    "shell_quote",
]
