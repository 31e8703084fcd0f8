"""Turn a request body (PNG/JPEG, .npy or JSON nested lists) into a model's normalised input.

Rules (also in docs/api.md):
- Images and ``uint8`` arrays are *pixels*: converted to the model's channels (grey <-> RGB,
  alpha dropped), resized to (H, W) and normalised with the model's mean/std.
- Float arrays (``.npy`` float16/32/64, JSON numbers) are the *model input* as is (already
  normalised): a wrong spatial size is resized bilinearly; a wrong channel count is refused,
  because converting normalised channels is not well defined.
- Array layouts: (C, H, W), (H, W, C) with C in {1, 3, 4}, (H, W), with leading axes of size 1
  ignored.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from nestdnn.errors import NestError

NPY_TYPES = ("application/x-npy",)
IMAGE_TYPES = ("image/png", "image/jpeg")
JSON_TYPES = ("application/json",)
MULTIPART_TYPES = ("multipart/form-data",)
NPY_MAGIC = b"\x93NUMPY"
_CHANNEL_COUNTS = (1, 3, 4)


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
    max_pixels: int = 4096 * 4096

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


def decode_frame(body: bytes, content_type: str | None, spec: FrameSpec) -> torch.Tensor:
    """Decode a request body of a given content type into a (C, H, W) float32 tensor."""
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
    return np.frombuffer(body, dtype=dtype, count=count, offset=end).reshape(
        shape, order="F" if fortran else "C"
    )


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
    """dtype, shape and order of a .npy header (numpy's safe parser; cached, frames repeat)."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}[version]  # fmt: skip
        shape, fortran, dtype = read(stream)
    except (ValueError, KeyError, OSError, EOFError, SyntaxError) as exc:
        raise FrameError(f"body is not a readable .npy array: {exc}") from None
    if dtype.hasobject:
        raise FrameError("body is not a readable .npy array: object arrays are refused")
    return dtype, shape, fortran


def load_json_frame(body: bytes) -> np.ndarray:
    """Read {"frame": nested lists of numbers} into a float array."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"frame"}:
        raise FrameError('JSON body must be an object with exactly one key, "frame"')
    try:
        return np.asarray(data["frame"], dtype=np.float32)
    except (ValueError, TypeError, RecursionError):
        raise FrameError('"frame" must be rectangular nested lists of numbers') from None


def from_array(array: np.ndarray, spec: FrameSpec) -> torch.Tensor:
    """Convert an array of pixels (uint8) or of model input (float) to the model's input."""
    if array.dtype == np.uint8:
        return from_pixels(to_chw(array, spec), spec)
    if array.dtype.kind != "f":
        raise FrameError(f"array dtype {array.dtype} not supported: {spec.expected()}")
    chw = to_chw(array, spec)
    if not np.isfinite(chw).all():
        raise FrameError("frame has NaN or infinite values")
    if chw.shape[0] != spec.channels:
        raise FrameError(
            f"float frame has {chw.shape[0]} channels, the model takes {spec.channels}; float "
            "arrays are normalised model input, so channels are not converted: send uint8 "
            "pixels or an image to have them converted"
        )
    tensor = torch.from_numpy(np.array(chw, dtype=np.float32, order="C"))  # owned, writable
    return resize(tensor, spec.height, spec.width)


def to_chw(array: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """Bring an array in a supported layout to (C, H, W), or explain what was expected."""
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise FrameError(f"array of shape {tuple(array.shape)}: {spec.expected()}")
    if array.size > spec.max_pixels * 4:
        raise FrameError(f"array of shape {tuple(array.shape)} is too large")
    first, last = array.shape[0], array.shape[2]
    if first == spec.channels or (first in _CHANNEL_COUNTS and last != spec.channels):
        return array
    if last in _CHANNEL_COUNTS:
        return np.moveaxis(array, 2, 0)
    raise FrameError(f"array of shape {tuple(array.shape)}: {spec.expected()}")


def from_pixels(chw: np.ndarray, spec: FrameSpec) -> torch.Tensor:
    """Convert (C, H, W) uint8 pixels to the model's input via the image path."""
    channels = chw.shape[0]
    if channels not in _CHANNEL_COUNTS:
        raise FrameError(f"uint8 frame has {channels} channels; pixels need 1, 3 or 4")
    hwc = np.ascontiguousarray(np.moveaxis(chw, 0, 2))
    image = Image.fromarray(hwc[:, :, 0] if channels == 1 else hwc)
    return image_to_input(image, spec)


def from_image(body: bytes, spec: FrameSpec) -> torch.Tensor:
    """Decode a PNG or JPEG file into the model's input."""
    try:
        image = Image.open(io.BytesIO(body), formats=["PNG", "JPEG"])
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FrameError(f"body is not a readable PNG or JPEG image: {exc}") from None
    if image.width * image.height > spec.max_pixels:
        raise FrameError(
            f"image is {image.width}x{image.height}, more than {spec.max_pixels} pixels"
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FrameError(f"image could not be decoded: {exc}") from None
    return image_to_input(image, spec)


def image_to_input(image: Image.Image, spec: FrameSpec) -> torch.Tensor:
    """Convert channels, resize to (H, W) and normalise a PIL image."""
    if spec.channels not in (1, 3):
        raise FrameError(f"the model takes {spec.channels} channels; images give 1 or 3")
    try:
        image = image.convert("L" if spec.channels == 1 else "RGB")
    except ValueError as exc:
        raise FrameError(f"image mode {image.mode} cannot be converted: {exc}") from None
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    chw = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, 2, 0)
    return normalise(torch.from_numpy(np.ascontiguousarray(chw)), spec)


def normalise(tensor: torch.Tensor, spec: FrameSpec) -> torch.Tensor:
    """Subtract the model's per-channel mean and divide by its std."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std


def resize(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) tensor; a no-op when it already has that size."""
    if tensor.shape[1:] == (height, width):
        return tensor
    out = F.interpolate(
        tensor[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].contiguous()
