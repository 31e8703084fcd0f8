"""The `.nest` multi-capacity file: format, writer and the validating reader (numpy, no torch).

Layout (docs/formats.md), format version 2: one safetensors file. A nested tensor W (>= 2
dims: conv and linear weights) is stored per level j as ``W#j.rows`` = W_j[w_{j-1}:w_j, :w_j]
and ``W#j.cols`` = W_j[:w_{j-1}, w_{j-1}:w_j] (empty blocks omitted). Every other tensor (BN
affine and running statistics, biases, counters) is per descendant: descendant k's are
flattened and concatenated, in state_dict order, into one 1-D tensor per dtype,
``@k.float32`` and ``@k.int64``. Their order and sizes follow from the architecture's graph
and the manifest's widths (`Layout`), so the file stores no index for them. The JSON
manifest sits in the safetensors metadata under ``nestdnn``.

`NestFile` opens a file once for the life of its user and validates everything before any
tensor is used: the safetensors header (byte ranges contiguous and covering the file), the
manifest (JSON, schema, version, architecture, widths growing level by level, the recorded
params / bytes) and the name, shape and dtype of every tensor; it hashes the content in the
same read. Later reads go through the file descriptor it holds, never a memory map: a file
replaced by a rename keeps being read as the inode that was validated, and a file changed in
place (truncated, overwritten) is detected at the next read (size and modification time)
and refused with a `NestError` instead of crashing the process or serving unvalidated bytes.

Nothing here imports torch: the daemon reads `.nest` files into numpy arrays. The torch
modules of descendants (`NestedModel`, `load_descendant`) live in `nestdnn.nested`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import save

from nestdnn.arch import ModelConfig, check_widths, full_widths, model_graph
from nestdnn.arch.graph import GroupAxes
from nestdnn.errors import NestError, validation_message
from nestdnn.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUPPORTED_VERSIONS = frozenset({2})
MANIFEST_KEY = "nestdnn"
NUMPY_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32),
                                     "int64": np.dtype(np.int64)}
SAFETENSORS_DTYPES: dict[str, str] = {"float32": "F32", "int64": "I64"}
_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

# ------------------------------------------------------------------------------ manifest


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


Count = Annotated[int, Field(ge=0)]


class ArchInfo(_Strict):
    """The model config minus the widths (shared by every descendant)."""

    arch: str
    in_channels: Annotated[int, Field(ge=1)]
    num_classes: Annotated[int, Field(ge=1)]
    input_size: Annotated[int, Field(ge=1)]


class Normalization(_Strict):
    """Per-channel input normalisation the model was trained with."""

    mean: list[Annotated[float, Field(allow_inf_nan=False)]]
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]]


class DescendantInfo(_Strict):
    """One descendant: its widths and what it costs and scores."""

    index: Count
    widths: dict[str, int]
    params: Count
    bytes: Count
    macs: Count
    val_accuracy: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    roadmap_step: Count | None = None


class Manifest(_Strict):
    """The JSON manifest of a `.nest` file (safetensors metadata key ``nestdnn``)."""

    format_version: int
    arch: ArchInfo
    groups: list[str]
    normalization: Normalization
    class_names: list[str]
    dataset: str
    descendants: list[DescendantInfo]
    created: str
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def num_descendants(self) -> int:
        return len(self.descendants)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        arch = self.arch
        return (arch.in_channels, arch.input_size, arch.input_size)

    def config(self, k: int) -> ModelConfig:
        """The model config of descendant ``k``."""
        return ModelConfig(**self.arch.model_dump(), widths=dict(self.descendants[k].widths))


# ---------------------------------------------------------------------------- writer input


@dataclass(frozen=True)
class NestDescendant:
    """Descendant k's dense weights (channels in level order) and its validation accuracy.

    ``state_dict`` values are numpy arrays or CPU torch tensors (read through ``.numpy()``).
    """

    state_dict: Mapping[str, Any]
    config: ModelConfig
    val_accuracy: float
    roadmap_step: int | None = None


@dataclass(frozen=True)
class NestMeta:
    """What the file records about the data: set name, class names, normalisation, extras."""

    dataset: str
    class_names: list[str]
    mean: list[float]
    std: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Block:
    """One stored block of a nested tensor: its name and where it sits in level j's tensor."""

    name: str
    index: tuple[slice, slice]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Packed:
    """One descendant's per-descendant tensors of one dtype, flattened and concatenated."""

    name: str
    dtype: str
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def unpack(self, flat: Any) -> dict[str, Any]:
        """Key -> view of ``flat`` (a numpy array or a torch tensor) in that key's shape."""
        parts, offset = {}, 0
        for key, shape, size in zip(self.keys, self.shapes, self.sizes, strict=True):
            parts[key] = flat[offset : offset + size].reshape(shape)
            offset += size
        return parts


