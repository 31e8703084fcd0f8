"""The profile file: a versioned pydantic schema of what was measured for every descendant.

A profile is JSON (``MODEL.profile.json``) describing one ``.nest`` file on one device: for
every descendant its widths, parameter count, resident weight bytes, MACs, test accuracy,
and per backend (``torch``, ``tflite``) the batch-1 latency and the peak resident memory of
loading and running it. The scheduler consumes nothing else, so a profile that loads is
guaranteed consistent: latencies positive with p90 >= median, descendants indexed 0..K-1
with strictly increasing params, bytes and MACs, and the same backends measured for each.

Memory (``MemoryStats``) is measured in a fresh subprocess per (descendant, backend): after
the runtime is imported and warmed up, the process's peak-RSS counter is reset (Linux
``/proc/self/clear_refs``, value 5) and ``VmRSS`` read as the baseline; the descendant is
then loaded and run; ``VmHWM`` read afterwards is the peak. ``peak - baseline`` is the most
extra resident memory that loading and running that descendant needed (weights, activations,
transient copies while loading), free of the import-time peak and of other descendants.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nestdnn.errors import NestError, validation_message
from nestdnn.files import atomic_write

SCHEMA_VERSION = 1
Backend = Literal["onnxruntime", "torch", "tflite"]
BACKENDS: tuple[Backend, ...] = ("onnxruntime", "torch", "tflite")
DEFAULT_BACKEND: Backend = "onnxruntime"
"""The daemon's default: the fastest measured here, and it needs no torch (docs/runtime.md)."""
MemoryKind = Literal["weights", "resident", "peak_rss"]

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelId(BaseModel):
    """Which ``.nest`` file was profiled: its name and the sha256 of its content."""

    model_config = _STRICT

    file: str = Field(min_length=1, description="File name of the .nest (no directory).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file's bytes.")
    arch: str = Field(min_length=1, description="Architecture from the .nest manifest.")


class Device(BaseModel):
    """The machine and software the figures were measured with."""

    model_config = _STRICT

    cpu_model: str = Field(description="'model name' from /proc/cpuinfo.")
    cores: int = Field(ge=1, description="Logical CPUs of the machine.")
    threads: int = Field(ge=1, description="Inference threads used for every backend.")
    os: str
    python: str
    torch: str
    numpy: str
    tflite_runtime: str | None = Field(description="TFLite runtime package and version.")
    onnxruntime: str | None = Field(default=None, description="onnxruntime version.")


