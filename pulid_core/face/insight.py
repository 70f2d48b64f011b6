"""InsightFace model packs (antelopev2, buffalo_l) run directly with onnxruntime.

Why not ``insightface.app.FaceAnalysis``: the installed insightface (2.x) resolves
packs through its own download/manifest/licence machinery and builds a session for
every file in the folder. Here only the two models PuLID and PhotoMaker use are
loaded: the SCRFD detector and the ArcFace recognition model, each recognised by
its ONNX input/output signature exactly as insightface's ``ModelRouter`` does, and
run with insightface 0.7.3's preprocessing (SCRFD: letterbox into det_size,
(x - 127.5) / 128, BGR->RGB, strides 8/16/32 with 2 anchors, score >= 0.5, NMS 0.4;
ArcFace: ``norm_crop`` to the arcface template, (x - 127.5) / 127.5, BGR->RGB).
The insightface package itself is not needed.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ModelFileError, PuLIDError
from .align import arcface_crop

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}

# What each pack should contain, for the "missing files" message (only the
# detector and the recognition model are used).
PACK_FILES = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
}


@dataclass
class Face:
    """One detected face in image pixel coordinates."""

    bbox: np.ndarray  # [4] x1, y1, x2, y2
    kps: np.ndarray  # [5, 2] eyes, nose, mouth corners
    det_score: float
    embedding: np.ndarray | None = None  # [512] raw ArcFace output, not normalised

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))

    @property
    def normed_embedding(self) -> np.ndarray | None:
        if self.embedding is None:
            return None
        return self.embedding / np.linalg.norm(self.embedding)


ONNXRUNTIME_MISSING = (
    "onnxruntime is not installed in ComfyUI's Python. Run comfyui-pulid's install.py with it (ComfyUI "
    "Manager does this), or install one build by hand: onnxruntime (CPU), onnxruntime-gpu (CUDA), "
    "onnxruntime-directml (Windows DirectML) — only one of them."
)


def _onnxruntime():
    """The onnxruntime module, or a PuLIDError saying how to install it (it is not in requirements.txt:
    install.py installs the CPU build only where no other build is present, see there)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise PuLIDError(ONNXRUNTIME_MISSING) from exc
    return onnxruntime


