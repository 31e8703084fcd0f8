"""Pydantic request and response bodies of the REST API (no logic beyond field checks)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.daemon.specs import FPS_RANGE, PRIORITY_RANGE, TARGET_LATENCY_S_RANGE, AppState
from scheduler.problem import Method, Policy

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TARGET_LATENCY_MS = {"ge": TARGET_LATENCY_S_RANGE[0] * 1000, "le": TARGET_LATENCY_S_RANGE[1] * 1000}
FPS = {"ge": FPS_RANGE[0], "le": FPS_RANGE[1]}
PRIORITY = {"ge": PRIORITY_RANGE[0], "le": PRIORITY_RANGE[1]}


class _Strict(BaseModel):
    """Request bodies reject unknown fields (a typo is an error, not a silent no-op) and NaN
    or infinite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AppCreate(_Strict):
    """Register an app: which model, its targets and its weight in the schedule."""

    model: str = Field(min_length=1, max_length=128, description="Model name from /v1/models.")
    target_latency_ms: float | None = Field(
        default=None, **TARGET_LATENCY_MS, description="Latency target per frame (ms)."
    )
    fps: float | None = Field(default=None, **FPS, description="Input frame rate.")
    priority: float = Field(
        default=1.0,
        **PRIORITY,
        description="Weight in the cost. Without a token (--registration open) at most the "
        "daemon's priority cap (default 1).",
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Lowest acceptable descendant accuracy."
    )
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Display name.")

    @model_validator(mode="after")
    def _has_target(self) -> AppCreate:
        if self.target_latency_ms is None and self.fps is None:
            raise ValueError("give target_latency_ms or fps (or both)")
        return self


class AppUpdate(_Strict):
    """Change an app's priority or targets; omitted fields keep their value."""

    priority: float | None = Field(default=None, **PRIORITY)
    target_latency_ms: float | None = Field(default=None, **TARGET_LATENCY_MS)
    fps: float | None = Field(default=None, **FPS)

    @model_validator(mode="after")
    def _not_empty(self) -> AppUpdate:
        if self.priority is None and self.target_latency_ms is None and self.fps is None:
            raise ValueError("give at least one of priority, target_latency_ms, fps")
        return self


class AppOut(BaseModel):
    """An app as the scheduler currently sees it."""

    id: str
    name: str | None
    model: str
    descendant: int | None = Field(
        description="Index of the assigned descendant (0 = smallest); null unless serving."
    )
    share: float = Field(description="Fraction of the processor assigned to the app.")
    accuracy: float | None = Field(
        description="Profiled accuracy of the assigned descendant; null unless serving."
    )
    priority: float
    target_latency_ms: float | None
    fps: float | None
    state: AppState = Field(
        description="serving: the plan gives it a descendant; waiting: no room for it in the "
        "memory budget now; unavailable: its model is missing or broken. Waiting and "
        "unavailable apps stay registered (their tokens work; infer answers 503) and serve "
        "again when they fit, or once the model is fixed and reloaded."
    )
    problem: str | None = Field(description="Why the app is waiting or unavailable.")


class AppStatusOut(AppOut):
    """An app with its live counters."""

    resident_bytes: int
    loads: int = Field(description="Times the app's weights were loaded (swaps included).")
    busy_s: float = Field(description="Processor time spent on the app's frames.")
    fps_measured: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    frames: int
    drops: int
    switches: int
    failures: int = Field(
        description="Frames that failed (the model computed NaN or infinity; answered 502)."
    )
    latency_assumed_ms: float | None = Field(
        description="Compute time of one frame on its descendant that the plan assumed (the "
        "profile's, scaled to the machine's speed now)."
    )
    latency_measured_ms: float | None = Field(
        description="Measured compute time of one frame on its resident descendant (median of "
        "the latest frames run alone), if any."
    )


class AppCreated(AppOut):
    """The answer to a registration: the app and the bearer token that acts on it."""

    token: str = Field(description="Bearer token for this app; shown once, store it.")


class TopK(BaseModel):
    """One class and its probability."""

    label: int
    class_name: str
    score: float


class InferJSON(_Strict):
    """A frame as JSON nested lists: (C, H, W), (H, W, C) or (H, W) numbers."""

    frame: list = Field(description="Nested lists of numbers; see docs/api.md for layouts.")


class InferOut(BaseModel):
    """The prediction for one frame and where the time went."""

    label: int
    class_name: str
    top_k: list[TopK]
    descendant: int
    queue_ms: float
    compute_ms: float
    total_ms: float = Field(description="Time from the request's arrival to its answer.")


