"""Daemon runtime: catalogue, model manager (memory budget), runtime events, restart safety.

Models are tiny synthetic `.nest` files (channel prefixes of a random VGG-11 on 1x16x16
inputs) with profiles written through the profile schema (latency measured, accuracies
assigned). No assertion depends on wall-clock time.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nestdnn.errors import NestError
from nestdnn.nestfile import NestFile
from profiles.schema import DEFAULT_BACKEND
from profiles.synthetic import synthetic_models_dir
from scheduler.daemon import (
    AppSpec,
    CatalogueEntry,
    FrameDropped,
    Infeasible,
    LoadedModel,
    ModelCatalogue,
    Prediction,
    QueueFull,
    Runtime,
    RuntimeSettings,
    Snapshot,
    UnknownApp,
    UnknownModel,
)
from scheduler.daemon.backends.onnxrt import OrtBackend
from scheduler.daemon.backends.pytorch import TorchBackend
from scheduler.daemon.executor import Executor
from scheduler.daemon.manager import ModelManager, Target
from scheduler.daemon.state import RuntimeState
from scheduler.problem import App
from scheduler.simulate import AppStart, AppStop, Trace, simulate

MODELS = ("cam", "mic")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_models_dir(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def catalogue(models_dir: Path) -> ModelCatalogue:
    catalogue = ModelCatalogue.load(models_dir)
    assert sorted(catalogue.entries) == sorted(MODELS)
    return catalogue


def frame_for(catalogue: ModelCatalogue, model: str) -> np.ndarray:
    shape = catalogue.entries[model].input_shape
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def sizes(catalogue: ModelCatalogue, model: str) -> list[int]:
    return [d.memory_bytes for d in catalogue.entries[model].profiled(DEFAULT_BACKEND)]


@dataclass
class Ledger:
    """Records every ledger change: the accounted bytes and the limit in force."""

    steps: list[tuple[int, int, str]] = field(default_factory=list)

    def __call__(self, accounted: int, limit: int, why: str) -> None:
        self.steps.append((accounted, limit, why))

    def over_limit(self) -> list[tuple[int, int, str]]:
        return [s for s in self.steps if s[0] > s[1]]

    def max_over(self, budget: int, start: int = 0) -> int:
        return max((s[0] for s in self.steps[start:]), default=0) - budget


@contextlib.contextmanager
def no_jobs(_app_id: str) -> Iterator[None]:
    """The hold of a manager tested without an executor: nothing ever runs."""
    yield


# ------------------------------------------------------------------------------ catalogue


def test_catalogue_rejects_a_profile_of_another_file_and_keeps_the_rest(
    models_dir: Path, tmp_path: Path
) -> None:
    for name in ("cam", "mic"):
        for suffix in (".nest", ".profile.json"):
            shutil.copy(models_dir / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    shutil.copy(models_dir / "cam.nest", tmp_path / "mic.nest")  # profile no longer matches
    (tmp_path / "orphan.profile.json").write_text("{}")
    shutil.copy(models_dir / "cam.nest", tmp_path / "lonely.nest")
    (tmp_path / "broken.nest").write_bytes(b"not a safetensors file")
    shutil.copy(models_dir / "cam.profile.json", tmp_path / "broken.profile.json")

    catalogue = ModelCatalogue.load(tmp_path)

    assert sorted(catalogue.entries) == ["cam"]
    reasons = {r.name: r.reason for r in catalogue.rejected}
    assert sorted(reasons) == ["broken", "lonely", "mic", "orphan"]
    assert "measured on another file" in reasons["mic"]
    assert "no profile" in reasons["lonely"]
    assert "no orphan.nest" in reasons["orphan"]
    entry = catalogue.entries["cam"]
    assert entry.input_shape == (1, 16, 16)
    assert entry.class_names == ["class0", "class1", "class2", "class3"]


# -------------------------------------------------------------------------------- manager


def test_plans_apply_downgrades_first_and_never_pass_the_budget(
    catalogue: ModelCatalogue,
) -> None:
    """Swap which model is big: the smaller target loads first and the bigger one only once
    the departing resident made room."""
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    budget = max(cam[2], mic[2]) + cam[0] + mic[0]  # one big and one small, not two big
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entries = catalogue.entries

    manager.apply({"a": Target(entries["cam"], 2), "b": Target(entries["mic"], 0)}, budget,
                  swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entries["cam"], 0), "b": Target(entries["mic"], 2)}, budget,
                  swapping=False, hold=no_jobs)

    assert ledger.over_limit() == []
    assert ledger.max_over(budget) <= 0
    assert (manager.info("a").descendant, manager.info("b").descendant) == (0, 2)
    assert manager.accounted_bytes <= budget
    whys = [why for _, _, why in ledger.steps]
    first_up = next(i for i, w in enumerate(whys) if w.startswith(("mic:d2", "mic:d0->d2")))
    cam_down = next(i for i, w in enumerate(whys) if w.startswith(("cam:d0", "cam:d2->d0")))
    assert cam_down < first_up


def test_apps_on_the_same_model_share_one_resident_and_swap_by_pointer(
    catalogue: ModelCatalogue,
) -> None:
    """Two apps on one descendant hold it once; swapping which of two apps is big is a
    pointer swap between the two residents: no load, no byte more."""
    cam = sizes(catalogue, "cam")
    ledger = Ledger()
    budget = cam[2] + cam[0]
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entry = catalogue.entries["cam"]
    manager.apply({"a": Target(entry, 2), "b": Target(entry, 2)}, budget, swapping=False,
                  hold=no_jobs)
    assert manager.accounted_bytes == cam[2]
    manager.apply({"a": Target(entry, 2), "b": Target(entry, 0), "c": Target(entry, 0)},
                  budget, swapping=False, hold=no_jobs)
    assert manager.accounted_bytes == cam[2] + cam[0]
    steps = len(ledger.steps)
    manager.apply({"a": Target(entry, 0), "b": Target(entry, 2), "c": Target(entry, 0)},
                  budget, swapping=False, hold=no_jobs)
    assert len(ledger.steps) == steps + 2  # the limit, restated: no load, no free
    assert [manager.info(a).descendant for a in "abc"] == [0, 2, 0]
    assert manager.resident_key("a") == manager.resident_key("c") == ("cam", 0, "")
    for app in "abc":
        manager.forget(app)
    assert manager.accounted_bytes == 0  # the last app of a model frees its residents


def test_an_upgrade_that_fits_beside_the_old_descendant_is_done_in_place(
    catalogue: ModelCatalogue,
) -> None:
    cam = sizes(catalogue, "cam")
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), cam[0] + cam[2], observer=ledger)
    entry = catalogue.entries["cam"]
    manager.apply({"a": Target(entry, 0)}, cam[0] + cam[2], swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entry, 2)}, cam[0] + cam[2], swapping=False, hold=no_jobs)
    assert [s[0] for s in ledger.steps if s[2].startswith("cam:")] == [
        cam[0], cam[0] + cam[2], cam[2]]
    assert manager.info("a").loads == 1  # one load from storage, then the nested upgrade
    assert manager.info("a").switches == 1


def test_an_upgrade_without_room_for_both_goes_cold(catalogue: ModelCatalogue) -> None:
    cam = sizes(catalogue, "cam")
    budget = cam[2]
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entry = catalogue.entries["cam"]
    manager.apply({"a": Target(entry, 0)}, budget, swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entry, 2)}, budget, swapping=False, hold=no_jobs)
    assert [s[0] for s in ledger.steps if s[2].startswith("cam:")] == [cam[0], 0, cam[2]]
    assert ledger.over_limit() == []
    assert manager.info("a").loads == 2


def test_a_switch_back_finds_its_warm_rung_when_the_budget_had_room(
    catalogue: ModelCatalogue,
) -> None:
    """On a backend that cannot switch in place, the descendant an app left stays loaded
    while there is room: switching back is a pointer swap; it goes first when room is short."""
    cam = sizes(catalogue, "cam")
    budget = cam[0] + cam[2]
    ledger = Ledger()
    manager = ModelManager(OrtBackend(), budget, observer=ledger)
    manager._backend.prepare([catalogue.entries["cam"]])
    entry = catalogue.entries["cam"]
    for target in (2, 0, 2):
        manager.apply({"a": Target(entry, target)}, budget, swapping=False, hold=no_jobs)
    assert manager.info("a").loads == 2 and manager.info("a").switches == 2
    assert manager.idle_bytes == cam[0]
    manager.apply({"a": Target(entry, 1)}, budget, swapping=False, hold=no_jobs)
    assert manager.info("a").descendant == 1
    assert ledger.over_limit() == [] and manager.accounted_bytes <= budget


def test_a_shrinking_budget_keeps_the_old_limit_until_the_downgrades_are_done(
    catalogue: ModelCatalogue,
) -> None:
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    ledger = Ledger()
    big = cam[2] + mic[2]
    manager = ModelManager(TorchBackend(), big, observer=ledger)
    entries = catalogue.entries
    manager.apply({"a": Target(entries["cam"], 2), "b": Target(entries["mic"], 2)}, big,
                  swapping=False, hold=no_jobs)
    small = cam[1] + mic[1]
    manager.apply({"a": Target(entries["cam"], 1), "b": Target(entries["mic"], 1)}, small,
                  swapping=False, hold=no_jobs)
    assert ledger.over_limit() == []
    assert manager.limit == small
    assert manager.accounted_bytes == small


def test_each_file_is_validated_once_and_every_load_reads_from_it(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalogue opens (validates and hashes) each file once; the backend's cold loads and
    in-place switches all read from that open file; once the catalogue closes its files,
    loaded models keep predicting but can no longer switch."""
    reference = ModelCatalogue.load(models_dir)
    frame = frame_for(reference, "cam")
    expected = [TorchBackend().open(reference.entries["cam"], k).logits(frame[None])
                for k in range(3)]
    reference.close()
    opened: list[str] = []
    original = NestFile.__init__

    def counting(self: NestFile, path: Path) -> None:
        opened.append(Path(path).name)
        original(self, path)

    monkeypatch.setattr(NestFile, "__init__", counting)
    catalogue = ModelCatalogue.load(models_dir)
    assert sorted(opened) == ["cam.nest", "mic.nest"]
    cam = catalogue.entries["cam"]
    backend = TorchBackend()
    backend.prepare(list(catalogue.entries.values()))
    models = []
    for k in (0, 2, 1, 2, 0):
        model = backend.open(cam, k)
        assert model.descendant == k
        assert model.logits(frame[None]) == pytest.approx(expected[k], abs=1e-6)
        model.close()
        models.append(model)
    grown = backend.open(cam, 0)
    grown.switch_in_place(2)
    assert grown.logits(frame[None]) == pytest.approx(expected[2])
    assert len(opened) == 2
    catalogue.close()
    assert models[1].logits(frame[None]) == pytest.approx(expected[2])
    with pytest.raises(NestError, match="closed"):
        grown.switch_in_place(1)
    assert len(opened) == 2


