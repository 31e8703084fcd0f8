"""Tensors of the Open Inference Protocol in and out: JSON ``data`` and Triton's binary tensor
data extension.

With the extension a request body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw tensors, each input with ``parameters.binary_data_size`` taking its
bytes in order (row-major, little-endian). Answers do the same for outputs asked for in binary
(``binary_data_output`` for all of them, or ``binary_data`` per output). BYTES elements are a
4-byte little-endian length and the bytes; in JSON they are strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from api.v2.errors import BadInferRequest
from api.v2.schemas import InferInput

HEADER_LENGTH = "inference-header-content-length"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_MEDIA_TYPE = "application/octet-stream"
JSON_MEDIA_TYPE = "application/json"
NUMERIC = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""The protocol's numeric datatypes (BYTES, BF16 and the others are not numpy types)."""
_CONVERSION_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise BadInferRequest(
            f"Inference-Header-Content-Length must be a byte count within the body of"
            f" {len(body)} bytes"
        )
    size = int(text)
    return body[:size], memoryview(body)[size:]


@dataclass(frozen=True)
class Tensor:
    """A decoded input tensor (a read-only view of the body for binary data)."""

    name: str
    datatype: str
    array: np.ndarray


def decode_inputs(inputs: Sequence[InferInput], binary: memoryview, allowed: Sequence[str]
                  ) -> list[Tensor]:
    """Every input as an array of its shape and datatype; the binary part must be used up
    exactly. ``allowed``: the datatypes the model takes."""
    tensors, offset = [], 0
    for tensor in inputs:
        if tensor.datatype not in allowed:
            raise BadInferRequest(
                f"input {tensor.name!r} has datatype {tensor.datatype!r}; the model takes"
                f" {', '.join(allowed)}"
            )
        array, offset = _decode(tensor, NUMERIC[tensor.datatype], binary, offset)
        tensors.append(Tensor(tensor.name, tensor.datatype, array))
    if offset != len(binary):
        raise BadInferRequest(
            f"the inputs' binary_data_size add up to {offset} bytes, the body has {len(binary)}"
            " after the JSON header"
        )
    return tensors


def _decode(tensor: InferInput, dtype: np.dtype, binary: memoryview, offset: int
            ) -> tuple[np.ndarray, int]:
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get(BINARY_DATA_SIZE)
    if size is None:
        return _from_json(tensor, dtype, count), offset
    if tensor.data is not None:
        raise BadInferRequest(f"input {tensor.name!r} has both data and binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadInferRequest(f"input {tensor.name!r}: binary_data_size must be a byte count")
    if size != count * dtype.itemsize:
        raise BadInferRequest(
            f"input {tensor.name!r}: binary_data_size {size} for shape {tensor.shape} of"
            f" {tensor.datatype} ({count * dtype.itemsize} bytes)"
        )
    if offset + size > len(binary):
        raise BadInferRequest(
            f"input {tensor.name!r}: binary_data_size {size} goes past the body's end"
        )
    array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
    return array.reshape(tensor.shape), offset + size


def _from_json(tensor: InferInput, dtype: np.dtype, count: int) -> np.ndarray:
    if tensor.data is None:
        raise BadInferRequest(f"input {tensor.name!r} has no data and no binary_data_size")
    try:
        array = np.asarray(tensor.data, dtype=np.float64 if dtype.kind == "f" else np.int64)
    except _CONVERSION_ERRORS:
        raise BadInferRequest(
            f"input {tensor.name!r}: data must be numbers in flat or rectangular nested lists"
        ) from None
    if array.size != count:
        raise BadInferRequest(
            f"input {tensor.name!r}: {array.size} data elements for shape {tensor.shape}"
            f" ({count} elements)"
        )
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise BadInferRequest(
                f"input {tensor.name!r}: values outside {tensor.datatype}'s range"
            )
    with np.errstate(over="ignore"):
        return array.astype(dtype).reshape(tensor.shape)


@dataclass(frozen=True)
class Output:
    """An output to answer: its array (numeric) or strings (BYTES), and whether binary."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[str]
    binary: bool


def encode_answer(head: dict, outputs: Sequence[Output]) -> tuple[bytes, int | None]:
    """The answer's body and, when any output is binary, the length of its JSON header. The
    tensors are the fields of `api.v2.schemas.OutputTensor`, built as plain dicts (this is
    the hot path: a pydantic model per tensor cost ~10 us a request)."""
    tensors, chunks = [], []
    for output in outputs:
        tensor: dict = {"name": output.name, "shape": output.shape, "datatype": output.datatype}
        if output.binary:
            raw = _raw(output)
            chunks.append(raw)
            tensor["parameters"] = {BINARY_DATA_SIZE: len(raw)}
        elif isinstance(output.values, list):
            tensor["data"] = output.values
        else:
            tensor["data"] = output.values.ravel().tolist()
        tensors.append(tensor)
    header = json.dumps({**head, "outputs": tensors}, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _raw(output: Output) -> bytes:
    if isinstance(output.values, list):
        return b"".join(len(b).to_bytes(4, "little") + b
                        for b in (s.encode() for s in output.values))
    return np.ascontiguousarray(output.values, dtype=NUMERIC[output.datatype]).tobytes()