class DatasetInfo(BaseModel):
    """The data set whose test split gave the accuracies (measured with the torch backend)."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    test_size: int = Field(ge=1, description="Images in the test split.")


class LatencyStats(BaseModel):
    """Batch-1 latency: median and p90 (medians over rounds of per-round figures), in s."""

    model_config = _STRICT

    median_s: float = Field(gt=0.0)
    p90_s: float = Field(gt=0.0)
    runs: int = Field(ge=1, description="Timed runs in total.")
    rounds: int = Field(ge=1, description="Rounds the timed runs were split into.")
    threads: int = Field(ge=1)
    warmup: int = Field(ge=0, description="Untimed runs before the first round.")

    @model_validator(mode="after")
    def _p90_not_below_median(self) -> LatencyStats:
        if self.p90_s < self.median_s:
            raise ValueError(f"p90_s ({self.p90_s}) is below median_s ({self.median_s})")
        if self.rounds > self.runs:
            raise ValueError(f"rounds ({self.rounds}) exceeds runs ({self.runs})")
        return self


class MemoryStats(BaseModel):
    """Resident memory of loading and running one descendant in a fresh process (bytes)."""

    model_config = _STRICT

    baseline_rss_bytes: int = Field(ge=1, description="VmRSS with the runtime loaded, warm.")
    peak_rss_bytes: int = Field(ge=1, description="VmHWM after loading and running.")
    runs: int = Field(ge=1, description="Inferences run before reading the peak.")
    resident_bytes: int | None = Field(
        default=None, ge=0,
        description="VmRSS growth that stays while the loaded descendant is kept (after the"
        " runs and a garbage collection): what holding it costs. Null in older profiles.")

    @model_validator(mode="after")
    def _peak_not_below_baseline(self) -> MemoryStats:
        if self.peak_rss_bytes < self.baseline_rss_bytes:
            raise ValueError(
                f"peak_rss_bytes ({self.peak_rss_bytes}) is below"
                f" baseline_rss_bytes ({self.baseline_rss_bytes})"
            )
        return self

    @property
    def delta_bytes(self) -> int:
        """Extra resident memory that loading and running the descendant needed."""
        return self.peak_rss_bytes - self.baseline_rss_bytes


class BackendProfile(BaseModel):
    """One descendant on one backend: latency and memory."""

    model_config = _STRICT

    latency: LatencyStats
    memory: MemoryStats


class DescendantProfile(BaseModel):
    """Everything measured for descendant ``index``."""

    model_config = _STRICT

    index: int = Field(ge=0)
    widths: dict[str, int] = Field(min_length=1, description="Channels per group.")
    widths_total: int = Field(ge=1, description="Sum of the widths.")
    params: int = Field(ge=1)
    bytes: int = Field(ge=1, description="Resident weight bytes of this descendant (fp32).")
    macs: int = Field(ge=1, description="Multiply-accumulates of one batch-1 forward pass.")
    accuracy: float = Field(ge=0.0, le=1.0, description="Top-1 accuracy on the test split.")
    backends: dict[Backend, BackendProfile] = Field(min_length=1)

    @field_validator("widths")
    @classmethod
    def _widths_positive(cls, widths: dict[str, int]) -> dict[str, int]:
        bad = [g for g, w in widths.items() if w < 1]
        if bad:
            raise ValueError(f"group {bad[0]!r} has width {widths[bad[0]]}; widths must be >= 1")
        return widths

    @model_validator(mode="after")
    def _total_is_sum(self) -> DescendantProfile:
        if self.widths_total != sum(self.widths.values()):
            raise ValueError(
                f"widths_total ({self.widths_total}) is not the sum of widths"
                f" ({sum(self.widths.values())})"
            )
        return self


class Conditions(BaseModel):
    """How busy the machine was while one backend's latencies were measured."""

    model_config = _STRICT

    started: datetime
    duration_s: float = Field(ge=0.0)
    cpu_pressure: float | None = Field(
        ge=0.0,
        le=1.0,
        description="Share of the time some task waited for a CPU (Linux PSI 'some'); null"
        " where PSI is unavailable. Above ~0.05 other processes competed for the cores.",
    )
    load_average: float = Field(ge=0.0, description="1-minute load average at the end.")
    reference: LatencyStats | None = Field(
        default=None,
        description="Latency of the fixed reference kernel (profiles.torch_backend."
        "reference_runner), timed in the same rounds as this backend's descendants: how fast"
        " the machine was meanwhile. Latencies divided by its median compare across runs."
        " Null in profiles written before it was measured.",
    )


