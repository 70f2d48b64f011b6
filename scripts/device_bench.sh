#!/usr/bin/env bash
# The GPU benchmarks in one command, on a device machine with .devkit/ carried along (built here by
# scripts/device_kit.sh). Writes gpu.md and gpu.json into $OUT (or ./out): the SDXL ID branch (fp16,
# the fused path, VRAM), one face encode per stage, PuLID-FLUX (bf16), each beside the archived
# anchor where it has one. About 6 minutes on an H100.
#
#   bash scripts/device_bench.sh            # on the device
#   DEVICE=cpu TINY=1 scripts/device_bench.sh  # here: checks the plumbing with tiny models
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kit="${PULID_DEVKIT:-$here/.devkit}"
[ -d "$kit/comfyui" ] || { echo "no .devkit: run scripts/device_kit.sh here and carry .devkit" >&2; exit 1; }
out="${OUT:-$here/out}"
mkdir -p "$out"
export COMFYUI_DIR="$kit/comfyui" PULID_ANCHOR_DIR="$kit/anchor/PuLID_ComfyUI" PYTHONUNBUFFERED=1
export PYTHONPATH="$kit/site${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
size=(--quick)
[ -n "${TINY:-}" ] && size=(--tiny)
cd "$here"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
status=0
for case in "" --encode --flux; do
    # shellcheck disable=SC2086  # $case is one flag or nothing
    timeout "${CASE_TIMEOUT:-240}" "$python" -m benchmarks "${size[@]}" $case --device "$device" --out-dir "$out" \
        || { echo "benchmarks ${case:-(SDXL)} failed with $?" >&2; status=1; }
done
ls -l "$out"
exit $status
