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
* **One worker, start-time fair queueing** (`scheduler.daemon.executor.Executor`): the
  runnable app with the smallest virtual pass runs next (ties: the app registered first);
  after its frame its pass grows by ``service / share`` (shares below 0.01 count as 0.01); an
  app whose queue was empty re-enters at the current virtual time. Idle share goes to
  whoever has frames.
* **Batches.** Frames queued for the resident the picked app runs on (its own backlog and
  other apps' on the same resident) may run as one batch, as many as `scheduler.batching.
  BatchCost` advises from the batch times seen so far (the executor's own code), taken in
  the fair order; each frame is charged ``t(n) / n / share`` to its app's pass.
* **Service** of a batch of n frames: its descendant's ``service_s`` (wall time on the
  worker) and ``cpu_s`` (processor time) for the first frame, plus ``batch_frame_s`` /
  ``batch_frame_cpu_s`` for each further one. The first frame costs ``idle_service_s`` /
  ``idle_cpu_s`` instead when it finds the worker idle (it waited for this frame: the
  processor's caches and clock may have cooled meanwhile; `benchmarks/daemon_live.py`
  measures both). After each batch the worker spends ``dispatch_s`` per frame outside the
  model (taking the batch, delivering the results): it delays the next batch but is not
  service time (the executor does not count it as busy).
* **Models** (`scheduler.daemon.manager.ModelManager`): what is loaded is a *resident*, one
  per descendant id (an id-less descendant is a resident of its app alone), shared by every
  app whose descendant has that id; memory is accounted per resident. When the plan fits the
  budget it is applied outside the worker (the runtime applies a plan in the thread that
  handles the event), in the manager's phases: the limit is the larger of the old and new
  budgets; apps whose target is already resident move onto it; the missing residents are
  brought in, smallest first: beside the old ones when they fit (idle residents evicted first,
  least recently used first), grown or shrunk in place when the backend can
  (``switches_in_place``, torch) and every app on the old resident moves to the new one,
  otherwise *cold* (the residents the plan drops are freed first); then the limit comes down
  to the budget, evicting idle residents, then the least recently used. Each load or switch
  costs the descendant's ``load_s`` / ``load_cpu_s``; in-place switches are not loads.
* **Warm rungs.** A resident no app runs on any more stays loaded (and accounted) while some
  running app could use it; it is the first to go when room is needed. When swapping it is
  freed at once.
* **Swapping** (the resource-agnostic baseline when its plan does not fit): a frame whose app
  has no resident first loads the app's target in the worker, evicting idle residents, then
  the least recently used others, until it fits (a resident's last use: its load or the
  latest frame run on it); the load's wall and processor time are part of that frame's
  service.

The costs come from `RuntimeModel.costs` (per app name, per descendant), measured on the
machine that runs the daemon (see `benchmarks/daemon_live.py`); an app without costs uses its
profile's latency as both service and processor time and the `SwapModel` for loads
(``load_fixed_s + bytes / bandwidth``).

Processor time (``Summary.cpu_s``) = the batches' processor time + every load's
``load_cpu_s`` + ``frame_cpu_s`` per frame served (the runtime's own per-frame path: submit,
queue, dispatch, result) + the processor time of the re-plans (the simulator times its own
solver calls, the same code the runtime runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.batching import BatchCost
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
    batch_frame_s: float | None = None  # each further frame of a batch (None: service_s)
    batch_frame_cpu_s: float | None = None  # (None: cpu_s)

    def frame(self, after_idle: bool) -> tuple[float, float]:
        """Wall and processor seconds of one frame; ``after_idle``: the worker waited for it."""
        if after_idle:
            return (self.service_s if self.idle_service_s is None else self.idle_service_s,
                    self.cpu_s if self.idle_cpu_s is None else self.idle_cpu_s)
        return self.service_s, self.cpu_s

    def batch(self, frames: int, after_idle: bool) -> tuple[float, float]:
        """Wall and processor seconds of a batch of ``frames`` frames."""
        wall, cpu = self.frame(after_idle)
        more = frames - 1
        wall += more * (self.service_s if self.batch_frame_s is None else self.batch_frame_s)
        cpu += more * (self.cpu_s if self.batch_frame_cpu_s is None else self.batch_frame_cpu_s)
        return wall, cpu


@dataclass(frozen=True)
class RuntimeModel:
    """Replay the daemon's executor and model manager frame by frame (module docstring)."""

    queue_size: int = 4
    costs: Mapping[str, Sequence[DescendantCosts]] = field(default_factory=dict)
    frame_cpu_s: float = 0.0
    dispatch_s: float = 0.0
    """Worker wall seconds per frame outside the model call (not service time)."""
    switches_in_place: bool = False
    """The backend grows and shrinks a resident in place (torch); onnxruntime does not."""
    batching: bool = True

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

    def arrival(self, index: int) -> float:
        return self.start_s + index / self.fps

    @property
    def queued(self) -> int:
        return self.arrived - self.head

    @property
    def wanted(self) -> ObjectKey:
        """The resident its target descendant needs."""
        return object_key(self.app, self.target)

    @property
    def need(self) -> int:
        """Bytes of that resident."""
        return self.app.descendants[self.target].memory_bytes

    def usable(self) -> set[ObjectKey]:
        """Every resident this app's model could run on (its descendants' residents)."""
        return {object_key(self.app, d) for d in range(len(self.app.descendants))}


@dataclass
class _Resident:
    """One loaded object and when it was last used (loaded, or a frame run on it)."""

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
    limit: int = 0
    swapping: bool = False
    idle: bool = True  # the worker waited for the next frame (it is not straight after one)
    busy_s: float = 0.0
    cpu_s: float = 0.0
    load_s: float = 0.0
    loads: int = 0
    switches_in_place: int = 0
    frames: int = 0
    drops: int = 0
    batches: BatchCost = field(default_factory=BatchCost)

    def __post_init__(self) -> None:
        self.batches.enabled = self.model.batching

    # ------------------------------------------------------------------ plans

    def apply(self, t: float, planned: Mapping[str, PlannedLane], stopped: Sequence[str],
              budget: int, swapping: bool) -> None:
        """A re-plan at time ``t``: apps stop or leave, shares and descendants change, and
        the residents follow in the manager's phases (module docstring)."""
        for name in stopped:
            lane = self.lanes.get(name)
            if lane is not None:
                self._stop(lane, t)
        for name in [n for n in self.lanes if n not in planned]:
            self._detach(self.lanes.pop(name))  # paused by the plan: its frames are not served
        for name, part in planned.items():
            lane = self.lanes.get(name)
            if lane is None:
                lane = self.lanes[name] = _Lane(  # frames from its start, or from now if
                    name, part.app, part.totals, self._costs(part.app),  # it was paused
                    max(part.start_s, t), part.fps, part.share, part.descendant,
                    pass_value=self.virtual)
            lane.app, lane.share, lane.target = part.app, part.share, part.descendant
        self.limit = max(self.limit, budget)
        self.swapping = swapping
        for lane in self.lanes.values():
            if lane.wanted in self.residents:
                self._attach(lane, lane.wanted)
        if swapping:
            for key in self._unwanted():
                self._free(key)  # reloaded on demand by the worker
        else:
            for key in self._missing():
                self._bring(key, t)
        self._lower_limit(budget)

    def _missing(self) -> list[ObjectKey]:
        """Residents the lanes' targets need and that are not loaded, smallest first."""
        needs = {lane.wanted: lane.need for lane in self.lanes.values()}
        return sorted((key for key in needs if key not in self.residents),
                      key=lambda key: (needs[key], str(key)))

    def _unwanted(self) -> list[ObjectKey]:
        """Loaded residents that no lane's target needs."""
        wanted = {lane.wanted for lane in self.lanes.values()}
        return [key for key in self.residents if key not in wanted]

    def _bring(self, key: ObjectKey, t: float) -> None:
        """Load resident ``key`` for the lanes targeting it: in place when the backend can and
        every lane on a resident of the same model moves to it, beside the old residents when
        there is room, else cold (the residents no target needs are freed first)."""
        users = [lane for lane in self.lanes.values() if lane.wanted == key]
        first = users[0]
        need = first.need
        room = self._room_for(need)
        donor = self._donor(users) if room and self.model.switches_in_place else None
        if donor is not None:
            self.switches_in_place += 1
            self.residents[key] = self.residents.pop(donor)
            self.residents[key].bytes = need
            for lane in self.lanes.values():
                if lane.resident == donor:
                    lane.resident = key
        else:
            if not room:
                for old in self._unwanted():
                    self._free(old)
                self._make_room(need, keep=())
            self.loads += 1
            first.totals.loads += 1
            self.residents[key] = _Resident(need, t)
        cost = first.costs[first.target]
        self.load_s += cost.load_s
        self.cpu_s += cost.load_cpu_s
        for lane in users:
            self._attach(lane, key)

    def _donor(self, users: list[_Lane]) -> ObjectKey | None:
        """A resident of the users' model whose lanes all move to the users' target."""
        for key in users[0].usable():
            on_it = [lane for lane in self.lanes.values() if lane.resident == key]
            if key in self.residents and on_it and all(lane in users for lane in on_it):
                return key
        return None

    def _lower_limit(self, budget: int) -> None:
        """Bring the limit down to the budget: idle residents go first, then the least
        recently used."""
        while self._resident_bytes() > budget:
            if not self._evict_idle(self._resident_bytes() - budget) and not self._evict(()):
                break
        self.limit = budget

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
            self._serve(lane, [lane])
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
            first = min(runnable, key=lambda lane: lane.pass_value)
            key = first.resident
            mates = [lane for lane in runnable if key is not None and lane.resident == key]
            self._serve(first, mates or [first])

    def _serve(self, first: _Lane, mates: list[_Lane]) -> None:
        """One batch: ``first``'s oldest frame, then (as `BatchCost` advises) more frames of
        the lanes on the same resident in the fair order; ``first``'s model is loaded first
        if it has no resident (swapping)."""
        self.virtual = first.pass_value
        key = first.resident
        size = self.batches.size(key, sum(lane.queued for lane in mates) or 1)
        frame_s = self.batches.frame_seconds(key)
        taken = {lane.name: 0 for lane in mates} | {first.name: 0}
        batch: list[tuple[_Lane, int]] = []
        lane = first
        while True:
            batch.append((lane, lane.head))
            lane.head += 1
            taken[lane.name] += 1
            left = [mate for mate in mates if mate.queued > 0]
            if len(batch) >= size or not left:
                break
            lane = min(left, key=lambda m: m.pass_value + taken[m.name] * frame_s
                       / max(m.share, MIN_SHARE))
        cost = first.costs[first.target]
        service, cpu = cost.batch(len(batch), after_idle=self.idle)
        self.idle = False
        if key is None or key not in self.residents:
            load_s, load_cpu_s = self._load_on_demand(first)
            service += load_s
            cpu += load_cpu_s
        assert first.resident is not None
        self.residents[first.resident].last_used = self.now
        self.now += service
        self.batches.observe(key, len(batch), service)
        self.busy_s += service
        self.cpu_s += cpu + len(batch) * self.model.frame_cpu_s
        self.frames += len(batch)
        for lane, index in batch:
            lane.pass_value += service / len(batch) / max(lane.share, MIN_SHARE)
            lane.totals.frames_done += 1
            if self.now - lane.arrival(index) > lane.app.target_latency_s:
                lane.totals.frames_late += 1
        self.now += len(batch) * self.model.dispatch_s
        for lane in {lane.name: lane for lane, _ in batch}.values():
            self._update(lane, self.now, in_flight=True)
            self._retire_if_drained(lane)

    def _load_on_demand(self, lane: _Lane) -> tuple[float, float]:
        """Swapping: make the lane's target resident (evicting idle residents, then the
        least recently used others); its wall and processor seconds."""
        key = lane.wanted
        if key not in self.residents:
            self._make_room(lane.need, keep=(lane,))
            self.residents[key] = _Resident(lane.need, self.now)
            self.loads += 1
            lane.totals.loads += 1
            cost = lane.costs[lane.target]
            self.load_s += cost.load_s
            load = cost.load_s, cost.load_cpu_s
        else:
            load = 0.0, 0.0
        self._attach(lane, key)
        return load

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
            self._detach(lane)

    # ------------------------------------------------------------------ memory

    def _resident_bytes(self) -> int:
        return sum(resident.bytes for resident in self.residents.values())

    def _on(self, key: ObjectKey) -> list[_Lane]:
        return [lane for lane in self.lanes.values() if lane.resident == key]

    def _attach(self, lane: _Lane, key: ObjectKey) -> None:
        """Run a lane on resident ``key``; its old one goes idle (freed when swapping)."""
        old, lane.resident = lane.resident, key
        if old is not None and old != key:
            self._settle(old)

    def _settle(self, key: ObjectKey) -> None:
        """A resident that lost a lane: kept as a warm rung if idle, unless swapping."""
        if key in self.residents and not self._on(key) and self.swapping:
            self._free(key)

    def _detach(self, lane: _Lane) -> None:
        """A lane is gone: its resident may go idle, and idle residents no running lane
        could use are freed."""
        old, lane.resident = lane.resident, None
        if old is not None:
            self._settle(old)
        usable = set().union(*(other.usable() for other in self.lanes.values()))
        for key in [k for k in self.residents if not self._on(k) and k not in usable]:
            self._free(key)

    def _room_for(self, need: int) -> bool:
        """Evict idle residents (least recently used first) until ``need`` bytes fit the
        limit; whether they fit now."""
        if self._resident_bytes() + need > self.limit:
            self._evict_idle(self._resident_bytes() + need - self.limit)
        return self._resident_bytes() + need <= self.limit

    def _make_room(self, need: int, keep: Iterable[_Lane]) -> None:
        """Evict idle residents, then the least recently used ones no lane in ``keep`` runs
        on, until ``need`` bytes fit the limit (or nothing is left to evict)."""
        while not self._room_for(need) and self._evict(keep):
            pass

    def _evict_idle(self, wanted: int) -> bool:
        """Free least recently used idle residents until ``wanted`` bytes are free; whether
        any was freed."""
        idle = sorted((k for k in self.residents if not self._on(k)),
                      key=lambda k: self.residents[k].last_used)
        freed = 0
        for key in idle:
            if freed >= wanted:
                break
            freed += self.residents[key].bytes
            self._free(key)
        return freed > 0

    def _evict(self, keep: Iterable[_Lane]) -> bool:
        """Free the least recently used resident no lane in ``keep`` runs on; False if none."""
        kept = {lane.resident for lane in keep}
        candidates = [k for k in self.residents if k not in kept]
        if not candidates:
            return False
        self._free(min(candidates, key=lambda k: self.residents[k].last_used))
        return True

    def _free(self, key: ObjectKey) -> None:
        """Drop a resident; the lanes running on it have none."""
        del self.residents[key]
        for lane in self.lanes.values():
            if lane.resident == key:
                lane.resident = None