class Profile(BaseModel):
    """A ``.nest`` file's profile on one device (schema version ``SCHEMA_VERSION``)."""

    model_config = _STRICT

    schema_version: Literal[1]
    model: ModelId
    device: Device
    created: datetime
    dataset: DatasetInfo
    backends: list[Backend] = Field(min_length=1, description="Backends measured.")
    conditions: dict[Backend, Conditions]
    num_descendants: int = Field(ge=1)
    descendants: list[DescendantProfile] = Field(min_length=1)

    @field_validator("backends")
    @classmethod
    def _backends_unique(cls, backends: list[Backend]) -> list[Backend]:
        if len(set(backends)) != len(backends):
            raise ValueError(f"backends must not repeat, got {backends}")
        return backends

    @field_validator("conditions")
    @classmethod
    def _conditions_per_backend(
        cls, conditions: dict[Backend, Conditions], info: ValidationInfo
    ) -> dict[Backend, Conditions]:
        backends = info.data.get("backends")
        if backends is not None and set(conditions) != set(backends):
            raise ValueError(f"has {sorted(conditions)}, expected one entry per backend {backends}")
        return conditions

    @field_validator("descendants")
    @classmethod
    def _descendants_consistent(
        cls, descendants: list[DescendantProfile], info: ValidationInfo
    ) -> list[DescendantProfile]:
        count = info.data.get("num_descendants")
        if count is not None and len(descendants) != count:
            raise ValueError(f"lists {len(descendants)} descendants, num_descendants is {count}")
        for position, d in enumerate(descendants):
            if d.index != position:
                raise ValueError(f"entry {position} has index {d.index}; expected 0..K-1 in order")
        backends = info.data.get("backends")
        for d in descendants:
            if backends is not None and set(d.backends) != set(backends):
                raise ValueError(
                    f"descendant {d.index} has backends {sorted(d.backends)},"
                    f" the profile measured {backends}"
                )
        for name in ("params", "bytes", "macs"):
            _check_strictly_increasing(descendants, name)
        return descendants

    def backend(self, backend: Backend) -> list[BackendProfile]:
        """Every descendant's figures on ``backend`` (smallest descendant first)."""
        if backend not in self.backends:
            raise NestError(
                f"profile of {self.model.file} has no {backend!r} figures"
                f" (measured: {', '.join(self.backends)})"
            )
        return [d.backends[backend] for d in self.descendants]


def _check_strictly_increasing(descendants: Sequence[DescendantProfile], name: str) -> None:
    values = [getattr(d, name) for d in descendants]
    for k in range(1, len(values)):
        if values[k] <= values[k - 1]:
            raise ValueError(
                f"{name} must strictly increase across descendants:"
                f" descendant {k} has {values[k]}, descendant {k - 1} has {values[k - 1]}"
            )


class DescendantCost(NamedTuple):
    """What the scheduler needs of one descendant: A(d), M(d) and L(d)."""

    accuracy: float
    memory_bytes: int
    latency_s: float


def descendant_table(
    profile: Profile, backend: Backend, memory: MemoryKind = "weights"
) -> list[DescendantCost]:
    """Per descendant (smallest first): accuracy, memory in bytes and median batch-1 latency.

    ``memory="weights"`` gives the descendant's fp32 weight bytes; ``memory="resident"`` the
    resident memory measured for holding it loaded on ``backend`` (what a model manager
    accounts; the weight bytes where a profile predates that measurement);
    ``memory="peak_rss"`` the measured extra peak RSS of loading and running it. Latency is
    the median on ``backend`` with the profile's thread count. Feed the columns to the
    scheduler, e.g.
    ``App.from_columns(name, *zip(*descendant_table(p, "torch")), target_latency_s=...)``.
    """
    figures = profile.backend(backend)
    return [
        DescendantCost(
            accuracy=d.accuracy,
            memory_bytes=_memory_bytes(d, f, memory),
            latency_s=f.latency.median_s,
        )
        for d, f in zip(profile.descendants, figures, strict=True)
    ]


def _memory_bytes(d: DescendantProfile, figures: BackendProfile, kind: MemoryKind) -> int:
    if kind == "peak_rss":
        return figures.memory.delta_bytes
    if kind == "resident" and figures.memory.resident_bytes is not None:
        return figures.memory.resident_bytes
    return d.bytes


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; any problem raises a one-line NestError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NestError(f"cannot read profile {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NestError(f"{path} is not JSON: {e}") from e
    except RecursionError:
        raise NestError(f"{path} is not a profile: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise NestError(f"{path} is not a profile: expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise NestError(
            f"{path}: schema_version: expected {SCHEMA_VERSION}, found {version!r}"
            + (" (not a nestdnn profile?)" if version is None else "")
        )
    try:
        return Profile.model_validate_json(text)
    except ValidationError as e:
        raise NestError(f"invalid profile {path}: {validation_message(e)}") from e


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write the profile as indented JSON atomically (temporary file, then rename)."""
    text = profile.model_dump_json(indent=2) + "\n"
    return atomic_write(path, text)
