"""Problem and solution types of the scheduler: the JSON interface of `nestdnn schedule`.

A problem JSON file is exactly `Problem.model_json_schema()`; a solution is printed as
`Solution.model_dump(mode="json")`. An app pool (`load_app_pool`, what `nestdnn trace` draws
apps from) is a JSON list of `App`, or any object with such an "apps" list.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from nestdnn.errors import NestError, validation_message

Policy = Literal["min-total-cost", "min-max-cost", "baseline", "independent", "smallest"]
Method = Literal["exact", "greedy"]
POLICIES: tuple[Policy, ...] = ("min-total-cost", "min-max-cost", "baseline", "independent",
                                "smallest")
BASELINES: tuple[Policy, ...] = ("baseline", "independent", "smallest")
"""Policies without a solver: each app's descendant is fixed by a rule, shares are equal
(docs/scheduler.md, "Baselines")."""
METHODS: tuple[Method, ...] = ("exact", "greedy")

_INPUT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
MIN_SHARE = 0.01
"""The least compute share an app is served with: a zero share would starve an app forever
once the others saturate the processor (the executor and its replay both apply it)."""


def check_share_step(step: float) -> float:
    """A share step must divide 1 (0.01, 0.05, 0.125, ...)."""
    units = round(1.0 / step)
    if abs(units * step - 1.0) > 1e-9:
        raise ValueError(f"{step} does not divide 1 (1/{step} = {1.0 / step:.6g})")
    return step


class Descendant(BaseModel):
    """One descendant of an app's multi-capacity model, as profiled on this device."""

    model_config = _INPUT

    accuracy: float = Field(ge=0.0, le=1.0, description="Top-1 accuracy in [0, 1].")
    memory_bytes: int = Field(ge=0, description="Resident bytes of this descendant.")
    latency_s: float = Field(gt=0.0, description="Latency of one frame on the whole processor.")
    id: str | None = Field(
        default=None,
        min_length=1,
        description="Identity of the resident object running this descendant needs (e.g."
        " 'cam-model#2'): descendants of any apps with the same id share one resident copy."
        " None: a copy of its own for its app.",
    )


def check_shared_ids(apps: Iterable[App]) -> None:
    """Descendants with the same id are one resident object: they must have the same bytes."""
    sizes: dict[str, int] = {}
    for app in apps:
        for d in app.descendants:
            if d.id is not None and sizes.setdefault(d.id, d.memory_bytes) != d.memory_bytes:
                raise ValueError(
                    f"descendants with id {d.id!r} differ in memory_bytes "
                    f"({sizes[d.id]:,} and {d.memory_bytes:,})"
                )


class App(BaseModel):
    """An app: its descendants, latency target and priority weight."""

    model_config = _INPUT

    name: str = Field(min_length=1)
    target_latency_s: float = Field(gt=0.0, description="Latency target T (1 / target fps).")
    priority: float = Field(default=1.0, gt=0.0, description="Cost weight w.")
    descendants: list[Descendant] = Field(min_length=1)

    @classmethod
    def from_columns(
        cls,
        name: str,
        accuracies: Sequence[float],
        memory_bytes: Sequence[int],
        latencies_s: Sequence[float],
        target_latency_s: float,
        priority: float = 1.0,
    ) -> App:
        """Build an app from per-descendant columns (as a profile lists them)."""
        if not len(accuracies) == len(memory_bytes) == len(latencies_s):
            raise ValueError(
                f"app {name!r}: accuracies, memory_bytes and latencies_s differ in length "
                f"({len(accuracies)}, {len(memory_bytes)}, {len(latencies_s)})"
            )
        descendants = [
            Descendant(accuracy=a, memory_bytes=m, latency_s=t)
            for a, m, t in zip(accuracies, memory_bytes, latencies_s, strict=True)
        ]
        return cls(
            name=name,
            target_latency_s=target_latency_s,
            priority=priority,
            descendants=descendants,
        )

    @property
    def best_accuracy(self) -> float:
        """A_max of the cost model: the best accuracy among the app's descendants."""
        return max(d.accuracy for d in self.descendants)

    @property
    def smallest(self) -> int:
        """Index of the smallest descendant (fewest bytes; ties: lower latency, lower index)."""
        return min(
            range(len(self.descendants)),
            key=lambda i: (self.descendants[i].memory_bytes, self.descendants[i].latency_s, i),
        )