class Layout:
    """Every tensor a valid file holds, derived from the descendants' configs alone."""

    def __init__(self, configs: Sequence[ModelConfig]) -> None:
        specs = [model_graph(config).state() for config in configs]
        first = specs[0]
        self.keys = list(first)
        self.nested = [key for key in self.keys if len(first[key].shape) >= 2]
        self.per_descendant = [key for key in self.keys if len(first[key].shape) < 2]
        self.dtypes = {key: spec.dtype for key, spec in first.items()}
        self.axes: dict[str, GroupAxes] = {key: spec.axes for key, spec in first.items()}
        self.param_keys = {key for key, spec in first.items() if spec.parameter}
        self.shapes = [{key: spec.shape for key, spec in level.items()} for level in specs]
        self.packed = [self._pack(level) for level in range(len(specs))]

    def _pack(self, level: int) -> list[Packed]:
        """Descendant ``level``'s packed tensors: one per dtype, keys in state_dict order."""
        by_dtype: dict[str, list[str]] = {}
        for key in self.per_descendant:
            by_dtype.setdefault(self.dtypes[key], []).append(key)
        packed = []
        for dtype, keys in by_dtype.items():
            shapes = tuple(self.shapes[level][key] for key in keys)
            sizes = tuple(math.prod(shape) for shape in shapes)
            if sum(sizes):
                packed.append(Packed(packed_name(level, dtype), dtype, tuple(keys), shapes, sizes))
        return packed

    def blocks(self, key: str, level: int) -> list[Block]:
        """The non-empty ``#level.rows`` / ``#level.cols`` blocks of nested tensor ``key``."""
        out, inn, *rest = self.shapes[level][key]
        out0, in0 = self.shapes[level - 1][key][:2] if level else (0, 0)
        candidates = [
            Block(f"{key}#{level}.rows", (slice(out0, out), slice(0, inn)),
                  (out - out0, inn, *rest)),
            Block(f"{key}#{level}.cols", (slice(0, out0), slice(in0, inn)),
                  (out0, inn - in0, *rest)),
        ]
        return [b for b in candidates if math.prod(b.shape) > 0]

    def expected(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype) of every tensor the file must hold, and nothing else."""
        found: dict[str, tuple[tuple[int, ...], str]] = {}
        for level, packs in enumerate(self.packed):
            for key in self.nested:
                for block in self.blocks(key, level):
                    found[block.name] = (block.shape, self.dtypes[key])
            for packed in packs:
                found[packed.name] = ((packed.numel,), packed.dtype)
        return found

    def param_count(self, level: int) -> int:
        return sum(math.prod(s) for k, s in self.shapes[level].items() if k in self.param_keys)

    def nbytes(self, level: int) -> int:
        """Resident bytes of descendant ``level``'s full state (parameters and buffers)."""
        return sum(math.prod(s) * NUMPY_DTYPES[self.dtypes[k]].itemsize
                   for k, s in self.shapes[level].items())


def packed_name(level: int, dtype: str) -> str:
    """File name of descendant ``level``'s packed per-descendant tensors of ``dtype``."""
    return f"@{level}.{dtype}"


# ------------------------------------------------------------------------ shared checks


def _check_same_arch(configs: Sequence[ModelConfig]) -> None:
    """Every descendant must share architecture, input and classes with descendant 0."""
    first = configs[0]
    for k, config in enumerate(configs[1:], 1):
        for name in ("arch", "in_channels", "num_classes", "input_size"):
            if getattr(config, name) != getattr(first, name):
                raise NestError(
                    f"descendant {k} has {name} {getattr(config, name)!r}, descendant 0 has"
                    f" {getattr(first, name)!r}; all descendants must share it"
                )


