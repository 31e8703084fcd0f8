"""Frame decoding for the infer endpoint: images, .npy and JSON into the model's input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from api.frames import FrameError, FrameSpec, UnsupportedMediaType, decode_frame, sniff_type

GREY = FrameSpec(1, 16, 16, mean=(0.5,), std=(0.25,))
RGB = FrameSpec(3, 8, 8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_from_pixels(pixels: np.ndarray, spec: FrameSpec) -> torch.Tensor:
    """What (C, H, W) uint8 pixels of the right size must become."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return (x - mean) / std


def test_float_npy_of_the_right_shape_is_taken_as_is() -> None:
    frame = np.random.default_rng(0).standard_normal((1, 16, 16)).astype(np.float32)
    out = decode_frame(npy(frame), "application/x-npy", GREY)
    assert out.dtype == torch.float32 and out.shape == (1, 16, 16)
    assert torch.equal(out, torch.from_numpy(frame))


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1), (1, 1, 16, 16)])
def test_float_layouts_are_normalised_to_chw(shape: tuple[int, ...]) -> None:
    frame = np.arange(256, dtype=np.float64).reshape(shape)
    out = decode_frame(npy(frame), "application/x-npy", GREY)
    assert torch.equal(out, torch.arange(256, dtype=torch.float32).view(1, 16, 16))


def test_float_frame_of_another_size_is_resized() -> None:
    frame = np.ones((1, 32, 24), dtype=np.float32)
    out = decode_frame(npy(frame), "application/x-npy", GREY)
    assert out.shape == (1, 16, 16)
    assert torch.allclose(out, torch.ones(1, 16, 16))


def test_float_frame_with_other_channels_is_refused_with_the_expected_shape() -> None:
    frame = np.zeros((3, 16, 16), dtype=np.float32)
    with pytest.raises(FrameError, match=r"3 channels, the model takes 1"):
        decode_frame(npy(frame), "application/x-npy", GREY)


def test_uint8_pixels_are_converted_and_normalised() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    out = decode_frame(npy(pixels), "application/x-npy", GREY)
    assert torch.allclose(out, expected_from_pixels(pixels[None], GREY), atol=1e-6)


def test_uint8_grey_pixels_become_rgb_for_an_rgb_model() -> None:
    pixels = np.full((8, 8), 200, dtype=np.uint8)
    out = decode_frame(npy(pixels), "application/x-npy", RGB)
    assert out.shape == (3, 8, 8)
    assert torch.allclose(out, expected_from_pixels(np.stack([pixels] * 3), RGB), atol=1e-6)


def test_png_matches_the_same_pixels_sent_as_an_array() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16), dtype=np.uint8)
    from_png = decode_frame(image_bytes(pixels), "image/png", GREY)
    from_npy = decode_frame(npy(pixels), "application/x-npy", GREY)
    assert torch.equal(from_png, from_npy)


def test_rgb_png_is_made_grey_and_resized() -> None:
    pixels = np.zeros((40, 30, 3), dtype=np.uint8)
    pixels[..., 1] = 255
    out = decode_frame(image_bytes(pixels), "image/png", GREY)
    green_luma = (round(255 * 587 / 1000) / 255.0 - 0.5) / 0.25
    assert out.shape == (1, 16, 16)
    assert torch.allclose(out, torch.full((1, 16, 16), green_luma), atol=1e-5)


def test_rgba_jpeg_and_palette_images_decode() -> None:
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    assert decode_frame(image_bytes(rgba), "image/png", RGB).shape == (3, 8, 8)
    rgb = np.full((8, 8, 3), 128, dtype=np.uint8)
    assert decode_frame(image_bytes(rgb, "JPEG"), "image/jpeg", RGB).shape == (3, 8, 8)
    palette = Image.fromarray(rgb).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert decode_frame(buffer.getvalue(), "image/png", GREY).shape == (1, 16, 16)


def test_json_nested_lists() -> None:
    frame = np.linspace(-1, 1, 256).reshape(1, 16, 16)
    body = json.dumps({"frame": frame.tolist()}).encode()
    out = decode_frame(body, "application/json; charset=utf-8", GREY)
    assert torch.allclose(out, torch.from_numpy(frame).float())


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "application/x-npy", "empty body"),
        (b"not an array", "application/x-npy", "not a readable .npy"),
        (npy(np.array([{"a": 1}], dtype=object)), "application/x-npy", "not a readable .npy"),
        (npy(np.zeros((2, 1, 16, 16), np.float32)), "application/x-npy", r"\(1, 16, 16\)"),
        (npy(np.zeros((5, 7), np.int64)), "application/x-npy", "dtype int64"),
        (npy(np.full((16, 16), np.nan, np.float32)), "application/x-npy", "NaN"),
        (npy(np.zeros((16, 16, 2), np.uint8)), "application/x-npy", "expected one frame"),
        (b"\x89PNG\r\n\x1a\nbroken", "image/png", "not a readable PNG"),
        (b"[1, 2]", "application/json", 'exactly one key, "frame"'),
        (b'{"frame": [[1, 2], [3]]}', "application/json", "rectangular"),
        (b'{"frame": "abc"}', "application/json", "rectangular"),
        (b"{", "application/json", "not valid JSON"),
        (b"[" * 100_000, "application/json", "not valid JSON"),
    ],
)
def test_bad_frames_say_what_is_wrong(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(body, content_type, GREY)


def test_oversized_image_is_refused_before_decoding() -> None:
    spec = FrameSpec(1, 16, 16, mean=(0.5,), std=(0.25,), max_pixels=32 * 32)
    with pytest.raises(FrameError, match="more than 1024 pixels"):
        decode_frame(image_bytes(np.zeros((64, 64), np.uint8)), "image/png", spec)


def test_unknown_content_type() -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        decode_frame(b"hello", "text/plain", GREY)


def test_sniffing() -> None:
    assert sniff_type(npy(np.zeros(2))) == "application/x-npy"
    assert sniff_type(image_bytes(np.zeros((2, 2), np.uint8))) == "image/png"
    assert sniff_type(image_bytes(np.zeros((2, 2, 3), np.uint8), "JPEG")) == "image/jpeg"
    assert sniff_type(b"hello") is None


def test_npy_variants_fortran_order_and_version_2() -> None:
    frame = np.asfortranarray(np.arange(256, dtype=np.float32).reshape(1, 16, 16))
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, frame, version=(2, 0))
    out = decode_frame(buffer.getvalue(), "application/x-npy", GREY)
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(frame)))
    assert torch.equal(decode_frame(npy(frame), "application/x-npy", GREY), out)


def test_truncated_npy_is_refused() -> None:
    body = npy(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(FrameError, match="data bytes"):
        decode_frame(body[:-4], "application/x-npy", GREY)
