"""Tiny models with the real structure, for tests and the smoke runner.

ComfyUI's checkpoint detection matches SDXL by its real channel count, so a tiny
SDXL cannot come through CheckpointLoaderSimple; these builders assemble the same
ComfyUI classes (model_base.SDXL, SDXL CLIP, AutoencoderKL) with small widths.
Weights are random but seeded, so every run gives the same image.
"""

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import torch
from comfy.ldm.models.autoencoder import AutoencoderKL

from .tiny_sizes import TINY_ADM_CHANNELS, TINY_CONTEXT_DIM

UNET_CONFIGS = {
    # Same blocks as SDXL: transformer depths [0,0,2,2,10,10], middle 10 -> 70 attn2 layers.
    "sdxl": dict(transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10]),
    # SSD-1B: a distilled SDXL with fewer blocks (must be refused by PuLID).
    "ssd1b": dict(transformer_depth=[0, 0, 2, 1, 4, 4], transformer_depth_middle=0,
                  transformer_depth_output=[0, 0, 0, 1, 1, 1, 3, 3, 3]),
}


def _fill(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1 and name.endswith("weight"):  # norm scales
                p.copy_(1.0 + std * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def tiny_unet_config(kind: str = "sdxl", context_dim: int = TINY_CONTEXT_DIM) -> dict:
    cfg = dict(
        model_channels=32, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
        context_dim=context_dim, num_head_channels=16, num_heads=-1, adm_in_channels=TINY_ADM_CHANNELS,
        num_classes="sequential", use_linear_in_transformer=True, in_channels=4, out_channels=4,
        use_spatial_transformer=True, legacy=False, use_temporal_attention=False,
        use_temporal_resblock=False, image_size=32, dtype=torch.float32,
    )
    cfg.update(UNET_CONFIGS[kind])
    return cfg


def tiny_sdxl_model(kind: str = "sdxl", seed: int = 0, v_prediction: bool = False,
                    context_dim: int = TINY_CONTEXT_DIM):
    cfg = tiny_unet_config(kind, context_dim)
    model_config = comfy.supported_models.SDXL(cfg)
    # BASE.__init__ overwrites the head settings from unet_extra_config.
    model_config.unet_config = cfg
    model_config.set_inference_dtype(torch.float32, None)
    state = {"v_pred": torch.tensor([])} if v_prediction else {}
    model = model_config.get_model(state, "", device=torch.device("cpu"))
    _fill(model.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def _tiny_text_config(hidden: int, projection: int) -> dict:
    return {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 49407, "hidden_act": "gelu", "hidden_size": hidden, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": hidden * 2, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
        "num_hidden_layers": 3, "pad_token_id": 1, "projection_dim": projection, "torch_dtype": "float32",
        "vocab_size": 49408,
    }


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    """SDXL's two text encoders (penultimate layers, G pooled projected) at width 32."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        torch.nn.Module.__init__(self)
        half = TINY_CONTEXT_DIM // 2
        self.clip_l = comfy.sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=_tiny_text_config(half, half), model_options=model_options)
        self.clip_g = comfy.sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=_tiny_text_config(half, half),
            special_tokens={"start": 49406, "end": 49407, "pad": 0}, return_projected_pooled=True,
            model_options={**model_options, "model_name": "clip_g"})
        self.dtypes = {dtype}


def tiny_clip(seed: int = 1):
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    _fill(clip.cond_stage_model, seed)
    return clip


def tiny_vae(seed: int = 2):
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 4}}
    ae = AutoencoderKL(**config["params"])
    _fill(ae, seed, std=0.1)
    return comfy.sd.VAE(sd=ae.state_dict(), config=config, dtype=torch.float32)
