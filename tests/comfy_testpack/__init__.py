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


NODE_CLASS_MAPPINGS = {"PuLIDTestTinySDXLLoader": PuLIDTestTinySDXLLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"PuLIDTestTinySDXLLoader": "Tiny SDXL (test only)"}
