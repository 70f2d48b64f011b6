"""Socket types of the pack.

PULID, EVA_CLIP and FACEANALYSIS keep the names the archived cubiq/PuLID_ComfyUI
used, so its saved workflows connect; the nodes check what they receive and say
so when an object comes from another pack.
"""

from comfy_api.latest import io

PuLID = io.Custom("PULID")
EvaClip = io.Custom("EVA_CLIP")
FaceAnalysis = io.Custom("FACEANALYSIS")
PuLIDEmbeds = io.Custom("PULID_EMBEDS")
