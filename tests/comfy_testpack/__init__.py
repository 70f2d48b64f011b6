"""Test-only ComfyUI node pack: tiny SDXL-structured models (random, seeded weights).

Loaded by the headless test server and by scripts/run_workflow.py when real SDXL
weights are absent. It is never shipped to users.
"""



class PuLIDTestTinySDXLLoader:
    """Stands in for CheckpointLoaderSimple: (MODEL, CLIP, VAE) of a tiny SDXL."""

    CATEGORY = "_for_testing/pulid"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    DESCRIPTION = "Test-only tiny SDXL (random weights): the image is a smoke test, not a picture."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (["sdxl", "ssd1b"], {"default": "sdxl"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            "v_prediction": ("BOOLEAN", {"default": False}),
        }}

    def load(self, kind, seed, v_prediction):
        # Imported here: the stand-in writers of this package also run outside ComfyUI.
        from .tiny_models import tiny_clip, tiny_sdxl_model, tiny_vae

        return (tiny_sdxl_model(kind, seed, v_prediction), tiny_clip(seed + 1), tiny_vae(seed + 2))


class PuLIDTestTinyFluxLoader:
    """Stands in for UNETLoader in FLUX graphs: a tiny FLUX.1 through ComfyUI's FLUX class."""

    CATEGORY = "_for_testing/pulid"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = "Test-only tiny FLUX.1 (19 + 38 blocks, 128 wide, weights from their names)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": (["dev", "schnell"], {"default": "dev"})}}

    def load(self, variant):
        from .tiny_flux import tiny_flux_model

        return (tiny_flux_model(schnell=variant == "schnell"),)


class PuLIDTestTinyFluxCLIPLoader:
    """Stands in for DualCLIPLoader (type flux): tiny CLIP-L + T5."""

    CATEGORY = "_for_testing/pulid"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from .tiny_flux import tiny_flux_clip

        return (tiny_flux_clip(),)


class PuLIDTestTinyFluxVAELoader:
    """Stands in for VAELoader in FLUX graphs: a tiny 16-channel autoencoder."""

    CATEGORY = "_for_testing/pulid"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from .tiny_flux import tiny_flux_vae

        return (tiny_flux_vae(),)


NODE_CLASS_MAPPINGS = {
    "PuLIDTestTinySDXLLoader": PuLIDTestTinySDXLLoader,
    "PuLIDTestTinyFluxLoader": PuLIDTestTinyFluxLoader,
    "PuLIDTestTinyFluxCLIPLoader": PuLIDTestTinyFluxCLIPLoader,
    "PuLIDTestTinyFluxVAELoader": PuLIDTestTinyFluxVAELoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PuLIDTestTinySDXLLoader": "Tiny SDXL (test only)",
    "PuLIDTestTinyFluxLoader": "Tiny FLUX.1 (test only)",
    "PuLIDTestTinyFluxCLIPLoader": "Tiny FLUX CLIP-L + T5 (test only)",
    "PuLIDTestTinyFluxVAELoader": "Tiny FLUX VAE (test only)",
}
