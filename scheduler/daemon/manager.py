"""Model manager: resident descendants shared by the apps that run them, within the budget.

**Residents.** What is loaded is a *resident*: one descendant of one model (key ``(model,
descendant)``), loaded once and used by every app the plan gives that descendant. The ledger
accounts bytes per resident, never per app (the backend's M(d): the resident memory the
profile measured for holding it). Bytes are reserved *before* a resident is loaded and
released only after it is gone; a reservation that would pass the limit is refused
(`BudgetViolation`, a bug, never user input), so the accounted bytes never exceed the budget,
also in the middle of a switch.

**Warm rungs.** A resident no app uses any more stays loaded (accounted) while another app of
its model is still served and the budget has room: switching back to it is then a pointer
swap. Such idle residents are the first to go, least recently used first, whenever room is
needed or the budget shrinks, and all of a model's go when its last app leaves.

**Plans** are applied in three phases: (1) apps whose target is already resident move to it
and residents the plan no longer needs become idle; (2) the limit comes down to the budget
(idle residents evicted); (3) the missing residents load, smallest first. While a resident
loads, its future users keep running on their old ones; only when there is no room for old
and new together does an app go *cold*: it is held (its frames wait), its old resident freed,
the new one loaded. The torch backend grows or shrinks a resident in place instead when all
its users move to the same new descendant (old and new both accounted meanwhile).

**Callers never see half a switch.** An app changes resident only inside ``hold(app_id)``,
which the executor grants once the app's job in flight (if any) has finished; queued frames
then run on the new descendant.

**Swapping** (the resource-agnostic baseline, whose fixed descendants may not fit together):
residents are loaded on demand by the executor's worker before a job, evicting the least
recently used others until the new one fits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from nestdnn.errors import NestError
from profiles.memory import release_freed_heap
from scheduler.daemon.backends import InferenceBackend, LoadedModel, softmax
from scheduler.daemon.catalogue import CatalogueEntry
from scheduler.daemon.errors import BadModelOutput, ModelUnavailable, UnknownApp
from scheduler.daemon.executor import RunResult

log = logging.getLogger(__name__)

Hold = Callable[[str], AbstractContextManager[None]]
LedgerObserver = Callable[[int, int, str], None]
"""Called with (accounted bytes, limit, what changed) after every change of the ledger."""
Key = tuple[str, int, str]
"""A resident: (model name, descendant index, owner): the owner is "" for a resident apps
share, and the app's id when the manager runs without sharing (one copy per app)."""


class BudgetViolation(RuntimeError):
    """A reservation would pass the limit: a bug in plan application, never user input."""


@dataclass(frozen=True)
class Target:
    """The descendant an app should run, per the plan."""

    entry: CatalogueEntry
    descendant: int


@dataclass(eq=False)
class _Resident:
    """One loaded descendant of one model, and the apps running on it."""

    key: Key
    entry: CatalogueEntry
    bytes: int
    model: LoadedModel | None = None
    users: set[str] = field(default_factory=set)
    busy: bool = False  # loading or switching: never evicted meanwhile
    last_used: float = 0.0

    @property
    def name(self) -> str:
        owner = f" of {self.key[2]}" if self.key[2] else ""
        return f"{self.key[0]}:d{self.key[1]}{owner}"


@dataclass(eq=False)
class _App:
    """One app: its model, planned descendant, the resident it runs on, counters."""

    entry: CatalogueEntry
    target: int
    memory: list[int]
    resident: _Resident | None = None
    last_descendant: int | None = None
    switches: int = 0
    loads: int = 0
    switch_bytes: int = 0
    """Bytes loaded from storage to switch it (a warm rung's pointer swap moves none)."""

    owner: str = ""

    @property
    def target_key(self) -> Key:
        return (self.entry.name, self.target, self.owner)


@dataclass(frozen=True)
class ResidentInfo:
    """What an app runs on: its resident descendant and that resident's (shared) bytes."""

    descendant: int | None
    resident_bytes: int
    switches: int
    loads: int
    switch_bytes: int = 0


