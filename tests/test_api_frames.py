"""Frame decoding for the infer endpoint: images, .npy and JSON into the model's input
(numpy and Pillow, no torch), and what hostile frames get."""

from __future__ import annotations

import ast
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


def expected_from_pixels(pixels: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """What (C, H, W) uint8 pixels of the right size must become."""
    x = pixels.astype(np.float32) / 255.0
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return (x - mean) / std


def test_float_npy_of_the_right_shape_is_taken_as_is() -> None:
    frame = np.random.default_rng(0).standard_normal((1, 16, 16)).astype(np.float32)
    out = decode_frame(npy(frame), "application/x-npy", GREY)
    assert out.dtype == np.float32 and out.shape == (1, 16, 16) and out.flags.c_contiguous
    assert np.array_equal(out, frame)


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1), (1, 1, 16, 16)])
def test_float_layouts_are_normalised_to_chw(shape: tuple[int, ...]) -> None:
    frame = np.arange(256, dtype=np.float64).reshape(shape)
    out = decode_frame(npy(frame), "application/x-npy", GREY)
    assert np.array_equal(out, np.arange(256, dtype=np.float32).reshape(1, 16, 16))


def test_float_frame_of_another_size_is_resized() -> None:
    frame = np.ones((1, 32, 24), dtype=np.float32)
    out = decode_frame(npy(frame), "application/x-npy", GREY)
    assert out.shape == (1, 16, 16)
    assert np.allclose(out, np.ones((1, 16, 16)))


def test_float_frame_with_other_channels_is_refused_with_the_expected_shape() -> None:
    frame = np.zeros((3, 16, 16), dtype=np.float32)
    with pytest.raises(FrameError, match=r"3 channels, the model takes 1"):
        decode_frame(npy(frame), "application/x-npy", GREY)


def test_uint8_pixels_are_converted_and_normalised() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    out = decode_frame(npy(pixels), "application/x-npy", GREY)
    assert np.allclose(out, expected_from_pixels(pixels[None], GREY), atol=1e-6)


def test_uint8_grey_pixels_become_rgb_for_an_rgb_model() -> None:
    pixels = np.full((8, 8), 200, dtype=np.uint8)
    out = decode_frame(npy(pixels), "application/x-npy", RGB)
    assert out.shape == (3, 8, 8)
    assert np.allclose(out, expected_from_pixels(np.stack([pixels] * 3), RGB), atol=1e-6)


def test_png_matches_the_same_pixels_sent_as_an_array() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16), dtype=np.uint8)
    from_png = decode_frame(image_bytes(pixels), "image/png", GREY)
    from_npy = decode_frame(npy(pixels), "application/x-npy", GREY)
    assert np.array_equal(from_png, from_npy)


def test_rgb_png_is_made_grey_and_resized() -> None:
    pixels = np.zeros((40, 30, 3), dtype=np.uint8)
    pixels[..., 1] = 255
    out = decode_frame(image_bytes(pixels), "image/png", GREY)
    green_luma = (round(255 * 587 / 1000) / 255.0 - 0.5) / 0.25
    assert out.shape == (1, 16, 16)
    assert np.allclose(out, np.full((1, 16, 16), green_luma), atol=1e-5)


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
    assert np.allclose(out, frame.astype(np.float32))


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
    with pytest.raises(FrameError, match="64x64, more than the 1024 pixels allowed"):
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
    assert np.array_equal(out, frame)
    assert np.array_equal(decode_frame(npy(frame), "application/x-npy", GREY), out)


def test_truncated_npy_is_refused() -> None:
    body = npy(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(FrameError, match="data bytes"):
        decode_frame(body[:-4], "application/x-npy", GREY)


# ------------------------------------------------------------------ issue 17: hostile frames


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height grey pixels (its data is a few rows)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(30_000, 30_000), (4096, 4096), (100, 100)])
def test_decompression_bombs_are_frame_errors_before_any_pixel_is_decoded(
    width: int, height: int
) -> None:
    """Finding 5: past Pillow's own limit `Image.open` raises DecompressionBombError (was a
    500); below it our per-model cap refuses the image from its header."""
    spec = FrameSpec(1, 16, 16, mean=(0.5,), std=(0.25,), max_pixels=64 * 64)
    with pytest.raises(FrameError, match="pixels"):
        decode_frame(png_claiming(width, height), "image/png", spec)


