"""Trace simulator: replay app arrivals, departures and changes through a policy.

Between two events the plan is constant, so every figure is integrated exactly:

- an app with descendant d and compute share u processes frames at min(u / L(d), fps) per
  second (fps: its input frame rate); a frame takes L(d) / u seconds when the processor is
  time-shared, and is *late* when that exceeds the latency target T; input frames beyond the
  processing rate are *dropped* (the newest frame matters);
- compute busy fraction (the energy proxy) = sum over apps of min(u, fps * L(d)) -- the
  processor time the frames actually use -- plus the time lost to swapping (below);
- memory is that of the plan's *resident objects*: one per descendant id, shared by every
  app whose descendant has it (an id-less descendant is an object of its own app);
- a *switch* is a running app changing descendant. Loads are per object: an object the plan
  needs and the previous plan did not is loaded once, charged to its first app in start
  order (`load_bytes` if that app just started, else `switch_bytes`); an app moving onto an
  object another app keeps resident loads nothing. With nested descendants a new object
  that replaces one the plan drops, all of whose apps move to it, is grown or shrunk in
  place: an upgrade loads only the bytes the larger descendant adds (M(d') - M(d)) and a
  downgrade nothing. Loading time, `SwapModel.load_time(bytes)`, is reported as `load_s`
  (not taken from the apps' compute: at the default bandwidth it is milliseconds per event);
- swapping (baseline only, when its models do not fit the budget): apps are time-multiplexed
  in rounds of `SwapModel.period_s` (default one 30 fps frame interval); each round at least
  the excess bytes (resident objects - budget) must be read again, which takes excess /
  bandwidth seconds of every round. That fraction of the processor is lost to loading: every
  app's effective share is u * (1 - load fraction). This is the most favourable swapping any
  memory manager can achieve (it re-reads only the excess), so it flatters the baseline.

That is the default, *fluid* model. ``simulate(..., runtime=RuntimeModel(...))`` instead
replays what the daemon's executor and model manager do, frame by frame, with measured costs
(`scheduler.replay`): per-app queues with drop-oldest, one weighted-fair worker that gives
idle share to whoever has frames, loads and switches when a plan is applied, and, when the
plan does not fit, on-demand loads with least-recently-used eviction before a frame. That
model also predicts processor time (``Summary.cpu_s``) and the number of loads.

A NestDNN policy re-solves at every event with the switch-aware `resolve`; the baselines
(`scheduler.solve`: resource-agnostic ``baseline``, ``independent``, ``smallest``) apply
their rule. Apps are admitted in start order; one that cannot join those before it is
*paused* -- no compute, no frames, no descendant -- until it fits, as the daemon makes it
wait: for NestDNN and ``smallest`` when the least memory of any plan for them would exceed
the budget (shared ids counted once), for ``independent`` when their fixed copies would, for
the resource-agnostic baseline (which swaps) when its model alone would; and for every
policy when no share step is left. ``independent`` apps hold copies of their own (their
descendants' ids are ignored) and divide the budget among ``slots`` apps, by default the
most apps the trace runs at once (`peak_apps`).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nestdnn.errors import NestError, validation_message
from scheduler.problem import (
    BASELINES,
    App,
    Method,
    Policy,
    Problem,
    Solution,
    check_share_step,
    check_shared_ids,
    read_json,
)
from scheduler.replay import DescendantCosts, ExecutorReplay, PlannedLane, RuntimeModel
from scheduler.sharing import ObjectKey, Residency, object_key
from scheduler.solve import (
    Tolerance,
    baseline_descendant,
    independent_descendant,
    resolve,
    unshared,
)

log = logging.getLogger(__name__)

_EVENT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AppStart(BaseModel):
    """An app starts; `fps` is its input frame rate."""

    model_config = _EVENT
    kind: Literal["start"] = "start"
    time_s: float = Field(ge=0.0)
    app: App
    fps: float = Field(default=30.0, gt=0.0)


class AppStop(BaseModel):
    """A running app stops."""

    model_config = _EVENT
    kind: Literal["stop"] = "stop"
    time_s: float = Field(ge=0.0)
    name: str


class PriorityChange(BaseModel):
    """A running app's priority weight changes."""

    model_config = _EVENT
    kind: Literal["priority"] = "priority"
    time_s: float = Field(ge=0.0)
    name: str
    priority: float = Field(gt=0.0)