class ModelManager:
    """Residents shared by apps; plans applied without ever passing the memory budget."""

    def __init__(self, backend: InferenceBackend, memory_budget_bytes: int,
                 observer: LedgerObserver | None = None,
                 clock: Callable[[], float] = time.perf_counter, sharing: bool = True) -> None:
        """``clock`` times the backend's compute of a batch (tests give a model's);
        ``sharing=False`` gives every app its own copy (what apps without a daemon do)."""
        self._backend = backend
        self._sharing = sharing
        self._clock = clock
        self._limit = memory_budget_bytes
        self._observer = observer
        self._apps: dict[str, _App] = {}
        self._residents: dict[Key, _Resident] = {}
        self._accounted = 0
        self._swapping = False
        self._lock = threading.Condition(threading.RLock())

    @property
    def accounted_bytes(self) -> int:
        return self._accounted

    @property
    def idle_bytes(self) -> int:
        """Bytes of warm rungs: residents no app runs on (evicted first when room is needed)."""
        with self._lock:
            return sum(r.bytes for r in self._residents.values() if not r.users and r.model)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def swapping(self) -> bool:
        return self._swapping

    def info(self, app_id: str) -> ResidentInfo:
        """Resident descendant, its accounted bytes and the counters of one app."""
        with self._lock:
            app = self._app(app_id)
            resident = app.resident
            if resident is None or resident.model is None:
                return ResidentInfo(None, 0, app.switches, app.loads, app.switch_bytes)
            return ResidentInfo(resident.key[1], resident.bytes, app.switches, app.loads,
                                app.switch_bytes)

    def resident_key(self, app_id: str) -> Key | None:
        """The resident an app runs on now (apps with the same key share one model)."""
        app = self._apps.get(app_id)
        resident = None if app is None else app.resident
        return None if resident is None else resident.key

    # ---------------------------------------------------------------- plans

    def apply(self, targets: Mapping[str, Target], budget: int, swapping: bool,
              hold: Hold) -> None:
        """Bring every app to its target (see the module docstring for the phases)."""
        with self._lock:
            for app_id in [a for a in self._apps if a not in targets]:
                self._detach(app_id, f"{app_id}: app gone")
            self._limit = max(self._limit, budget)
            self._notify("plan: limit is the larger of the old and new budget")
            self._swapping = swapping
            for app_id, target in targets.items():
                self._set_target(app_id, target)
            ready = [a for a in targets if self._can_repoint(a)]
        for app_id in ready:
            self._repoint(app_id, hold)
        if swapping:
            self._drop_stale_residents(hold)
        else:
            with contextlib.ExitStack() as cold:
                for key in self._missing():
                    self._bring(key, hold, cold)
        self._lower_limit(budget, hold)

    def forget(self, app_id: str) -> None:
        """Detach an app (the executor no longer runs it); unneeded residents go idle or free."""
        with self._lock:
            if app_id in self._apps:
                self._detach(app_id, f"{app_id}: unregistered")

    def _set_target(self, app_id: str, target: Target) -> None:
        app = self._apps.get(app_id)
        if app is None:
            memory = [d.memory_bytes for d in self._backend.descendants(target.entry)]
            self._apps[app_id] = _App(target.entry, target.descendant, memory,
                                      owner="" if self._sharing else app_id)
        else:
            app.target = target.descendant

    def _missing(self) -> list[Key]:
        """Targets not loaded yet, smallest first."""
        with self._lock:
            loaded = {k for k, r in self._residents.items() if r.model is not None}
            needs = {app.target_key: app.memory[app.target] for app in self._apps.values()}
            return sorted((k for k in needs if k not in loaded), key=lambda k: (needs[k], k))

    def _can_repoint(self, app_id: str) -> bool:
        """Whether the app's target is loaded (and it does not run on it yet)."""
        app = self._apps[app_id]
        resident = self._residents.get(app.target_key)
        return (resident is not None and resident.model is not None and not resident.busy
                and app.resident is not resident)

    def _repoint(self, app_id: str, hold: Hold) -> None:
        """Move an app onto its (loaded) target resident; the old one may go idle."""
        with hold(app_id), self._lock:
            if self._can_repoint(app_id):
                app = self._apps[app_id]
                self._attach(app_id, self._residents[app.target_key])

    def _bring(self, key: Key, hold: Hold, cold: contextlib.ExitStack) -> None:
        """Load the resident ``key`` for the apps targeting it.

        Beside their old residents when there is room (idle rungs evicted first); in place
        (torch) when all users of one resident move to it and old and new fit together;
        otherwise cold: every app still running on a resident the plan drops is held (in
        ``cold``, until the plan is applied) and those residents are freed.
        """
        with self._lock:
            users = [a for a, app in self._apps.items() if app.target_key == key]
            need = self._apps[users[0]].memory[key[1]]
            room = self._room_for(need)
            donor = self._in_place_donor(key, users) if room else None
        if donor is not None:
            self._switch_in_place(donor, key, hold)
        else:
            self._load(self._reserve_when_room(key, need, hold, cold))
        for app_id in users:
            self._repoint(app_id, hold)

    def _reserve_when_room(self, key: Key, need: int, hold: Hold,
                           cold: contextlib.ExitStack) -> _Resident:
        """Reserve ``key``'s bytes: idle rungs go first, then the residents the plan drops
        (their apps held in ``cold``), and loads in progress are awaited."""
        while True:
            with self._lock:
                if self._room_for(need):
                    return self._reserve_resident(key, need, f"{key[0]}:d{key[1]}: loading")
                if not self._departing():
                    self._await_busy(f"{need} bytes needed for {key[0]}:d{key[1]}")
                    continue
            self._free_departing(hold, cold)

    def _departing(self) -> list[_Resident]:
        """Loaded residents that no app's target needs any more (lock held)."""
        needed = {app.target_key for app in self._apps.values()}
        return [r for r in self._residents.values()
                if r.key not in needed and r.model is not None and not r.busy]

    def _free_departing(self, hold: Hold, cold: contextlib.ExitStack) -> None:
        """Hold the apps on residents the plan no longer needs and free those residents."""
        with self._lock:
            departing = self._departing()
            users = sorted({a for r in departing for a in r.users})
        for app_id in users:
            cold.enter_context(hold(app_id))
        with self._lock:
            for resident in departing:
                if resident.key in self._residents and not resident.busy:
                    self._free(resident, f"{resident.name}: freed before a cold load")

    def _in_place_donor(self, key: Key, users: list[str]) -> _Resident | None:
        """A resident of the same model whose users all move to ``key`` and which the backend
        can grow or shrink in place (lock held; room for both already checked)."""
        if not self._backend.switches_in_place:
            return None
        for resident in self._residents.values():
            if (resident.key[0::2] == key[0::2] and resident.model is not None
                    and not resident.busy
                    and resident.users and resident.users <= set(users)):
                return resident
        return None

    def _switch_in_place(self, donor: _Resident, key: Key, hold: Hold) -> None:
        """Grow or shrink ``donor`` into ``key``, both accounted meanwhile."""
        with contextlib.ExitStack() as held:
            for app_id in sorted(donor.users):
                held.enter_context(hold(app_id))
            with self._lock:
                need = self._apps[next(iter(donor.users))].memory[key[1]]
                self._reserve(need, f"{donor.name}->d{key[1]} in place, old and new both"
                                    " accounted")
                donor.busy = True
            model = donor.model
            assert model is not None
            try:
                model.switch_in_place(key[1])
            finally:
                with self._lock:
                    donor.busy = False
                    if model.descendant == key[1]:
                        self._unreserve(donor.bytes, f"{donor.name}: old descendant freed")
                        del self._residents[donor.key]
                        first = self._apps[min(donor.users)]
                        first.switch_bytes += max(0, need - donor.bytes)  # levels read
                        donor.key, donor.bytes = key, need
                        self._residents[key] = donor
                        for app_id in donor.users:
                            self._count_switch(self._apps[app_id], key[1])
                    else:
                        self._unreserve(need, f"{donor.name}: switch failed")
                    self._lock.notify_all()

    def _lower_limit(self, budget: int, hold: Hold) -> None:
        """Bring the limit down to the budget: idle residents go first, then (swapping, or a
        load the worker began under the old limit) the least recently used, awaiting busy
        ones."""
        while True:
            with self._lock:
                if self._accounted <= budget:
                    self._limit = budget
                    self._notify("limit set to the budget")
                    return
                if self._evict_idle(self._accounted - budget):
                    continue
                victim = self._least_recently_used(exclude=set())
                if victim is None:
                    self._await_busy(f"{self._accounted} bytes held, budget {budget}")
                    continue
            with contextlib.ExitStack() as held:
                for app_id in sorted(victim.users):
                    held.enter_context(hold(app_id))
                with self._lock:
                    if victim.key in self._residents and not victim.busy:
                        self._free(victim, f"{victim.name}: evicted for the new budget")

    def _drop_stale_residents(self, hold: Hold) -> None:
        """When swapping, residents the plan no longer targets are freed (reloaded later)."""
        with self._lock:
            stale = [r for r in self._residents.values()
                     if r.model is not None and not r.busy
                     and r.key not in {a.target_key for a in self._apps.values()}]
        for resident in stale:
            with contextlib.ExitStack() as held:
                for app_id in sorted(resident.users):
                    held.enter_context(hold(app_id))
                with self._lock:
                    if resident.key in self._residents and not resident.busy:
                        self._free(resident, f"{resident.name}: stale descendant")

    # ---------------------------------------------------------------- inference

    def run(self, app_ids: list[str], frames: list[np.ndarray]) -> RunResult:
        """Run frames of apps that share one resident as one batch (loading the resident
        first when swapping); a frame whose outputs are not finite fails the batch.

        Called by the executor while it counts the apps' jobs in flight, so no app of the
        batch changes resident meanwhile and the resident can be read without the lock.
        """
        app = self._app(app_ids[0])
        resident = app.resident
        if resident is None or resident.model is None:
            resident = self._load_on_demand(app_ids[0], app)
        model = resident.model
        assert model is not None
        resident.last_used = time.monotonic()
        started = self._clock()
        logits = model.logits(np.stack(frames))
        compute_s = self._clock() - started
        if not np.isfinite(logits).all():
            raise BadModelOutput(f"{resident.name} computed non-finite outputs (NaN or"
                                 " infinity): the model file's weights are unusable")
        return RunResult(softmax(logits), model.descendant, compute_s)

    def _load_on_demand(self, app_id: str, app: _App) -> _Resident:
        """Swapping: make the app's target resident, evicting least recently used others."""
        with self._lock:
            existing = self._residents.get(app.target_key)
            if existing is not None and existing.model is not None:
                self._attach(app_id, existing)
                return existing
            need = app.memory[app.target]
            self._make_room(need, keep={app_id})
            resident = self._reserve_resident(app.target_key, need,
                                              f"{app_id}: loading d{app.target}")
        self._load(resident)
        with self._lock:
            app.loads += 1
            self._attach(app_id, resident)
        return resident

    # ---------------------------------------------------------------- residents

    def _reserve_resident(self, key: Key, need: int, why: str) -> _Resident:
        """Reserve a new resident's bytes and register it, busy, unloaded (lock held)."""
        self._reserve(need, why)
        resident = _Resident(key, self._entry_of(key), need, busy=True)
        self._residents[key] = resident
        return resident

    def _entry_of(self, key: Key) -> CatalogueEntry:
        return next(a.entry for a in self._apps.values() if a.entry.name == key[0])

    def _load(self, resident: _Resident) -> None:
        """Load a reserved resident from storage outside the lock, then publish it."""
        try:
            model = self._backend.open(resident.entry, resident.key[1])
        except BaseException as error:
            with self._lock:
                self._residents.pop(resident.key, None)
                self._unreserve(resident.bytes, f"{resident.name}: load failed")
                self._lock.notify_all()
            if isinstance(error, NestError) and not isinstance(error, ModelUnavailable):
                raise ModelUnavailable(f"{resident.name} cannot be loaded: {error}") from error
            raise
        with self._lock:
            resident.model, resident.busy = model, False
            resident.last_used = time.monotonic()
            for app in self._apps.values():
                if app.target_key == resident.key and not self._swapping:
                    app.loads += 1
                    if app.last_descendant not in (None, resident.key[1]):
                        app.switch_bytes += resident.bytes
                    break
            self._lock.notify_all()

    def _attach(self, app_id: str, resident: _Resident) -> None:
        """Point an app at a resident; its old one may become idle (lock held)."""
        app = self._apps[app_id]
        old = app.resident
        if old is resident:
            return
        resident.users.add(app_id)
        app.resident = resident
        self._count_switch(app, resident.key[1])
        if old is not None:
            old.users.discard(app_id)
            self._settle(old)

    def _detach(self, app_id: str, why: str) -> None:
        """Forget an app; its resident goes idle (or free), and its model's idle ones too if
        it was the model's last app (lock held)."""
        app = self._apps.pop(app_id)
        old = app.resident
        if old is not None:
            old.users.discard(app_id)
            self._settle(old)
        last = not any(a.entry.name == app.entry.name for a in self._apps.values())
        for resident in [r for r in self._residents.values() if not r.users and not r.busy
                         and (r.key[2] == app_id or (last and r.key[0] == app.entry.name))]:
            self._free(resident, f"{resident.name}: {why}, no app of its model can use it")

    def _settle(self, resident: _Resident) -> None:
        """A resident that lost a user: kept as a warm rung if idle (evicted when room is
        needed), unless swapping, where unused residents go at once (lock held)."""
        if not resident.users and self._swapping and not resident.busy:
            self._free(resident, f"{resident.name}: no app runs on it")

    def _room_for(self, need: int) -> bool:
        """Evict idle rungs (least recently used first) until ``need`` bytes fit; whether
        they fit now (lock held)."""
        if not self._fits(need):
            self._evict_idle(need - (self._limit - self._accounted))
        return self._fits(need)

    def _make_room(self, need: int, keep: set[str]) -> None:
        """Swapping: evict idle rungs, then the least recently used residents whose apps are
        not in ``keep``, until ``need`` bytes fit; busy ones are awaited (lock held)."""
        while not self._room_for(need):
            victim = self._least_recently_used(exclude=keep)
            if victim is None:
                self._await_busy(f"{need} bytes needed")
            else:
                self._free(victim, f"{victim.name}: evicted")

    def _evict_idle(self, wanted: int) -> bool:
        """Free least recently used idle residents until ``wanted`` bytes are free; whether any
        was freed (lock held)."""
        idle = sorted((r for r in self._residents.values()
                       if not r.users and not r.busy and r.model is not None),
                      key=lambda r: r.last_used)
        freed = 0
        for resident in idle:
            if freed >= wanted:
                break
            freed += resident.bytes
            self._free(resident, f"{resident.name}: idle rung evicted")
        return freed > 0

    def _least_recently_used(self, exclude: set[str]) -> _Resident | None:
        candidates = [r for r in self._residents.values()
                      if r.model is not None and not r.busy and not (r.users & exclude)]
        return min(candidates, key=lambda r: r.last_used, default=None)

    def _await_busy(self, problem: str) -> None:
        """Wait (lock held on entry and exit) until a busy resident finishes; none busy: a bug."""
        if not any(r.busy for r in self._residents.values()):
            raise BudgetViolation(f"{problem}: {self._accounted} bytes held, limit"
                                  f" {self._limit}, nothing left to evict")
        self._lock.wait()

    def _free(self, resident: _Resident, why: str) -> None:
        """Drop a resident and its bytes (its users, if any, no longer run on it)."""
        for app_id in resident.users:
            self._apps[app_id].resident = None
        resident.users.clear()
        if resident.model is not None:
            resident.model.close()
        resident.model = None
        self._residents.pop(resident.key, None)
        self._unreserve(resident.bytes, why)
        release_freed_heap()  # the process's memory follows the ledger down

    # ---------------------------------------------------------------- ledger

    @staticmethod
    def _count_switch(app: _App, descendant: int) -> None:
        if app.last_descendant is not None and app.last_descendant != descendant:
            app.switches += 1
        app.last_descendant = descendant

    def _fits(self, extra: int) -> bool:
        return self._accounted + extra <= self._limit

    def _reserve(self, nbytes: int, why: str) -> None:
        if not self._fits(nbytes):
            raise BudgetViolation(
                f"{why}: {self._accounted} + {nbytes} bytes would pass the limit {self._limit}"
            )
        self._accounted += nbytes
        self._notify(why)

    def _unreserve(self, nbytes: int, why: str) -> None:
        self._accounted -= nbytes
        self._notify(why)

    def _notify(self, why: str) -> None:
        log.debug("ledger %d / %d bytes: %s", self._accounted, self._limit, why)
        if self._observer is not None:
            self._observer(self._accounted, self._limit, why)

    def _app(self, app_id: str) -> _App:
        app = self._apps.get(app_id)
        if app is None:
            raise UnknownApp(f"no app with id '{app_id}'")
        return app