def _check_growth(widths: Sequence[Mapping[str, int]]) -> None:
    """Every descendant contains the previous one and is larger in at least one group."""
    for k in range(1, len(widths)):
        smaller, larger = widths[k - 1], widths[k]
        for group, width in smaller.items():
            if larger[group] < width:
                raise NestError(
                    f"descendant {k} does not contain descendant {k - 1}: group '{group}'"
                    f" shrinks from {width} to {larger[group]}"
                )
        if dict(smaller) == dict(larger):
            raise NestError(f"descendant {k} has the same widths as descendant {k - 1}")


def _check_manifest(manifest: Manifest) -> None:
    """Check the manifest's meaning beyond its types: groups, names, widths, level order."""
    arch = manifest.arch
    if not manifest.descendants:
        raise NestError("manifest lists no descendants")
    limits = full_widths(arch.arch, arch.input_size)
    if manifest.groups != list(limits):
        raise NestError(f"manifest groups do not match {arch.arch}'s channel groups")
    if len(manifest.class_names) != arch.num_classes:
        raise NestError(
            f"manifest has {len(manifest.class_names)} class names for {arch.num_classes} classes"
        )
    norm = manifest.normalization
    if not len(norm.mean) == len(norm.std) == arch.in_channels:
        raise NestError(
            f"normalization mean/std have {len(norm.mean)}/{len(norm.std)} values for"
            f" {arch.in_channels} input channels"
        )
    for k, info in enumerate(manifest.descendants):
        if info.index != k:
            raise NestError(f"descendant at position {k} has index {info.index}")
        check_widths(info.widths, limits, arch.arch, context=f"descendant {k}")
    _check_growth([info.widths for info in manifest.descendants])


def _check_recorded_sizes(manifest: Manifest, layout: Layout) -> None:
    """Recorded params and bytes must be those the widths give."""
    for k, info in enumerate(manifest.descendants):
        for what, recorded, actual in (
            ("params", info.params, layout.param_count(k)),
            ("bytes", info.bytes, layout.nbytes(k)),
        ):
            if recorded != actual:
                raise NestError(
                    f"descendant {k} records {recorded} {what} but its widths give {actual}"
                )


# --------------------------------------------------------------------------------- writer


def write_nest(path: str | Path, descendants: Sequence[NestDescendant], meta: NestMeta) -> Manifest:
    """Write descendants (smallest first, each a prefix of the next) to one `.nest` file."""
    path = Path(path)
    if not descendants:
        raise NestError("a .nest file needs at least one descendant")
    configs = [d.config for d in descendants]
    _check_same_arch(configs)
    first = configs[0]
    limits = full_widths(first.arch, first.input_size)
    for k, config in enumerate(configs):
        check_widths(config.widths, limits, first.arch, context=f"descendant {k}")
    _check_growth([c.widths for c in configs])
    layout = Layout(configs)
    states = [_checked_state(k, d.state_dict, layout) for k, d in enumerate(descendants)]
    _check_nested(states, layout)
    macs = [model_graph(config).macs() for config in configs]
    manifest = _build_manifest(descendants, layout, macs, meta)
    _check_manifest(manifest)  # the reader's own checks, so that a written file reads back
    _check_recorded_sizes(manifest, layout)
    data = save(_file_tensors(states, layout), metadata={MANIFEST_KEY: manifest.model_dump_json()})
    atomic_write(path, data)
    log.info("wrote %s: %d descendants, %d bytes", path, len(states), path.stat().st_size)
    return manifest


