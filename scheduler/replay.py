"""Frame-by-frame model of the daemon's executor and model manager, for the simulator.

`scheduler.simulate`'s default model is fluid: between two events every app processes
``min(u / L(d), fps)`` frames per second, and a plan that does not fit the memory budget
costs the ideal re-reading of the excess bytes. The daemon (`scheduler.daemon.runtime`) does
something more specific, and `simulate(..., runtime=RuntimeModel(...))` replays exactly that,
frame by frame:

* **Arrivals.** An app sends one frame every ``1 / fps`` seconds from its start (the first at
  its start), until it stops. Its queue holds its newest ``queue_size`` frames: a frame
  arriving at a full queue pushes the oldest out (a drop). Frames queued when the app stops
  are still served (the live benchmark waits for them before it unregisters the app).
* **One worker, start-time fair queueing** (`scheduler.daemon.executor.Executor`): the runnable app
  with the smallest virtual pass runs next (ties: the app registered first); after its frame
  its pass grows by ``service / share`` (shares below 0.01 count as 0.01); an app whose queue
  was empty re-enters at the current virtual time. Idle share goes to whoever has frames.
* **Service** of a frame: its descendant's ``service_s`` (wall time on the worker) and
  ``cpu_s`` (processor time) when the worker goes from one frame straight to the next;
  ``idle_service_s`` / ``idle_cpu_s`` when the frame finds the worker idle (it waited for
  this frame: the processor's caches and clock may have cooled meanwhile;
  `benchmarks/daemon_live.py` measures both).
* **Models** (`scheduler.daemon.manager.ModelManager`): what is loaded is a *resident*, one
  per descendant id (an id-less descendant is a resident of its app alone), shared by every
  app whose descendant has that id; memory is accounted per resident. When the plan fits the
  budget it is applied outside the worker (the runtime applies a plan in the thread that
  handles the event): downgrades first, then the new budget, then upgrades. An app whose
  target is already resident (loaded for another app) just moves onto it; otherwise the new
  resident is made in place (a *switch*) when every app on the app's old resident moves to
  the new one and old and new fit in the budget together, loaded beside the old one when
  they fit but others stay on it, else cold (the old one freed, the new one loaded): those
  two are *loads*. A resident no app runs on any more is freed. When the plan does not fit
  (the baseline's swapping), a frame whose app's resident is missing first loads it in the
  worker, evicting the least recently used other residents until it fits (a resident's last
  use: its load or the latest frame of any of its apps); the load's wall and processor time
  are part of that frame's service. Every load or switch costs the descendant's ``load_s`` /
  ``load_cpu_s``.

The costs come from `RuntimeModel.costs` (per app name, per descendant), measured on the
machine that runs the daemon (see `benchmarks/daemon_live.py`); an app without costs uses its
profile's latency as both service and processor time and the `SwapModel` for loads
(``load_fixed_s + bytes / bandwidth``).

Processor time (``Summary.cpu_s``) = the frames' ``cpu_s`` + every load's ``load_cpu_s`` +
``frame_cpu_s`` per frame served (the runtime's own per-frame path: submit, queue, dispatch,
result) + the processor time of the re-plans (the simulator times its own solver calls, the
same code the runtime runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.problem import MIN_SHARE, App
from scheduler.sharing import ObjectKey, object_key

_EPS = 1e-9


@dataclass(frozen=True)
class DescendantCosts:
    """What one descendant costs the runtime, measured: per frame and per load or switch."""

    service_s: float
    cpu_s: float
    load_s: float
    load_cpu_s: float
    idle_service_s: float | None = None  # a frame that finds the worker idle (None: service_s)
    idle_cpu_s: float | None = None  # (None: cpu_s)

    def frame(self, after_idle: bool) -> tuple[float, float]:
        """Wall and processor seconds of one frame; ``after_idle``: the worker waited for it."""
        if after_idle:
            return (self.service_s if self.idle_service_s is None else self.idle_service_s,
                    self.cpu_s if self.idle_cpu_s is None else self.idle_cpu_s)
        return self.service_s, self.cpu_s


@dataclass(frozen=True)
class RuntimeModel:
    """Replay the daemon's executor and model manager frame by frame (module docstring)."""

    queue_size: int = 4
    costs: Mapping[str, Sequence[DescendantCosts]] = field(default_factory=dict)
    frame_cpu_s: float = 0.0

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")


class Counted(Protocol):
    """The simulator's per-app totals the replay adds to."""

    frames_in: float
    frames_done: float
    frames_late: float
    loads: int


