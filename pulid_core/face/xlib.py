"""facexlib's RetinaFace-R50 (landmarks) and BiSeNet (face parsing) from a local folder.

facexlib's own ``init_detection_model`` / ``init_parsing_model`` download into
site-packages; here only its architecture classes are used and the weights are read
with :func:`pulid_core.io.read_state_dict` (``weights_only``), so nothing is ever
downloaded or written.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch

from ..errors import ModelFileError, PuLIDError
from ..io import check_float_weights, guess_kind, read_state_dict, state_dict_mismatch
from .align import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

DETECTION_FILE = "detection_Resnet50_Final.pth"
PARSING_FILE = "parsing_bisenet.pth"
SOURCES = {
    DETECTION_FILE: "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    PARSING_FILE: "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
}
# FaceRestoreHelper.get_face_landmarks_5 keeps RetinaFace faces above this score.
RETINAFACE_CONF = 0.97


class FaceXLib:
    """RetinaFace (5 landmarks) + BiSeNet (19 CelebAMask-HQ classes), built once.

    The two are plain ``nn.Module``s (:meth:`modules`): whoever manages devices (ComfyUI's
    model management in the nodes) may move them; every call runs where their weights are.
    """

    def __init__(self, detector, parser, device, folder: str):
        self.detector, self.parser = detector, parser
        self.folder = folder
        self._means: dict = {}
        if detector is not None:
            self._sync_detector(torch.device(device))

    def modules(self) -> list:
        """The torch modules, for a device manager to load and offload."""
        return [m for m in (self.detector, self.parser) if m is not None]

    @property
    def device(self) -> torch.device:
        return next(self.parser.parameters()).device

    def _sync_detector(self, device: torch.device) -> None:
        # RetinaFace keeps its device and BGR mean as plain attributes, not buffers: follow the weights.
        if getattr(self.detector, "device", None) != device or device not in self._means:
            if device not in self._means:
                self._means[device] = torch.tensor([104.0, 117.0, 123.0], device=device).view(1, 3, 1, 1)
            self.detector.device = device
            self.detector.mean_tensor = self._means[device]

    @torch.inference_mode()
    def landmarks(self, image_bgr: np.ndarray, conf_threshold: float = RETINAFACE_CONF) -> list:
        """-> [(bbox [4], kps5 [5, 2], score)] sorted by score, RetinaFace at the original size."""
        if self.detector is None:
            raise PuLIDError("RetinaFace was not loaded (keypoint alignment only): load facexlib with detection.")
        self._sync_detector(next(self.detector.parameters()).device)
        rows = self.detector.detect_faces(np.ascontiguousarray(image_bgr), conf_threshold)
        return [
            (r[:4].astype(np.float32), r[5:15].reshape(5, 2).astype(np.float32), float(r[4])) for r in rows
        ]

    @torch.inference_mode()
    def parse(self, crop_bgr: np.ndarray) -> np.ndarray:
        """BiSeNet argmax [H, W] uint8 of an aligned BGR crop (RGB, ImageNet-normalised input)."""
        device = self.device
        rgb = np.ascontiguousarray(crop_bgr[:, :, ::-1]).astype(np.float32) / 255.0
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        out = self.parser((x - mean) / std)[0]
        return out.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def _weights_path(folder: str, filename: str) -> str:
    for candidate in (os.path.join(folder, filename), os.path.join(folder, "weights", filename)):
        if os.path.isfile(candidate):
            return candidate
    raise ModelFileError(
        f"facexlib model {filename} not found in {folder}. Put {filename} there "
        f"(it comes from {SOURCES[filename]}). The folder needs {DETECTION_FILE} and {PARSING_FILE}."
    )


def _load_into(module: torch.nn.Module, path: str, what: str) -> torch.nn.Module:
    """Assign the file's tensors to a module built on the meta device (no random init, no copy)."""
    sd = read_state_dict(path)
    name = os.path.basename(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFileError(f"{name} is not a plain state dict of tensors; expected {what}.")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    key_diff, wrong = state_dict_mismatch(sd, module.state_dict())
    if key_diff:
        raise ModelFileError(
            f"{name} does not look like {what}: it looks like {guess_kind(sd.keys())} "
            f"({key_diff}). "
            f"Use the file from {SOURCES.get(name, 'the facexlib releases')}."
        )
    if wrong:
        key, got, want = wrong[0]
        raise ModelFileError(f"{name} has wrong tensor shapes for {what} (e.g. {key}: {got} instead of {want}).")
    check_float_weights(sd, name, module.state_dict())
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def load_facexlib(folder, device="cpu", detection: bool = True) -> FaceXLib:
    """RetinaFace-R50 + BiSeNet from ``folder`` (detection_Resnet50_Final.pth, parsing_bisenet.pth).

    ``detection=False`` loads only BiSeNet: enough with InsightFace keypoint alignment.
    """
    try:
        from facexlib.detection.retinaface import RetinaFace
        from facexlib.parsing.bisenet import BiSeNet
    except ImportError as exc:
        raise PuLIDError(
            "The facexlib package is required for RetinaFace alignment: pip install facexlib."
        ) from exc
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.isdir(folder):
        raise ModelFileError(
            f"facexlib model folder {folder} does not exist. Create it and put {DETECTION_FILE} "
            f"({SOURCES[DETECTION_FILE]}) and {PARSING_FILE} ({SOURCES[PARSING_FILE]}) in it."
        )
    det_path = _weights_path(folder, DETECTION_FILE) if detection else None
    parse_path = _weights_path(folder, PARSING_FILE)
    device = torch.device(device)
    meta = torch.device("meta")
    with warnings.catch_warnings(), meta:
        # facexlib builds torchvision's resnet50 with the deprecated pretrained=False (no download).
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        detector = RetinaFace(network_name="resnet50", half=False, device=meta)
        parser = BiSeNet(num_class=19)
    if detection:
        detector = _load_into(detector, det_path, "a RetinaFace-ResNet50 detector").to(device).eval()
    else:
        detector = None
    parser = _load_into(parser, parse_path, "a BiSeNet face-parsing model").to(device).eval()
    log.info("facexlib %s loaded from %s on %s", "RetinaFace + BiSeNet" if detection else "BiSeNet", folder, device)
    return FaceXLib(detector, parser, device, folder)