class TargetChange(BaseModel):
    """A running app's latency target changes."""

    model_config = _EVENT
    kind: Literal["target"] = "target"
    time_s: float = Field(ge=0.0)
    name: str
    target_latency_s: float = Field(gt=0.0)


class BudgetChange(BaseModel):
    """The device's memory budget changes."""

    model_config = _EVENT
    kind: Literal["budget"] = "budget"
    time_s: float = Field(ge=0.0)
    memory_budget_bytes: int = Field(ge=0)


Event = Annotated[
    AppStart | AppStop | PriorityChange | TargetChange | BudgetChange,
    Field(discriminator="kind"),
]


class Trace(BaseModel):
    """Timed events over [0, duration_s], applied in order (several may share a time)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    duration_s: float = Field(gt=0.0)
    memory_budget_bytes: int = Field(ge=0, description="Budget at time 0.")
    share_step: float = Field(default=0.01, gt=0.0, le=1.0)
    events: list[Event] = Field(default_factory=list)

    _step_divides_one = field_validator("share_step")(check_share_step)

    @property
    def share_units(self) -> int:
        """Number of share steps in the whole processor."""
        return round(1.0 / self.share_step)

    @model_validator(mode="after")
    def _consistent(self) -> Trace:
        running: set[str] = set()
        last = 0.0
        for i, event in enumerate(self.events):
            where = f"events.{i}"
            if event.time_s < last:
                raise ValueError(f"{where}: time_s {event.time_s} is before the previous event")
            if event.time_s > self.duration_s:
                raise ValueError(f"{where}: time_s {event.time_s} is after duration_s")
            last = event.time_s
            if isinstance(event, AppStart):
                if event.app.name in running:
                    raise ValueError(f"{where}: app {event.app.name!r} is already running")
                running.add(event.app.name)
            elif isinstance(event, AppStop | PriorityChange | TargetChange):
                if event.name not in running:
                    raise ValueError(f"{where}: app {event.name!r} is not running")
                if isinstance(event, AppStop):
                    running.remove(event.name)
        check_shared_ids(e.app for e in self.events if isinstance(e, AppStart))
        return self


def _time(event: Event) -> float:
    return event.time_s


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace JSON file, raising NestError with the invalid fields."""
    try:
        return Trace.model_validate(read_json(path))
    except ValidationError as exc:
        raise NestError(f"{path}: invalid: {validation_message(exc)}") from exc


@dataclass(frozen=True)
class SwapModel:
    """How the simulator charges model loading (see the module docstring)."""

    bandwidth_bytes_per_s: float = 1e9
    period_s: float = 1.0 / 30.0
    load_fixed_s: float = 0.0

    def load_time(self, nbytes: int) -> float:
        """Seconds to load ``nbytes`` of a descendant: a fixed cost plus bytes / bandwidth."""
        return self.load_fixed_s + nbytes / self.bandwidth_bytes_per_s

    def load_fraction(self, excess_bytes: int) -> float:
        """Fraction of every round spent re-reading `excess_bytes` of swapped models."""
        if excess_bytes <= 0:
            return 0.0
        return min(1.0, excess_bytes / self.bandwidth_bytes_per_s / self.period_s)


class AppStats(BaseModel):
    """One app's figures over its run (from its start to its stop or the trace end)."""

    name: str
    start_s: float
    stop_s: float
    input_fps: float
    run_s: float
    paused_s: float
    accuracy: float | None = Field(description="Time average of the descendant in use.")
    fps: float = Field(description="Frames processed per second of run time.")
    frames_in: float
    frames_done: float
    frames_late: float = Field(description="Processed frames that missed the latency target.")
    frames_dropped: float
    late_fraction: float = Field(description="frames_late / frames_done.")
    drop_fraction: float = Field(description="frames_dropped / frames_in.")
    switches: int
    switch_bytes: int
    load_bytes: int
    loads: int | None = Field(
        default=None, description="Descendants loaded from storage (runtime model only).")