def resolve_provider(provider: str) -> list:
    """'CPU' | 'CUDA' | 'ROCm' | 'CoreML' | 'DirectML' (or a full ORT name) -> providers list, CPU last."""
    onnxruntime = _onnxruntime()

    name = PROVIDERS.get(str(provider).lower().replace("executionprovider", ""), str(provider))
    if name not in PROVIDERS.values():
        raise PuLIDError(
            f"Unknown ONNX provider {provider!r}; choose one of CPU, CUDA, ROCm, CoreML, DirectML."
        )
    available = onnxruntime.get_available_providers()
    if name == "CPUExecutionProvider":
        return ["CPUExecutionProvider"]
    if name not in available:
        log.warning(
            "InsightFace provider %s is not available in the installed onnxruntime (%s); using CPU. "
            "Install the matching onnxruntime build (e.g. onnxruntime-gpu for CUDA) to use it.",
            provider,
            ", ".join(available),
        )
        return ["CPUExecutionProvider"]
    if name == "CUDAExecutionProvider":
        # Grow the CUDA arena only as needed: ComfyUI cannot see or free it.
        return [(name, {"arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]
    return [name, "CPUExecutionProvider"]


def find_pack_dir(root, pack: str) -> str:
    """The folder holding ``pack``'s .onnx files under an insightface root (``<root>/models/<pack>``).

    Also accepted: ``<root>/<pack>`` (root given as the models folder), the pack folder
    itself, and the common unzip mistake ``<pack>/<pack>/*.onnx``.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    candidates = [os.path.join(root, "models", pack), os.path.join(root, pack)]
    if os.path.basename(root) == pack:
        candidates.append(root)
    for folder in candidates:
        if _onnx_files(folder):
            return folder
        nested = os.path.join(folder, pack)
        if _onnx_files(nested):
            log.info(
                "Using InsightFace %s from the nested folder %s (the zip was extracted into an extra "
                "'%s' folder; moving the .onnx files one level up also works).",
                pack,
                nested,
                pack,
            )
            return nested
    expected = PACK_FILES.get(pack)
    what = f" ({', '.join(expected)})" if expected else ""
    raise ModelFileError(
        f"InsightFace model pack '{pack}' not found: expected its .onnx files{what} in "
        f"{os.path.join(root, 'models', pack)}. Download {pack}.zip (insightface model zoo) and extract it "
        f"so the .onnx files sit directly in that folder."
    )


def _onnx_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.onnx"))) if os.path.isdir(folder) else []


# The insightface packs' files by role: the detectors and recognition models PuLID and PhotoMaker
# use, and the landmark / gender-age models they never run.
USED_FILES = frozenset(name for files in PACK_FILES.values() for name in files)
UNUSED_FILES = frozenset({"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"})


def _pack_candidates(folder: str) -> list[str]:
    """The .onnx files that may be the detector or the recognition model, the pack's own names first."""
    files = [p for p in _onnx_files(folder) if os.path.basename(p) not in UNUSED_FILES]
    return sorted(files, key=lambda p: (os.path.basename(p) not in USED_FILES, os.path.basename(p)))


def _read_onnx(path: str):
    """(raw bytes, ModelProto) of an ONNX file, or a ModelFileError naming it."""
    import onnx
    from google.protobuf.message import DecodeError

    name = os.path.basename(path)
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        raise ModelFileError(f"{path} is empty (0 bytes): delete it and download the model pack again.")
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelFileError(
            f"{name} ({len(data):,} bytes) in {os.path.dirname(path)} is not a readable ONNX model ({exc}). "
            "It is probably an incomplete download: delete it and download the model pack again."
        ) from exc
    if not model.graph.node or not model.graph.output:
        raise ModelFileError(
            f"{name} in {os.path.dirname(path)} is not an ONNX model (empty graph). "
            "Delete it and download the model pack again."
        )
    return data, model


def _signature(model) -> tuple[list, int]:
    """Input shapes (initializers excluded; symbolic dims as strings) and the output count."""
    init = {t.name for t in model.graph.initializer}
    shapes = []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [
            d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim
        ]
        shapes.append(dims)
    return shapes, len(model.graph.output)


def model_task(model) -> str | None:
    """insightface's routing rule: which task an ONNX graph serves, from its signature."""
    inputs, n_out = _signature(model)
    if not inputs or len(inputs[0]) != 4:
        return None
    h, w = inputs[0][2], inputs[0][3]
    if n_out >= 5:
        return "detection"
    if not (isinstance(h, int) and isinstance(w, int)):
        return None
    if h == w == 192:
        return "landmark"
    if h == w == 96:
        return "genderage"
    if len(inputs) == 2 and h == w == 128:
        return "swapper"
    if h == w and h >= 112 and h % 16 == 0:
        return "recognition"
    return None


def _session(data: bytes, path: str, providers: list):
    onnxruntime = _onnxruntime()

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    # Idle ORT threads otherwise spin and slow down the torch work that follows each call.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind error types
        raise ModelFileError(
            f"onnxruntime could not load {os.path.basename(path)} from {os.path.dirname(path)}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
            "Delete the file and download the model pack again."
        ) from exc


class SCRFD:
    """The SCRFD detector with keypoints (9 or 15 outputs), insightface 0.7.3 semantics."""

    def __init__(
        self, session, path: str, det_size: int = 640, det_thresh: float = 0.5, nms_thresh: float = 0.4
    ):
        self.session, self.path = session, path
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in session.get_outputs()]
        shape = inp.shape
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        # A model exported with a fixed input size ignores det_size, as in insightface.
        self.input_size = (shape[3], shape[2]) if fixed else (int(det_size), int(det_size))
        n = len(self.output_names)
        if n not in (9, 15):
            raise ModelFileError(
                f"{os.path.basename(path)} is a face detector without the five keypoints ({n} outputs). "
                "Use the pack's keypoint detector (scrfd_10g_bnkps.onnx or det_10g.onnx)."
            )
        self.fmc = 3 if n == 9 else 5
        self.strides = (8, 16, 32) if n == 9 else (8, 16, 32, 64, 128)
        self.num_anchors = 2 if n == 9 else 1
        self.batched = len(session.get_outputs()[0].shape) == 3
        self.det_thresh, self.nms_thresh = det_thresh, nms_thresh
        self._centers: dict = {}

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (dets [K, 5] x1 y1 x2 y2 score, kps [K, 5, 2]) sorted by score, in image pixels."""
        in_w, in_h = self.input_size
        h, w = image_bgr.shape[:2]
        if h / w > in_h / in_w:
            new_h, new_w = in_h, int(in_h / (h / w))
        else:
            new_w, new_h = in_w, int(in_w * (h / w))
        scale = new_h / h
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image_bgr, (new_w, new_h))
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (in_w, in_h), (127.5, 127.5, 127.5), swapRB=True)
        outs = self.session.run(self.output_names, {self.input_name: blob})

        pick = (lambda a: a[0]) if self.batched else (lambda a: a)
        scores, boxes, points = [], [], []
        for i, stride in enumerate(self.strides):
            score = pick(outs[i]).reshape(-1)
            box = pick(outs[i + self.fmc]).reshape(-1, 4) * stride
            kps = pick(outs[i + 2 * self.fmc]).reshape(-1, 10) * stride
            centers = self._anchor_centers(in_h // stride, in_w // stride, stride)
            keep = np.where(score >= self.det_thresh)[0]
            c = centers[keep]
            scores.append(score[keep])
            boxes.append(np.concatenate([c - box[keep, :2], c + box[keep, 2:]], axis=1))
            points.append((np.tile(c, 5) + kps[keep]).reshape(-1, 5, 2))
        score = np.concatenate(scores)
        if score.size == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        # insightface 0.7.3 (scrfd.py detect): argsort()[::-1] with numpy's default (unstable)
        # sort, then NMS sorts again the same way; equal scores end up in that order, not in a
        # stable one (insightface 2.x), and a different box can survive NMS.
        order = score.argsort()[::-1]
        dets = np.hstack([np.concatenate(boxes) / scale, score[:, None]]).astype(np.float32)[order]
        kps = (np.concatenate(points) / scale).astype(np.float32)[order]
        keep = nms(dets, self.nms_thresh)
        return dets[keep], kps[keep]

    def _anchor_centers(self, rows: int, cols: int, stride: int) -> np.ndarray:
        key = (rows, cols, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:rows, :cols]
            centers = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            self._centers[key] = np.repeat(centers, self.num_anchors, axis=0)
        return self._centers[key]


def nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS as insightface 0.7.3's SCRFD.nms: '+1' pixel areas, and its own
    ``scores.argsort()[::-1]`` order (on dets already sorted the same way)."""
    x1, y1, x2, y2 = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = dets[:, 4].argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return keep


class ArcFace:
    """An ArcFace recognition model: aligned BGR face -> raw embedding."""

    def __init__(self, session, path: str, model):
        self.session, self.path = session, path
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = session.get_outputs()[0].name
        self.input_size = int(inp.shape[2])
        # MXNet-converted models normalise inside the graph (Sub and Mul among the first nodes).
        first = [n.name for n in model.graph.node[:8]]
        inside = any(n.startswith(("Sub", "_minus")) for n in first) and any(
            n.startswith(("Mul", "_mul")) for n in first
        )
        self.mean, self.std = (0.0, 1.0) if inside else (127.5, 127.5)

    def embed_face(self, image_bgr: np.ndarray, kps) -> np.ndarray:
        """Embedding of the face with these five keypoints (insightface ``norm_crop`` + ``get_feat``)."""
        return self.embed_crops([arcface_crop(image_bgr, kps, self.input_size)])[0]

    def embed_crops(self, crops_bgr: list) -> np.ndarray:
        """``get_feat``: each crop resized (bilinear) to the model size, no re-alignment -> [N, D]."""
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImages(list(crops_bgr), 1.0 / self.std, size, (self.mean,) * 3, swapRB=True)
        out = self.session.run([self.output_name], {self.input_name: blob})[0]
        return out.reshape(len(crops_bgr), -1).astype(np.float32)


class FaceAnalyzer:
    """SCRFD + ArcFace of one InsightFace pack; sessions are built once."""

    def __init__(self, detector: SCRFD, recognizer: ArcFace, pack: str, provider: str, folder: str):
        self.detector, self.recognizer = detector, recognizer
        self.pack, self.provider, self.folder = pack, provider, folder

    def detect(self, image_bgr: np.ndarray, embed: bool = True) -> list[Face]:
        """All faces (score-sorted), each with its raw embedding unless ``embed`` is False."""
        image_bgr = np.ascontiguousarray(image_bgr)
        dets, kpss = self.detector.detect(image_bgr)
        faces = [Face(bbox=d[:4].copy(), kps=k, det_score=float(d[4])) for d, k in zip(dets, kpss)]
        if embed:
            for face in faces:
                self.embed(image_bgr, face)
        return faces

    def embed(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        face.embedding = self.recognizer.embed_face(image_bgr, face.kps)
        return face.embedding

    def embed_aligned(self, crop_bgr: np.ndarray) -> np.ndarray:
        """The official fallback when detection finds nothing: ``get_feat`` on the FFHQ crop."""
        return self.recognizer.embed_crops([crop_bgr])[0]


def load_face_analysis(
    root, pack: str = "antelopev2", provider: str = "CPU", det_size: int = 640
) -> FaceAnalyzer:
    """Load ``<root>/models/<pack>``: its SCRFD detector and its ArcFace model, picked by signature.

    Only what is needed is opened: the pack's known detector and recognition files first,
    then other files until both tasks are found. The pack's landmark and gender/age
    models are never read, so a damaged copy of one cannot block loading.
    """
    folder = find_pack_dir(root, pack)
    providers = resolve_provider(provider)
    models: dict = {}
    unreadable: dict = {}
    for path in _pack_candidates(folder):
        if len(models) == 2:
            break
        try:
            data, model = _read_onnx(path)
        except ModelFileError as exc:
            if os.path.basename(path) in USED_FILES:
                raise
            # Maybe a renamed detector or recognition model: only an error if one turns out missing.
            unreadable[path] = exc
            log.warning("InsightFace %s: skipping %s, which is not readable: %s", pack, os.path.basename(path), exc)
            continue
        task = model_task(model)
        if task not in ("detection", "recognition"):
            log.debug(
                "InsightFace %s: %s (%s) is not needed", pack, os.path.basename(path), task or "unrecognised"
            )
        elif task in models:
            log.warning(
                "InsightFace %s: two %s models; using %s, ignoring %s",
                pack,
                task,
                os.path.basename(models[task].path),
                os.path.basename(path),
            )
        elif task == "detection":
            models[task] = SCRFD(_session(data, path, providers), path, det_size=det_size)
        else:
            models[task] = ArcFace(_session(data, path, providers), path, model)
        del data, model  # a recognition model is ~250 MB; keep only its session
    for path in _onnx_files(folder):
        if os.path.basename(path) in UNUSED_FILES and os.path.getsize(path) == 0:
            log.warning("InsightFace %s: %s is empty; this pack never uses it (not opened)", pack,
                        os.path.basename(path))
    missing = [t for t in ("detection", "recognition") if t not in models]
    if missing and unreadable:
        raise next(iter(unreadable.values()))
    if missing:
        expected = PACK_FILES.get(pack, ("a SCRFD detector .onnx", "an ArcFace recognition .onnx"))
        raise ModelFileError(
            f"InsightFace pack folder {folder} has no {' and no '.join(missing)} model. Expected "
            f"{' and '.join(expected)} there (from the insightface {pack} model pack); "
            f"found: {', '.join(os.path.basename(p) for p in _onnx_files(folder)) or 'nothing'}."
        )
    detector, recognizer = models["detection"], models["recognition"]
    used = detector.session.get_providers()[0]
    log.info(
        "InsightFace %s loaded from %s (%s, %s) on %s",
        pack,
        folder,
        os.path.basename(detector.path),
        os.path.basename(recognizer.path),
        used,
    )
    return FaceAnalyzer(detector, recognizer, pack, used, folder)
