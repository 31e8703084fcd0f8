"""The `.nest` multi-capacity file: writer, validating reader, descendant loading and the handle.

Layout (docs/formats.md), format version 2: one safetensors file. A nested tensor W (>= 2
dims: conv and linear weights) is stored per level j as ``W#j.rows`` = W_j[w_{j-1}:w_j, :w_j]
and ``W#j.cols`` = W_j[:w_{j-1}, w_{j-1}:w_j] (empty blocks omitted). Every other tensor (BN
affine and running statistics, biases, counters) is per descendant: descendant k's are
flattened and concatenated, in state_dict order, into one 1-D tensor per dtype,
``@k.float32`` and ``@k.int64``. Their order and sizes follow from the architecture and the
manifest's widths (``_Layout``), so the file stores no index for them: the header of a
VGG-16 x0.25 file with 5 descendants shrinks from 47.7 kB (format 1: one entry per tensor per
descendant) to 14.8 kB, and a switch reads two tensors instead of 79. The JSON manifest sits
in the safetensors metadata under ``nestdnn``.

Reading never unpickles and validates everything before any tensor data is used: the header
(by ``safetensors.safe_open``: a truncated file fails there), the manifest (JSON, schema,
version, architecture, widths growing level by level, the recorded params / bytes) and the
name, shape and dtype of every tensor. Tensor data is read only through
``_NestReader.get_tensor``, from the reader's own memory map of the validated file, so that
reading a block touches only that block's pages.

Switching descendants (``NestedModel``) keeps the file open and mapped for the handle's
lifetime. Measured on a VGG-16 x0.25 file with 5 descendants (2 loaded cores): reopening
costs ~50 ms of validation per switch, against ~10 ms for a whole upgrade on the open file;
an open mapping also keeps reading the file that was validated even if the path is replaced.
A switch builds a new dense module from owned, contiguous tensors and publishes it with one
attribute assignment; the old module is never modified, so requests running on it finish
unharmed, and it is freed when they let go. A downgrade there takes 1.5-2 ms (cold-loading the
target from its own safetensors file: 20-50 ms): one copy of each nested tensor's prefix (a
view would keep the larger storage alive), one copy per packed tensor, and a module tree made
from a per-level template (``_Template``) built when the handle opens.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from nestdnn.errors import NestError, validation_message
from nestdnn.files import atomic_write
from nestdnn.models import GroupAxes, ModelConfig, NestNet, build_from_config, full_widths

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUPPORTED_VERSIONS = frozenset({2})
MANIFEST_KEY = "nestdnn"
M = TypeVar("M", bound=nn.Module)
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {torch.float32: "F32", torch.int64: "I64"}
TORCH_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}

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

    def config(self, k: int) -> ModelConfig:
        """The model config of descendant ``k``."""
        return ModelConfig(**self.arch.model_dump(), widths=dict(self.descendants[k].widths))


# ---------------------------------------------------------------------------- writer input


@dataclass(frozen=True)
class NestDescendant:
    """Descendant k's dense weights (channels in level order) and its validation accuracy."""

    state_dict: Mapping[str, Tensor]
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
class _Block:
    """One stored block of a nested tensor: its name and where it sits in level j's tensor."""

    name: str
    index: tuple[slice, slice]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Packed:
    """One descendant's per-descendant tensors of one dtype, flattened and concatenated."""

    name: str
    dtype: torch.dtype
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def unpack(self, flat: Tensor) -> dict[str, Tensor]:
        """Key -> tensor of that key's shape, each a view of ``flat`` (no copy).

        ``unbind`` and ``split`` make all the views in one call; reshaping a view costs a few
        microseconds, so it is done only where the shape is neither scalar nor 1-D.
        """
        if all(not shape for shape in self.shapes):
            parts = flat.unbind()
        else:
            parts = tuple(
                part if len(shape) == 1 else part.view(shape)
                for part, shape in zip(flat.split(self.sizes), self.shapes, strict=True)
            )
        return dict(zip(self.keys, parts, strict=True))