def test_swapping_loads_on_demand_and_evicts_the_least_recently_used(
    catalogue: ModelCatalogue,
) -> None:
    """The baseline's fixed descendants do not fit together: they take turns."""
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    budget = max(cam[2], mic[2])
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entries = catalogue.entries
    manager.apply({"a": Target(entries["cam"], 2), "b": Target(entries["mic"], 2)}, budget,
                  swapping=True, hold=no_jobs)
    assert manager.accounted_bytes == 0
    for app, model in [("a", "cam"), ("b", "mic"), ("a", "cam")]:
        result = manager.run([app], [frame_for(catalogue, model)])
        assert result.descendant == 2
        assert sum(result.probabilities[0]) == pytest.approx(1.0, abs=1e-5)
    assert ledger.over_limit() == []
    assert (manager.info("a").loads, manager.info("b").loads) == (2, 1)
    assert manager.info("b").descendant is None  # evicted for a's second turn
    assert (manager.info("a").switches, manager.info("b").switches) == (0, 0)


def test_a_budget_cut_waits_for_a_load_in_progress_and_never_passes_the_limit(
    catalogue: ModelCatalogue,
) -> None:
    """While the worker loads a model on demand (swapping), the admin cuts the budget: the
    cut waits for the load to end, evicts it after its frame, and only then lowers the
    limit and loads the new plan."""
    cam = sizes(catalogue, "cam")
    entry = catalogue.entries["cam"]
    opening, gate, waited = threading.Event(), threading.Event(), threading.Event()

    class GatedBackend(TorchBackend):
        def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
            opening.set()
            assert gate.wait(timeout=120)
            return super().open(entry, descendant)

    class Probe(ModelManager):
        def _await_busy(self, problem: str) -> None:
            waited.set()
            super()._await_busy(problem)

    ledger = Ledger()
    manager = Probe(GatedBackend(), cam[2], observer=ledger)
    executor = Executor(manager.run, queue_size=2)
    executor.add_app("a", 1.0)
    manager.apply({"a": Target(entry, 2)}, cam[2], swapping=True, hold=executor.hold)
    executor.start()
    try:
        frame = executor.submit("a", frame_for(catalogue, "cam"))
        assert opening.wait(timeout=120)
        cut = threading.Thread(target=manager.apply,
                               args=({"a": Target(entry, 0)}, cam[0], False, executor.hold))
        cut.start()
        assert waited.wait(timeout=120)  # the cut found only the busy load and waits for it
        gate.set()
        cut.join(timeout=120)
        assert frame.result(timeout=120).descendant == 2
    finally:
        gate.set()
        executor.stop()
    assert ledger.over_limit() == []
    assert (manager.limit, manager.accounted_bytes) == (cam[0], cam[0])
    assert manager.info("a").descendant == 0


