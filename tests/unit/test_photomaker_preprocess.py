"""PhotoMaker ID-image preprocessing = HF CLIPImageProcessor() defaults, computed by hand with PIL."""

import numpy as np
import pytest
import torch
from PIL import Image

from pulid_core.errors import PuLIDError
from pulid_core.photomaker.preprocess import _to_uint8, preprocess_id_image, preprocess_id_images

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def expected(pixels, resized_wh, left, top):
    """PIL bicubic to the given size, 224 crop at (left, top), /255, CLIP mean/std."""
    resized = np.asarray(Image.fromarray(pixels).resize(resized_wh, Image.BICUBIC), dtype=np.float64)
    crop = resized[top : top + 224, left : left + 224] / 255.0
    return torch.from_numpy(((crop - MEAN) / STD).transpose(2, 0, 1))


@pytest.mark.parametrize(
    "h,w,resized_wh,left,top",
    [
        # 224 * 257 / 200 = 287.84: the long side is floored to 287 (not rounded), crop offset 63 // 2 = 31.
        (200, 257, (287, 224), 31, 0),
        # Portrait: 224 * 331 / 160 = 463.4 -> 463, top offset 239 // 2 = 119.
        (331, 160, (224, 463), 0, 119),
        # Upscaling a small square image.
        (100, 100, (224, 224), 0, 0),
    ],
)
def test_matches_pil_bicubic_floor_and_centre_crop(h, w, resized_wh, left, top):
    pixels = image(h, w)
    out = preprocess_id_image(pixels)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected(pixels, resized_wh, left, top), atol=1e-6, rtol=0)


def test_comfyui_float_images_are_rounded_to_uint8():
    pixels = image(200, 257, seed=1)
    as_float = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    # Nudges below half a grey level must round back to the same uint8 value.
    nudged = (as_float + 0.4 / 255.0).clamp(0, 1)
    batch = preprocess_id_images(torch.stack([as_float, nudged]))
    reference = preprocess_id_image(pixels)
    assert batch.shape == (2, 3, 224, 224)
    assert torch.equal(batch[0], reference) and torch.equal(batch[1], reference)


def test_constant_image_is_normalised_exactly():
    out = preprocess_id_image(np.full((300, 240, 3), 128, np.uint8))
    for c in range(3):
        assert torch.allclose(out[c], torch.tensor((128 / 255 - MEAN[c]) / STD[c], dtype=torch.float32))


@pytest.mark.parametrize("gray", [(120, 90), (120, 90, 1)])
def test_gray_is_repeated_to_rgb_as_pil_convert(gray):
    pixels = image(120, 90)[..., :1]
    assert torch.equal(preprocess_id_image(pixels.reshape(gray)), preprocess_id_image(np.repeat(pixels, 3, axis=2)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_naming_the_image(bad):
    good = torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(0))
    broken = good.clone()
    broken[10, 20, 1] = bad
    with pytest.raises(PuLIDError, match="ID image 2 contains NaN or infinite"):
        preprocess_id_images([good, broken])


def test_float_rounding_is_the_face_branchs():
    """Both PhotoMaker v2 branches turn a float image into the same uint8 pixels (float32 rounding,
    as pulid_core.face.image): 0.9235294 * 255 is 235.5 in float32 (rounds to 236), 235.49999 in float64."""
    from pulid_core.face.image import to_uint8_rgb

    x = torch.rand(96, 96, 3, generator=torch.Generator().manual_seed(2))
    x[0, 0] = torch.tensor([0.9235293865203857, 0.7352941036224365, 0.5])
    assert np.array_equal(_to_uint8(x), to_uint8_rgb(x, max_long_side=None))


def test_alpha_channel_is_dropped_and_bad_input_is_refused():
    rgba = np.concatenate([image(120, 90), np.zeros((120, 90, 1), np.uint8)], axis=-1)
    assert torch.equal(preprocess_id_image(rgba), preprocess_id_image(rgba[..., :3]))
    with pytest.raises(PuLIDError, match="H x W x 3"):
        preprocess_id_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(PuLIDError, match="H x W x 3"):
        preprocess_id_image(np.zeros((2, 10, 10, 3), np.uint8))
    with pytest.raises(PuLIDError, match="No ID image"):
        preprocess_id_images([])
