#!/usr/bin/env bash
# Command 2: set up (venv, pinned ComfyUI 0.3.75, chromium) and run the whole test suite:
# unit tests of pulid_core, in-process ComfyUI, headless server, real browser.
#
#   scripts/test.sh [--comfyui DIR|TARBALL] [--frontend VERSION] [pytest arguments...]
#
#   --comfyui X    run against another ComfyUI: a source folder or a tarball of one
#                  (e.g. ../shared/comfyui/ComfyUI-0.33.0.tar.gz), with its own cached
#                  venv (PULID_TEST_COMFYUI=X does the same)
#   --frontend V   the browser tier uses comfyui-frontend-package==V (PULID_TEST_FRONTEND=V)
# Anything else goes to pytest (e.g. scripts/test.sh -k attention -x).
# PYTHON=/path/to/python3.X picks the Python for a venv that has to be built;
# PULID_CACHE moves the cache (default ~/.cache/comfyui-pulid).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
comfy="${PULID_TEST_COMFYUI:-}" frontend="${PULID_TEST_FRONTEND:-}"
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --comfyui) comfy="${2:?--comfyui needs a folder or a tarball}"; shift ;;
        --comfyui=*) comfy="${1#*=}" ;;
        --frontend) frontend="${2:?--frontend needs a version}"; shift ;;
        --frontend=*) frontend="${1#*=}" ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) pytest_args+=("$1") ;;
    esac
    shift
done

setup=(--browser --print-env)
[ -n "$comfy" ] && setup+=(--comfyui "$(realpath "$comfy")")
[ -n "$frontend" ] && setup+=(--frontend "$frontend")
env_lines="$(bash "$here/scripts/setup_env.sh" "${setup[@]}")"
eval "$env_lines"   # PULID_VENV, COMFYUI_DIR, PULID_FRONTEND_ROOT

export COMFYUI_DIR
if [ -n "$frontend" ]; then
    export PULID_FRONTEND_ROOT PULID_FRONTEND_VERSION="$frontend"
fi
echo "[test] ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_DIR/comfyui_version.py") at $COMFYUI_DIR," \
     "frontend ${frontend:-as shipped}, $("$PULID_VENV/bin/python" -V)" >&2
cd "$here"
# Unit tests first: they check that pulid_core imports without ComfyUI in the process.
exec "$PULID_VENV/bin/python" -m pytest tests/unit tests/comfy tests/server tests/browser -p no:cacheprovider -ra \
    ${pytest_args[@]+"${pytest_args[@]}"}