@dataclass
class _Lane:
    """One app in the executor: arrivals, queue, pass, resident descendant."""

    name: str
    app: App
    totals: Counted
    costs: Sequence[DescendantCosts]
    start_s: float
    fps: float
    share: float
    target: int
    pass_value: float
    stop_s: float | None = None
    arrived: int = 0
    head: int = 0
    resident: ObjectKey | None = None

    def arrivals_until(self, t: float) -> int:
        """Frames sent in [start, t] (and before the stop)."""
        count = math.floor((t - self.start_s) * self.fps + _EPS) + 1 if t >= self.start_s else 0
        if self.stop_s is not None:
            count = min(count, self.arrivals_before(self.stop_s))
        return count

    def arrivals_before(self, t: float) -> int:
        """Frames sent in [start, t)."""
        return max(0, math.ceil((t - self.start_s) * self.fps - _EPS))

    def next_arrival(self) -> float | None:
        t = self.start_s + self.arrived / self.fps
        if self.stop_s is not None and t >= self.stop_s - _EPS:
            return None
        return t

    @property
    def queued(self) -> int:
        return self.arrived - self.head

    @property
    def wanted(self) -> ObjectKey:
        """The resident its target descendant needs."""
        return object_key(self.app, self.target)


@dataclass
class _Resident:
    """One loaded object and when it was last used (loaded, or a frame of any of its apps)."""

    bytes: int
    last_used: float


@dataclass
class PlannedLane:
    """One admitted app of a plan, as the replay needs it."""

    app: App
    totals: Counted
    start_s: float
    fps: float
    descendant: int
    share: float


