"""Where a ComfyUI install keeps its models (models_dir, extra_model_paths.yaml)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
from dataclasses import dataclass, field

from ..errors import PuLIDError
from .registry import FOLDERS, ModelFile

log = logging.getLogger(__name__)

def _hf_hub_cache() -> str:
    from huggingface_hub import constants  # HF_HUB_CACHE / HF_HOME, as every Hugging Face tool reads them

    return constants.HF_HUB_CACHE


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
    def for_comfyui(cls, root: str, force: bool = False, **kw) -> ModelPaths:
        """Paths of the ComfyUI in ``root``; a folder without ``main.py`` and ``models/`` is
        refused unless ``force`` (a mistyped path must not get model folders created in it)."""
        root = os.path.abspath(root)
        lacks = [n for n in ("main.py", "models/") if not os.path.exists(os.path.join(root, n))]
        if lacks and not force:
            raise PuLIDError(
                f"{root} does not look like a ComfyUI folder (it has no {' and no '.join(lacks)}). "
                "Pass the folder that holds ComfyUI's main.py, --models-dir PATH for a models folder, "
                "or --force to use this folder anyway."
            )
        kw.setdefault("origin", f"--comfyui {shell_quote(root)}" + (" --force" if lacks else ""))
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


def guess_comfyui_root() -> str | None:
    """The ComfyUI this pack is installed in (ComfyUI/custom_nodes/<pack>/pulid_core/models/)."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4))
    return root if os.path.isfile(os.path.join(root, "folder_paths.py")) else None


def shell_quote(path: str) -> str:
    """A path quoted for the fix commands (POSIX shell, or cmd.exe on Windows)."""
    return f'"{path}"' if os.name == "nt" else shlex.quote(path)