def as_array(value: Any) -> np.ndarray:
    """A numpy view of an array or of a CPU torch tensor (detached), without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _checked_state(k: int, state: Mapping[str, Any], layout: Layout) -> dict[str, np.ndarray]:
    """Descendant ``k``'s tensors as contiguous arrays, checked for names, shapes and dtypes."""
    missing = [key for key in layout.keys if key not in state]
    unexpected = [key for key in state if key not in layout.dtypes]
    if missing or unexpected:
        raise NestError(
            f"descendant {k}'s state_dict does not match its config"
            + (f"; missing {', '.join(missing[:3])}" if missing else "")
            + (f"; unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        )
    out: dict[str, np.ndarray] = {}
    for key in layout.keys:
        array = np.asarray(as_array(state[key]), order="C")  # (keeps 0-d arrays 0-d)
        shape, dtype = layout.shapes[k][key], layout.dtypes[key]
        if array.shape != shape:
            raise NestError(
                f"descendant {k}: tensor '{key}' has shape {array.shape}, its widths give {shape}"
            )
        if array.dtype != NUMPY_DTYPES[dtype]:
            raise NestError(f"descendant {k}: tensor '{key}' is {array.dtype}, expected {dtype}")
        out[key] = array
    return out


def _check_nested(states: Sequence[Mapping[str, np.ndarray]], layout: Layout) -> None:
    """Each descendant's nested tensors must equal, bit for bit, the next one's prefix."""
    for k in range(1, len(states)):
        for key in layout.nested:
            small = states[k - 1][key]
            prefix = states[k][key][: small.shape[0], : small.shape[1]]
            differ = int(np.count_nonzero(_bits(small) != _bits(prefix)))
            if differ:
                raise NestError(
                    f"descendant {k - 1} is not nested in descendant {k}: tensor '{key}'"
                    f" differs from the prefix [:{small.shape[0]}, :{small.shape[1]}] of"
                    f" descendant {k}'s ({differ} of {small.size} values differ)"
                )


def _bits(array: np.ndarray) -> np.ndarray:
    """The array's raw bits as integers (so that NaNs and signed zeros compare exactly)."""
    return array.view({2: np.int16, 4: np.int32, 8: np.int64}[array.dtype.itemsize])


def _build_manifest(
    descendants: Sequence[NestDescendant], layout: Layout, macs: Sequence[int], meta: NestMeta
) -> Manifest:
    """The manifest of the checked descendants; MACs come from the family's graph."""
    config = descendants[0].config
    infos = [
        {
            "index": k,
            "widths": dict(d.config.widths),
            "params": layout.param_count(k),
            "bytes": layout.nbytes(k),
            "macs": macs[k],
            "val_accuracy": float(d.val_accuracy),
            "roadmap_step": d.roadmap_step,
        }
        for k, d in enumerate(descendants)
    ]
    try:
        json.dumps(meta.extra)
        return Manifest.model_validate(
            {
                "format_version": FORMAT_VERSION,
                "arch": {
                    "arch": config.arch,
                    "in_channels": config.in_channels,
                    "num_classes": config.num_classes,
                    "input_size": config.input_size,
                },
                "groups": list(full_widths(config.arch, config.input_size)),
                "normalization": {
                    "mean": [float(m) for m in meta.mean],
                    "std": [float(s) for s in meta.std],
                },
                "class_names": list(meta.class_names),
                "dataset": meta.dataset,
                "descendants": infos,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "extra": dict(meta.extra),
            }
        )
    except ValidationError as e:
        raise NestError(f"cannot write the manifest: {validation_message(e)}") from e
    except (TypeError, ValueError) as e:
        raise NestError(f"NestMeta.extra must be JSON-serialisable: {e}") from e


def _file_tensors(states: Sequence[Mapping[str, np.ndarray]],
                  layout: Layout) -> dict[str, np.ndarray]:
    """The level blocks of every nested tensor and each descendant's packed tensors."""
    tensors: dict[str, np.ndarray] = {}
    for level, state in enumerate(states):
        for key in layout.nested:
            for block in layout.blocks(key, level):
                tensors[block.name] = np.ascontiguousarray(state[key][block.index])
        for packed in layout.packed[level]:
            tensors[packed.name] = np.concatenate([state[key].reshape(-1) for key in packed.keys])
    return tensors


# --------------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class _Stored:
    """One tensor as the file's header describes it: dtype, shape, byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class _Identity:
    """What must not change under an open file: its size and last modification."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> _Identity:
        return cls(stat.st_size, stat.st_mtime_ns)


class NestFile:
    """An open, fully validated `.nest` file; `read` is its only data access.

    Open one per file and keep it: the catalogue of the daemon, its backends and every
    descendant loaded from the file share it. ``sha256`` is the content hash computed while
    validating.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise NestError(f"{self.path}: no such .nest file") from None
        except OSError as e:
            raise NestError(f"{self.path}: cannot open: {e.strerror}") from None
        try:
            self._identity, self.sha256, metadata, self._stored = _validated_header(self._fd)
            self.manifest = _parse_manifest(metadata)
            _check_manifest(self.manifest)
            self.layout = Layout([self.manifest.config(k)
                                  for k in range(self.manifest.num_descendants)])
            _check_recorded_sizes(self.manifest, self.layout)
            _check_tensors(self._stored, self.layout)
        except NestError as e:
            os.close(self._fd)
            raise NestError(f"{self.path}: {e}") from e
        self._closed = False

    def read(self, name: str) -> np.ndarray:
        """One stored tensor, read from the validated file (read-only; copy it to change it)."""
        if self._closed:
            raise NestError(f"{self.path} is closed")
        stored = self._stored[name]
        length = stored.end - stored.start
        self._check_unchanged()
        data = os.pread(self._fd, length, stored.start)
        self._check_unchanged()  # written during the read: these are not the validated bytes
        if len(data) != length:
            raise NestError(f"{self.path} is shorter than when it was validated")
        return np.frombuffer(data, dtype=_numpy_dtype(stored.dtype)).reshape(stored.shape)

    def changed_on_disk(self) -> bool:
        """Whether the open file was truncated or written in place since it was validated (a
        file replaced by rename is another inode: this one is unchanged)."""
        if self._closed:
            raise NestError(f"{self.path} is closed")
        return _Identity.of(os.fstat(self._fd)) != self._identity

    def _check_unchanged(self) -> None:
        if self.changed_on_disk():
            raise NestError(
                f"{self.path} changed on disk since it was validated (it was truncated or"
                " overwritten in place); reload the models to serve the new file"
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the file (arrays already read stay valid)."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> NestFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_level(self, k: int) -> int:
        """``k`` if it names a descendant of this file, else a NestError saying which exist."""
        n = self.manifest.num_descendants
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise NestError(f"{self.path} has descendants 0..{n - 1}; there is no descendant {k}")
        return k

    def state(self, level: int, base: Mapping[str, np.ndarray] | None = None,
              base_level: int = -1) -> dict[str, np.ndarray]:
        """Descendant ``level``'s dense state: `nested_state` and `own_tensors`."""
        return {**self.nested_state(level, base, base_level), **self.own_tensors(level)}

    def nested_state(self, level: int, base: Mapping[str, np.ndarray] | None = None,
                     base_level: int = -1) -> dict[str, np.ndarray]:
        """Descendant ``level``'s nested tensors: ``base`` (of ``base_level``) grown by blocks.

        Only blocks of levels ``base_level + 1 .. level`` are read; every array is new and
        contiguous.
        """
        layout = self.layout
        state: dict[str, np.ndarray] = {}
        for key in layout.nested:
            array = np.empty(layout.shapes[level][key], dtype=NUMPY_DTYPES[layout.dtypes[key]])
            if base is not None:
                old = base[key]
                array[: old.shape[0], : old.shape[1]] = old
            for j in range(base_level + 1, level + 1):
                for block in layout.blocks(key, j):
                    array[block.index] = self.read(block.name)
            state[key] = array
        return state

    def own_tensors(self, level: int) -> dict[str, np.ndarray]:
        """Descendant ``level``'s per-descendant tensors: views of one new array per dtype."""
        tensors: dict[str, np.ndarray] = {}
        for packed in self.layout.packed[level]:
            tensors.update(packed.unpack(self.packed_copy(packed)))
        return tensors

    def packed_copy(self, packed: Packed) -> np.ndarray:
        """A writable copy of one packed tensor."""
        return self.read(packed.name).copy()


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a `.nest` file, after validating the whole file."""
    with NestFile(path) as nest:
        return nest.manifest


def _numpy_dtype(code: str) -> np.dtype:
    return NUMPY_DTYPES[{v: k for k, v in SAFETENSORS_DTYPES.items()}[code]]


def _validated_header(fd: int) -> tuple[_Identity, str, dict[str, str], dict[str, _Stored]]:
    """Read the whole file once: its identity, sha256, metadata and tensor table.

    The header is checked as safetensors does: a JSON object of tensors whose byte ranges
    are consistent with their dtypes and shapes, contiguous, and cover the data exactly (a
    truncated or padded file fails here).
    """
    identity = _Identity.of(os.fstat(fd))
    data = _read_all(fd, identity.size)
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or 8 + size > len(data):
            raise ValueError(f"header of {size} bytes in a file of {len(data)}")
        header = json.loads(data[8 : 8 + size])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str)
                                                     for v in metadata.values()):
            raise ValueError("the metadata is not a map of strings")
        stored = {name: _stored_entry(name, entry, 8 + size) for name, entry in header.items()}
        _check_ranges(stored, 8 + size, len(data))
    except (ValueError, TypeError, KeyError) as e:
        raise NestError(f"file is truncated or not a safetensors file ({e})") from None
    return identity, hashlib.sha256(data).hexdigest(), metadata, stored


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _stored_entry(name: str, entry: Any, base: int) -> _Stored:
    """One header entry, checked: a known dtype, a shape, a byte range of the right length."""
    if not isinstance(entry, dict) or entry.get("dtype") not in _ITEM_SIZES:
        raise ValueError(f"tensor '{name}' has no known dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ValueError(f"tensor '{name}' has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor '{name}' has invalid data offsets")
    if offsets[1] - offsets[0] != math.prod(shape) * _ITEM_SIZES[entry["dtype"]]:
        raise ValueError(f"tensor '{name}' has a byte range that does not fit its shape")
    return _Stored(entry["dtype"], tuple(shape), base + offsets[0], base + offsets[1])


def _check_ranges(stored: Mapping[str, _Stored], start: int, end: int) -> None:
    """Byte ranges must follow each other without gaps from the header to the file's end."""
    position = start
    for entry in sorted(stored.values(), key=lambda s: (s.start, s.end)):
        if entry.start != position:
            raise ValueError("tensor byte ranges overlap or leave gaps")
        position = entry.end
    if position != end:
        raise ValueError(f"the tensors end at byte {position}, the file at {end}")


def _parse_manifest(metadata: Mapping[str, str] | None) -> Manifest:
    """The manifest from the safetensors metadata: JSON, then version, then schema."""
    if not metadata or MANIFEST_KEY not in metadata:
        raise NestError(f"no '{MANIFEST_KEY}' manifest in the file's metadata (not a .nest file)")
    try:
        raw = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise NestError(f"manifest is not valid JSON ({e.msg} at character {e.pos})") from e
    except RecursionError:
        raise NestError("manifest is nested too deeply") from None
    if not isinstance(raw, dict):
        raise NestError(f"manifest must be a JSON object, found {type(raw).__name__}")
    version = raw.get("format_version")
    if version is None:
        raise NestError("manifest has no format_version")
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < FORMAT_VERSION:
        raise NestError(
            f"format version {version} is no longer supported (this nestdnn reads {supported},"
            " which packs each descendant's BN and bias tensors into one tensor per dtype);"
            " re-run `nestdnn recover` to rebuild the file"
        )
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise NestError(
            f"format version {version!r} is not supported (this nestdnn reads {supported})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise NestError(f"invalid manifest: {validation_message(e)}") from e


def _check_tensors(stored: Mapping[str, _Stored], layout: Layout) -> None:
    """The header must hold exactly the expected tensors with their shapes and dtypes."""
    expected = layout.expected()
    names = set(stored)
    missing = [name for name in expected if name not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NestError(f"missing tensor '{missing[0]}'{more}")
    unexpected = sorted(names - set(expected))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise NestError(f"unexpected tensor '{unexpected[0]}'{more}")
    for level, packs in enumerate(layout.packed):
        for packed in packs:
            found_shape = stored[packed.name].shape
            if found_shape != (packed.numel,):
                raise NestError(
                    f"packed tensor '{packed.name}' has shape {found_shape}, expected"
                    f" ({packed.numel},): the {len(packed.keys)} {packed.dtype} per-descendant"
                    f" tensors of descendant {level}"
                )
    for name, (shape, dtype) in expected.items():
        found_shape, found_dtype = stored[name].shape, stored[name].dtype
        if found_shape != shape:
            raise NestError(f"tensor '{name}' has shape {found_shape}, expected {shape}")
        if found_dtype != SAFETENSORS_DTYPES[dtype]:
            raise NestError(
                f"tensor '{name}' has dtype {found_dtype}, expected {SAFETENSORS_DTYPES[dtype]}"
            )
