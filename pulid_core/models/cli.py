"""The command line behind ``python -m pulid_core.models list|table|check|download``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import PuLIDError
from .checks import check, format_report
from .download import download
from .paths import ModelPaths, guess_comfyui_root
from .registry import BUNDLES, USES, markdown_table, registry


def _paths_from_args(args) -> ModelPaths:
    if args.models_dir:
        return ModelPaths.for_models_dir(args.models_dir, args.extra_model_paths)
    root = args.comfyui or os.environ.get("COMFYUI_PATH") or guess_comfyui_root()
    if not root:
        raise PuLIDError("Where is ComfyUI? Pass --comfyui PATH (the folder with main.py) or --models-dir PATH.")
    return ModelPaths.for_comfyui(root, force=args.force)


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
        p.add_argument("--force", action="store_true", help="accept a --comfyui folder without main.py/models")
        if name == "check":
            p.add_argument("--for", dest="uses", action="append", choices=list(USES),
                           help="what you will run (repeatable; default: the uses whose model files are found)")
            p.add_argument("--verify", action="store_true", help="also compare sha256 (reads every byte)")
        else:
            p.add_argument("names", nargs="*", help=f"model names or bundles ({', '.join(BUNDLES)})")
            p.add_argument("--all", action="store_true", help="every file in the registry")
            p.add_argument("--mirror", help="https base URL for GitHub-hosted files (or a template with {url})")
            p.add_argument("--hf-endpoint", help="Hugging Face mirror (default: $HF_ENDPOINT)")
            p.add_argument("--allow-http", action="store_true", help="accept an http:// mirror (no token is sent)")
            p.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation")
            p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            out.write("".join(f"{e.name:<32} models/{e.relative_dir}/{e.filename}\n" for e in registry))
            return 0
        if args.command == "table":
            out.write(markdown_table())
            return 0
        paths = _paths_from_args(args)
        if args.command == "check":
            report = check(paths, verify=args.verify, uses=args.uses)
            out.write(format_report(report))
            return 0 if report.ok else 1
        names = [e.name for e in registry] if args.all else args.names
        if not names:
            parser.error(f"name the models to fetch (e.g. {', '.join(BUNDLES)}), or pass --all")
        written = download(
            names, paths, hf_endpoint=args.hf_endpoint, mirror=args.mirror, allow_http=args.allow_http,
            timeout=args.timeout, progress=not args.no_progress,
        )
        out.write("".join(f"saved {p}\n" for p in written) or "everything was already in place\n")
        return 0
    except PuLIDError as exc:
        out.write(f"error: {exc}\n")
        return 1