@dataclass
class ExecutorReplay:
    """The worker, queues and resident models across the whole trace (see module docstring)."""

    model: RuntimeModel
    default_costs: Callable[[App], list[DescendantCosts]]
    lanes: dict[str, _Lane] = field(default_factory=dict)
    residents: dict[ObjectKey, _Resident] = field(default_factory=dict)
    now: float = 0.0
    horizon: float = 0.0  # frames are known to be sent up to here (the next event's time)
    virtual: float = 0.0
    budget: int = 0
    swapping: bool = False
    idle: bool = True  # the worker waited for the next frame (it is not straight after one)
    busy_s: float = 0.0
    cpu_s: float = 0.0
    load_s: float = 0.0
    loads: int = 0
    switches_in_place: int = 0
    frames: int = 0
    drops: int = 0

    # ------------------------------------------------------------------ plans

    def apply(self, t: float, planned: Mapping[str, PlannedLane], stopped: Sequence[str],
              budget: int, swapping: bool) -> None:
        """A re-plan at time ``t``: apps stop or leave, shares and descendants change."""
        for name in stopped:
            lane = self.lanes.get(name)
            if lane is not None:
                self._stop(lane, t)
        for name in [n for n in self.lanes if n not in planned]:
            self._leave(self.lanes.pop(name))  # paused by the plan: its frames are not served
        for name, part in planned.items():
            lane = self.lanes.get(name)
            if lane is None:
                lane = self.lanes[name] = _Lane(  # frames from its start, or from now if
                    name, part.app, part.totals, self._costs(part.app),  # it was paused
                    max(part.start_s, t), part.fps, part.share, part.descendant,
                    pass_value=self.virtual)
            lane.share, lane.target = part.share, part.descendant
        # as ModelManager.apply: downgrades (the old budget holds until they are done), the
        # new budget (evicting the least recently used if still over), then upgrades
        limit = max(self.budget, budget)
        self.budget, self.swapping = budget, swapping
        lanes = list(self.lanes.values())
        downs = [lane for lane in lanes if lane.resident is not None
                 and self._need(lane) <= self.residents[lane.resident].bytes]
        for lane in downs:
            self._switch(lane, limit, t)
        while self._resident_bytes() > budget and self._evict():
            pass
        for lane in lanes:
            if lane in downs or lane.resident == lane.wanted:
                continue
            if swapping and lane.wanted not in self.residents:
                self._leave(lane)  # a stale resident is freed; the worker loads on demand
            else:
                self._switch(lane, budget, t)

    @staticmethod
    def _need(lane: _Lane) -> int:
        """Bytes of the resident the lane's target needs."""
        return lane.app.descendants[lane.target].memory_bytes

    def _switch(self, lane: _Lane, limit: int, t: float) -> None:
        """Bring a lane (and every lane wanting the same resident) to its target at plan time:
        onto the resident if loaded; else in place when every lane on the old resident moves
        to the new one and both fit within ``limit``, beside the old one when there is room
        (a load), otherwise cold (the lane's old resident freed first; a load)."""
        key = lane.wanted
        if key not in self.residents:
            need = self._need(lane)
            room = self._resident_bytes() + need <= limit
            users = [other for other in self.lanes.values() if other.wanted == key]
            old = lane.resident
            on_old = [other for other in self.lanes.values() if old is not None
                      and other.resident == old]
            if room and on_old and all(other in users for other in on_old):
                self.switches_in_place += 1
                self.residents[key] = self.residents.pop(old)
                self.residents[key].bytes = need
                for other in on_old:
                    other.resident = key
            else:
                if not room:
                    self._leave(lane)
                self.loads += 1
                lane.totals.loads += 1
                self.residents[key] = _Resident(need, t)
            cost = lane.costs[lane.target]
            self.load_s += cost.load_s
            self.cpu_s += cost.load_cpu_s
        for other in self.lanes.values():
            if other.wanted == key:
                self._point(other, key)

    def _stop(self, lane: _Lane, t: float) -> None:
        """An app stops sending at ``t``; its queued frames are served, then it is gone.

        (The live benchmark waits for them before it unregisters the app and the runtime
        re-plans; they are served here before the re-plan, with the same worker time.)
        """
        lane.stop_s = t
        self.horizon = max(self.horizon, t)
        self._update(lane, t, in_flight=False)
        self.idle = self.idle or t > self.now
        self.now = max(self.now, t)
        virtual = self.virtual  # served out of turn: the others' virtual time stays
        while lane.queued > 0:
            self._serve(lane)
        self.virtual = virtual
        self._retire_if_drained(lane)

    def _costs(self, app: App) -> Sequence[DescendantCosts]:
        costs = self.model.costs.get(app.name)
        if costs is None:
            return self.default_costs(app)
        if len(costs) != len(app.descendants):
            raise ValueError(f"costs of {app.name}: {len(costs)} descendants, the app has"
                             f" {len(app.descendants)}")
        return costs

    # ------------------------------------------------------------------ frames

    def run_until(self, end: float) -> None:
        """Serve frames until the worker's next decision would come at or after ``end``."""
        self.horizon = end
        while True:
            for lane in list(self.lanes.values()):
                self._update(lane, self.now, in_flight=False)
            runnable = [lane for lane in self.lanes.values() if lane.queued > 0]
            if not runnable:
                upcoming = [t for lane in self.lanes.values()
                            if (t := lane.next_arrival()) is not None]
                nxt = min(upcoming, default=None)
                if nxt is None or nxt >= end:
                    self.idle = self.idle or end > self.now
                    self.now = max(self.now, end)
                    return
                self.idle = self.idle or nxt > self.now
                self.now = max(self.now, nxt)
                continue
            if self.now >= end:
                return
            self._serve(min(runnable, key=lambda lane: lane.pass_value))

    def _serve(self, lane: _Lane) -> None:
        """One frame of ``lane``: the oldest queued, loading its model first if needed."""
        self.virtual = lane.pass_value
        index = lane.head
        lane.head += 1
        arrival = lane.start_s + index / lane.fps
        cost = lane.costs[lane.target]
        service, cpu = cost.frame(after_idle=self.idle)
        self.idle = False
        key = lane.wanted
        if key not in self.residents:
            need = lane.app.descendants[lane.target].memory_bytes
            self._leave(lane)
            while self._resident_bytes() + need > self.budget and self._evict():
                pass
            self.residents[key] = _Resident(need, self.now)
            self.loads += 1
            lane.totals.loads += 1
            self.load_s += cost.load_s
            service += cost.load_s
            cpu += cost.load_cpu_s
        self._point(lane, key)
        self.residents[key].last_used = self.now
        self.now += service
        lane.pass_value += service / max(lane.share, MIN_SHARE)
        self.busy_s += service
        self.cpu_s += cpu + self.model.frame_cpu_s
        self.frames += 1
        lane.totals.frames_done += 1
        if self.now - arrival > lane.app.target_latency_s:
            lane.totals.frames_late += 1
        self._update(lane, self.now, in_flight=True)
        self._retire_if_drained(lane)

    def _update(self, lane: _Lane, t: float, in_flight: bool) -> None:
        """Queue the frames ``lane`` sent up to ``t`` (the newest ``queue_size`` stay).

        Never past the horizon: an event there may stop the app (later frames are counted
        at the next update; the count alone decides which frames are still queued).
        """
        if t < self.horizon:
            count = lane.arrivals_until(t)
        else:
            count = min(lane.arrivals_until(t), lane.arrivals_before(self.horizon))
        if count <= lane.arrived:
            return
        if lane.queued == 0 and not in_flight:
            lane.pass_value = max(lane.pass_value, self.virtual)
        lane.totals.frames_in += count - lane.arrived
        lane.arrived = count
        excess = lane.queued - self.model.queue_size
        if excess > 0:
            lane.head += excess
            self.drops += excess

    def _retire_if_drained(self, lane: _Lane) -> None:
        drained = lane.stop_s is not None and lane.queued == 0 and lane.next_arrival() is None
        if drained and self.lanes.pop(lane.name, None) is not None:
            self._leave(lane)

    # ------------------------------------------------------------------ memory

    def _resident_bytes(self) -> int:
        return sum(resident.bytes for resident in self.residents.values())

    def _point(self, lane: _Lane, key: ObjectKey) -> None:
        """Run a lane on resident ``key``; its old resident is freed if no lane runs on it."""
        if lane.resident != key:
            self._leave(lane)
            lane.resident = key

    def _leave(self, lane: _Lane) -> None:
        """A lane runs on no resident any more; its old one is freed if no lane runs on it."""
        old, lane.resident = lane.resident, None
        if old is not None and not any(other.resident == old for other in self.lanes.values()):
            self._free(old)

    def _free(self, key: ObjectKey) -> None:
        """Drop a resident; the lanes running on it have none."""
        del self.residents[key]
        for lane in self.lanes.values():
            if lane.resident == key:
                lane.resident = None

    def _evict(self) -> bool:
        """Free the least recently used resident; False if none is left."""
        if not self.residents:
            return False
        self._free(min(self.residents, key=lambda key: self.residents[key].last_used))
        return True