class Problem(BaseModel):
    """Apps sharing one device: memory budget, cost weight alpha and the share grid."""

    model_config = _INPUT

    apps: list[App] = Field(default_factory=list)
    memory_budget_bytes: int = Field(ge=0)
    alpha: float = Field(default=1.0, ge=0.0, description="Weight of the latency excess.")
    share_step: float = Field(
        default=0.01, gt=0.0, le=1.0, description="Shares are positive multiples of this."
    )

    _step_divides_one = field_validator("share_step")(check_share_step)

    @field_validator("apps")
    @classmethod
    def _unique_names(cls, apps: list[App]) -> list[App]:
        seen: set[str] = set()
        for app in apps:
            if app.name in seen:
                raise ValueError(f"app names must be unique; {app.name!r} repeats")
            seen.add(app.name)
        check_shared_ids(apps)
        return apps

    @property
    def share_units(self) -> int:
        """Number of share steps in the whole processor (1 / share_step)."""
        return round(1.0 / self.share_step)


class Assignment(BaseModel):
    """One app's part of a solution."""

    name: str
    descendant: int = Field(description="Index in the app's descendant list.")
    share: float = Field(description="Fraction of the processor (share_units / 1/share_step).")
    cost: float
    share_units: int
    accuracy: float
    memory_bytes: int
    latency_s: float
    frame_rate: float = Field(description="share / latency_s: frames per second it sustains.")
    id: str | None = Field(default=None, description="The descendant's id (see Descendant.id).")


class Resident(BaseModel):
    """One resident object of a plan: a descendant's copy and the apps that run on it."""

    id: str | None = Field(description="The shared id; None: an id-less descendant of one app.")
    memory_bytes: int
    apps: list[str] = Field(description="Names of the apps running on it, in app order.")


def residents(apps: Sequence[App], chosen: Sequence[int]) -> list[Resident]:
    """The resident objects of a plan (app i runs descendant chosen[i]), in order of first use.

    Apps whose descendants have the same id share one object; an id-less descendant is an
    object of its own. The plan's memory is the sum of their bytes.
    """
    shared: dict[str, Resident] = {}
    objects: list[Resident] = []
    for app, d in zip(apps, chosen, strict=True):
        desc = app.descendants[d]
        if desc.id is not None and desc.id in shared:
            shared[desc.id].apps.append(app.name)
            continue
        resident = Resident(id=desc.id, memory_bytes=desc.memory_bytes, apps=[app.name])
        objects.append(resident)
        if desc.id is not None:
            shared[desc.id] = resident
    return objects


class Solution(BaseModel):
    """The scheduler's answer; printed by `nestdnn schedule` as one JSON object."""

    feasible: bool
    objective: float | None = Field(
        description="Sum of costs (min-total-cost, baseline) or their maximum (min-max-cost)."
    )
    solve_time_s: float
    apps: list[Assignment]
    policy: Policy
    method: Method | None = Field(description="None for the baselines, which have no solver.")
    memory_used_bytes: int = Field(
        description="Bytes of the plan's resident objects: one copy per shared id."
    )
    memory_budget_bytes: int
    share_used: float
    fits_memory: bool
    reason: str | None = None
    bytes_missing: int | None = None
    decision: Literal["solved", "kept", "kept-descendants", "new-optimum"] = Field(
        default="solved", description="What the switch-aware re-solve chose."
    )
    optimum_objective: float | None = Field(
        default=None, description="Objective of the new optimum (switch-aware re-solve only)."
    )
    residents: list[Resident] = Field(
        default_factory=list,
        description="The plan's resident objects; their bytes sum to memory_used_bytes.",
    )

    def descendants(self) -> dict[str, int]:
        """App name -> descendant index."""
        return {a.name: a.descendant for a in self.apps}


def read_json(path: str | Path) -> object:
    """Parse a JSON file ('-' reads stdin), raising NestError with a one-line message."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    except OSError as exc:
        raise NestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise NestError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def parse_problem(data: object, source: str = "problem") -> Problem:
    """Validate decoded JSON as a Problem, raising NestError with the invalid fields."""
    try:
        return Problem.model_validate(data)
    except ValidationError as exc:
        raise NestError(f"{source}: invalid: {validation_message(exc)}") from exc


def load_problem(path: str | Path) -> Problem:
    """Read and validate a problem JSON file."""
    return parse_problem(read_json(path), str(path))


def load_app_pool(path: str | Path) -> list[App]:
    """A JSON list of apps (or an object with an "apps" list, such as a problem file)."""
    data = read_json(path)
    if isinstance(data, dict) and "apps" in data:
        data = data["apps"]
    try:
        pool = TypeAdapter(list[App]).validate_python(data)
    except ValidationError as exc:
        raise NestError(f"{path}: invalid: {validation_message(exc)}") from exc
    if not pool:
        raise NestError(f"{path}: the app list is empty")
    try:
        check_shared_ids(pool)
    except ValueError as exc:
        raise NestError(f"{path}: invalid: {exc}") from exc
    return pool
