"""Model manager: each app's resident descendant, switched within the memory budget.

**Accounting.** The manager keeps a ledger of the bytes of every descendant it holds (the
scheduler's M(d) of the backend). Bytes are reserved *before* a descendant is loaded and
released only after it is gone, and a reservation that would pass the limit is refused, so
the accounted bytes never exceed the budget, also in the middle of a switch. While an app
switches in place (torch's nested upgrade / downgrade), both its old and its new descendant
are accounted until the switch is done. If both do not fit, the switch goes *cold*: the old
descendant is released first and the new one loaded from storage.

**Plans** are applied downgrades first, then the budget lowered (when it shrinks), then
upgrades and new loads. After the downgrades the apps still to upgrade hold their smaller
old descendants, so a cold upgrade always fits when the plan does.

**Callers never see half a switch.** Every switch of an app happens inside
``hold(app_id)``, which the executor grants only once the app's job in flight (if any) has
finished on the descendant it started on, and during which no new job of the app starts.
Queued frames wait and then run on the new descendant.

**Swapping** (the resource-agnostic baseline, whose fixed descendants may not fit together):
descendants are loaded on demand by the executor's worker before a job, evicting the least
recently used other descendants until the new one fits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from scheduler.daemon.backends import InferenceBackend, LoadedModel
from scheduler.daemon.catalogue import CatalogueEntry
from scheduler.daemon.errors import UnknownApp

log = logging.getLogger(__name__)

Hold = Callable[[str], AbstractContextManager[None]]
LedgerObserver = Callable[[int, int, str], None]
"""Called with (accounted bytes, limit, what changed) after every change of the ledger."""


class BudgetViolation(RuntimeError):
    """A reservation would pass the limit: a bug in plan application, never user input."""


@dataclass(frozen=True)
class Target:
    """The descendant an app should run, per the plan."""

    entry: CatalogueEntry
    descendant: int


@dataclass
class _Slot:
    """One app's model: planned descendant, what is resident, counters."""

    entry: CatalogueEntry
    target: int
    memory: list[int]
    model: LoadedModel | None = None
    accounted: int = 0
    busy: bool = False
    last_descendant: int | None = None
    last_used: float = 0.0
    switches: int = 0
    loads: int = 0


@dataclass(frozen=True)
class ResidentInfo:
    """What the manager holds for one app."""

    descendant: int | None
    resident_bytes: int
    switches: int
    loads: int


