#!/usr/bin/env bash
# Command 2: set up (venv, pinned ComfyUI, chromium) and run the whole test suite:
# unit tests of pulid_core, in-process ComfyUI, headless server, real browser.
# Extra arguments go to pytest (e.g. scripts/test.sh -k attention).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup_env.sh" --browser
cd "$here"
# Unit tests first: they check that pulid_core imports without ComfyUI in the process.
exec "$here/.venv/bin/python" -m pytest tests/unit tests/comfy tests/server tests/browser -p no:cacheprovider -ra "$@"