class Summary(BaseModel):
    """Figures over all apps: means weighted by each app's run time."""

    accuracy: float | None
    fps: float
    late_fraction: float
    drop_fraction: float
    switches: int
    switch_bytes: int
    load_bytes: int
    busy_fraction: float = Field(description="Processor busy time / trace duration.")
    load_s: float = Field(description="Time spent loading models at starts and switches.")
    swapping_s: float = Field(description="Time the plan in force did not fit the budget.")
    paused_app_s: float
    resolves: int
    solve_time_s: float
    model: Literal["fluid", "runtime"] = Field(
        default="fluid", description="How frames were simulated (see scheduler.simulate).")
    loads: int | None = Field(
        default=None, description="Descendants loaded from storage (runtime model only).")
    cpu_s: float | None = Field(
        default=None, description="Processor seconds of the daemon (runtime model only).")


class PlannedApp(BaseModel):
    """An app's part of the plan in force during a segment."""

    name: str
    descendant: int | None = Field(description="None while paused.")
    share: float
    accuracy: float | None
    fps: float


class Segment(BaseModel):
    """A stretch of time with one plan in force."""

    start_s: float
    end_s: float
    memory_budget_bytes: int
    memory_used_bytes: int
    apps: list[PlannedApp]


class SimulationResult(BaseModel):
    """What `simulate` measured."""

    policy: Policy
    method: Method | None
    alpha: float
    duration_s: float
    summary: Summary
    apps: list[AppStats]
    timeline: list[Segment]


@dataclass
class _Running:
    """A started app and its running totals."""

    app: App
    fps: float
    start_s: float
    stop_s: float | None = None
    descendant: int | None = None
    paused_s: float = 0.0
    accuracy_s: float = 0.0
    admitted_s: float = 0.0
    frames_in: float = 0.0
    frames_done: float = 0.0
    frames_late: float = 0.0
    switches: int = 0
    switch_bytes: int = 0
    load_bytes: int = 0
    loads: int = 0

    def stats(self, end_s: float, replayed: bool = False) -> AppStats:
        """The app's figures up to its stop or `end_s`."""
        stop = self.stop_s if self.stop_s is not None else end_s
        run = stop - self.start_s
        dropped = self.frames_in - self.frames_done
        return AppStats(
            name=self.app.name,
            start_s=self.start_s,
            stop_s=stop,
            input_fps=self.fps,
            run_s=run,
            paused_s=self.paused_s,
            accuracy=self.accuracy_s / self.admitted_s if self.admitted_s > 0 else None,
            fps=self.frames_done / run if run > 0 else 0.0,
            frames_in=self.frames_in,
            frames_done=self.frames_done,
            frames_late=self.frames_late,
            frames_dropped=dropped,
            late_fraction=self.frames_late / self.frames_done if self.frames_done > 0 else 0.0,
            drop_fraction=dropped / self.frames_in if self.frames_in > 0 else 0.0,
            switches=self.switches,
            switch_bytes=self.switch_bytes,
            load_bytes=self.load_bytes,
            loads=self.loads if replayed else None,
        )