class ModelManager:
    """Holds every app's descendant and applies plans without passing the memory budget."""

    def __init__(self, backend: InferenceBackend, memory_budget_bytes: int,
                 observer: LedgerObserver | None = None) -> None:
        self._backend = backend
        self._limit = memory_budget_bytes
        self._observer = observer
        self._slots: dict[str, _Slot] = {}
        self._accounted = 0
        self._swapping = False
        self._lock = threading.Condition(threading.RLock())

    @property
    def accounted_bytes(self) -> int:
        return self._accounted

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def swapping(self) -> bool:
        return self._swapping

    def info(self, app_id: str) -> ResidentInfo:
        """Resident descendant, accounted bytes and counters of one app."""
        with self._lock:
            slot = self._slot(app_id)
            descendant = None if slot.model is None else slot.model.descendant
            return ResidentInfo(descendant, slot.accounted, slot.switches, slot.loads)

    # ---------------------------------------------------------------- plans

    def apply(self, targets: Mapping[str, Target], budget: int, swapping: bool,
              hold: Hold) -> None:
        """Switch every app to its target: downgrades, then the new limit, then upgrades."""
        with self._lock:
            for app_id in [a for a in self._slots if a not in targets]:
                self._release(self._slots.pop(app_id), f"{app_id}: app gone")
            self._limit = max(self._limit, budget)
            self._notify("plan: limit is the larger of the old and new budget")
            self._swapping = swapping
            for app_id, target in targets.items():
                self._set_target(app_id, target)
            downgrades = [a for a in targets if self._direction(a) == "down"]
        for app_id in downgrades:
            self._switch(app_id, hold)
        self._lower_limit(budget, hold)
        with self._lock:
            upgrades = [a for a in targets if self._direction(a) == "up"]
        for app_id in upgrades:
            if swapping:
                self._unload_if_stale(app_id, hold)
            else:
                self._switch(app_id, hold)

    def forget(self, app_id: str) -> None:
        """Free an app's descendant and forget the app (the executor no longer runs it)."""
        with self._lock:
            slot = self._slots.pop(app_id, None)
            if slot is not None:
                self._release(slot, f"{app_id}: unregistered")

    def _set_target(self, app_id: str, target: Target) -> None:
        slot = self._slots.get(app_id)
        if slot is None:
            memory = [d.memory_bytes for d in self._backend.descendants(target.entry)]
            self._slots[app_id] = _Slot(target.entry, target.descendant, memory)
        else:
            slot.target = target.descendant

    def _direction(self, app_id: str) -> str | None:
        """'down' if the app must shed bytes, 'up' if it must load, None if it is done."""
        slot = self._slots[app_id]
        if slot.model is None:
            return None if self._swapping else "up"
        if slot.model.descendant == slot.target:
            return None
        return "down" if slot.memory[slot.target] <= slot.accounted else "up"

    def _lower_limit(self, budget: int, hold: Hold) -> None:
        """Bring the limit down to the budget, evicting least recently used models if needed.

        Needed only while swapping, or when a load the worker began under the old limit is
        still running (then its end is awaited).
        """
        while True:
            with self._lock:
                if self._accounted <= budget:
                    self._limit = budget
                    self._notify("limit set to the budget")
                    return
                victim = self._least_recently_used(exclude=None)
                if victim is None:
                    self._await_busy_slot(f"{self._accounted} bytes held, budget {budget}")
                    continue
            with hold(victim), self._lock:
                self._release(self._slots[victim], f"{victim}: evicted for the new budget")

    def _unload_if_stale(self, app_id: str, hold: Hold) -> None:
        """When swapping, a resident descendant that is not the target is freed (reloaded later)."""
        with hold(app_id), self._lock:
            slot = self._slots[app_id]
            if slot.model is not None and slot.model.descendant != slot.target:
                self._release(slot, f"{app_id}: stale descendant")

    def _switch(self, app_id: str, hold: Hold) -> None:
        """Bring one app to its target descendant, in place if old and new fit together.

        The ledger changes under the lock; the slow part (reading from storage) runs outside
        it, the slot marked busy so that no eviction touches it meanwhile.
        """
        with hold(app_id):
            with self._lock:
                slot = self._slots[app_id]
                old, target = slot.model, slot.target
                if old is not None and old.descendant == target:
                    return
                need = slot.memory[target]
                in_place = old is not None and old.switches_in_place and self._fits(need)
                if in_place:
                    self._reserve(need, f"{app_id}: d{slot.last_descendant}->d{target} in place,"
                                        " old and new both accounted")
                    slot.busy = True
                else:
                    self._release(slot, f"{app_id}: old descendant freed before a cold load")
                    self._reserve_load(app_id, slot)
            if in_place:
                assert old is not None
                self._switch_in_place(app_id, slot, old, need)
            else:
                self._complete_load(app_id, slot, need)

    def _switch_in_place(self, app_id: str, slot: _Slot, model: LoadedModel, need: int) -> None:
        """Grow or shrink the resident model; then release the old descendant's bytes."""
        target = slot.target
        try:
            model.switch_in_place(target)
        finally:
            with self._lock:
                slot.busy = False
                if model.descendant == target:
                    self._unreserve(slot.accounted, f"{app_id}: old descendant freed")
                    slot.accounted = need
                    self._count_switch(slot, target)
                else:
                    self._unreserve(need, f"{app_id}: switch failed")
                self._lock.notify_all()

    # ---------------------------------------------------------------- inference

    def run(self, app_id: str, frame: np.ndarray) -> tuple[list[float], int]:
        """Run one frame on the app's resident descendant (loading it first when swapping).

        Called by the executor while it counts the app's job in flight, so no switch of this
        app can run meanwhile and the slot's model can be read without the lock.
        """
        slot = self._slot(app_id)
        if slot.model is None:
            with self._lock:
                self._make_room(app_id, slot.memory[slot.target])
                need = self._reserve_load(app_id, slot)
            self._complete_load(app_id, slot, need)
        model = slot.model
        assert model is not None
        slot.last_used = time.monotonic()
        return model.predict(frame), model.descendant

    def _make_room(self, app_id: str, need: int) -> None:
        """Evict least recently used other models until ``need`` bytes fit.

        Runs on the executor's single worker, which is running ``app_id``: no other app has a
        job in flight. Slots being switched are busy: they are skipped, and if nothing else
        can go, their end is awaited (it frees their transient bytes).
        """
        while not self._fits(need):
            victim = self._least_recently_used(exclude=app_id)
            if victim is None:
                self._await_busy_slot(f"{app_id} needs {need} bytes")
            else:
                self._release(self._slots[victim], f"{victim}: evicted for {app_id}")

    def _await_busy_slot(self, problem: str) -> None:
        """Wait (lock held on entry and exit) until a busy slot finishes; none busy: a bug."""
        if not any(s.busy for s in self._slots.values()):
            raise BudgetViolation(f"{problem}: {self._accounted} bytes held, limit"
                                  f" {self._limit}, nothing left to evict")
        self._lock.wait()

    def _least_recently_used(self, exclude: str | None) -> str | None:
        resident = [(s.last_used, a) for a, s in self._slots.items()
                    if s.model is not None and not s.busy and a != exclude]
        return min(resident)[1] if resident else None

    # ---------------------------------------------------------------- ledger

    def _reserve_load(self, app_id: str, slot: _Slot) -> int:
        """Reserve the target's bytes and mark the slot busy (lock held); returns the bytes."""
        need = slot.memory[slot.target]
        self._reserve(need, f"{app_id}: loading d{slot.target}")
        slot.busy = True
        return need

    def _complete_load(self, app_id: str, slot: _Slot, need: int) -> None:
        """Load the reserved descendant from storage outside the lock, then commit it."""
        target = slot.target
        try:
            model = self._backend.open(slot.entry, target)
        except BaseException:
            with self._lock:
                slot.busy = False
                self._unreserve(need, f"{app_id}: load failed")
                self._lock.notify_all()
            raise
        with self._lock:
            slot.busy = False
            slot.model, slot.accounted = model, need
            slot.loads += 1
            self._count_switch(slot, target)
            self._lock.notify_all()

    def _release(self, slot: _Slot, why: str) -> None:
        """Drop a slot's model and its bytes from the ledger."""
        if slot.model is None:
            return
        slot.model.close()
        slot.model = None
        self._unreserve(slot.accounted, why)
        slot.accounted = 0

    @staticmethod
    def _count_switch(slot: _Slot, descendant: int) -> None:
        if slot.last_descendant is not None and slot.last_descendant != descendant:
            slot.switches += 1
        slot.last_descendant = descendant

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

    def _slot(self, app_id: str) -> _Slot:
        slot = self._slots.get(app_id)
        if slot is None:
            raise UnknownApp(f"no app with id '{app_id}'")
        return slot
