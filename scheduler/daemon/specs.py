"""Value types of the daemon runtime's Python API (re-exported by `scheduler.daemon.runtime`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nestdnn.errors import NestError
from profiles.schema import BACKENDS, DEFAULT_BACKEND, Backend
from scheduler.daemon.executor import Overflow
from scheduler.problem import METHODS, POLICIES, Method, Policy

OVERFLOWS: tuple[Overflow, ...] = ("drop-oldest", "refuse")


TARGET_LATENCY_S_RANGE = (1e-4, 3600.0)
"""An app's latency target: 0.1 ms to one hour (beyond, the cost model's ratios overflow)."""
FPS_RANGE = (1e-3, 1e4)
"""An app's frame rate: one frame per 1000 s to 10,000 frames per second."""
PRIORITY_RANGE = (1e-3, 1e3)
"""An app's priority, its weight in the schedule's cost."""


def _within(name: str, value: float | None, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise NestError(f"{name} must lie in [{low:g}, {high:g}], got {value}")


@dataclass(frozen=True)
class AppSpec:
    """What an app asks for: a model, a latency and/or frame-rate target, a priority."""

    model: str
    target_latency_s: float | None = None
    fps: float | None = None
    priority: float = 1.0
    min_accuracy: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.target_latency_s is None and self.fps is None:
            raise NestError("an app needs target_latency_s or fps (or both)")
        _within("target_latency_s", self.target_latency_s, TARGET_LATENCY_S_RANGE)
        _within("fps", self.fps, FPS_RANGE)
        _within("priority", self.priority, PRIORITY_RANGE)
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise NestError(f"min_accuracy must lie in [0, 1], got {self.min_accuracy}")

    @property
    def latency_target_s(self) -> float:
        """The scheduler's T: the latency target, or one frame interval when only fps is set."""
        if self.target_latency_s is not None:
            return self.target_latency_s
        assert self.fps is not None  # __post_init__ guarantees one of the two
        return 1.0 / self.fps


def restored_spec(model: str, target_latency_s: float | None, fps: float | None,
                  priority: float, min_accuracy: float | None,
                  name: str | None = None) -> tuple[AppSpec, list[str]]:
    """The spec of a persisted app, each value brought within today's bounds (a state file
    written by an older daemon may hold values its bounds allowed, or NaN): out-of-range
    values are clamped to the nearest bound, NaN targets dropped, a NaN priority is the
    default 1, and an app left with no target gets the loosest latency target. The list says
    what changed (empty: the spec as persisted)."""
    fixes: list[str] = []
    target = _clamped("target_latency_s", target_latency_s, TARGET_LATENCY_S_RANGE, None, fixes)
    rate = _clamped("fps", fps, FPS_RANGE, None, fixes)
    weight = _clamped("priority", priority, PRIORITY_RANGE, 1.0, fixes)
    floor = _clamped("min_accuracy", min_accuracy, (0.0, 1.0), None, fixes)
    if target is None and rate is None:
        target = TARGET_LATENCY_S_RANGE[1]
        fixes.append(f"no usable target -> target_latency_s {target:g}")
    assert weight is not None  # a NaN priority is the default
    spec = AppSpec(model=model, target_latency_s=target, fps=rate, priority=weight,
                   min_accuracy=floor, name=name)
    return spec, fixes


def _clamped(name: str, value: float | None, bounds: tuple[float, float],
             nan: float | None, fixes: list[str]) -> float | None:
    """``value`` within ``bounds`` (NaN: ``nan``), noting any change in ``fixes``."""
    if value is None:
        return None
    low, high = bounds
    new = nan if math.isnan(value) else min(max(value, low), high)
    if new != value:
        fixes.append(f"{name} {value:g} -> {'none' if new is None else f'{new:g}'}")
    return new


AppState = Literal["serving", "waiting", "unavailable"]
"""Serving: the plan in force gives the app a descendant. Waiting: the plan has no room for
it. Unavailable: its model is missing or broken. Waiting and unavailable apps stay
registered (their tokens work) and are planned in again when they can be."""


@dataclass(frozen=True)
class AppInfo:
    """An app as registered or updated, with its part of the applied plan."""

    id: str
    name: str
    model: str
    descendant: int | None
    share: float
    accuracy: float | None
    target_latency_s: float | None
    fps: float | None
    priority: float
    state: AppState = "serving"
    problem: str | None = None


@dataclass(frozen=True)
class AppStatus:
    """An app's part of the plan and its measured figures."""

    id: str
    name: str
    model: str
    descendant: int | None
    share: float
    accuracy: float | None
    resident_bytes: int
    fps_measured: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    frames: int
    drops: int
    switches: int
    priority: float
    target_latency_s: float | None
    fps: float | None
    loads: int
    busy_s: float
    latency_assumed_s: float | None = None
    """The latency of its descendant the plan assumed (profile x the machine's speed now)."""
    latency_measured_s: float | None = None
    """Its resident's measured compute time of one frame (median of the last ones), if any."""
    state: AppState = "serving"
    problem: str | None = None
    """Why the app is waiting or unavailable."""
    failures: int = 0
    """Frames that failed (e.g. the model computed NaN or infinity): never served."""
    switch_bytes: int = 0
    """Bytes loaded from storage to switch its descendant (a warm rung moves none)."""


@dataclass(frozen=True)
class Snapshot:
    """Policy, budget, accounted bytes, the plan's objective and every app's status."""

    policy: Policy
    method: Method
    alpha: float
    memory_budget_bytes: int
    accounted_bytes: int
    objective: float | None
    feasible: bool
    apps: list[AppStatus]
    swapping: bool = False
    idle_bytes: int = 0
    """Of the accounted bytes, those of warm rungs: descendants no app runs on, kept while
    there is room (evicted first)."""
    latency_scale: dict[str, float] = field(default_factory=dict)
    """Per model, the factor the plan applies to the profile's latencies (today's speed)."""


@dataclass(frozen=True)
class RuntimeSettings:
    """How the runtime schedules and runs; policy, alpha and budget can change at run time."""

    memory_budget_bytes: int
    policy: Policy = "min-total-cost"
    method: Method = "exact"
    alpha: float = 1.0
    backend: Backend = DEFAULT_BACKEND
    state_dir: Path | None = None
    queue_size: int = 4
    threads: int = 1
    switch_tolerance: float = 0.01
    drift_threshold: float = 0.2
    """Re-plan when a resident's measured frame time strays this far (relative) from the
    latency the plan assumed."""
    overflow: Overflow = "drop-oldest"
    share_step: float = 0.01
    batching: bool = True
    """Frames queued for one resident descendant may run as one batch (when that pays)."""
    sharing: bool = True
    """Apps on the same descendant of a model share one loaded copy (off: one copy per app,
    as apps that each load their own model would hold; for comparisons)."""
    app_slots: int | None = None
    """The apps the ``independent`` baseline divides the memory budget among (None: the
    registered apps): each takes the best descendant within its part."""

    def __post_init__(self) -> None:
        check_policy(self.policy, self.method, self.alpha, self.memory_budget_bytes)
        if self.backend not in BACKENDS:
            raise NestError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.overflow not in OVERFLOWS:
            raise NestError(f"overflow must be one of {', '.join(OVERFLOWS)}")
        if self.queue_size < 1 or self.threads < 1:
            raise NestError("queue_size and threads must be at least 1")
        if self.switch_tolerance < 0:
            raise NestError("switch_tolerance must be >= 0")
        if not (math.isfinite(self.drift_threshold) and self.drift_threshold > 0):
            raise NestError(f"drift_threshold must be > 0, got {self.drift_threshold}")


def check_policy(policy: str, method: str, alpha: float, memory_budget_bytes: int) -> None:
    """Refuse an unknown policy or method, a negative alpha or a non-positive budget."""
    if policy not in POLICIES:
        raise NestError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if method not in METHODS:
        raise NestError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise NestError(f"alpha must be a number >= 0, got {alpha}")
    if memory_budget_bytes <= 0:
        raise NestError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