class _Layout:
    """Every tensor a valid file holds, derived from the descendants' widths alone."""

    def __init__(self, widths: Sequence[Mapping[str, int]], reference: NestNet) -> None:
        state = reference.state_dict()
        axes = reference.param_axes()
        self.keys = list(state)
        self.nested = [key for key in self.keys if state[key].dim() >= 2]
        self.per_descendant = [key for key in self.keys if state[key].dim() < 2]
        self.dtypes = {key: tensor.dtype for key, tensor in state.items()}
        self.param_keys = {name for name, _ in reference.named_parameters()}
        self.shapes = [
            {key: _shape_at(state[key].shape, axes.get(key, ()), w) for key in self.keys}
            for w in widths
        ]
        self.packed = [self._pack(level) for level in range(len(widths))]

    def _pack(self, level: int) -> list[_Packed]:
        """Descendant ``level``'s packed tensors: one per dtype, keys in state_dict order."""
        by_dtype: dict[torch.dtype, list[str]] = {}
        for key in self.per_descendant:
            by_dtype.setdefault(self.dtypes[key], []).append(key)
        packed = []
        for dtype, keys in by_dtype.items():
            shapes = tuple(self.shapes[level][key] for key in keys)
            sizes = tuple(math.prod(shape) for shape in shapes)
            if sum(sizes):
                packed.append(_Packed(packed_name(level, dtype), dtype, tuple(keys), shapes, sizes))
        return packed

    def blocks(self, key: str, level: int) -> list[_Block]:
        """The non-empty ``#level.rows`` / ``#level.cols`` blocks of nested tensor ``key``."""
        out, inn, *rest = self.shapes[level][key]
        out0, in0 = self.shapes[level - 1][key][:2] if level else (0, 0)
        candidates = [
            _Block(
                f"{key}#{level}.rows", (slice(out0, out), slice(0, inn)), (out - out0, inn, *rest)
            ),
            _Block(
                f"{key}#{level}.cols", (slice(0, out0), slice(in0, inn)), (out0, inn - in0, *rest)
            ),
        ]
        return [b for b in candidates if math.prod(b.shape) > 0]

    def expected(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every tensor the file must hold, and nothing else."""
        found: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
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
        return sum(math.prod(s) * self.dtypes[k].itemsize for k, s in self.shapes[level].items())


def _shape_at(shape: torch.Size, axes: GroupAxes, widths: Mapping[str, int]) -> tuple[int, ...]:
    """A tensor's shape at ``widths``: grouped dims take the group's width, others stay."""
    return tuple(
        widths[axes[d]] if d < len(axes) and axes[d] is not None else size
        for d, size in enumerate(shape)
    )


def packed_name(level: int, dtype: torch.dtype) -> str:
    """File name of descendant ``level``'s packed per-descendant tensors of ``dtype``."""
    return f"@{level}.{str(dtype).removeprefix('torch.')}"


def _skeleton(config: ModelConfig) -> NestNet:
    """The model of ``config`` on the meta device: structure and shapes, no storage.

    Built on the CPU and then moved: initialising directly on the meta device goes through
    torch's Python reference kernels and is slower (and imports torch._dynamo).
    """
    return build_from_config(config).to("meta").eval()


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


def _check_widths(k: int, widths: Mapping[str, int], limits: Mapping[str, int], arch: str) -> None:
    """Descendant ``k``'s widths must name exactly ``arch``'s groups, each within its limit."""
    unknown = sorted(set(widths) - set(limits))
    missing = sorted(set(limits) - set(widths))
    if unknown or missing:
        raise NestError(
            f"descendant {k}'s widths do not match {arch}'s channel groups"
            + (f"; unknown: {', '.join(unknown[:5])}" if unknown else "")
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
        )
    for group, width in widths.items():
        if not 1 <= width <= limits[group]:
            raise NestError(
                f"descendant {k}: width of group '{group}' is {width}; {arch} allows"
                f" 1..{limits[group]}"
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
        _check_widths(k, info.widths, limits, arch.arch)
    _check_growth([info.widths for info in manifest.descendants])


def _check_recorded_sizes(manifest: Manifest, layout: _Layout) -> None:
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
        _check_widths(k, config.widths, limits, first.arch)
    _check_growth([c.widths for c in configs])
    skeletons = [_skeleton(config) for config in configs]
    layout = _Layout([c.widths for c in configs], skeletons[0])
    states = [_checked_state(k, d.state_dict, layout) for k, d in enumerate(descendants)]
    _check_nested(states, layout)
    macs = [_instantiate(s, state).count_macs() for s, state in zip(skeletons, states, strict=True)]
    manifest = _build_manifest(descendants, layout, macs, meta)
    _check_manifest(manifest)  # the reader's own checks, so that a written file reads back
    _check_recorded_sizes(manifest, layout)
    data = save(_file_tensors(states, layout), metadata={MANIFEST_KEY: manifest.model_dump_json()})
    atomic_write(path, data)
    log.info("wrote %s: %d descendants, %d bytes", path, len(states), path.stat().st_size)
    return manifest


def _checked_state(k: int, state: Mapping[str, Tensor], layout: _Layout) -> dict[str, Tensor]:
    """Descendant ``k``'s tensors on the CPU, checked for names, shapes and dtypes."""
    missing = [key for key in layout.keys if key not in state]
    unexpected = [key for key in state if key not in layout.dtypes]
    if missing or unexpected:
        raise NestError(
            f"descendant {k}'s state_dict does not match its config"
            + (f"; missing {', '.join(missing[:3])}" if missing else "")
            + (f"; unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        )
    out: dict[str, Tensor] = {}
    for key in layout.keys:
        tensor = state[key].detach().cpu().contiguous()
        shape, dtype = layout.shapes[k][key], layout.dtypes[key]
        if tuple(tensor.shape) != shape:
            raise NestError(
                f"descendant {k}: tensor '{key}' has shape {tuple(tensor.shape)}, its widths"
                f" give {shape}"
            )
        if tensor.dtype != dtype:
            raise NestError(f"descendant {k}: tensor '{key}' is {tensor.dtype}, expected {dtype}")
        out[key] = tensor
    return out


def _check_nested(states: Sequence[Mapping[str, Tensor]], layout: _Layout) -> None:
    """Each descendant's nested tensors must equal, bit for bit, the next one's prefix."""
    for k in range(1, len(states)):
        for key in layout.nested:
            small = states[k - 1][key]
            prefix = states[k][key][: small.shape[0], : small.shape[1]]
            if not _bitwise_equal(small, prefix):
                differ = int((_bits(small) != _bits(prefix)).sum())
                raise NestError(
                    f"descendant {k - 1} is not nested in descendant {k}: tensor '{key}'"
                    f" differs from the prefix [:{small.shape[0]}, :{small.shape[1]}] of"
                    f" descendant {k}'s ({differ} of {small.numel()} values differ)"
                )


def _bits(tensor: Tensor) -> Tensor:
    """The tensor's raw bits as integers (so that NaNs and signed zeros compare exactly)."""
    return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _build_manifest(
    descendants: Sequence[NestDescendant], layout: _Layout, macs: Sequence[int], meta: NestMeta
) -> Manifest:
    """The manifest of the checked descendants; MACs come from the model family's own count."""
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


def _file_tensors(states: Sequence[Mapping[str, Tensor]], layout: _Layout) -> dict[str, Tensor]:
    """The level blocks of every nested tensor and each descendant's packed tensors."""
    tensors: dict[str, Tensor] = {}
    for level, state in enumerate(states):
        for key in layout.nested:
            for block in layout.blocks(key, level):
                tensors[block.name] = state[key][block.index].clone()
        for packed in layout.packed[level]:
            tensors[packed.name] = torch.cat([state[key].reshape(-1) for key in packed.keys])
    return tensors


# --------------------------------------------------------------------------------- reader


class _NestReader:
    """An open `.nest` file, fully validated on open; ``get_tensor`` is its only data read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._raw, self._map, metadata, self._stored = _open_mapped(self.path)
        try:
            self.manifest = _parse_manifest(metadata)
            _check_manifest(self.manifest)
            reference = _skeleton(self.manifest.config(0))
            self.layout = _Layout([d.widths for d in self.manifest.descendants], reference)
            _check_recorded_sizes(self.manifest, self.layout)
            _check_tensors(self._stored, self.layout)
        except NestError as e:
            self.close()
            raise NestError(f"{self.path}: {e}") from e
        self._templates: dict[int, _Template] = {0: _Template(reference)}

    def get_tensor(self, name: str) -> Tensor:
        """Read one stored tensor (a view of the file's mapping; copy it to keep it)."""
        if self._map is None:
            raise NestError(f"{self.path} is closed")
        stored = self._stored[name]
        dtype = TORCH_DTYPES[stored.dtype]
        count = (stored.end - stored.start) // dtype.itemsize
        view = torch.frombuffer(self._map, dtype=dtype, count=count, offset=stored.start)
        return view.reshape(stored.shape)

    @property
    def closed(self) -> bool:
        return self._map is None

    def close(self) -> None:
        """Drop the mapping (unmapped once no tensor view is left) and close the file."""
        self._map = None
        self._raw.close()

    def __enter__(self) -> _NestReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_level(self, k: int) -> int:
        """``k`` if it names a descendant of this file, else a NestError saying which exist."""
        n = self.manifest.num_descendants
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise NestError(f"{self.path} has descendants 0..{n - 1}; there is no descendant {k}")
        return k

    def state(
        self, level: int, base: Mapping[str, Tensor] | None = None, base_level: int = -1
    ) -> dict[str, Tensor]:
        """Descendant ``level``'s dense state: ``base`` (of ``base_level``) grown by new blocks.

        Only blocks of levels ``base_level + 1 .. level`` and the ``@level`` tensors are read.
        """
        layout = self.layout
        state: dict[str, Tensor] = {}
        for key in layout.nested:
            tensor = torch.empty(layout.shapes[level][key], dtype=layout.dtypes[key])
            if base is not None:
                old = base[key]
                tensor[: old.shape[0], : old.shape[1]] = old
            for j in range(base_level + 1, level + 1):
                for block in layout.blocks(key, j):
                    tensor[block.index] = self.get_tensor(block.name)
            state[key] = tensor
        state.update(self.own_tensors(level))
        return state

    def own_tensors(self, level: int) -> dict[str, Tensor]:
        """Descendant ``level``'s per-descendant tensors: views of one owned copy per dtype."""
        tensors: dict[str, Tensor] = {}
        for packed in self.layout.packed[level]:
            tensors.update(packed.unpack(self.get_tensor(packed.name).clone()))
        return tensors

    def template(self, level: int) -> _Template:
        """Descendant ``level``'s module template (its meta-device model, built once)."""
        if level not in self._templates:
            self._templates[level] = _Template(_skeleton(self.manifest.config(level)))
        return self._templates[level]

    def module(self, level: int, state: Mapping[str, Tensor]) -> NestNet:
        """A dense eval-mode model of descendant ``level`` whose tensors are ``state``'s."""
        module: NestNet = self.template(level).fill(state)
        return module


@dataclass(frozen=True)
class _Stored:
    """One tensor as the file's header describes it: dtype, shape, byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _open_mapped(path: Path) -> tuple[BinaryIO, mmap.mmap, dict[str, str], dict[str, _Stored]]:
    """Open and map the file once safetensors has validated its header and size.

    ``safe_open`` checks the header (JSON, dtypes, shapes against byte ranges, ranges
    contiguous and covering the file exactly: a truncated file fails here). Tensor data is
    then read through our own mapping of the same file, because ``safe_open.get_tensor``
    costs ~0.2 ms per call, which dominated switches (a VGG-16 descendant has ~80 small
    per-descendant tensors).
    """
    if not path.is_file():
        raise NestError(f"{path}: no such .nest file")
    raw = open(path, "rb")  # noqa: SIM115 (kept open by the reader, closed in close())
    try:
        safe_open(str(path), framework="pt")
        if not os.path.samestat(os.fstat(raw.fileno()), os.stat(path)):
            raise NestError(f"{path} was replaced while being opened; try again")
        mapping = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_COPY)
        metadata, stored = _read_header(mapping)
    except (SafetensorError, OSError, ValueError) as e:
        raw.close()
        raise NestError(f"{path}: file is truncated or not a safetensors file ({e})") from e
    except BaseException:
        raw.close()
        raise
    return raw, mapping, metadata, stored


def _read_header(mapping: mmap.mmap) -> tuple[dict[str, str], dict[str, _Stored]]:
    """The metadata and tensor table of a safetensors header (already validated)."""
    size = int.from_bytes(mapping[:8], "little")
    header = json.loads(mapping[8 : 8 + size])
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + size
    stored = {
        name: _Stored(
            entry["dtype"],
            tuple(entry["shape"]),
            base + entry["data_offsets"][0],
            base + entry["data_offsets"][1],
        )
        for name, entry in header.items()
    }
    return metadata, stored


def _parse_manifest(metadata: Mapping[str, str] | None) -> Manifest:
    """The manifest from the safetensors metadata: JSON, then version, then schema."""
    if not metadata or MANIFEST_KEY not in metadata:
        raise NestError(f"no '{MANIFEST_KEY}' manifest in the file's metadata (not a .nest file)")
    try:
        raw = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise NestError(f"manifest is not valid JSON ({e.msg} at character {e.pos})") from e
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


def _check_tensors(stored: Mapping[str, _Stored], layout: _Layout) -> None:
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
        wanted = SAFETENSORS_DTYPES.get(dtype, str(dtype))
        if found_dtype != wanted:
            raise NestError(f"tensor '{name}' has dtype {found_dtype}, expected {wanted}")


def _instantiate(skeleton: M, state: Mapping[str, Tensor]) -> M:
    """A copy of a meta-device module tree whose parameters and buffers are ``state``'s."""
    return _Template(skeleton).fill(state)


_TREE_ATTRS = frozenset({"_parameters", "_buffers", "_modules"})


@dataclass(frozen=True)
class _Node:
    """One module of a template: its class, attributes and where its tensors come from."""

    cls: type[nn.Module]
    attrs: dict[str, Any]  # shared, immutable-in-practice values (sizes, flags, config)
    containers: tuple[tuple[str, dict[Any, Any] | set[Any]], ...]  # copied per instance
    params: tuple[tuple[str, str | None, bool], ...]  # name, state key (None: unset), grad
    buffers: tuple[tuple[str, str | None], ...]
    children: tuple[tuple[str, int | None], ...]  # name, index of the child's node


class _Template:
    """A meta-device module tree flattened once, so that each copy costs little to make.

    ``fill`` makes a new module tree of the skeleton's classes and attributes whose
    parameters and buffers are a state's tensors: no initialisation, no meta dispatch, no
    recursion. Containers (hook dicts, name sets) are copied, so a copy never shares mutable
    state with the skeleton or with another copy.
    """

    def __init__(self, skeleton: nn.Module) -> None:
        self._nodes: list[_Node] = []
        self._add(skeleton, "")

    def _add(self, module: nn.Module, prefix: str) -> int:
        """Add ``module``'s subtree, children first; return the index of its node."""
        children = tuple(
            (name, None if child is None else self._add(child, f"{prefix}{name}."))
            for name, child in module._modules.items()
        )
        attrs = {k: v for k, v in vars(module).items() if k not in _TREE_ATTRS}
        self._nodes.append(
            _Node(
                cls=type(module),
                attrs={k: v for k, v in attrs.items() if not isinstance(v, dict | set)},
                containers=tuple((k, v) for k, v in attrs.items() if isinstance(v, dict | set)),
                params=tuple(
                    (name, None if p is None else prefix + name, p is None or p.requires_grad)
                    for name, p in module._parameters.items()
                ),
                buffers=tuple(
                    (name, None if b is None else prefix + name)
                    for name, b in module._buffers.items()
                ),
                children=children,
            )
        )
        return len(self._nodes) - 1

    def fill(self, state: Mapping[str, Tensor]) -> Any:
        """A new module tree whose parameters and buffers are ``state``'s tensors."""
        modules: list[nn.Module] = []
        for node in self._nodes:
            module = object.__new__(node.cls)
            attrs = vars(module)
            attrs.update(node.attrs)
            for name, container in node.containers:
                attrs[name] = container.copy()
            # most modules hold no tensors or no children: skip the comprehensions for those
            attrs["_parameters"] = (
                {
                    name: None if key is None else nn.Parameter(state[key], grad)
                    for name, key, grad in node.params
                }
                if node.params
                else {}
            )
            attrs["_buffers"] = (
                {name: None if key is None else state[key] for name, key in node.buffers}
                if node.buffers
                else {}
            )
            attrs["_modules"] = (
                {name: None if i is None else modules[i] for name, i in node.children}
                if node.children
                else {}
            )
            modules.append(module)
        return modules[-1]


# ------------------------------------------------------------------------- public reading


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a `.nest` file, after validating the whole file."""
    with _NestReader(path) as reader:
        return reader.manifest


def load_descendant(path: str | Path, k: int) -> NestNet:
    """Dense eval-mode model of descendant ``k``, reading only blocks of levels <= k and @k."""
    with _NestReader(path) as reader:
        level = reader.check_level(k)
        return reader.module(level, reader.state(level))


@dataclass(frozen=True)
class _Resident:
    """The current descendant: its level, its module and the tensors the module uses."""

    level: int
    module: NestNet
    state: Mapping[str, Tensor]


class NestedModel:
    """A resident descendant of a `.nest` file that upgrades and downgrades in place.

    ``module`` is always a plain dense model of the current descendant. Switches are
    serialised by a lock; readers never need it: they take ``module`` (or ``level``) and
    keep using that object, which a switch never modifies. The file stays open (mapped)
    until ``close``; upgrades read only the levels they add, downgrades only ``@k``.
    """

    def __init__(self, reader: _NestReader, level: int) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        level = reader.check_level(level)
        for k in range(reader.manifest.num_descendants):
            reader.template(k)  # built now, so that no switch pays for a model build
        self._resident = self._build(level, reader.state(level))

    @classmethod
    def open(cls, path: str | Path, k: int) -> NestedModel:
        """Open ``path`` (validating it) and load descendant ``k``."""
        reader = _NestReader(path)
        try:
            return cls(reader, k)
        except BaseException:
            reader.close()
            raise

    @property
    def level(self) -> int:
        return self._resident.level

    @property
    def module(self) -> NestNet:
        return self._resident.module

    @property
    def manifest(self) -> Manifest:
        return self._reader.manifest

    @property
    def path(self) -> Path:
        return self._reader.path

    @property
    def resident_bytes(self) -> int:
        """Bytes of tensor storage the current module holds (each storage counted once)."""
        return _storage_bytes(self._resident.module)

    def switch_peak_bytes(self, k: int) -> int:
        """Bytes held while switching to ``k``: the current and the target descendant."""
        infos = self.manifest.descendants
        return infos[self.level].bytes + infos[self._reader.check_level(k)].bytes

    def upgrade(self, k: int) -> None:
        """Grow to the larger descendant ``k``, reading only the blocks of levels above ours."""
        with self._lock:
            if self._target(k) <= self.level:
                raise NestError(f"cannot upgrade from descendant {self.level} to {k}")
            self._grow(k)

    def downgrade(self, k: int) -> None:
        """Shrink to the smaller descendant ``k``: slice the nested tensors, free the rest."""
        with self._lock:
            if self._target(k) >= self.level:
                raise NestError(f"cannot downgrade from descendant {self.level} to {k}")
            self._shrink(k)

    def switch(self, k: int) -> None:
        """Upgrade or downgrade to descendant ``k`` (nothing to do if already there)."""
        with self._lock:
            if self._target(k) > self.level:
                self._grow(k)
            elif k < self.level:
                self._shrink(k)

    def close(self) -> None:
        """Release the file; the current module stays usable, switching no longer is."""
        with self._lock:
            self._reader.close()

    def __enter__(self) -> NestedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _target(self, k: int) -> int:
        if self._reader.closed:
            raise NestError(f"{self.path} is closed; reopen it to switch descendants")
        return self._reader.check_level(k)

    def _grow(self, k: int) -> None:
        current = self._resident
        self._resident = self._build(k, self._reader.state(k, current.state, current.level))

    def _shrink(self, k: int) -> None:
        """Contiguous copies of the prefixes (views would keep the larger storage alive)."""
        shapes, current = self._reader.layout.shapes[k], self._resident.state
        state = {
            key: current[key][: shapes[key][0], : shapes[key][1]].clone(
                memory_format=torch.contiguous_format
            )
            for key in self._reader.layout.nested
        }
        state.update(self._reader.own_tensors(k))
        self._resident = self._build(k, state)

    def _build(self, level: int, state: dict[str, Tensor]) -> _Resident:
        """The new descendant, complete before the caller publishes it in one assignment."""
        resident = _Resident(level, self._reader.module(level, state), state)
        log.debug("%s: descendant %d resident", self._reader.path, level)
        return resident


def _storage_bytes(module: nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in module.state_dict().values()
    }
    return sum(storages.values())
