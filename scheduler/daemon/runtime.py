"""The daemon runtime: apps register, frames run, every event re-plans and the plan is applied.

`Runtime` ties the parts together: the catalogue (which models exist), the scheduler (which
descendant and share each app gets), the model manager (resident descendants within the
memory budget) and the executor (per-app queues, weighted-fair compute sharing). Every event
-- register, unregister, update, set_policy -- re-solves with the switch-aware solver and
applies the plan (downgrades before upgrades) before it returns; events are serialised,
while frames keep flowing. The registered apps, the policy, the budget and the plan in force
are persisted atomically after every event and restored by `start`.

Nothing acknowledged is dropped: an app stays registered whatever happens to its model. It is
*serving* while the plan in force gives it a descendant; *unavailable* while its model is
missing from the catalogue or broken (its frames are refused with `ModelUnavailable`, which
says why); *waiting* while the plan cannot fit it (a restart or a reload found less room than
when it registered). Every event plans the waiting apps back in when they fit, and `reload`
rescans the models directory, so a fixed model serves its apps again.

See docs/runtime.md for the threading model and docs/formats.md for the API contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nestdnn.errors import NestError
from nestdnn.nestfile import as_array
from profiles.latency import LatencySettings, measure_interleaved
from scheduler.daemon.backends import InferenceBackend, make_backend
from scheduler.daemon.catalogue import CatalogueEntry, ModelCatalogue
from scheduler.daemon.errors import Infeasible, ModelUnavailable, UnknownApp, UnknownModel
from scheduler.daemon.executor import Executor, JobObserver, Prediction
from scheduler.daemon.manager import LedgerObserver, ModelManager, Target
from scheduler.daemon.planning import PlannedApp, plan
from scheduler.daemon.specs import (
    AppInfo,
    AppSpec,
    AppState,
    AppStatus,
    RuntimeSettings,
    Snapshot,
    check_policy,
    restored_spec,
)
from scheduler.daemon.speed import SpeedTracker
from scheduler.daemon.state import PersistedApp, RuntimeState, load_state, save_state
from scheduler.problem import Assignment, Method, Policy, Solution

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

REFERENCE_TIMING = LatencySettings(runs=30, rounds=3, warmup=5)
"""How the reference stack is timed at start (a few milliseconds on onnxruntime)."""


@dataclass(frozen=True)
class _App:
    """A registered app: id, display name and the spec in force."""

    id: str
    name: str
    spec: AppSpec


@dataclass(frozen=True)
class _Committed:
    """Everything an event decides, replaced as a whole so readers see one consistent plan."""

    policy: Policy
    method: Method
    alpha: float
    memory_budget_bytes: int
    apps: dict[str, _App]
    solution: Solution | None


class Runtime:
    """The on-device scheduler daemon's core: a Python API, no HTTP (see `api/`)."""

    def __init__(self, catalogue: ModelCatalogue, settings: RuntimeSettings, *,
                 backend: InferenceBackend | None = None,
                 ledger_observer: LedgerObserver | None = None,
                 job_observer: JobObserver | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """``backend`` defaults to the one ``settings.backend`` names (tests and benchmarks
        may give their own, e.g. one with stub costs); ``clock`` times frames (tests may give
        a model's)."""
        self.catalogue = catalogue
        self.settings = settings
        self._backend = backend or make_backend(settings.backend, settings.threads)
        self._manager = ModelManager(self._backend, settings.memory_budget_bytes,
                                     observer=ledger_observer, clock=clock,
                                     sharing=settings.sharing)
        self._executor = Executor(self._manager.run, queue_size=settings.queue_size,
                                  overflow=settings.overflow,
                                  on_start=self._backend.on_worker_start,
                                  observer=job_observer, group=self._manager.resident_key,
                                  batching=settings.batching, clock=clock)
        self._speed = SpeedTracker(self._profiled_latency, settings.drift_threshold,
                                   on_drift=self._replan_for_speed)
        self._executor.on_batch = lambda key, frames, result: self._speed.observe(
            None if key is None else key[:2], frames, result.compute_s)
        self._drift_replan: threading.Thread | None = None
        self._drift_lock = threading.Lock()
        self._committed = _Committed(settings.policy, settings.method, settings.alpha,
                                     settings.memory_budget_bytes, {}, None)
        self._events = threading.Lock()
        self._running = self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Prepare the backend, restore persisted apps and their plan, start the executor."""
        with self._events:
            if self._running:
                return
            if self._stopped:
                raise NestError("a stopped runtime cannot start again; create a new Runtime")
            self._prepare_backend()
            self._speed.start_scales(self._reference_scales())
            self._restore()
            self._executor.start()
            self._running = True
        log.info("runtime started: backend %s, %d threads, %d apps", self.settings.backend,
                 self.settings.threads, len(self._committed.apps))

    def stop(self) -> None:
        """Let the job in flight finish, drop queued frames, persist the state, close files."""
        with self._events:
            if not self._running:
                return
            self._running, self._stopped = False, True
            self._executor.stop()
            self._persist()
            self._backend.close()

    def _reference_scales(self) -> dict[str, float]:
        """Per model, today's speed against its profile's: the reference stack timed now on
        the backend over the profile's timing of it (1 where either is missing)."""
        runner = self._backend.reference_runner()
        if runner is None:
            return {}
        now = measure_interleaved([runner], REFERENCE_TIMING)[0].median_s
        scales = {}
        for name, entry in self.catalogue.entries.items():
            conditions = entry.profile.conditions.get(self._backend.name)
            if conditions is not None and conditions.reference is not None:
                scales[name] = now / conditions.reference.median_s
        log.info("reference stack: %.3f ms now; latency scale per model %s", now * 1e3,
                 {n: round(s, 3) for n, s in scales.items()})
        return scales

    def _profiled_latency(self, key: tuple[str, int]) -> float | None:
        """The profile's latency of a descendant; None if the catalogue has none now (its
        model was removed or rebuilt by a reload)."""
        entry = self.catalogue.entries.get(key[0])
        descendants = [] if entry is None else self._backend.descendants(entry)
        return descendants[key[1]].latency_s if key[1] < len(descendants) else None

    def _replan_for_speed(self) -> None:
        """A model's measured speed strayed past the threshold: re-plan in the background.

        Called from the worker thread, which must never wait for the event lock (an event
        may be waiting for the worker's job in flight)."""
        with self._drift_lock:
            if self._drift_replan is not None and self._drift_replan.is_alive():
                return
            self._drift_replan = threading.Thread(target=self._replan_at_new_speed,
                                                  name="nestdnn-replan", daemon=True)
            self._drift_replan.start()

    def _replan_at_new_speed(self) -> None:
        """Re-solve with the settings in force (and the latency scales now) and apply."""
        with self._events:
            if not self._running:
                return
            try:
                self._replan(self._committed.apps, self._committed)
            except NestError as exc:
                log.warning("re-plan for the measured speed failed, the plan in force stays:"
                            " %s", exc)
                return
            log.info("re-planned for the measured speed: %s", self._committed.solution.decision)

    def _prepare_backend(self) -> None:
        """Make every catalogue model loadable on the backend; those that cannot are rejected."""
        usable = []
        for name, entry in list(self.catalogue.entries.items()):
            try:
                entry.profiled(self._backend.name)
            except NestError as exc:
                self.catalogue.reject(name, str(exc))
            else:
                usable.append(entry)
        self._backend.prepare(usable)

    # ------------------------------------------------------------------ events

    def register(self, spec: AppSpec) -> AppInfo:
        """Add an app and re-plan; refused with `Infeasible` (nothing changed) if it cannot fit."""
        with self._events:
            self._require_running()
            self._entry(spec.model)
            app = _App(uuid.uuid4().hex[:12], spec.name or spec.model, spec)
            current = self._committed
            apps = {**current.apps, app.id: app}
            solution = self._plan(apps, current, required=self._serving() | {app.id})
            try:
                self._apply(apps, solution, current.memory_budget_bytes)
            except BaseException:
                self._apply(current.apps, current.solution, current.memory_budget_bytes)
                raise
            self._commit(replace(current, apps=apps, solution=solution))
            return self._info(app.id)

    def update(self, app_id: str, *, priority: float | None = None,
               target_latency_s: float | None = None, fps: float | None = None) -> AppInfo:
        """Change an app's priority or targets and re-plan (None leaves a field as it is)."""
        with self._events:
            self._require_running()
            app = self._app(app_id)
            changes = {k: v for k, v in (("priority", priority), ("fps", fps),
                                         ("target_latency_s", target_latency_s)) if v is not None}
            updated = replace(app, spec=replace(app.spec, **changes))
            apps = {**self._committed.apps, app_id: updated}
            self._replan(apps, self._committed)
            return self._info(app_id)

    def unregister(self, app_id: str) -> None:
        """Remove an app: its queued frames are dropped, its job in flight finishes; re-plan."""
        with self._events:
            self._require_running()
            self._app(app_id)
            apps = {a: app for a, app in self._committed.apps.items() if a != app_id}
            self._replan(apps, self._committed)

    def set_policy(self, policy: Policy | None = None, alpha: float | None = None,
                   memory_budget_bytes: int | None = None,
                   method: Method | None = None) -> Snapshot:
        """Change policy, alpha, budget or solver method and re-plan; `Infeasible` if no fit."""
        with self._events:
            self._require_running()
            current = self._committed
            new = replace(
                current,
                policy=current.policy if policy is None else policy,
                method=current.method if method is None else method,
                alpha=current.alpha if alpha is None else alpha,
                memory_budget_bytes=(current.memory_budget_bytes if memory_budget_bytes is None
                                     else memory_budget_bytes),
            )
            check_policy(new.policy, new.method, new.alpha, new.memory_budget_bytes)
            self._replan(current.apps, new)
        return self.snapshot()

    def reload(self) -> Snapshot:
        """Rescan the models directory: new and fixed models become servable, changed files
        replace the old ones (their apps reload from the new file), removed or broken ones
        leave their apps unavailable; then re-plan. Unchanged files keep their residents.

        A file that changes again while it is being loaded is rejected (its apps unavailable
        until the next reload); the models directory gone is a NestError and changes nothing.
        """
        with self._events:
            self._require_running()
            fresh = ModelCatalogue.load(self.catalogue.directory)
            old = self.catalogue.entries
            changed = {name for name, entry in old.items() if name not in fresh.entries
                       or fresh.entries[name].sha256 != entry.sha256
                       or entry.nest.changed_on_disk()}
            for name, entry in fresh.entries.items():
                if name in old and name not in changed:
                    entry.nest.close()
                    fresh.entries[name] = old[name]
            self._detach_models(changed)
            self._speed.forget(changed)
            self.catalogue = fresh
            self._prepare_backend()
            self._speed.start_scales(self._reference_scales())
            for name in changed:
                if name in old:
                    old[name].nest.close()
            self._replan_reloaded(changed)
            log.info("models reloaded: %d served (%s changed), %d rejected",
                     len(self.catalogue.entries), ", ".join(sorted(changed)) or "none",
                     len(self.catalogue.rejected))
        return self.snapshot()

    def _detach_models(self, models: set[str]) -> None:
        """Stop serving the apps of ``models`` and drop what the backend derived from them."""
        apps = self._committed.apps
        for app_id in list(self._executor.shares()):
            if app_id in apps and apps[app_id].spec.model in models:
                self._executor.remove_app(app_id)
                self._manager.forget(app_id)
        self._backend.forget(sorted(models))

    def _replan_reloaded(self, changed: set[str]) -> None:
        """Re-plan every app after a reload (the apps of ``changed`` models afresh). A model
        whose file changes on disk while its descendants load is rejected and the plan made
        again without it."""
        while True:
            current = self._committed
            incumbent = _without(current.solution, current.apps, changed)
            try:
                self._replan(current.apps, replace(current, solution=incumbent), required=set())
                return
            except ModelUnavailable:
                moved = {name for name, entry in self.catalogue.entries.items()
                         if entry.nest.changed_on_disk()}
                if not moved:
                    raise
                self._detach_models(moved)
                for name in moved:
                    self.catalogue.reject(name, "its file changed on disk while it was being"
                                                " loaded; reload again once it is complete")
                changed |= moved

    def _replan(self, apps: Mapping[str, _App], settings: _Committed,
                required: set[str] | None = None) -> None:
        """Plan ``apps`` under ``settings`` and apply it; the apps serving now (or
        ``required``) must stay in the plan, waiting apps join where they fit."""
        keep = self._serving() if required is None else required
        solution = self._plan(apps, settings, required=keep & set(apps))
        self._apply(apps, solution, settings.memory_budget_bytes)
        self._commit(replace(settings, apps=dict(apps), solution=solution))

    # ------------------------------------------------------------------ frames

    def submit(self, app_id: str, frame: Any) -> Future[Prediction]:
        """Queue one normalised (C, H, W) float32 frame (a numpy array, or a CPU torch
        tensor); the future gives its `Prediction`."""
        committed = self._committed
        app = committed.apps.get(app_id)
        if app is None or not self._running:
            raise UnknownApp(f"no app with id '{app_id}'"
                             + ("" if self._running else " (the runtime is not running)"))
        state, problem = self._state(committed, app)
        if state != "serving":
            raise ModelUnavailable(f"app '{app_id}' is {state}: {problem}")
        checked = _checked_frame(frame, self._entry(app.spec.model))
        try:
            return self._executor.submit(app_id, checked)
        except UnknownApp:
            if app_id not in self._committed.apps:  # unregistered meanwhile
                raise
            raise ModelUnavailable(f"app '{app_id}' is being re-planned (its model is"
                                   " reloading or it is leaving the plan); retry") from None

    def info(self, app_id: str) -> AppInfo:
        """An app as registered, with its part of the plan in force."""
        self._app(app_id)
        return self._info(app_id)

    def entry(self, app_id: str) -> CatalogueEntry:
        """The catalogue entry of an app's model (`ModelUnavailable` if it has none now)."""
        app = self._app(app_id)
        entry = self.catalogue.entries.get(app.spec.model)
        if entry is None:
            raise ModelUnavailable(f"app '{app_id}' is unavailable: {self._problem(app)}")
        return entry

    # ------------------------------------------------------------------ views

    def snapshot(self) -> Snapshot:
        """Policy, budget, accounted bytes, the plan and every app's measured figures."""
        committed = self._committed
        solution = committed.solution
        statuses = [self._status(committed, app) for app in committed.apps.values()]
        return Snapshot(
            policy=committed.policy, method=committed.method, alpha=committed.alpha,
            memory_budget_bytes=committed.memory_budget_bytes,
            accounted_bytes=self._manager.accounted_bytes,
            objective=None if solution is None else solution.objective,
            feasible=True if solution is None else solution.feasible,
            apps=statuses, swapping=self._manager.swapping, idle_bytes=self._manager.idle_bytes,
            latency_scale=self._speed.scales(),
        )

    def _status(self, committed: _Committed, app: _App) -> AppStatus:
        """One app's status, from the plan it was given and what the manager and executor
        hold for it now (an app between two plans, e.g. re-attached by a reload, has no
        resident or counters for a moment)."""
        state, problem = self._state(committed, app)
        part = _assigned(committed.solution, app.id) if state == "serving" else None
        resident = counters = None
        if state == "serving":
            with contextlib.suppress(UnknownApp):
                resident = self._manager.info(app.id)
            with contextlib.suppress(UnknownApp):
                counters = self._executor.counters(app.id)
        return AppStatus(
            id=app.id, name=app.name, model=app.spec.model,
            descendant=None if part is None else part.descendant,
            share=0.0 if part is None else part.share,
            accuracy=None if part is None else part.accuracy,
            resident_bytes=0 if resident is None else resident.resident_bytes,
            fps_measured=0.0 if counters is None else counters.fps_measured,
            latency_p50_s=None if counters is None else counters.latency_p50_s,
            latency_p99_s=None if counters is None else counters.latency_p99_s,
            frames=0 if counters is None else counters.frames,
            drops=0 if counters is None else counters.drops,
            switches=0 if resident is None else resident.switches, priority=app.spec.priority,
            target_latency_s=app.spec.target_latency_s, fps=app.spec.fps,
            loads=0 if resident is None else resident.loads,
            busy_s=0.0 if counters is None else counters.busy_s,
            latency_assumed_s=(None if part is None else
                               self._speed.assumed((app.spec.model, part.descendant))),
            latency_measured_s=(None if resident is None or resident.descendant is None else
                                self._speed.measured((app.spec.model, resident.descendant))),
            state=state, problem=problem,
            failures=0 if counters is None else counters.failures,
            switch_bytes=0 if resident is None else resident.switch_bytes,
        )

    def _info(self, app_id: str) -> AppInfo:
        committed = self._committed
        app = committed.apps[app_id]
        state, problem = self._state(committed, app)
        part = _assigned(committed.solution, app_id) if state == "serving" else None
        return AppInfo(id=app.id, name=app.name, model=app.spec.model,
                       descendant=None if part is None else part.descendant,
                       share=0.0 if part is None else part.share,
                       accuracy=None if part is None else part.accuracy,
                       target_latency_s=app.spec.target_latency_s, fps=app.spec.fps,
                       priority=app.spec.priority, state=state, problem=problem)

    def _state(self, committed: _Committed, app: _App) -> tuple[AppState, str | None]:
        """Serving (in the plan), unavailable (no servable model) or waiting (no room)."""
        if app.spec.model not in self.catalogue.entries:
            return "unavailable", self._problem(app)
        if _assigned(committed.solution, app.id) is None:
            return "waiting", ("the plan in force has no room for it (memory budget); it is"
                               " planned in again when it fits")
        return "serving", None

    def _problem(self, app: _App) -> str:
        """Why an app's model is not servable now."""
        reason = next((r.reason for r in self.catalogue.rejected if r.name == app.spec.model),
                      None)
        if reason is None:
            return f"model '{app.spec.model}' is not in the models directory"
        return f"model '{app.spec.model}' cannot be served: {reason}"

    def _serving(self) -> set[str]:
        solution = self._committed.solution
        return set() if solution is None else {a.name for a in solution.apps}

    # ------------------------------------------------------------------ planning

    def _plan(self, apps: Mapping[str, _App], settings: _Committed,
              required: set[str]) -> Solution:
        """The switch-aware plan of the servable apps; while it does not fit, the newest apps
        not ``required`` wait outside it. `Infeasible` if the required ones do not fit."""
        candidates = [app for app in apps.values() if app.spec.model in self.catalogue.entries]
        while True:
            try:
                return self._solve(candidates, settings)
            except Infeasible:
                optional = [app for app in candidates if app.id not in required]
                if not optional:
                    raise
                log.warning("app %s waits: no room for it in the plan", optional[-1].id)
                candidates.remove(optional[-1])

    def _solve(self, apps: list[_App], settings: _Committed) -> Solution:
        """The switch-aware plan for ``apps`` given the plan in force (``settings.solution``);
        `Infeasible` if no plan fits the budget."""
        planned = [PlannedApp(app.id, self._entry(app.spec.model), app.spec) for app in apps]
        return plan(planned, self._backend, policy=settings.policy, method=settings.method,
                    alpha=settings.alpha, memory_budget_bytes=settings.memory_budget_bytes,
                    share_step=self.settings.share_step,
                    switch_tolerance=self.settings.switch_tolerance, current=settings.solution,
                    latency_scale=self._speed.scales(), sharing=self.settings.sharing,
                    slots=self.settings.app_slots)

    def _apply(self, apps: Mapping[str, _App], solution: Solution | None, budget: int) -> None:
        """Serve exactly the plan's apps: apps leaving it lose their queue, apps joining it
        get one; switch descendants; hand the shares to the executor."""
        parts = [] if solution is None else solution.apps
        planned = {a.name for a in parts}
        for app_id in set(self._executor.shares()) - planned:
            self._executor.remove_app(app_id)
            self._manager.forget(app_id)
        for part in parts:
            if part.name not in self._executor.shares():
                self._executor.add_app(part.name, part.share)
        targets = {a.name: Target(self._entry(apps[a.name].spec.model), a.descendant)
                   for a in parts}
        self._manager.apply(targets, budget, swapping=solution is not None
                            and not solution.fits_memory, hold=self._executor.hold)
        self._executor.set_shares({a.name: a.share for a in parts})

    def _commit(self, committed: _Committed) -> None:
        self._committed = committed
        self._persist()

    # ------------------------------------------------------------------ persistence

    def _persist(self) -> None:
        """Write apps, policy, budget and plan atomically (when a state_dir is set)."""
        if self.settings.state_dir is None:
            return
        c = self._committed
        apps = [PersistedApp(id=a.id, name=a.name, **_spec_fields(a.spec))
                for a in c.apps.values()]
        save_state(self.settings.state_dir, RuntimeState(
            policy=c.policy, method=c.method, alpha=c.alpha,
            memory_budget_bytes=c.memory_budget_bytes, apps=apps, plan=c.solution))

    def _restore(self) -> None:
        """Re-register every persisted app (also those whose model is not servable now) with
        the persisted plan as the incumbent, reconciled with the models as they are now."""
        if self.settings.state_dir is None:
            return
        state = load_state(self.settings.state_dir)
        if state is None:
            return
        apps = {saved.id: _restored_app(saved) for saved in state.apps}
        incumbent = _reconciled(state.plan, apps, self.catalogue)
        restored = _Committed(state.policy, state.method, state.alpha,
                              state.memory_budget_bytes, apps, incumbent)
        solution = self._plan(apps, restored, required=set())
        self._apply(apps, solution, restored.memory_budget_bytes)
        self._commit(replace(restored, solution=solution))
        for app in apps.values():
            app_state, problem = self._state(self._committed, app)
            if app_state != "serving":
                log.warning("app %s (%s) restored %s: %s", app.id, app.name, app_state, problem)
        log.info("restored %d apps (policy %s, budget %d bytes, plan %s)", len(apps),
                 restored.policy, restored.memory_budget_bytes, solution.decision)

    # ------------------------------------------------------------------ lookups

    def _entry(self, model: str) -> CatalogueEntry:
        entry = self.catalogue.entries.get(model)
        if entry is None:
            served = ", ".join(sorted(self.catalogue.entries)) or "none"
            raise UnknownModel(f"no model '{model}' in the catalogue (served: {served})")
        return entry

    def _app(self, app_id: str) -> _App:
        app = self._committed.apps.get(app_id)
        if app is None:
            raise UnknownApp(f"no app with id '{app_id}'")
        return app

    def _require_running(self) -> None:
        if not self._running:
            raise NestError("the runtime is not running: call start() first")


def _restored_app(saved: PersistedApp) -> _App:
    """A persisted app, its values brought within today's bounds (with a warning) rather than
    dropped or failing the start."""
    spec, fixes = restored_spec(**saved.model_dump(exclude={"id", "name"}))
    if fixes:
        log.warning("app %s (%s): the state file holds values outside today's bounds, kept"
                    " within them: %s", saved.id, saved.name, "; ".join(fixes))
    return _App(saved.id, saved.name, spec)


def _assigned(solution: Solution | None, app_id: str) -> Assignment | None:
    """An app's part of a plan (apps are named by their ids in the scheduler's problem)."""
    for part in [] if solution is None else solution.apps:
        if part.name == app_id:
            return part
    return None


def _reconciled(plan: Solution | None, apps: Mapping[str, _App],
                catalogue: ModelCatalogue) -> Solution | None:
    """A persisted plan without the parts the models no longer support (an app whose model
    is gone, or whose descendant no longer exists in a rebuilt file): those apps are planned
    afresh instead of failing the restart."""
    if plan is None:
        return None
    valid = [part for part in plan.apps if part.name in apps
             and (entry := catalogue.entries.get(apps[part.name].spec.model)) is not None
             and part.descendant < entry.num_descendants]
    if len(valid) < len(plan.apps):
        log.warning("the persisted plan names %d descendants the models no longer have; those"
                    " apps are planned afresh", len(plan.apps) - len(valid))
    return plan.model_copy(update={"apps": valid})


def _without(plan: Solution | None, apps: Mapping[str, _App],
             models: set[str]) -> Solution | None:
    """A plan without the parts of apps on ``models`` (their files changed: plan afresh)."""
    if plan is None or not models:
        return plan
    return plan.model_copy(update={"apps": [
        part for part in plan.apps
        if part.name in apps and apps[part.name].spec.model not in models]})


def _checked_frame(frame: Any, entry: CatalogueEntry) -> np.ndarray:
    """The frame as a float32 array of the model's input shape, or a NestError saying why not."""
    try:
        array = as_array(frame)
    except (TypeError, ValueError, RuntimeError) as e:
        raise NestError(f"a frame must be a float32 array, got {type(frame).__name__}") from e
    if array.dtype != np.float32 or array.shape != entry.input_shape:
        raise NestError(
            f"model {entry.name} takes float32 frames of shape {entry.input_shape},"
            f" got {array.dtype} {array.shape}"
        )
    return array


def _spec_fields(spec: AppSpec) -> dict[str, object]:
    fields = dataclasses.asdict(spec)
    fields.pop("name")
    return fields
