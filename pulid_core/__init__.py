"""Framework-free core of comfyui-pulid: PuLID v1/v1.1, PuLID-FLUX and PhotoMaker v1/v2 math,
checkpoint loading, EVA-CLIP and the face pipeline.

Imports without ComfyUI. Public names are resolved lazily so that importing the
package does not pull in torch-heavy submodules (or optional dependencies such as
insightface) until they are used.
"""

from importlib import import_module

__all__ = ["load_pulid", "load_eva_clip", "EvaClip", "PuLIDModel", "PuLIDFluxModel", "ModelFileError", "id_attention",
           "ModelFile", "ModelPaths", "registry", "missing_file_message",
           "load_photomaker", "PhotoMakerModel",
           "load_face_analysis", "load_facexlib", "FacePipeline", "PreparedFace", "id_cond_from",
           "FaceNotFoundError", "PuLIDError"]

_EXPORTS = {
    "load_pulid": "pulid_core.adapter",
    "PuLIDModel": "pulid_core.adapter",
    "PuLIDFluxModel": "pulid_core.adapter",
    "id_attention": "pulid_core.attention",
    "load_eva_clip": "pulid_core.eva_clip",
    "EvaClip": "pulid_core.eva_clip",
    "ModelFileError": "pulid_core.errors",
    "ModelFile": "pulid_core.models",
    "ModelPaths": "pulid_core.models",
    "registry": "pulid_core.models",
    "missing_file_message": "pulid_core.models",
    "load_photomaker": "pulid_core.photomaker.encoder",
    "PhotoMakerModel": "pulid_core.photomaker.encoder",
    "load_face_analysis": "pulid_core.face",
    "load_facexlib": "pulid_core.face",
    "FacePipeline": "pulid_core.face",
    "PreparedFace": "pulid_core.face",
    "id_cond_from": "pulid_core.face",
    "FaceNotFoundError": "pulid_core.errors",
    "PuLIDError": "pulid_core.errors",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pulid_core' has no attribute {name!r}")
    # Relative to this package: the pack imports it as ``<pack>.pulid_core``, scripts as ``pulid_core``.
    return getattr(import_module(module.replace("pulid_core", __name__, 1)), name)
