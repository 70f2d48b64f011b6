"""The face pipeline: InsightFace (SCRFD + ArcFace) detection and embedding, facexlib
RetinaFace alignment and BiSeNet parsing, face selection and the EVA-CLIP input.

Public entry points: :func:`load_face_analysis`, :func:`load_facexlib`, :class:`FacePipeline`,
:func:`id_cond_from`, and the pure steps :func:`align_ffhq`, :func:`eva_input`, :func:`to_uint8_rgb`.
onnxruntime and facexlib are imported only when their loaders are called.
"""

from .align import (
    BACKGROUND_LABELS,
    FFHQ_TEMPLATE_512,
    align_ffhq,
    arcface_crop,
    eva_input,
    face_features,
    normalize_for_eva,
    similarity_umeyama,
)
from .image import split_images, to_uint8_rgb
from .insight import Face, FaceAnalyzer, load_face_analysis, model_task, resolve_provider
from .pipeline import FaceCancelled, FacePipeline, PreparedFace, id_cond_from, select_face
from .xlib import FaceXLib, load_facexlib

__all__ = [
    "BACKGROUND_LABELS",
    "FFHQ_TEMPLATE_512",
    "Face",
    "FaceAnalyzer",
    "FaceCancelled",
    "FacePipeline",
    "FaceXLib",
    "PreparedFace",
    "align_ffhq",
    "arcface_crop",
    "eva_input",
    "face_features",
    "id_cond_from",
    "load_face_analysis",
    "load_facexlib",
    "model_task",
    "normalize_for_eva",
    "resolve_provider",
    "select_face",
    "similarity_umeyama",
    "split_images",
    "to_uint8_rgb",
]
