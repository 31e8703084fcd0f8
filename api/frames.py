"""Turn a request body (PNG/JPEG, .npy or JSON nested lists) into a model's normalised input.

numpy and Pillow only (no torch): the result is a C-contiguous float32 (C, H, W) array, what
`Runtime.submit` takes. Rules (also in docs/api.md):

- Images and ``uint8`` arrays are *pixels*: converted to the model's channels (grey <-> RGB,
  alpha dropped), resized to (H, W) (Pillow's bilinear filter) and normalised with the model's
  mean/std.
- Float arrays (``.npy`` float16/32/64, JSON numbers) are the *model input* as is (already
  normalised): a wrong spatial size is resized bilinearly, antialiased when shrinking
  (Pillow's filter on 32-bit float planes: within 4e-6 of torch's ``interpolate(mode=
  "bilinear", antialias=True)``, which it replaces); a wrong channel count is refused,
  because converting normalised channels is not well defined.
- Array layouts: (C, H, W), (H, W, C) with C in {1, 3, 4}, (H, W), with leading axes of size 1
  ignored.

Limits: a frame has at most ``FrameSpec.max_pixels`` pixels (H x W), checked from the image or
array header before any pixel is decoded; float values lie within +-`MAX_ABS_INPUT`.
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
import tokenize
from dataclasses import dataclass

import numpy as np
from PIL import Image

from nestdnn.errors import NestError

NPY_TYPES = ("application/x-npy",)
IMAGE_TYPES = ("image/png", "image/jpeg")
JSON_TYPES = ("application/json",)
MULTIPART_TYPES = ("multipart/form-data",)
NPY_MAGIC = b"\x93NUMPY"
IMAGE_FORMATS = ("PNG", "JPEG")
MAX_ABS_INPUT = 1e4
"""Largest magnitude of a float (normalised) input value; normalised frames are a few units,
and a finite but huge value (3e38) would overflow the model into NaN outputs."""
_CHANNEL_COUNTS = (1, 3, 4)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)
"""What Pillow raises on a malformed or truncated file (UnidentifiedImageError is an OSError)."""


class FrameError(NestError):
    """A frame that cannot be turned into the model's input."""


class UnsupportedMediaType(NestError):
    """A body whose content type the infer endpoint does not take."""


@dataclass(frozen=True)
class FrameSpec:
    """What a model takes: (C, H, W), normalisation, and how many pixels a frame may have."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixels: int = 1024 * 1024

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def expected(self) -> str:
        """One sentence saying what a frame should look like."""
        c, h, w = self.shape
        return (
            f"expected one frame of shape ({c}, {h}, {w}) as float32 (normalised model input)"
            f" or uint8 pixels, or a PNG/JPEG image"
        )


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lower case."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_frame(body: bytes, content_type: str | None, spec: FrameSpec) -> np.ndarray:
    """Decode a request body of a given content type into a (C, H, W) float32 array."""
    kind = media_type(content_type)
    if not body:
        raise FrameError(f"empty body: {spec.expected()}")
    if kind in NPY_TYPES:
        return from_array(load_npy(body), spec)
    if kind in IMAGE_TYPES:
        return from_image(body, spec)
    if kind in JSON_TYPES:
        return from_array(load_json_frame(body), spec)
    raise UnsupportedMediaType(
        f"unsupported content type {kind or '(none)'!r}: send application/x-npy, image/png, "
        "image/jpeg, application/json or multipart/form-data with a 'file' field"
    )


def sniff_type(data: bytes) -> str | None:
    """The media type given by a file's magic bytes (for multipart parts without a type)."""
    if data.startswith(NPY_MAGIC):
        return "application/x-npy"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return None


# ----------------------------------------------------------------------------- .npy and JSON


def load_npy(body: bytes) -> np.ndarray:
    """Read one array from .npy bytes (format 1.0 or 2.0) without ever unpickling."""
    end = _header_end(body)
    dtype, shape, fortran = _npy_header(body[:end])
    count = math.prod(shape)
    if len(body) - end != count * dtype.itemsize:
        raise FrameError(
            f"body is not a readable .npy array: {len(body) - end} data bytes for shape"
            f" {shape} of {dtype}"
        )
    try:
        data = np.frombuffer(body, dtype=dtype, count=count, offset=end)
        return data.reshape(shape, order="F" if fortran else "C")
    except ValueError:  # e.g. a zero-size shape whose other dimensions overflow
        raise FrameError(f"body is not a readable .npy array: shape {shape}") from None