class ScheduleOut(BaseModel):
    """The policy, the budget and the plan currently applied."""

    policy: str
    method: str
    alpha: float
    memory_budget_bytes: int
    accounted_bytes: int = Field(description="Model bytes the ledger holds (all residents).")
    idle_bytes: int = Field(
        description="Of the accounted bytes, those of warm rungs: descendants no app runs on, "
        "kept while there is room (evicted first)."
    )
    process_resident_bytes: int | None = Field(
        description="The daemon process's resident memory (RSS) now, to set beside the "
        "accounted bytes; null where the system does not report it."
    )
    latency_scale: dict[str, float] = Field(
        description="Per model, the factor the plan applies to the profile's latencies (the "
        "machine's speed now against the profile's)."
    )
    objective: float | None
    feasible: bool
    swapping: bool = Field(description="Models are swapped in and out (baseline over budget).")
    apps: list[AppStatusOut]


class ScheduleUpdate(_Strict):
    """Change policy, solver method, alpha or memory budget (admin); omitted fields are kept."""

    policy: Policy | None = None
    method: Method | None = None
    alpha: float | None = Field(default=None, ge=0, le=1e6)
    memory_budget_bytes: int | None = Field(default=None, gt=0, le=1 << 50)

    @model_validator(mode="after")
    def _not_empty(self) -> ScheduleUpdate:
        if not self.model_dump(exclude_none=True):
            raise ValueError("give at least one of policy, method, alpha, memory_budget_bytes")
        return self


class DescendantOut(BaseModel):
    """One row of a model's descendant table, from its profile."""

    index: int
    widths: dict[str, int]
    params: int
    bytes: int = Field(description="Resident weight bytes (fp32).")
    macs: int
    accuracy: float = Field(description="Top-1 accuracy on the test split.")
    latency_ms: dict[str, float] = Field(description="Median batch-1 latency per backend.")
    latency_p90_ms: dict[str, float] = Field(description="p90 batch-1 latency per backend.")


class ModelSummary(BaseModel):
    """A servable model."""

    name: str
    input_shape: list[int] = Field(description="(C, H, W) the model takes.")
    num_classes: int
    descendants: int
    dataset: str | None


class ModelDetail(ModelSummary):
    """A servable model with its class names, normalisation and descendant table."""

    class_names: list[str]
    mean: list[float]
    std: list[float]
    profiled_on: str = Field(description="CPU model and threads the latencies were measured on.")
    backends: list[str]
    table: list[DescendantOut]


class RejectedModel(BaseModel):
    """A file in the models directory that could not be served, and why."""

    name: str
    reason: str


class ModelList(BaseModel):
    """The servable models and the rejected files."""

    models: list[ModelSummary]
    rejected: list[RejectedModel]


class ReloadOut(BaseModel):
    """What a reload of the models directory changed, and the plan after it."""

    added: list[str] = Field(description="Models served now that were not before.")
    changed: list[str] = Field(description="Models whose file changed: their apps reloaded.")
    removed: list[str] = Field(
        description="Models no longer served (file gone or broken): their apps are unavailable."
    )
    rejected: list[RejectedModel] = Field(description="Files not served now, and why.")
    schedule: ScheduleOut


class Health(BaseModel):
    """Liveness and a few counts."""

    status: str
    apps: int
    models: int
    uptime_s: float


class Problem(BaseModel):
    """An error answer: RFC 9457 problem details (application/problem+json)."""

    type: str = Field(
        description="urn:nestdnn:problem:KIND (see docs/api.md), or about:blank when the "
        "status says it all."
    )
    title: str = Field(description="The kind of problem (the status phrase for about:blank).")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What is wrong with this request, in one sentence.")


class FieldError(BaseModel):
    """One invalid field or parameter (the value sent is never echoed)."""

    loc: list[str | int] = Field(description='Where: e.g. ["body", "priority"].')
    msg: str
    type: str


class ValidationProblem(Problem):
    """A field, parameter or frame is invalid; `errors` lists invalid fields and parameters."""

    errors: list[FieldError] = Field(default_factory=list)


class InfeasibleProblem(Problem):
    """The plan cannot fit in the memory budget."""

    bytes_missing: int


class OverloadProblem(Problem):
    """The frame was not run: `dropped` (a newer frame replaced it) or `queue_full`."""

    reason: Literal["dropped", "queue_full"]
