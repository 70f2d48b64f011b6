"""Reference image handling: dtype conversion, channels, size limits."""

import cv2
import numpy as np
import pytest
import torch

from pulid_core.errors import PuLIDError
from pulid_core.face import split_images, to_uint8_rgb
from tests.unit.face_models import insightface_image


def test_float_is_rounded_not_truncated():
    values = np.array([0.0, 0.4 / 255, 0.6 / 255, 127.5 / 255, 200.49 / 255, 1.0, 1.2, -0.1], np.float32)
    image = np.tile(values, (64, 8))[:, :, None].repeat(3, axis=2)
    out = to_uint8_rgb(torch.from_numpy(image))
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[0, :8, 0], [0, 0, 1, 128, 200, 255, 255, 0])


def test_comfy_float_of_real_photo_round_trips():
    rgb = cv2.imread(insightface_image("Tom_Hanks_54745.png"))[:, :, ::-1]
    comfy = torch.from_numpy(rgb.copy()).float() / 255.0
    np.testing.assert_array_equal(to_uint8_rgb(comfy), rgb)
    np.testing.assert_array_equal(to_uint8_rgb(rgb), rgb)


@pytest.mark.parametrize("shape", [(80, 90), (80, 90, 1)])
def test_grayscale_becomes_rgb(shape):
    gray = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = to_uint8_rgb(gray)
    assert out.shape == (80, 90, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray.reshape(80, 90))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((64, 64, 4), np.float32)
    rgba[..., 0] = 1.0  # red
    rgba[:32, :, 3] = 1.0  # opaque top half, transparent bottom half
    rgba[32:40, :, 3] = 0.5
    out = to_uint8_rgb(rgba)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[35, 0], [255, 128, 128])
    np.testing.assert_array_equal(out[-1, 0], [255, 255, 255])
    out8 = to_uint8_rgb((rgba * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(out8[-1, 0], [255, 255, 255])


@pytest.mark.parametrize(
    "hw,expected",
    [
        ((1500, 1000), (1024, 682)),
        ((900, 1300), (708, 1024)),
        ((5000, 300), (1024, 61)),
        ((1024, 800), (1024, 800)),
    ],
)
def test_long_side_capped_at_1024_with_truncation(hw, expected):
    h, w = hw
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if min(expected) < 64:
        with pytest.raises(PuLIDError, match="too small"):
            to_uint8_rgb(image)
        return
    out = to_uint8_rgb(image)
    assert out.shape[:2] == expected
    if (h, w) != expected:
        ref = cv2.resize(image, (expected[1], expected[0]), interpolation=cv2.INTER_LANCZOS4)
        np.testing.assert_array_equal(out, ref)


def test_huge_image_is_resized():
    image = np.full((4100, 4400, 3), 128, np.uint8)
    assert to_uint8_rgb(image).shape == (int(4100 * 1024 / 4400), 1024, 3)


def test_tiny_image_names_the_image():
    with pytest.raises(PuLIDError, match=r"Reference image 3 is too small \(50x40 px"):
        to_uint8_rgb(np.zeros((40, 50, 3), np.float32), index=3)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((3, 80, 80), np.float32), "channels-first"),
        (np.zeros((80, 80, 2), np.float32), "expected"),
        (np.zeros((80, 80, 3), np.int64), "pixel type"),
        (np.full((80, 80, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays_get_clear_errors(bad, match):
    with pytest.raises(PuLIDError, match=match):
        to_uint8_rgb(bad)


def test_split_images():
    batch = torch.zeros(3, 70, 80, 3)
    assert len(split_images(batch)) == 3
    assert len(split_images(batch[0])) == 1
    assert len(split_images([batch, np.zeros((70, 80, 3))])) == 4


def _round_then_lanczos(image: np.ndarray, long_side: int = 1024) -> np.ndarray:
    """The authors' order: the photo as uint8 (what gradio hands the app), then LANCZOS4 to the long side."""
    u8 = np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    h, w = u8.shape[:2]
    k = long_side / max(h, w)
    out = cv2.resize(u8, (int(w * k), int(h * k)), interpolation=cv2.INTER_LANCZOS4)
    return out.reshape(out.shape[0], out.shape[1], -1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["numpy", "torch", "torch_fp16"])
def test_large_float_image_is_rounded_then_resized(channels, kind):
    rng = np.random.default_rng(5)
    image = rng.random((1500, 1100, channels), dtype=np.float32) * 1.1 - 0.05
    if kind == "torch_fp16":
        image = image.astype(np.float16).astype(np.float32)
    want = np.repeat(_round_then_lanczos(image), 3, axis=2) if channels == 1 else _round_then_lanczos(image)
    given = {"numpy": image, "torch": torch.from_numpy(image), "torch_fp16": torch.from_numpy(image).half()}[kind]
    out = to_uint8_rgb(given)
    assert out.shape == (1024, 750, 3)
    np.testing.assert_array_equal(out, want)


def test_large_rgba_uint8_matches_compositing_then_resizing():
    rng = np.random.default_rng(6)
    rgba = rng.integers(0, 256, (1300, 1200, 4), dtype=np.uint8)
    f = rgba.astype(np.float32) / 255.0
    alpha = f[:, :, 3:]
    composited = np.clip(np.rint((f[:, :, :3] * alpha + (1.0 - alpha)) * 255.0), 0, 255).astype(np.uint8)
    k = 1024 / 1300
    want = cv2.resize(composited, (int(1200 * k), int(1300 * k)), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(to_uint8_rgb(rgba), want)


def test_nan_in_a_late_band_is_still_refused():
    image = np.zeros((3000, 800, 3), np.float32)
    image[2999, 799, 2] = np.inf
    with pytest.raises(PuLIDError, match="Reference image 2 contains NaN or infinite"):
        to_uint8_rgb(image, index=2)


def test_large_photo_is_not_converted_to_float_at_full_size():
    """A 12-megapixel ComfyUI IMAGE: the conversion's peak stays near its uint8 copy.

    Converting the whole float image first (x * 255, rint, clip: three full-size float
    temporaries) peaks at about 3x the float image; the band-wise conversion at about
    0.4x (the uint8 image, a quarter, plus one band).
    """
    import tracemalloc

    batch = torch.rand(1, 3000, 4000, 3, generator=torch.Generator().manual_seed(0))
    (image,) = split_images(batch)  # what the node hands the face pipeline
    tracemalloc.start()
    try:
        out = to_uint8_rgb(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (768, 1024, 3)
    assert peak < 0.6 * image.numel() * 4, f"peak {peak / 2**20:.0f} MiB for a {image.numel() * 4 / 2**20:.0f} MiB image"