# -------------------------------------------------------------------------------- runtime


@pytest.fixture
def make_runtime(catalogue: ModelCatalogue) -> Iterator[Callable[..., Runtime]]:
    """Start runtimes on the shared catalogue; all are stopped at the end of the test."""
    started: list[Runtime] = []

    def make(budget: int, state_dir: Path | None = None,
             ledger: Callable[[int, int, str], None] | None = None,
             **settings: Any) -> Runtime:
        rt = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=budget, state_dir=state_dir,
                                                **settings), ledger_observer=ledger)
        rt.start()
        started.append(rt)
        return rt

    yield make
    for rt in started:
        rt.stop()


def plan_of(snapshot: Snapshot) -> dict[str, tuple[str, int, float]]:
    return {a.id: (a.model, a.descendant, a.share) for a in snapshot.apps}


def test_register_runs_frames_on_the_planned_descendant(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    rt = make_runtime(cam[2] + mic[2])
    a = rt.register(AppSpec(model="cam", fps=30.0))
    b = rt.register(AppSpec(model="mic", target_latency_s=0.2, priority=2.0, name="mic app"))
    assert b.name == "mic app" and b.priority == 2.0 and b.fps is None
    snap = rt.snapshot()
    assert {s.id for s in snap.apps} == {a.id, b.id}
    assert snap.accounted_bytes == sum(s.resident_bytes for s in snap.apps)
    assert snap.accounted_bytes <= snap.memory_budget_bytes
    assert sum(s.share for s in snap.apps) <= 1.0 + 1e-9
    assert rt._executor.shares() == pytest.approx({s.id: s.share for s in snap.apps})
    prediction = rt.submit(b.id, frame_for(catalogue, "mic")).result(timeout=60)
    planned = next(s for s in snap.apps if s.id == b.id)
    assert prediction.descendant == planned.descendant
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert prediction.label == max(range(4), key=prediction.probabilities.__getitem__)
    assert prediction.queue_s >= 0 and prediction.compute_s > 0
    measured = rt.snapshot().apps[1]
    assert (measured.frames, measured.drops, measured.switches, measured.loads) == (1, 0, 0, 1)
    assert measured.fps_measured > 0 and measured.busy_s > 0
    assert measured.latency_p50_s == measured.latency_p99_s > 0


def test_bad_requests_are_refused_with_clear_errors(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    rt = make_runtime(sum(sizes(catalogue, "cam")))
    with pytest.raises(UnknownModel, match="no model 'nope'"):
        rt.register(AppSpec(model="nope", fps=30.0))
    with pytest.raises(NestError, match="target_latency_s or fps"):
        AppSpec(model="cam")
    with pytest.raises(NestError, match="min_accuracy"):
        rt.register(AppSpec(model="cam", fps=30.0, min_accuracy=0.99))
    app = rt.register(AppSpec(model="cam", fps=30.0))
    with pytest.raises(NestError, match=r"shape \(1, 16, 16\)"):
        rt.submit(app.id, np.zeros((3, 16, 16), dtype=np.float32))
    with pytest.raises(UnknownApp):
        rt.submit("missing", frame_for(catalogue, "cam"))
    with pytest.raises(NestError, match="policy must be one of"):
        rt.set_policy(policy="fastest")  # type: ignore[arg-type]
    rt.unregister(app.id)
    with pytest.raises(UnknownApp):
        rt.unregister(app.id)


def test_min_accuracy_limits_the_descendants_an_app_may_get(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    cam = catalogue.entries["cam"].profiled(DEFAULT_BACKEND)
    rt = make_runtime(sum(sizes(catalogue, "cam")))
    info = rt.register(AppSpec(model="cam", fps=1.0, min_accuracy=cam[1].accuracy))
    assert info.descendant >= 1
    assert info.accuracy >= cam[1].accuracy


def test_infeasible_registration_is_refused_and_changes_nothing(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    budget = cam[0] + mic[0] - 1000  # a cam fits; a mic beside it misses 1000 bytes
    rt = make_runtime(budget, state_dir=tmp_path)
    rt.register(AppSpec(model="cam", fps=30.0))
    before, state_before = rt.snapshot(), (tmp_path / "state.json").read_bytes()

    with pytest.raises(Infeasible) as refused:
        rt.register(AppSpec(model="mic", fps=30.0))

    assert refused.value.bytes_missing == 1000
    after = rt.snapshot()
    assert plan_of(after) == plan_of(before)
    assert after.accounted_bytes == before.accounted_bytes
    assert (tmp_path / "state.json").read_bytes() == state_before
    assert rt._executor.shares().keys() == {a.id for a in before.apps}


def test_a_request_in_flight_finishes_on_its_descendant_and_one_sent_mid_switch_completes(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    """Frame 1 is running on d2 when a smaller budget forces a downgrade; frame 2 is
    submitted while the switch is half done (both descendants accounted)."""
    cam = sizes(catalogue, "cam")
    mid_switch: list[Future[Prediction]] = []
    ledger = Ledger()
    live: dict[str, Any] = {}

    def submit_mid_switch(accounted: int, limit: int, why: str) -> None:
        ledger(accounted, limit, why)
        if "in place" in why and not mid_switch:
            mid_switch.append(live["rt"].submit(live["app"], live["frame"]))

    rt = make_runtime(cam[2] + cam[1], ledger=submit_mid_switch, backend="torch")
    app = rt.register(AppSpec(model="cam", target_latency_s=10.0))
    assert app.descendant == 2
    frame = frame_for(catalogue, "cam")
    live.update(rt=rt, app=app.id, frame=frame)
    gate, running = threading.Event(), threading.Event()
    run = rt._executor._runner

    def gated(app_id: str, f: np.ndarray) -> tuple[list[float], int]:
        running.set()
        gate.wait()
        return run(app_id, f)

    rt._executor._runner = gated  # white-box: hold the first frame in flight
    in_flight = rt.submit(app.id, frame)
    assert running.wait(timeout=60)
    shrink = threading.Thread(target=rt.set_policy, kwargs={"memory_budget_bytes": cam[1]})
    shrink.start()
    while not rt._executor._apps[app.id].held:  # the switch waits for the frame in flight
        time.sleep(0.001)
    gate.set()
    shrink.join(timeout=120)

    assert in_flight.result(timeout=60).descendant == 2
    assert len(mid_switch) == 1
    late = mid_switch[0].result(timeout=60)
    assert late.descendant == rt.snapshot().apps[0].descendant < 2
    assert sum(late.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert ledger.over_limit() == []


def test_every_frame_gets_exactly_one_outcome_while_apps_come_and_go(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    """8 threads submit to random app ids while a 9th registers and unregisters apps."""
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    rt = make_runtime(cam[2] + mic[2], queue_size=2)
    frames = {m: frame_for(catalogue, m) for m in MODELS}
    live: list[tuple[str, str]] = [(rt.register(AppSpec(model=m, fps=30.0)).id, m)
                                   for m in MODELS]
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    per_app: Counter[tuple[str, str]] = Counter()
    futures: list[tuple[str, Future[Prediction]]] = []

    def submitter(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            with lock:
                app_id, model = rng.choice(live)
            try:
                future = rt.submit(app_id, frames[model])
            except (UnknownApp, QueueFull):
                with lock:
                    outcomes["refused"] += 1
            else:
                with lock:
                    futures.append((app_id, future))

    def churn() -> None:
        rng = random.Random(99)
        for _ in range(6):
            model = rng.choice(MODELS)
            new = rt.register(AppSpec(model=model, fps=30.0))
            with lock:
                live.append((new.id, model))
                gone = live.pop(rng.randrange(len(live) - 1))
            rt.unregister(gone[0])

    threads = [threading.Thread(target=submitter, args=(s,)) for s in range(8)]
    threads.append(threading.Thread(target=churn))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for app_id, future in futures:
        try:
            prediction = future.result(timeout=120)
        except FrameDropped:
            outcome = "dropped"
        else:
            assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
            outcome = "result"
        outcomes[outcome] += 1
        per_app[app_id, outcome] += 1
    assert sum(outcomes.values()) == 8 * 60
    assert outcomes["result"] > 0
    snap = rt.snapshot()
    assert len(snap.apps) == len(MODELS)
    assert snap.accounted_bytes <= snap.memory_budget_bytes
    for app in snap.apps:  # the snapshot's counters are exactly the callers' outcomes
        assert (app.frames, app.drops) == (per_app[app.id, "result"],
                                           per_app[app.id, "dropped"])


def test_restart_restores_apps_policy_and_the_same_plan(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    rt = make_runtime(cam[2] + mic[1], state_dir=tmp_path)
    a = rt.register(AppSpec(model="cam", fps=30.0, name="camera"))
    rt.register(AppSpec(model="mic", target_latency_s=0.05, priority=3.0))
    rt.update(a.id, priority=2.0)
    rt.set_policy(alpha=0.5)
    before = rt.snapshot()
    rt.stop()

    again = make_runtime(cam[0] + mic[0], state_dir=tmp_path, policy="min-max-cost")
    after = again.snapshot()
    assert plan_of(after) == plan_of(before)
    assert (after.policy, after.alpha, after.memory_budget_bytes) == (
        "min-total-cost", 0.5, cam[2] + mic[1])
    assert [(s.name, s.priority, s.fps, s.target_latency_s) for s in after.apps] == [
        (s.name, s.priority, s.fps, s.target_latency_s) for s in before.apps]
    assert after.accounted_bytes == before.accounted_bytes
    assert again.submit(a.id, frame_for(catalogue, "cam")).result(timeout=60).descendant == (
        plan_of(before)[a.id][1])


def test_a_state_file_without_a_good_copy_stops_the_start_and_stays_in_place(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    """Starting with no apps would drop every registered app and overwrite the file at the
    first event: the start is refused instead, saying what to do, and nothing is moved."""
    damaged = '{"format": "nestdnn-runtime-state", "apps": ['
    (tmp_path / "state.json").write_text(damaged)
    runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=1 << 30,
                                                 state_dir=tmp_path))
    with pytest.raises(NestError, match=r"only copy is damaged.*start with no apps"):
        runtime.start()
    assert (tmp_path / "state.json").read_text() == damaged
    (tmp_path / "state.json").unlink()  # the operator's decision: start with no apps
    rt = make_runtime(sum(sizes(catalogue, "cam")), state_dir=tmp_path)
    assert rt.snapshot().apps == []
    rt.register(AppSpec(model="cam", fps=30.0))
    assert json.loads((tmp_path / "state.json").read_text())["apps"][0]["model"] == "cam"


def test_a_damaged_state_file_is_restored_from_its_backup(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    rt = make_runtime(sum(sizes(catalogue, "cam")), state_dir=tmp_path)
    app = rt.register(AppSpec(model="cam", fps=30.0))
    rt.stop()
    (tmp_path / "state.json").write_text('{"format": "nestdnn-runtime-state", "apps": [')
    again = make_runtime(sum(sizes(catalogue, "cam")), state_dir=tmp_path)
    assert [a.id for a in again.snapshot().apps] == [app.id]
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    restored = RuntimeState.model_validate_json((tmp_path / "state.json").read_text())
    assert [a.id for a in restored.apps] == [app.id]


def test_state_is_written_atomically(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    rt = make_runtime(sum(sizes(catalogue, "cam")), state_dir=tmp_path)
    rt.register(AppSpec(model="cam", fps=30.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temp file left
        "state.json", "state.json.backup"]
    state = RuntimeState.model_validate_json((tmp_path / "state.json").read_text())
    assert len(state.apps) == 1
    assert state.plan is not None and [a.name for a in state.plan.apps] == [state.apps[0].id]


def test_update_re_plans_towards_the_app_whose_priority_rose(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    budget = max(cam[2] + mic[0], cam[0] + mic[2]) + cam[0] // 2  # one big, not both
    assert cam[2] + mic[2] > budget
    rt = make_runtime(budget)
    first = rt.register(AppSpec(model="cam", target_latency_s=10.0, priority=2.0))
    second = rt.register(AppSpec(model="mic", target_latency_s=10.0))
    assert first.descendant == 2 and rt.snapshot().apps[1].descendant < 2
    updated = rt.update(second.id, priority=20.0)
    assert (updated.priority, updated.descendant) == (20.0, 2)
    snap = rt.snapshot()
    assert snap.apps[0].descendant < 2 and snap.apps[1].descendant == 2
    assert [a.switches for a in snap.apps] == [1, 1]
    assert snap.accounted_bytes - snap.idle_bytes == cam[snap.apps[0].descendant] + mic[2]


def test_the_baseline_swaps_models_that_do_not_fit_together(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    """Resource-agnostic baseline: both apps keep their fixed (largest) descendant; the
    models take turns in memory, and switching back to NestDNN stops the swapping."""
    mic = sizes(catalogue, "mic")
    ledger = Ledger()
    rt = make_runtime(mic[2], ledger=ledger, policy="baseline")
    apps = {m: rt.register(AppSpec(model=m, target_latency_s=10.0)).id for m in MODELS}
    snap = rt.snapshot()
    assert snap.swapping
    assert [a.descendant for a in snap.apps] == [2, 2]
    assert [a.share for a in snap.apps] == [0.5, 0.5]
    for model in ["cam", "mic", "cam", "mic"]:
        assert rt.submit(apps[model], frame_for(catalogue, model)).result(timeout=60
                                                                           ).descendant == 2
    loads = {a.model: a.loads for a in rt.snapshot().apps}
    assert loads == {"cam": 2, "mic": 2}
    assert any("evicted" in why for _, _, why in ledger.steps)
    assert ledger.over_limit() == []

    rt.set_policy(policy="min-total-cost")
    snap = rt.snapshot()
    assert not snap.swapping
    assert snap.accounted_bytes == sum(sizes(catalogue, a.model)[a.descendant]
                                       for a in snap.apps) <= mic[2]
    assert ledger.over_limit() == []


def test_the_baseline_is_refused_when_one_model_alone_exceeds_the_budget(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    cam = sizes(catalogue, "cam")
    rt = make_runtime(cam[2] - 100, policy="baseline")
    with pytest.raises(Infeasible, match="cannot be swapped in") as refused:
        rt.register(AppSpec(model="cam", target_latency_s=10.0))
    assert refused.value.bytes_missing == 100
    assert rt.snapshot().apps == []


def test_the_runtime_makes_the_simulators_decisions_on_the_same_trace(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    """Same apps, same events, same switch-aware re-solve: the applied plans (descendants
    and shares) equal the simulator's after every event, for NestDNN and the baselines
    (independent apps: a copy each, the budget divided among the 3 apps at the peak)."""
    tables = {m: [d.model_copy(update={"id": f"{m}#{k}"})  # shared residents, as planned
                  for k, d in enumerate(catalogue.entries[m].profiled(DEFAULT_BACKEND))]
              for m in MODELS}
    models = {"a": "cam", "b": "mic", "c": "cam", "d": "mic"}
    steps = [("start", "a"), ("start", "b"), ("start", "c"), ("stop", "a"), ("start", "d"),
             ("stop", "b")]
    events: list[AppStart | AppStop] = [
        AppStart(time_s=float(t), fps=30.0, app=App(
            name=name, target_latency_s=1 / 30, priority=2.0 if name == "c" else 1.0,
            descendants=tables[models[name]]))
        if action == "start" else AppStop(time_s=float(t), name=name)
        for t, (action, name) in enumerate(steps)]
    budget = sizes(catalogue, "mic")[2] + sizes(catalogue, "cam")[0]  # the baseline swaps
    trace = Trace(duration_s=len(steps), memory_budget_bytes=budget, events=events)
    options = {"independent": {"sharing": False, "app_slots": 3}}
    for policy in ("min-total-cost", "baseline", "independent", "smallest"):
        simulated = [{a.name: (a.descendant, a.share) for a in seg.apps}
                     for seg in simulate(trace, policy).timeline]
        rt = make_runtime(budget, policy=policy, **options.get(policy, {}))
        ids: dict[str, str] = {}
        live = []
        for action, name in steps:
            if action == "start":
                ids[name] = rt.register(AppSpec(model=models[name], fps=30.0, name=name,
                                                priority=2.0 if name == "c" else 1.0)).id
            else:
                rt.unregister(ids.pop(name))
            live.append({a.name: (a.descendant, a.share) for a in rt.snapshot().apps})
        assert live == simulated, policy


# ----------------------------------------------------------------- memory budget property


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.sampled_from(MODELS),
                  st.sampled_from([5.0, 30.0, 120.0]), st.sampled_from([0.5, 1.0, 3.0])),
        st.tuples(st.just("unregister"), st.integers(0, 10)),
        st.tuples(st.just("budget"), st.sampled_from([0.05, 0.1, 0.2, 0.35, 0.6, 1.0])),
        st.tuples(st.just("policy"), st.sampled_from(["min-total-cost", "baseline"])),
    ),
    min_size=4, max_size=10,
)


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_accounted_bytes_never_exceed_the_budget(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime],
    ops: list[tuple[Any, ...]],
) -> None:
    """Any sequence of register / unregister / budget / policy changes, with a frame per app
    after each: at every ledger step (also mid-switch, also while the baseline swaps models
    in and out) the accounted bytes stay within the limit in force, and after every event
    within the budget; refused events leave the plan as it was."""
    largest = sum(sizes(catalogue, m)[2] for m in MODELS)
    ledger = Ledger()
    rt = make_runtime(largest, ledger=ledger)
    apps: list[str] = []
    for op in ops:
        before = rt.snapshot()
        try:
            if op[0] == "register":
                apps.append(rt.register(AppSpec(model=op[1], fps=op[2], priority=op[3])).id)
            elif op[0] == "unregister" and apps:
                rt.unregister(apps.pop(op[1] % len(apps)))
            elif op[0] == "budget":
                rt.set_policy(memory_budget_bytes=int(op[1] * largest))
            elif op[0] == "policy":
                rt.set_policy(policy=op[1])
        except Infeasible:
            event("refused as infeasible")
            assert plan_of(rt.snapshot()) == plan_of(before)
        snap = rt.snapshot()
        assert snap.accounted_bytes <= snap.memory_budget_bytes
        if not snap.swapping:  # one copy per (model, descendant) in use, and warm rungs
            assert snap.accounted_bytes == snap.idle_bytes + sum(
                sizes(catalogue, model)[d] for model, d in {(a.model, a.descendant)
                                                            for a in snap.apps})
        for app in snap.apps:
            prediction = rt.submit(app.id, frame_for(catalogue, app.model)).result(timeout=60)
            assert prediction.descendant == app.descendant
    assert ledger.over_limit() == []
    for kind in ("in place", "before a cold load", "evicted"):
        if any(kind in why for _, _, why in ledger.steps):
            event(f"ledger: {kind}")
    rt.stop()


# ------------------------------------------------------------------ the live benchmark's parts


def test_the_live_benchmark_mixes_the_models_and_measures_the_simulators_inputs(
    catalogue: ModelCatalogue,
) -> None:
    """benchmarks/daemon_live.py: apps take the directory's models in turn; the budget lets
    NestDNN run every app and the baseline swap any model in; the measured costs cover every
    descendant and feed the simulator's runtime model, which replays the same trace."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import daemon_live

    workload = daemon_live.build_workload(catalogue, duration_s=4.0, budget_fraction=0.5)
    assert workload.models == {"app0": "cam", "app1": "mic", "app2": "cam", "app3": "mic"}
    largest = max(sizes(catalogue, "cam")[-1], sizes(catalogue, "mic")[-1])
    assert workload.trace.memory_budget_bytes >= largest
    # app-seconds over the trace: 0.55 + 0.65 + 0.7 + 0.4 of its length, at 30 fps each
    assert workload.mean_frame_interval_s() == pytest.approx(1 / (30 * 2.3))
    calibration = daemon_live.calibrate(catalogue, threads=1, pace_s=0.005, frames=3,
                                        paced_frames=2, load_repeats=3)
    for name in MODELS:
        costs = calibration.costs[name]
        assert len(costs) == catalogue.entries[name].num_descendants
        assert all(c.service_s > 0 and c.cpu_s > 0 and c.load_s > 0 for c in costs)
        assert all(c.idle_service_s and c.idle_service_s > 0 and c.idle_cpu_s for c in costs)
    assert 0 < calibration.frame_cpu_s < 0.05
    model = calibration.runtime_model(workload, queue_size=4)
    for policy in daemon_live.POLICIES:
        result = simulate(workload.trace, policy, runtime=model)
        assert result.summary.model == "runtime" and result.summary.cpu_s > 0
        assert {a.name for a in result.apps} == set(workload.models)


def test_a_third_app_on_the_same_model_shares_the_resident_and_needs_no_downgrade(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    """The demo's scenario: the budget holds one copy of the largest descendant and a bit.
    Apps on one model share it, so a second and a third app change nothing; the ledger counts
    one copy, and when the apps leave it goes back to zero."""
    cam = sizes(catalogue, "cam")
    rt = make_runtime(cam[2] + cam[0] // 2)
    apps = [rt.register(AppSpec(model="cam", fps=5.0)) for _ in range(3)]
    snap = rt.snapshot()
    assert [a.descendant for a in snap.apps] == [2, 2, 2]
    assert snap.accounted_bytes == cam[2]
    for app in apps:
        rt.unregister(app.id)
    assert rt.snapshot().accounted_bytes == 0


def test_without_sharing_every_app_holds_its_own_copy(
    catalogue: ModelCatalogue, make_runtime: Callable[..., Runtime]
) -> None:
    """The comparison point of shared residency: apps that each load their own model."""
    cam = sizes(catalogue, "cam")
    rt = make_runtime(3 * cam[2], sharing=False)
    apps = [rt.register(AppSpec(model="cam", fps=5.0)) for _ in range(3)]
    snap = rt.snapshot()
    assert [a.descendant for a in snap.apps] == [2, 2, 2]
    assert snap.accounted_bytes == 3 * cam[2]
    for app in apps:
        assert rt.submit(app.id, frame_for(catalogue, "cam")).result(timeout=60).descendant == 2
        rt.unregister(app.id)
    assert rt.snapshot().accounted_bytes == 0


def test_an_app_registering_while_its_models_shared_copy_loads_waits_for_the_whole_model(
    catalogue: ModelCatalogue,
) -> None:
    """A budget raise upgrades app a's resident; the load is held at a gate. Meanwhile b
    registers for the same model: its registration waits for the switch to end, a's frames
    keep running on the old resident, and b's first frame runs on the complete new one."""
    cam = sizes(catalogue, "cam")
    entry = catalogue.entries["cam"]
    loading, gate = threading.Event(), threading.Event()

    class GatedBackend(OrtBackend):
        def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
            if descendant == 2:
                loading.set()
                assert gate.wait(timeout=120)
            return super().open(entry, descendant)

    backend = GatedBackend()
    rt = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=cam[0] + cam[1] // 2),
                 backend=backend)
    rt.start()
    try:
        a = rt.register(AppSpec(model="cam", fps=5.0))
        assert rt.info(a.id).descendant == 0
        frame = frame_for(catalogue, "cam")
        raise_budget = threading.Thread(
            target=rt.set_policy, kwargs={"memory_budget_bytes": cam[2] + cam[0]})
        raise_budget.start()
        assert loading.wait(timeout=120)
        registered: list[str] = []
        register_b = threading.Thread(
            target=lambda: registered.append(rt.register(AppSpec(model="cam", fps=5.0)).id))
        register_b.start()
        during = rt.submit(a.id, frame).result(timeout=60)
        register_b.join(timeout=0.5)
        assert register_b.is_alive() and registered == []  # b waits for the switch
        assert during.descendant == 0  # a keeps running on its old resident meanwhile
        gate.set()
        raise_budget.join(timeout=120)
        register_b.join(timeout=120)
        first = rt.submit(registered[0], frame).result(timeout=60)
        complete = backend.open(entry, 2).logits(frame[None])[0]
        assert first.descendant == 2
        assert first.label == int(np.argmax(complete))
        assert np.allclose(first.probabilities, np.exp(complete) / np.exp(complete).sum(),
                           atol=1e-5)
        snap = rt.snapshot()
        assert snap.accounted_bytes - snap.idle_bytes == cam[2]  # one copy of d2, shared
    finally:
        gate.set()
        rt.stop()
