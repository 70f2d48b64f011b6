"""A tiny FLUX.1 built through ComfyUI's own FLUX classes, for tests and stand-ins.

ComfyUI's checkpoint detection hard-codes FLUX's sizes (hidden 3072, 24 heads,
context 4096), so a tiny FLUX cannot come through UNETLoader; this builds
``comfy.supported_models.Flux`` / ``model_base.Flux`` from an explicit config with
the sizes of the golden vectors (the authors' ``FluxParams`` with hidden 128 and
FLUX's 19 double + 38 single blocks). Weights are re-created from their FLUX key
names with tests/detfill.py, as the golden vectors were, so the unpatched forward
is comparable number for number.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SALT = "pub:"

# The golden FluxParams: in_channels 64 is 16 latent channels x a 2x2 patch in ComfyUI's terms.
TINY_FLUX_CONFIG = dict(
    image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=32, context_in_dim=64,
    hidden_size=128, mlp_ratio=4.0, num_heads=2, depth=19, depth_single_blocks=38, axes_dim=[8, 28, 28],
    theta=10000, qkv_bias=True, guidance_embed=True,
)
TINY_CLIP_L_WIDTH = 32  # the tiny CLIP-L's pooled output -> vec_in_dim
TINY_T5_WIDTH = 64  # the tiny T5's hidden states -> context_in_dim


# FluxParams fields newer ComfyUI versions require, with their FLUX.1 values (model_detection.py).
_NEWER_FIELDS = {"txt_ids_dims": []}


def _flux_param_fields() -> set:
    import dataclasses

    import comfy.ldm.flux.model

    return {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}


def _detfill():
    # Loaded by path: inside a ComfyUI server ``tests`` is ComfyUI's own package.
    spec = importlib.util.spec_from_file_location("pulid_detfill", REPO / "tests" / "detfill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flux_state_dict(diffusion_model: torch.nn.Module, prefix: str = "flux.", salt: str = SALT) -> dict:
    """The model's weights in FLUX.1 checkpoint key names, each detfill.tensor(prefix + key).

    Newer ComfyUI keeps the RMSNorm scales as ``*_norm.weight`` and renames the file's
    ``*_norm.scale`` on load; the file's (and the golden vectors') name is ``scale``.
    """
    detfill = _detfill()
    out = {}
    for key, p in diffusion_model.state_dict(keep_vars=True).items():
        if not isinstance(p, torch.nn.Parameter):
            continue
        if key.endswith("_norm.weight"):
            key = key[: -len("weight")] + "scale"
        out[key] = torch.from_numpy(detfill.tensor(prefix + key, tuple(p.shape), salt))
    return out


def tiny_flux_model(config: dict | None = None, dtype: torch.dtype = torch.float32, schnell: bool = False):
    """A ModelPatcher around ComfyUI's FLUX model class at the golden tiny sizes (or ``config``)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = dict(TINY_FLUX_CONFIG, **(config or {}))
    cfg.update({k: v for k, v in _NEWER_FIELDS.items() if k in _flux_param_fields() and k not in cfg})
    model_config = (comfy.supported_models.FluxSchnell if schnell else comfy.supported_models.Flux)(cfg)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    # Through ComfyUI's own loading path (key conversion included), as a UNETLoader file would.
    model.load_model_weights(flux_state_dict(model.diffusion_model), "")
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _tiny_t5_config() -> dict:
    return {
        "d_ff": 128, "d_kv": 16, "d_model": TINY_T5_WIDTH, "decoder_start_token_id": 0, "dense_act_fn": "gelu_pytorch_tanh",
        "dropout_rate": 0.1, "eos_token_id": 1, "is_encoder_decoder": True, "is_gated_act": True,
        "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 2, "num_heads": 4, "num_layers": 2,
        "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
        "vocab_size": 32128,
    }


def tiny_flux_clip(seed: int = 1):
    """FLUX's text encoders (CLIP-L pooled -> vec, T5 hidden states -> context) at tiny widths."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.text_encoders.t5

    from .tiny_models import _fill, _tiny_text_config

    class TinyFluxClipModel(comfy.text_encoders.flux.FluxClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, return_projected_pooled=False, model_options=model_options,
                textmodel_json_config=_tiny_text_config(TINY_CLIP_L_WIDTH, TINY_CLIP_L_WIDTH))
            self.t5xxl = comfy.sd1_clip.SDClipModel(
                device=device, layer="last", dtype=dtype, textmodel_json_config=_tiny_t5_config(),
                special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                model_options={**model_options, "model_name": "t5xxl"})
            self.dtypes = {dtype}

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, TinyFluxClipModel)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    _fill(clip.cond_stage_model, seed)
    return clip


def tiny_flux_vae(seed: int = 2):
    """FLUX's autoencoder structure (16 latent channels, 8x downscale) at a tiny width."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from .tiny_models import _fill

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 16}}
    ae = AutoencoderKL(**config["params"])
    _fill(ae, seed, std=0.1)
    vae = comfy.sd.VAE(sd=ae.state_dict(), config=config, dtype=torch.float32)
    vae.latent_channels = 16
    return vae