def _header_end(body: bytes) -> int:
    """Where the data of a .npy starts (magic, version, header length, header)."""
    if not body.startswith(NPY_MAGIC) or len(body) < 12:
        raise FrameError("body is not a readable .npy array: no NUMPY magic")
    major = body[6]
    if major == 1:
        return 10 + int.from_bytes(body[8:10], "little")
    if major == 2:
        return 12 + int.from_bytes(body[8:12], "little")
    raise FrameError(f"body is not a readable .npy array: format version {major} not supported")


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and order of a .npy header (numpy's safe parser; cached, frames repeat).

    Only plain uint8 and float arrays of non-negative dimensions are taken: no objects (never
    unpickled), no structured or subarray dtypes."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}[version]  # fmt: skip
        shape, fortran, dtype = read(stream)
    except (ValueError, KeyError, OSError, EOFError, SyntaxError, TypeError, RecursionError,
            tokenize.TokenError):  # fmt: skip
        raise FrameError("body is not a readable .npy array: malformed header") from None
    if dtype.hasobject:
        raise FrameError("body is not a readable .npy array: object arrays are refused")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise FrameError(f"body is not a readable .npy array: invalid shape {shape}")
    if dtype.names is not None or dtype.subdtype is not None or not _is_frame_dtype(dtype):
        raise FrameError(
            f"array dtype {dtype} not supported:"
            " send uint8 pixels or float16/32/64 model input"
        )
    return dtype, shape, fortran


def _is_frame_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == np.uint8


def load_json_frame(body: bytes) -> np.ndarray:
    """Read {"frame": nested lists of numbers} into a float array."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise FrameError("body is not valid JSON") from None
    if not isinstance(data, dict) or set(data) != {"frame"}:
        raise FrameError('JSON body must be an object with exactly one key, "frame"')
    try:
        return np.asarray(data["frame"], dtype=np.float32)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raise FrameError('"frame" must be rectangular nested lists of numbers') from None


# ----------------------------------------------------------------------------- arrays


def from_array(array: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """Convert an array of pixels (uint8) or of model input (float) to the model's input."""
    if array.dtype == np.uint8:
        return from_pixels(to_chw(array, spec), spec)
    if array.dtype.kind != "f":
        raise FrameError(f"array dtype {array.dtype} not supported: {spec.expected()}")
    chw = to_chw(array, spec)
    if chw.shape[0] != spec.channels:
        raise FrameError(
            f"float frame has {chw.shape[0]} channels, the model takes {spec.channels}; float "
            "arrays are normalised model input, so channels are not converted: send uint8 "
            "pixels or an image to have them converted"
        )
    frame = np.array(chw, dtype=np.float32, order="C")  # owned, writable
    if not np.isfinite(frame).all():
        raise FrameError("frame has NaN or infinite values")
    if np.abs(frame).max() > MAX_ABS_INPUT:
        raise FrameError(
            f"frame has values beyond +-{MAX_ABS_INPUT:g}: float arrays are normalised model"
            " input (a few units); send uint8 pixels or an image for raw pixel values"
        )
    return resize(frame, spec.height, spec.width)


def to_chw(array: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """Bring an array in a supported layout to (C, H, W), or explain what was expected."""
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise FrameError(f"array of shape {tuple(array.shape)}: {spec.expected()}")
    first, last = array.shape[0], array.shape[2]
    if not (first == spec.channels or (first in _CHANNEL_COUNTS and last != spec.channels)):
        if last not in _CHANNEL_COUNTS:
            raise FrameError(f"array of shape {tuple(array.shape)}: {spec.expected()}")
        array = np.moveaxis(array, 2, 0)
    _check_pixels(array.shape[1], array.shape[2], spec)
    return array


def from_pixels(chw: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """Convert (C, H, W) uint8 pixels to the model's input via the image path."""
    channels = chw.shape[0]
    if channels not in _CHANNEL_COUNTS:
        raise FrameError(f"uint8 frame has {channels} channels; pixels need 1, 3 or 4")
    hwc = np.ascontiguousarray(np.moveaxis(chw, 0, 2))
    image = Image.fromarray(hwc[:, :, 0] if channels == 1 else hwc)
    return image_to_input(image, spec)


def resize(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 (C, H, W) array, antialiased when shrinking (Pillow's
    filter on 32-bit float planes); the array itself when it already has that size."""
    if chw.shape[1:] == (height, width):
        return chw
    planes = [
        np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BILINEAR))
        for plane in chw
    ]
    return np.stack(planes).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- images


def from_image(body: bytes, spec: FrameSpec) -> np.ndarray:
    """Decode a PNG or JPEG file into the model's input; its size is checked from the header,
    before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise FrameError(
            f"image has far more than {spec.max_pixels} pixels (a decompression bomb?)"
        ) from None
    except _DECODE_ERRORS:
        raise FrameError("body is not a readable PNG or JPEG image") from None
    _check_pixels(image.height, image.width, spec)
    try:
        image.load()
        return image_to_input(image, spec)
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        raise FrameError("image could not be decoded: truncated or corrupt file") from None


def image_to_input(image: Image.Image, spec: FrameSpec) -> np.ndarray:
    """Convert channels, resize to (H, W) and normalise a PIL image."""
    if spec.channels not in (1, 3):
        raise FrameError(f"the model takes {spec.channels} channels; images give 1 or 3")
    try:
        image = image.convert("L" if spec.channels == 1 else "RGB")
    except ValueError:
        raise FrameError(f"image mode {image.mode} cannot be converted") from None
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    chw = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, 2, 0)
    return normalise(np.ascontiguousarray(chw), spec)


def normalise(chw: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """Subtract the model's per-channel mean and divide by its std (float32)."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return (chw - mean) / std


def _check_pixels(height: int, width: int, spec: FrameSpec) -> None:
    if height * width > spec.max_pixels:
        raise FrameError(
            f"frame is {width}x{height}, more than the {spec.max_pixels} pixels allowed for"
            f" this model (its input is {spec.width}x{spec.height}): downscale it first"
        )