def npy_with_header(descr: object, shape: str, data: bytes = b"") -> bytes:
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@pytest.mark.parametrize(
    ("descr", "shape", "data"),
    [
        ("<f4", "(-1, -256)", b"\0" * 1024),
        ("<f4", "(-4, -4)", b"\0" * 64),
        ("<f4", "(4611686018427387904, 4)", b""),
        ("<f4", "(4611686018427387904, 0)", b""),
        ("<f4", "(2**64,)", b""),
        (("<f4", (16, 16)), "(1,)", b"\0" * 1024),
        ([("a", "<f4", (2,))], "(2,)", b"\0" * 16),
        ("<M8[s]", "(16, 16)", b"\0" * 2048),
        ("|b1", "(16, 16)", b"\0" * 256),
        ("<c8", "(16, 16)", b"\0" * 2048),
    ],
)
def test_npy_headers_with_bad_shapes_or_dtypes_are_frame_errors(
    descr: object, shape: str, data: bytes
) -> None:
    """Finding 6: negative or huge dimensions and subarray dtypes raised ValueError (500)."""
    with pytest.raises(FrameError) as error:
        decode_frame(npy_with_header(descr, shape, data), "application/x-npy", GREY)
    assert "0x" not in str(error.value)


def test_error_messages_carry_no_memory_addresses() -> None:
    """Finding 12: "cannot identify image file <_io.BytesIO object at 0x...>" was sent back."""
    for body, kind in [(b"hello", "image/png"), (b"\x89PNG\r\n\x1a\nbroken", "image/png"),
                       (npy_with_header("<f4", "(2**62,)"), "application/x-npy")]:
        with pytest.raises(FrameError) as error:
            decode_frame(body, kind, GREY)
        assert " at 0x" not in str(error.value)


def test_float_values_far_beyond_normalised_inputs_are_refused() -> None:
    """A finite 3e38 would overflow the model into NaN outputs: a bad frame, not a 5xx."""
    frame = np.full((1, 16, 16), 3e38, np.float32)
    with pytest.raises(FrameError, match="beyond"):
        decode_frame(npy(frame), "application/x-npy", GREY)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_files_only_ever_raise_frame_errors(data: st.DataObject) -> None:
    """Any corruption of a valid PNG, JPEG or .npy gives a FrameError or a frame."""
    pixels = np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)
    kind, valid = data.draw(st.sampled_from([
        ("image/png", image_bytes(pixels)),
        ("image/jpeg", image_bytes(np.stack([pixels] * 3, -1), "JPEG")),
        ("application/x-npy", npy(pixels.astype(np.float32) / 255)),
    ]))
    body = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(body)))
    try:
        out = decode_frame(bytes(body[:cut]), kind, GREY)
    except FrameError:
        return
    assert out.shape == GREY.shape and out.dtype == np.float32


# ------------------------------------------------------------------ issue 22: no torch


@pytest.mark.parametrize(
    ("size", "target"),
    [((32, 24), (16, 16)), ((16, 16), (28, 28)), ((100, 37), (16, 16)), ((17, 17), (16, 16)),
     ((15, 15), (16, 16)), ((7, 300), (16, 16)), ((1, 1), (16, 16)), ((640, 480), (28, 28))],
)
def test_float_resize_matches_torchs_antialiased_bilinear(
    size: tuple[int, int], target: tuple[int, int]
) -> None:
    """The float path used torch's interpolate(bilinear, antialias=True); Pillow's filter on
    32-bit float planes gives the same within float32 rounding (docs/api.md)."""
    torch = pytest.importorskip("torch")
    frame = np.random.default_rng(size[0]).standard_normal((3, *size)).astype(np.float32)
    spec = FrameSpec(3, *target, mean=(0.0,) * 3, std=(1.0,) * 3)
    old = torch.nn.functional.interpolate(
        torch.from_numpy(frame)[None], size=target, mode="bilinear", align_corners=False,
        antialias=True,
    )[0].numpy()
    new = decode_frame(npy(frame), "application/x-npy", spec)
    assert new.shape == old.shape and new.dtype == np.float32
    assert np.abs(new - old).max() < 1e-5


def test_frame_decoding_imports_no_torch() -> None:
    """api/ imports no torch anywhere, and decoding a frame does not load it."""
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] == "torch"], path
    code = (
        "import sys, numpy as np; from api.frames import decode_frame, FrameSpec;"
        "from api.client import npy_bytes;"
        "spec = FrameSpec(1, 16, 16, (0.5,), (0.25,));"
        "decode_frame(npy_bytes(np.zeros((1, 32, 32), np.float32)), 'application/x-npy', spec);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
