"""The ID tokens of one identity: several photos, the negative tokens and the method presets.

``encode_identity`` turns the face features of N photos of one person (``id_cond`` and
``id_vit_hidden``, see ``pulid_core.face.id_cond_from``) into the cond/uncond ID tokens the
attention patches inject, with the authors' rules for several photos:

- v1 (ToTheBeginning/PuLID ``app.py``, the extra-image loop): photo 1 gives its 10 tokens and
  each extra photo, encoded on its own, adds its first 5 tokens (``id_embedding[:, :5]``); the
  negative tokens are built the same way. ``average`` (cubiq/PuLID_ComfyUI's rule) averages the
  photos' tokens instead.
- v1.1 (``pulid/pipeline_v1_1.py``, ``get_id_embedding``) and PuLID-FLUX (same IDFormer): one
  encoder pass with ``id_cond`` stacked to [1, N, 1280] and each hidden state concatenated along
  the tokens to [1, 577 N, 1024]; the negative tokens come from a single zero photo.

The negative (uncond) tokens are the encoder applied to all-zero inputs (not zero: the biases
make them non-zero), or, with ``uncond_noise`` > 0, to seeded uniform noise of that size
(cubiq's Advanced node ``noise``), so one graph always gives one image.
"""

from __future__ import annotations

import torch

from .errors import PuLIDError

COMBINES = ("average", "concat")
# Versions whose encoder is v1.1's IDFormer and takes all photos in one pass.
STACKED_VERSIONS = ("v1.1", "flux")
# What ``combine`` becomes for those versions (stored in saved embeddings).
STACKED_COMBINE = "idformer"
# The v1 app adds the first 5 tokens of each extra photo (the 5 tokens from ArcFace + CLIP-pooled).
V1_EXTRA_IMAGE_TOKENS = 5

# (projection, num_zero) per method, as the authors' apps set them. v1 (app.py): fidelity is
# ortho_v2 + 8 zero tokens, style ortho + 16. v1.1 (app_v1_1.py) has one official setting,
# ortho_v2 + 20; style keeps v1's projection with v1.1's 20. neutral is plain addition.
METHOD_PRESETS = {
    "v1": {"fidelity": ("ortho_v2", 8), "style": ("ortho", 16), "neutral": ("none", 0)},
    "v1.1": {"fidelity": ("ortho_v2", 20), "style": ("ortho", 20), "neutral": ("none", 0)},
}
METHOD_NAMES = ("fidelity", "style", "neutral")


def method_settings(version: str, method: str) -> tuple[str, int]:
    """(projection, num_zero) of a method for a PuLID SDXL version."""
    table = METHOD_PRESETS.get(version)
    if version == "flux":
        raise PuLIDError("A PuLID-FLUX adapter has no method presets (they are SDXL settings). For FLUX.1 use "
                         "'Apply PuLID (FLUX)'; for SDXL load pulid_v1.1.safetensors.")
    if table is None:
        raise PuLIDError(f"PuLID {version} has no method presets; they exist for {', '.join(METHOD_PRESETS)}.")
    if method not in table:
        raise PuLIDError(f"Unknown PuLID method {method!r}; use one of {', '.join(table)}.")
    return table[method]


def stored_combine(version: str, combine: str) -> str:
    """The combine rule really used for ``version`` (the IDFormer versions always stack)."""
    return STACKED_COMBINE if version in STACKED_VERSIONS else combine


def _uncond_inputs(id_cond: torch.Tensor, id_vit_hidden, uncond_noise: float, seed: int):
    """One photo's worth of seeded uniform noise times ``uncond_noise`` (id_cond first, then each hidden)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u_cond = torch.rand(id_cond[:1].shape, generator=gen) * uncond_noise
    u_hidden = [torch.rand(h[:1].shape, generator=gen) * uncond_noise for h in id_vit_hidden]
    device, dtype = id_cond.device, id_cond.dtype
    return u_cond.to(device=device, dtype=dtype), [h.to(device=device, dtype=dtype) for h in u_hidden]


def encode_identity(model, id_cond: torch.Tensor, id_vit_hidden, *, combine: str = "average",
                    uncond_noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) ID tokens [1, T, D] of N photos of one person.

    ``model`` is a ``PuLIDModel`` (or any encoder with ``version``, ``encode`` and
    ``encode_uncond``); ``id_cond`` is [N, 1280] and ``id_vit_hidden`` the 5 hidden states
    [N, 577, 1024], one row per photo. ``combine`` (v1 only): ``average`` or ``concat``
    (1 + 5 (N - 1) tokens). Runs on the inputs' device, without autograd.
    """
    version = getattr(model, "version", None)
    if combine not in COMBINES:
        raise PuLIDError(f"Unknown combine {combine!r}; use one of {', '.join(COMBINES)}.")
    if version not in METHOD_PRESETS and version not in STACKED_VERSIONS:
        raise PuLIDError(f"Unknown PuLID version {version!r}.")
    hidden = list(id_vit_hidden)
    if id_cond.ndim != 2 or id_cond.shape[0] < 1 or any(h.shape[0] != id_cond.shape[0] for h in hidden):
        raise PuLIDError(
            f"encode_identity takes id_cond [N, C] and hidden states [N, tokens, C] with one row per photo; "
            f"got {tuple(id_cond.shape)} and {[tuple(h.shape) for h in hidden]}."
        )
    photos = id_cond.shape[0]
    with torch.no_grad():
        if uncond_noise:
            u_cond, u_hidden = _uncond_inputs(id_cond, hidden, float(uncond_noise), seed)
            uncond = model.encode(u_cond, u_hidden)
        else:
            uncond = model.encode_uncond(id_cond[:1], [h[:1] for h in hidden])
        if version in STACKED_VERSIONS:
            cond = model.encode(id_cond[None], [torch.cat(list(h), 0)[None] for h in hidden])
            return cond, uncond
        per_photo = model.encode(id_cond, hidden)  # [N, T, D]
        if combine == "average" or photos == 1:
            return per_photo.mean(0, keepdim=True), uncond
        extra = per_photo[1:, :V1_EXTRA_IMAGE_TOKENS].reshape(1, -1, per_photo.shape[-1])
        extra_uncond = uncond[:, :V1_EXTRA_IMAGE_TOKENS].repeat(1, photos - 1, 1)
        return torch.cat([per_photo[:1], extra], dim=1), torch.cat([uncond, extra_uncond], dim=1)
