"""Install-time step of comfyui-pulid, run by ComfyUI Manager (and comfy-cli) after requirements.txt.

onnxruntime comes in several builds that all provide the same ``onnxruntime`` module (CPU,
CUDA ``onnxruntime-gpu``, DirectML, OpenVINO, ROCm, Apple silicon). Two of them installed side by
side overwrite each other's files, and a requirements.txt line ``onnxruntime`` would install the CPU
build next to a user's ``onnxruntime-gpu`` on every Manager install, update or fix. So it is not in
requirements.txt: this script installs the CPU build only when no build is installed yet.
By hand: ``python install.py`` with ComfyUI's Python (or ``pip install onnxruntime``, or one of the
other builds instead).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib import metadata

log = logging.getLogger("comfyui-pulid.install")

# Distributions that provide the onnxruntime module (PyPI names).
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                      "onnxruntime-rocm", "onnxruntime-silicon", "onnxruntime-qnn", "onnxruntime-training")
ONNXRUNTIME_REQUIREMENT = "onnxruntime>=1.16"


def installed_builds() -> list[str]:
    found = []
    for name in ONNXRUNTIME_BUILDS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[comfyui-pulid] %(message)s")
    builds = installed_builds()
    if builds:
        log.info("onnxruntime already installed (%s): left as it is", ", ".join(builds))
        if len(builds) > 1:
            log.warning("several onnxruntime builds are installed (%s); they overwrite each other's files: "
                        "uninstall all of them and install the one you need", ", ".join(builds))
        return 0
    log.info("installing %s (the CPU build; for CUDA install onnxruntime-gpu instead)", ONNXRUNTIME_REQUIREMENT)
    return subprocess.call([sys.executable, "-m", "pip", "install", ONNXRUNTIME_REQUIREMENT])


if __name__ == "__main__":
    sys.exit(main())
