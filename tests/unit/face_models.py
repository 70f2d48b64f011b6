"""Synthetic stand-ins for the face models, built at test time (no weights are shipped).

- ``scrfd_model``: an ONNX graph with the real SCRFD-10G-KPS signature (input [1, 3, ?, ?],
  9 outputs score/bbox/kps for strides 8/16/32, 2 anchors) whose outputs place the faces
  we ask for: each face is written into the stride-8 anchor nearest its centre.
- ``arcface_model``: an ONNX graph with the glintr100 signature ([N, 3, 112, 112] -> [N, 512])
  computing avgpool(8) -> flatten -> matmul by a known matrix, so the test can
  compute the expected embedding itself.
- ``T1_FACES``: the face boxes of t1.jpg; ``kps_for_box`` places five keypoints in a box
  as an exact similarity transform of the ArcFace template.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
STRIDES = (8, 16, 32)


def insightface_image(name: str) -> str:
    spec = importlib.util.find_spec("insightface")
    path = os.path.join(os.path.dirname(spec.origin), "data", "images", name)
    assert os.path.isfile(path), path
    return path


def _save(graph, path: str) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def letterbox_scale(h: int, w: int, size: int = 640) -> float:
    """insightface SCRFD: scale from image pixels to the letterboxed detector input."""
    if h / w > 1.0:
        return size / h
    return int(size * (h / w)) / h


def scrfd_outputs(faces, size: int = 640):
    """faces: [(bbox [4], kps [5, 2], score)] in detector-input pixels -> 9 arrays (scores, bboxes, kps)."""
    scores, boxes, kpss = [], [], []
    for stride in STRIDES:
        n = (size // stride) ** 2 * 2
        scores.append(np.zeros((n, 1), np.float32))
        boxes.append(np.ones((n, 4), np.float32))
        kpss.append(np.zeros((n, 10), np.float32))
    for bbox, kps, score in faces:
        stride, grid = 8, size // 8
        cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        col, row = round(cx / stride), round(cy / stride)
        k = (row * grid + col) * 2
        centre = np.array([col * stride, row * stride], np.float64)
        scores[0][k, 0] = score
        boxes[0][k] = (
            np.array([centre[0] - bbox[0], centre[1] - bbox[1], bbox[2] - centre[0], bbox[3] - centre[1]])
            / stride
        )
        kpss[0][k] = ((np.asarray(kps, np.float64) - centre) / stride).reshape(-1)
    return scores + boxes + kpss


def scrfd_model(path: str, faces, size: int = 640, batched: bool = False) -> str:
    """A 'detector' that reports ``faces`` (detector-input pixels) in any image that is not black."""
    outs = scrfd_outputs(faces, size)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    # Scores are gated by the mean normalised pixel: a black image has no faces.
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Add", ["mean", "offset"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "gain"], ["steep"]),
        helper.make_node("Clip", ["steep", "lo", "hi"], ["gate"]),
        helper.make_node("Mul", ["gate", "zero"], ["tie"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("offset", 0.9), ("gain", 100.0), ("lo", 0.0), ("hi", 1.0), ("zero", 0.0))
    ]
    outputs = []
    for name, arr in zip(names, outs):
        if batched:
            arr = arr[None]
        inits.append(numpy_helper.from_array(arr, name + "_const"))
        if name.startswith("score"):
            nodes.append(helper.make_node("Mul", [name + "_const", "gate"], [name]))
        else:
            nodes.append(helper.make_node("Add", [name + "_const", "tie"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    graph = helper.make_graph(
        nodes,
        "scrfd_synthetic",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs,
        inits,
    )
    return _save(graph, path)


def arcface_weight(dim: int = 512, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3 * 14 * 14, dim)).astype(np.float32) * 0.1


def arcface_model(path: str, dim: int = 512, seed: int = 0) -> str:
    w = arcface_weight(dim, seed)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_synthetic",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])],
        [numpy_helper.from_array(w, "W")],
    )
    return _save(graph, path)


def arcface_reference(crop112_bgr: np.ndarray, dim: int = 512, seed: int = 0) -> np.ndarray:
    """What ``arcface_model`` computes for one 112x112 BGR crop with (x - 127.5) / 127.5 in RGB."""
    x = (crop112_bgr[:, :, ::-1].astype(np.float64) - 127.5) / 127.5
    pooled = x.reshape(14, 8, 14, 8, 3).mean(axis=(1, 3)).transpose(2, 0, 1).reshape(-1)
    return (pooled @ arcface_weight(dim, seed).astype(np.float64)).astype(np.float32)


def square_model(path: str, side: int, outputs: int = 1) -> str:
    """A stand-in for the pack's other models (landmarks 192, genderage 96)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "other",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])],
    )
    return _save(graph, path)


def make_pack(folder: str, faces, size: int = 640, batched: bool = False, extra: bool = True,
              names=("scrfd_10g_bnkps.onnx", "glintr100.onnx")) -> str:
    """A pack folder (antelopev2 names by default): the detector and recognizer under their
    real names, plus the models the pipeline does not use."""
    os.makedirs(folder, exist_ok=True)
    scrfd_model(os.path.join(folder, names[0]), faces, size, batched)
    arcface_model(os.path.join(folder, names[1]))
    if extra:
        square_model(os.path.join(folder, "1k3d68.onnx"), 192)
        square_model(os.path.join(folder, "2d106det.onnx"), 192)
        square_model(os.path.join(folder, "genderage.onnx"), 96)
    return folder


def similarity(scale: float, angle: float, shift) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def kps_for_box(bbox, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Five keypoints inside ``bbox`` that are exactly the ArcFace template under a known
    similarity; returns (kps [5, 2], the 2x3 matrix mapping kps -> the 112 template)."""
    x1, y1, x2, y2 = bbox
    scale = (x2 - x1) / 112.0
    fwd = similarity(scale, angle, (0.0, 0.0))
    centre_t = ARCFACE_112.mean(0)
    shift = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) - fwd[:, :2] @ centre_t
    fwd[:, 2] = shift
    kps = ARCFACE_112 @ fwd[:, :2].T + fwd[:, 2]
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]
    return kps, inv


# The six faces of insightface's t1.jpg (1280x886), marked by hand (OpenCV 5 no longer
# ships the Haar cascades): x1, y1, x2, y2, left to right.
T1_FACES = np.array(
    [
        [55, 280, 155, 395],
        [272, 150, 368, 262],
        [460, 265, 570, 400],
        [750, 330, 855, 460],
        [900, 70, 1020, 205],
        [1125, 285, 1230, 405],
    ],
    dtype=np.float64,
)


def retinaface_state_dict(prefix: str = "module.") -> dict:
    import warnings

    import torch
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    return {prefix + k: v for k, v in net.state_dict().items()}


def bisenet_state_dict() -> dict:
    import torch
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    return BiSeNet(num_class=19).state_dict()