@dataclass
class _Simulator:
    """Replays a trace; see `simulate`."""

    trace: Trace
    policy: Policy
    method: Method
    alpha: float
    tolerance: Tolerance
    swap: SwapModel
    budget: int = 0
    running: dict[str, _Running] = field(default_factory=dict)
    finished: list[_Running] = field(default_factory=list)
    runtime: RuntimeModel | None = None
    plan: Solution | None = None
    timeline: list[Segment] = field(default_factory=list)
    busy_s: float = 0.0
    load_s: float = 0.0
    swapping_s: float = 0.0
    resolves: int = 0
    solve_time_s: float = 0.0
    solve_cpu_s: float = 0.0
    replay: ExecutorReplay | None = None
    stopped: list[str] = field(default_factory=list)
    slots: int = 1

    def run(self) -> SimulationResult:
        """Apply each time's events, re-plan, integrate until the next event time."""
        self.budget = self.trace.memory_budget_bytes
        if self.runtime is not None:
            self.replay = ExecutorReplay(self.runtime, self._profile_costs)
        groups = [(t, list(g)) for t, g in itertools.groupby(self.trace.events, _time)]
        if not groups or groups[0][0] > 0:
            groups.insert(0, (0.0, []))
        ends = [t for t, _ in groups[1:]] + [self.trace.duration_s]
        for (start, events), end in zip(groups, ends, strict=True):
            for event in events:
                self._apply(event)
            self._replan(start)
            if end > start:
                self._integrate(start, end)
        return self._result()

    def _profile_costs(self, app: App) -> list[DescendantCosts]:
        """Costs of an app the runtime model has no measurements for: the profile's latency
        as service and processor time, the swap model's load time."""
        return [DescendantCosts(service_s=d.latency_s, cpu_s=d.latency_s,
                                load_s=self.swap.load_time(d.memory_bytes),
                                load_cpu_s=self.swap.load_time(d.memory_bytes))
                for d in app.descendants]

    def _apply(self, event: Event) -> None:
        """Change the running set, an app's spec or the budget."""
        if isinstance(event, AppStart):
            app = unshared(event.app) if self.policy == "independent" else event.app
            self.running[event.app.name] = _Running(app, event.fps, event.time_s)
        elif isinstance(event, AppStop):
            done = self.running.pop(event.name)
            done.stop_s = event.time_s
            self.finished.append(done)
            self.stopped.append(event.name)
        elif isinstance(event, PriorityChange):
            app = self.running[event.name]
            app.app = app.app.model_copy(update={"priority": event.priority})
        elif isinstance(event, TargetChange):
            app = self.running[event.name]
            app.app = app.app.model_copy(update={"target_latency_s": event.target_latency_s})
        else:
            self.budget = event.memory_budget_bytes

    def _problem(self, apps: list[_Running]) -> Problem:
        return Problem(
            apps=[a.app for a in apps],
            memory_budget_bytes=self.budget,
            alpha=self.alpha,
            share_step=self.trace.share_step,
        )

    def _solve(self, apps: list[_Running]) -> Solution:
        problem = self._problem(apps)
        current = self.plan if self.plan is not None and self.plan.feasible else None
        return resolve(problem, current, self.policy, self.method, self.tolerance,
                       slots=self.slots)

    def _admitted(self) -> list[_Running]:
        """The running apps in start order, skipping any that cannot join those before it
        (module docstring)."""
        admitted: list[_Running] = []
        for app in sorted(self.running.values(), key=lambda a: a.start_s):
            if len(admitted) == self.trace.share_units:
                break
            if self._need([*admitted, app]) <= self.budget:
                admitted.append(app)
            else:
                log.info("%s cannot be scheduled now; paused", app.app.name)
        return admitted

    def _need(self, apps: list[_Running]) -> int:
        """The bytes the policy needs to run ``apps`` (the last one joining the others)."""
        if self.policy == "baseline":
            last = apps[-1].app
            return last.descendants[baseline_descendant(last)].memory_bytes
        if self.policy == "independent":
            quota = self.budget // self.slots
            return sum(a.app.descendants[independent_descendant(a.app, quota)].memory_bytes
                       for a in apps)
        return Residency.of([a.app for a in apps]).least_memory()

    def _replan(self, now: float) -> None:
        """Solve for the admitted apps; the others are paused."""
        cpu = time.thread_time()
        solution = self._solve(self._admitted())
        self.solve_cpu_s += time.thread_time() - cpu
        self.resolves += 1
        self.solve_time_s += solution.solve_time_s
        assert solution.feasible, solution.reason
        chosen = {a.name: a for a in solution.apps}
        self._account_loads({name: a.descendant for name, a in chosen.items()})
        self.plan = solution
        if self.replay is not None:
            planned = {name: PlannedLane(app.app, app, app.start_s, app.fps,
                                         chosen[name].descendant, chosen[name].share)
                       for name, app in self.running.items() if name in chosen}
            self.replay.apply(now, planned, self.stopped, self.budget,
                              swapping=solution.memory_used_bytes > self.budget)
        self.stopped = []

    def _account_loads(self, chosen: dict[str, int]) -> None:
        """Count switches (descendant changes) and the bytes loaded per new resident object
        (module docstring), then record the new descendants."""
        users: dict[ObjectKey, list[_Running]] = {}
        for app in self.running.values():
            if app.descendant is not None:
                users.setdefault(object_key(app.app, app.descendant), []).append(app)
        after: dict[ObjectKey, list[_Running]] = {}
        for app in sorted(self.running.values(), key=lambda a: a.start_s):
            if app.app.name in chosen:
                after.setdefault(object_key(app.app, chosen[app.app.name]), []).append(app)
        grown: set[ObjectKey] = set()
        for key, apps in after.items():
            if key in users:
                continue
            first = apps[0]
            loaded = self._load_bytes(first, chosen[first.app.name], apps, users, after, grown)
            if first.descendant is None:
                first.load_bytes += loaded
            else:
                first.switch_bytes += loaded
            if self.replay is None:
                self.load_s += self.swap.load_time(loaded)
        for app in self.running.values():
            new = chosen.get(app.app.name)
            if new is not None and app.descendant is not None and new != app.descendant:
                app.switches += 1
            app.descendant = new

    @staticmethod
    def _load_bytes(
        first: _Running,
        new: int,
        apps: list[_Running],
        users: dict[ObjectKey, list[_Running]],
        after: dict[ObjectKey, list[_Running]],
        grown: set[ObjectKey],
    ) -> int:
        """Bytes loaded for the new object of `apps` (first: the first of them).

        In place (nested descendants) when the first app's old object is dropped by the plan
        and all its apps move to the new one: only the bytes a larger descendant adds."""
        size = first.app.descendants[new].memory_bytes
        if first.descendant is None:
            return size
        old = object_key(first.app, first.descendant)
        if old in after or old in grown or not all(a in apps for a in users[old]):
            return size
        grown.add(old)
        return max(0, size - first.app.descendants[first.descendant].memory_bytes)

    def _integrate(self, start: float, end: float) -> None:
        """Add one constant-plan stretch to every running app's totals."""
        span = end - start
        plan = self.plan
        assert plan is not None
        assigned = {a.name: a for a in plan.apps}
        excess = max(0, plan.memory_used_bytes - self.budget)
        lost = self.swap.load_fraction(excess) if self.replay is None else 0.0
        if excess > 0:
            self.swapping_s += span
        busy = lost
        planned = []
        done_before = {name: app.frames_done for name, app in self.running.items()}
        if self.replay is not None:
            self.replay.run_until(end)
        for app in self.running.values():
            part = assigned.get(app.app.name)
            if part is None or self.replay is None:  # the replay counts the frames it serves
                app.frames_in += app.fps * span
            if part is None:
                app.paused_s += span
                planned.append(
                    PlannedApp(
                        name=app.app.name, descendant=None, share=0.0, accuracy=None, fps=0.0
                    )
                )
                continue
            desc = app.app.descendants[part.descendant]
            share = part.share * (1.0 - lost)
            if self.replay is not None:
                fps = (app.frames_done - done_before[app.app.name]) / span
            else:
                fps = min(share / desc.latency_s, app.fps) if share > 0 else 0.0
                app.frames_done += fps * span
                if share <= 0 or desc.latency_s / share > app.app.target_latency_s:
                    app.frames_late += fps * span
            app.accuracy_s += desc.accuracy * span
            app.admitted_s += span
            busy += min(share, app.fps * desc.latency_s)
            planned.append(
                PlannedApp(
                    name=app.app.name,
                    descendant=part.descendant,
                    share=part.share,
                    accuracy=desc.accuracy,
                    fps=fps,
                )
            )
        self.busy_s += busy * span
        self.timeline.append(
            Segment(
                start_s=start,
                end_s=end,
                memory_budget_bytes=self.budget,
                memory_used_bytes=plan.memory_used_bytes,
                apps=planned,
            )
        )

    def _result(self) -> SimulationResult:
        end = self.trace.duration_s
        replay = self.replay
        if replay is not None:
            replay.apply(end, {}, list(replay.lanes), self.budget, swapping=False)
            self.busy_s, self.load_s = replay.busy_s, replay.load_s
        everyone = sorted(self.finished + list(self.running.values()), key=lambda a: a.start_s)
        stats = [a.stats(end, replayed=replay is not None) for a in everyone]
        run = sum(s.run_s for s in stats)
        admitted = sum(a.admitted_s for a in everyone)
        done = sum(s.frames_done for s in stats)
        frames_in = sum(s.frames_in for s in stats)
        summary = Summary(
            accuracy=sum(a.accuracy_s for a in everyone) / admitted if admitted > 0 else None,
            fps=done / run if run > 0 else 0.0,
            late_fraction=sum(s.frames_late for s in stats) / done if done > 0 else 0.0,
            drop_fraction=(frames_in - done) / frames_in if frames_in > 0 else 0.0,
            switches=sum(s.switches for s in stats),
            switch_bytes=sum(s.switch_bytes for s in stats),
            load_bytes=sum(s.load_bytes for s in stats),
            busy_fraction=self.busy_s / end,
            load_s=self.load_s,
            swapping_s=self.swapping_s,
            paused_app_s=sum(s.paused_s for s in stats),
            resolves=self.resolves,
            solve_time_s=self.solve_time_s,
            model="fluid" if replay is None else "runtime",
            loads=None if replay is None else replay.loads,
            cpu_s=None if replay is None else replay.cpu_s + self.solve_cpu_s,
        )
        return SimulationResult(
            policy=self.policy,
            method=None if self.policy in BASELINES else self.method,
            alpha=self.alpha,
            duration_s=end,
            summary=summary,
            apps=stats,
            timeline=self.timeline,
        )


