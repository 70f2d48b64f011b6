"""Framework-free core of comfyui-pulid: PuLID v1/v1.1, PuLID-FLUX and PhotoMaker v1/v2 math,
checkpoint loading, EVA-CLIP and the face pipeline.

Imports without ComfyUI. Public names are resolved lazily so that importing the
package does not pull in torch-heavy submodules (or optional dependencies such as
insightface) until they are used.
"""

from .lazy import lazy_getattr

__all__ = ["load_pulid", "load_eva_clip", "EvaClip", "PuLIDModel", "PuLIDFluxModel", "ModelFileError", "id_attention",
           "ModelFile", "ModelPaths", "registry", "missing_file_message",
           "load_photomaker", "PhotoMakerModel",
           "load_face_analysis", "load_facexlib", "FacePipeline", "PreparedFace", "id_cond_from",
           "FaceNotFoundError", "PuLIDError"]

_EXPORTS = {
    "load_pulid": ".adapter",
    "PuLIDModel": ".adapter",
    "PuLIDFluxModel": ".adapter",
    "id_attention": ".attention",
    "load_eva_clip": ".eva_clip",
    "EvaClip": ".eva_clip",
    "ModelFileError": ".errors",
    "ModelFile": ".models",
    "ModelPaths": ".models",
    "registry": ".models",
    "missing_file_message": ".models",
    "load_photomaker": ".photomaker.encoder",
    "PhotoMakerModel": ".photomaker.encoder",
    "load_face_analysis": ".face",
    "load_facexlib": ".face",
    "FacePipeline": ".face",
    "PreparedFace": ".face",
    "id_cond_from": ".face",
    "FaceNotFoundError": ".errors",
    "PuLIDError": ".errors",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)
