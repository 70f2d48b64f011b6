"""Sizes of the tiny test SDXL, importable without ComfyUI (the stand-in writers need them)."""

# Context width of the tiny text encoders: CLIP-L 32 + CLIP-G 32.
TINY_CONTEXT_DIM = 64
# SDXL's ADM input: the pooled CLIP-G vector (its width) + 6 size embeddings of 256.
TINY_ADM_CHANNELS = TINY_CONTEXT_DIM // 2 + 6 * 256
# model_channels 32 with channel_mult [1, 2, 4]: cross-attention at 64 and 128 wide
# where SDXL has 640 and 1280.
TINY_WIDTH = {640: 64, 1280: 128}
