#!/usr/bin/env bash
# Command 1: set up (venv, pinned ComfyUI) and run a shipped workflow headless;
# prints the path of each PNG it wrote. See scripts/run_workflow.py --help.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup_env.sh"
exec "$here/.venv/bin/python" "$here/scripts/run_workflow.py" "$@"