def simulate(
    trace: Trace,
    policy: Policy = "min-total-cost",
    method: Method = "exact",
    alpha: float = 1.0,
    tolerance: Tolerance | None = None,
    swap: SwapModel | None = None,
    runtime: RuntimeModel | None = None,
    slots: int | None = None,
) -> SimulationResult:
    """Replay `trace` under a policy and integrate the figures (see the module docstring).

    ``runtime``: replay the daemon's executor and model manager frame by frame with these
    costs (`scheduler.replay`) instead of the fluid model. ``slots``: the apps the
    independent baseline divides the memory budget among (default: `peak_apps`).
    """
    return _Simulator(
        trace, policy, method, alpha, tolerance or Tolerance(), swap or SwapModel(),
        runtime=runtime, slots=slots or peak_apps(trace),
    ).run()


def peak_apps(trace: Trace) -> int:
    """The most apps the trace runs at once (at least 1); events at one time apply together."""
    running = peak = 0
    for _, events in itertools.groupby(trace.events, _time):
        for event in events:
            running += isinstance(event, AppStart) - isinstance(event, AppStop)
        peak = max(peak, running)
    return max(1, peak)


def random_trace(
    pool: list[App],
    *,
    seed: int = 0,
    duration_s: float = 600.0,
    arrival_rate_per_s: float = 1.0 / 30.0,
    mean_run_s: float = 120.0,
    max_apps: int = 4,
    memory_budget_bytes: int,
    fps: float = 30.0,
    share_step: float = 0.01,
    priority_change_rate_per_s: float = 0.0,
) -> Trace:
    """A random trace like the paper's benchmark, reproducible from `seed`.

    Apps arrive as a Poisson process (exponential gaps, mean 1 / arrival_rate_per_s), each
    drawn uniformly from `pool` and running for an exponential time (mean mean_run_s) or until
    the trace ends; an arrival that finds `max_apps` apps running is turned away. Running
    apps' priorities change as a Poisson process too, to 0.5, 1 or 2. Times are rounded to
    the millisecond; events are ordered by their exact times, so an app's start, priority
    changes and stop stay in order.
    """
    if not pool:
        raise NestError("random_trace: the app pool is empty")
    rng = np.random.default_rng(seed)
    events: list[tuple[float, Event]] = []
    ends: dict[str, float] = {}
    t, count = 0.0, 0
    while True:
        t += float(rng.exponential(1.0 / arrival_rate_per_s))
        if t >= duration_s:
            break
        ends = {name: end for name, end in ends.items() if end > t}
        if len(ends) >= max_apps:
            continue
        template = pool[int(rng.integers(len(pool)))]
        count += 1
        name = f"{template.name}#{count}"
        end = t + float(rng.exponential(mean_run_s))
        app = template.model_copy(update={"name": name})
        events.append((t, AppStart(time_s=round(t, 3), app=app, fps=fps)))
        if end < duration_s:
            events.append((end, AppStop(time_s=round(end, 3), name=name)))
        ends[name] = end
        _priority_changes(rng, events, name, t, min(end, duration_s), priority_change_rate_per_s)
    events.sort(key=lambda e: e[0])
    return Trace(
        duration_s=duration_s,
        memory_budget_bytes=memory_budget_bytes,
        share_step=share_step,
        events=[e for _, e in events],
    )


def _priority_changes(
    rng: np.random.Generator,
    events: list[tuple[float, Event]],
    name: str,
    start: float,
    end: float,
    rate: float,
) -> None:
    """Append Poisson-timed priority changes of app `name` while it runs."""
    if rate <= 0:
        return
    t = start
    while (t := t + float(rng.exponential(1.0 / rate))) < end:
        priority = float(rng.choice([0.5, 1.0, 2.0]))
        events.append((t, PriorityChange(time_s=round(t, 3), name=name, priority=priority)))
