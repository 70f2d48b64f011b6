#!/usr/bin/env bash
# Command 1: set up (venv, pinned ComfyUI) and run a shipped workflow headless;
# prints the path of each PNG it wrote. See scripts/run_workflow.sh --help.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Mistyped paths and --help are answered before the (first time: long) setup.
for py in "${PYTHON:-}" python3 python; do
    if [ -n "$py" ] && command -v "$py" >/dev/null 2>&1; then
        "$py" "$here/scripts/run_workflow.py" --check-only "$@" || exit $?
        case " $* " in *" -h "*|*" --help "*) exit 0 ;; esac
        break
    fi
done
bash "$here/scripts/setup_env.sh"
exec "$here/.venv/bin/python" "$here/scripts/run_workflow.py" "$@"
