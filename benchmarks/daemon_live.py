"""Live daemon run: a trace of apps starting and stopping, NestDNN vs the agnostic baseline.

Every app is a thread sending frames at its frame rate (30 fps) to a real `Runtime` running
real multi-capacity models; apps start and stop as the trace says, and the apps use the
directory's models in turn (several models: a mixed trace). The same trace runs once per
policy -- NestDNN MinTotalCost and the resource-agnostic baseline -- under the same memory
budget. Measured per policy:

* accuracy: time-averaged accuracy (profile) of the descendant each app has in use (the
  applied plan's; every completed frame reports the descendant that computed it, kept in
  the JSON per app), over all app-seconds;
* fps: frames completed per app-second (real completions of the 30 fps streams);
* switches (descendant changes) and loads (descendants read from storage: the baseline
  swaps models that do not fit together);
* busy_s_per_frame: the executor worker's wall time (inference and on-demand loads) per
  frame;
* cpu_s_per_frame: the daemon's processor time per frame (energy proxy): the process's CPU
  time minus the client threads' own CPU time (their calls into the runtime's `submit` are
  the daemon's and stay in), i.e. the worker (inference, loads, result delivery), the
  event handling (planning, loads and switches), `submit`.

Beside each figure, the scheduler's simulator's prediction for the same trace with its
*runtime* model (`scheduler.replay`: the executor's queues, weighted-fair worker and the
model manager's loads and least-recently-used swapping, replayed frame by frame), whose
inputs are measured here first, in isolation, never from the live runs:

* per descendant: wall and CPU time of one frame (`LoadedModel.predict`, the worker's call;
  descendants interleaved, one frame each in turn, as the worker interleaves apps), both
  back to back (a worker that is never idle, as the baseline's) and paced at the trace's
  mean interval between frames with the thread asleep in between (a frame that finds the
  worker idle, as most of NestDNN's do: the replay uses whichever applies to each frame);
  and of a load from storage (`Backend.open`, as the manager does it);
* the runtime's per-frame CPU outside inference (submit, queue, dispatch, result): a real
  `Runtime` on stub models whose predict costs nothing, fed by the same sender;
* the simulator times its own planning calls (the same solver code the runtime runs).

The simulated busy time is the replayed worker's wall time; its processor time is the sum of
the measured CPU costs of what the replay did. Both are the same quantities as measured.
The fluid model's prediction (the simulator's default) is listed beside for comparison.
Goal: measured within 15 % of simulated. Prints tables, writes JSON under runs/benchmarks/.

Real models (a directory of NAME.nest + NAME.profile.json pairs, e.g. runs/models):
    .venv/bin/python benchmarks/daemon_live.py --models runs/models
Check of the machinery on small SYNTHETIC models generated on the spot (random weights,
assigned accuracies, measured latencies; clearly not a result about real models):
    .venv/bin/python benchmarks/daemon_live.py --quick
Check of the simulator's structure alone (`--stub-costs`): the runtime runs stub models
that spin for known wall times and the simulator is given exactly those times, so what is
left of the difference is the model of queues, scheduling and swapping (and the machine):
    .venv/bin/python benchmarks/daemon_live.py --models runs/models --stub-costs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nestdnn.errors import NestError
from nestdnn.nestfile import read_manifest
from profiles.synthetic import write_synthetic_nest, write_synthetic_profile
from scheduler.daemon.backends import InferenceBackend, LoadedModel
from scheduler.daemon.backends.pytorch import TorchBackend
from scheduler.daemon.catalogue import CatalogueEntry, ModelCatalogue
from scheduler.daemon.errors import FrameDropped, QueueFull, UnknownApp
from scheduler.daemon.executor import Prediction
from scheduler.daemon.runtime import AppSpec, Runtime, RuntimeSettings
from scheduler.problem import App
from scheduler.replay import DescendantCosts, RuntimeModel
from scheduler.simulate import AppStart, AppStop, SimulationResult, SwapModel, Trace, simulate

log = logging.getLogger("daemon_live")

POLICIES = ("min-total-cost", "baseline")
GOAL_RELATIVE_ERROR = 0.15
OUT_DIR = Path("runs/benchmarks")


@dataclass(frozen=True)
class Workload:
    """The trace (the simulator's own type) and the model each app uses."""

    trace: Trace
    models: dict[str, str]

    def mean_frame_interval_s(self) -> float:
        """Seconds between two frames reaching the runtime, on average over the trace."""
        frames_per_s = 0.0
        for event in self.trace.events:
            if isinstance(event, AppStart):
                stop = next((e.time_s for e in self.trace.events if isinstance(e, AppStop)
                             and e.name == event.app.name and e.time_s >= event.time_s),
                            self.trace.duration_s)
                frames_per_s += event.fps * (stop - event.time_s) / self.trace.duration_s
        return 1.0 / frames_per_s


def build_workload(catalogue: ModelCatalogue, duration_s: float, budget_fraction: float,
                   fps: float = 30.0) -> Workload:
    """Four apps over ``duration_s``, up to three at once, the models assigned in turn.

    The memory budget is ``budget_fraction`` of the bytes the apps running at once would
    hold with their largest descendants (at the busiest moment of the trace), but at least
    what their smallest descendants need (so that NestDNN can run them all) and the largest
    single descendant (so that the baseline can swap any model in).
    """
    names = sorted(catalogue.entries)
    models = {f"app{i}": names[i % len(names)] for i in range(4)}
    priority = {"app2": 2.0}
    plan = [(0.0, "start", "app0"), (0.15, "start", "app1"), (0.3, "start", "app2"),
            (0.55, "stop", "app0"), (0.6, "start", "app3"), (0.8, "stop", "app1")]
    events: list[AppStart | AppStop] = []
    for at, action, name in plan:
        t = round(at * duration_s, 3)
        if action == "stop":
            events.append(AppStop(time_s=t, name=name))
            continue
        table = catalogue.entries[models[name]].profiled("torch")
        app = App(name=name, target_latency_s=1.0 / fps, priority=priority.get(name, 1.0),
                  descendants=table)
        events.append(AppStart(time_s=t, app=app, fps=fps))
    largest_model = max(app.descendants[-1].memory_bytes for app in
                        (e.app for e in events if isinstance(e, AppStart)))
    budget = max(int(budget_fraction * _peak_bytes(events, max)), _peak_bytes(events, min),
                 largest_model)
    return Workload(Trace(duration_s=duration_s, memory_budget_bytes=budget, events=events),
                    models)


def _peak_bytes(events: Sequence[AppStart | AppStop],
                pick: Callable[[Iterable[int]], int]) -> int:
    """Most bytes the running apps hold together over the trace, each with the descendant
    ``pick`` (max: largest, min: smallest) selects by bytes."""
    running: dict[str, int] = {}
    peak = 0
    for event in events:
        if isinstance(event, AppStart):
            running[event.app.name] = pick(d.memory_bytes for d in event.app.descendants)
        else:
            running.pop(event.name)
        peak = max(peak, sum(running.values()))
    return peak


# ------------------------------------------------------------------------------ live run


def random_frame(entry: CatalogueEntry) -> np.ndarray:
    """A normalised float32 frame of the model's input shape (seeded noise)."""
    return np.random.default_rng(0).standard_normal(entry.input_shape).astype(np.float32)


class Sender(threading.Thread):
    """One app (a client): submits a frame every 1/fps seconds, counts what became of each.

    It measures its own CPU time and, within it, the CPU time of its `submit` calls (the
    daemon's work done on the client's thread).
    """

    def __init__(self, runtime: Runtime, app_id: str, frame: np.ndarray, fps: float) -> None:
        super().__init__(name=f"sender-{app_id}", daemon=True)
        self.runtime, self.app_id, self.frame, self.period = runtime, app_id, frame, 1.0 / fps
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.descendants: Counter[int] = Counter()
        self.futures: list[Future[Prediction]] = []
        self.cpu_s = 0.0
        self.submit_cpu_s = 0.0

    @property
    def client_cpu_s(self) -> float:
        """The thread's CPU time outside the runtime's code."""
        return self.cpu_s - self.submit_cpu_s

    def run(self) -> None:
        start_cpu = time.thread_time()
        next_at = time.monotonic()
        while not self.halt.wait(max(0.0, next_at - time.monotonic())):
            before = time.thread_time()
            try:
                future = self.runtime.submit(self.app_id, self.frame)
            except (QueueFull, UnknownApp):
                self.submit_cpu_s += time.thread_time() - before
                with self.lock:
                    self.outcomes["refused"] += 1
            else:
                self.submit_cpu_s += time.thread_time() - before
                future.add_done_callback(self._done)
                self.futures.append(future)
            next_at = max(next_at + self.period, time.monotonic() - self.period)
        self.cpu_s = time.thread_time() - start_cpu

    def _done(self, future: Future[Prediction]) -> None:
        try:
            prediction = future.result()
        except FrameDropped:
            with self.lock:
                self.outcomes["dropped"] += 1
            return
        with self.lock:
            self.outcomes["completed"] += 1
            self.descendants[prediction.descendant] += 1


@dataclass
class AppRecord:
    """One app's life in a live run."""

    name: str
    model: str
    started: float
    stopped: float = 0.0
    accuracy_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    descendants: dict[int, int] = field(default_factory=dict)
    switches: int = 0
    loads: int = 0
    busy_s: float = 0.0


@dataclass
class CpuBreakdown:
    """Where the process's CPU seconds went during a live run."""

    process_s: float
    clients_s: float
    worker_s: float
    events_s: float

    @property
    def daemon_s(self) -> float:
        return self.process_s - self.clients_s


@dataclass
class LiveResult:
    """What one policy achieved on the trace, measured."""

    policy: str
    accuracy: float
    fps: float
    switches: int
    loads: int
    busy_s_per_frame: float
    cpu_s_per_frame: float
    frames: int
    app_seconds: float
    cpu: CpuBreakdown
    apps: list[AppRecord]


class WorkerClock:
    """Job observer, called in the worker thread after every job: keeps that thread's CPU
    time since it started (the last reading before the runtime stops)."""

    def __init__(self) -> None:
        self.cpu_s = 0.0

    def __call__(self, app_id: str, service_s: float) -> None:
        self.cpu_s = time.thread_time()


def run_live(catalogue: ModelCatalogue, settings: RuntimeSettings, workload: Workload,
             backend: InferenceBackend | None = None) -> LiveResult:
    """Replay the trace in real time against a fresh runtime (on ``backend``, default: the
    one the settings name); measure every app."""
    clock = WorkerClock()
    runtime = Runtime(catalogue, settings, backend=backend, job_observer=clock)
    runtime.start()
    try:
        records, process_s, clients_s, events_s = _replay(runtime, catalogue, workload)
    finally:
        runtime.stop()
    apps = list(records.values())
    done = sum(r.outcomes.get("completed", 0) for r in apps)
    app_seconds = sum(r.stopped - r.started for r in apps)
    cpu = CpuBreakdown(process_s, clients_s, clock.cpu_s, events_s)
    return LiveResult(
        policy=settings.policy,
        accuracy=sum(r.accuracy_seconds for r in apps) / app_seconds,
        fps=done / app_seconds,
        switches=sum(r.switches for r in apps),
        loads=sum(r.loads for r in apps),
        busy_s_per_frame=sum(r.busy_s for r in apps) / max(done, 1),
        cpu_s_per_frame=cpu.daemon_s / max(done, 1),
        frames=done,
        app_seconds=app_seconds,
        cpu=cpu,
        apps=apps,
    )


def _replay(runtime: Runtime, catalogue: ModelCatalogue, workload: Workload
            ) -> tuple[dict[str, AppRecord], float, float, float]:
    """Start and stop apps at the trace's times; returns their records, the process's CPU
    seconds, the clients' own CPU seconds and the CPU seconds of the runtime's events."""
    frames = {name: random_frame(entry) for name, entry in catalogue.entries.items()}
    ids: dict[str, str] = {}
    senders: dict[str, Sender] = {}
    finished: list[Sender] = []
    records: dict[str, AppRecord] = {}
    accuracy_now: dict[str, float] = {}
    trace = workload.trace
    events_cpu = 0.0
    t0, cpu0 = time.monotonic(), time.process_time()
    last = 0.0
    for event in [*trace.events, None]:
        at = trace.duration_s if event is None else event.time_s
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        for name, accuracy in accuracy_now.items():
            records[name].accuracy_seconds += accuracy * (at - last)
        last = at
        if isinstance(event, AppStart):
            name, model = event.app.name, workload.models[event.app.name]
            before = time.thread_time()
            ids[name] = runtime.register(AppSpec(model=model, fps=event.fps, name=name,
                                                 priority=event.app.priority)).id
            events_cpu += time.thread_time() - before
            records[name] = AppRecord(name, model, started=at)
            senders[name] = Sender(runtime, ids[name], frames[model], event.fps)
            senders[name].start()
        leaving = [event.name] if isinstance(event, AppStop) else [] if event else list(ids)
        gone = {name: (ids.pop(name), senders.pop(name), records[name]) for name in leaving}
        finished += [sender for _, sender, _ in gone.values()]
        events_cpu += _finish_apps(runtime, gone, at)
        accuracy_now = {a.name: a.accuracy for a in runtime.snapshot().apps}
    process_s = time.process_time() - cpu0
    return records, process_s, sum(s.client_cpu_s for s in finished), events_cpu


def _finish_apps(runtime: Runtime, leaving: dict[str, tuple[str, Sender, AppRecord]],
                 now: float) -> float:
    """Stop the leaving apps' senders, wait for their frames, read their counters (before
    any of them unregisters and re-plans the others), then unregister them. Returns the
    CPU seconds of the unregister calls."""
    for _, sender, _ in leaving.values():
        sender.halt.set()
        sender.join()
        for future in sender.futures:
            with contextlib.suppress(FrameDropped):
                future.result(timeout=120)
    statuses = {a.id: a for a in runtime.snapshot().apps}
    for app_id, sender, record in leaving.values():
        status = statuses[app_id]
        record.stopped = now
        record.switches, record.loads, record.busy_s = (status.switches, status.loads,
                                                        status.busy_s)
        with sender.lock:
            record.outcomes = dict(sender.outcomes)
            record.descendants = dict(sender.descendants)
    before = time.thread_time()
    for app_id, _, _ in leaving.values():
        runtime.unregister(app_id)
    return time.thread_time() - before


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """The simulator's runtime-model inputs, measured on this machine before the live runs."""

    costs: dict[str, list[DescendantCosts]]
    frame_cpu_s: float
    frames_timed: int
    paced_frames_timed: int
    pace_s: float
    load_repeats: int

    def runtime_model(self, workload: Workload, queue_size: int) -> RuntimeModel:
        return RuntimeModel(queue_size=queue_size, frame_cpu_s=self.frame_cpu_s,
                            costs={app: self.costs[model]
                                   for app, model in workload.models.items()})

    def swap_model(self, catalogue: ModelCatalogue) -> SwapModel:
        """The fluid model's swap costs: a least-squares line through the measured loads."""
        sizes, times = [], []
        for name, costs in self.costs.items():
            for d, c in zip(catalogue.entries[name].profiled("torch"), costs, strict=True):
                sizes.append(d.memory_bytes)
                times.append(c.load_s)
        if len(set(sizes)) < 2:
            return SwapModel(bandwidth_bytes_per_s=sizes[0] / times[0])
        slope, fixed = np.polyfit(np.array(sizes, float), np.array(times, float), 1)
        slope = max(float(slope), 1e-12)
        return SwapModel(bandwidth_bytes_per_s=1.0 / slope, load_fixed_s=max(0.0, float(fixed)))


def calibrate(catalogue: ModelCatalogue, threads: int, pace_s: float, frames: int = 200,
              paced_frames: int = 100, load_repeats: int = 11) -> Calibration:
    """Measure what the runtime model needs (see the module docstring); ``pace_s``: the
    trace's mean interval between two frames, at which the idle-worker costs are timed."""
    backend = TorchBackend(threads)
    backend.on_worker_start()
    entries = list(catalogue.entries.values())
    backend.prepare(entries)
    try:
        models = {(e.name, k): backend.open(e, k) for e in entries
                  for k in range(e.num_descendants)}
        inputs = {e.name: random_frame(e) for e in entries}
        busy = _time_frames(models, inputs, frames)
        idle = _time_frames(models, inputs, paced_frames, pace_s=pace_s)
        del models
        loads = _time_loads(backend, catalogue, list(busy), load_repeats)
    finally:
        backend.close()
    costs = {e.name: [DescendantCosts(service_s=busy[e.name, k][0], cpu_s=busy[e.name, k][1],
                                      load_s=loads[e.name, k][0],
                                      load_cpu_s=loads[e.name, k][1],
                                      idle_service_s=idle[e.name, k][0],
                                      idle_cpu_s=idle[e.name, k][1])
                      for k in range(e.num_descendants)] for e in entries}
    return Calibration(costs, frame_overhead_cpu_s(catalogue), frames, paced_frames, pace_s,
                       load_repeats)


def _time_frames(models: dict[tuple[str, int], LoadedModel], inputs: dict[str, np.ndarray],
                 rounds: int, pace_s: float | None = None
                 ) -> dict[tuple[str, int], tuple[float, float]]:
    """Mean wall and CPU seconds of one frame of each descendant, the descendants interleaved
    one frame each in turn (as the worker interleaves apps), after 10 warm-up rounds.

    ``pace_s``: frames start this far apart and the thread sleeps in between, as a worker
    waiting for paced streams does; None: back to back, as a worker that is never idle.
    """
    wall: dict[tuple[str, int], list[float]] = {key: [] for key in models}
    cpu: dict[tuple[str, int], list[float]] = {key: [] for key in models}
    next_start = time.perf_counter()
    for round_ in range(10 + rounds):
        for (name, k), model in models.items():
            if pace_s is not None:
                next_start += pace_s
                time.sleep(max(0.0, next_start - time.perf_counter()))
            t, c = time.perf_counter(), time.thread_time()
            model.logits(inputs[name][None])
            if round_ >= 10:
                wall[name, k].append(time.perf_counter() - t)
                cpu[name, k].append(time.thread_time() - c)
    return {key: (statistics.fmean(wall[key]), statistics.fmean(cpu[key])) for key in models}


def _time_loads(backend: InferenceBackend, catalogue: ModelCatalogue, keys: list[tuple[str, int]],
                repeats: int) -> dict[tuple[str, int], tuple[float, float]]:
    """Median wall and CPU seconds of loading each descendant (files already opened), the
    descendants interleaved in ``repeats`` rounds (a burst of load hits them alike)."""
    walls: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    cpus: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    for _ in range(repeats):
        for name, k in keys:
            t, c = time.perf_counter(), time.thread_time()
            backend.open(catalogue.entries[name], k).close()
            walls[name, k].append(time.perf_counter() - t)
            cpus[name, k].append(time.thread_time() - c)
    return {key: (statistics.median(walls[key]), statistics.median(cpus[key])) for key in keys}


class _StubModel(LoadedModel):
    """A descendant whose frames cost nothing (fixed probabilities)."""

    def __init__(self, descendant: int, classes: int) -> None:
        self._descendant = descendant
        self._classes = classes

    @property
    def descendant(self) -> int:
        return self._descendant

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), self._classes), dtype=np.float32)


class _StubBackend(InferenceBackend):
    """The torch backend's profile figures, with models that cost nothing."""

    name = "torch"

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        return _StubModel(descendant, len(entry.class_names))

    def prepare(self, entries: list[CatalogueEntry]) -> None:
        return


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _SpinModel(_StubModel):
    """A stub descendant whose frames and switches (in place, like torch's) keep the
    thread busy for known wall times."""

    switches_in_place = True

    def __init__(self, costs: list[DescendantCosts], descendant: int, classes: int) -> None:
        super().__init__(descendant, classes)
        self._costs = costs
        _spin(costs[descendant].load_s)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        _spin(self._costs[self._descendant].service_s * len(batch))
        return super().logits(batch)

    def switch_in_place(self, descendant: int) -> None:
        _spin(self._costs[descendant].load_s)
        self._descendant = descendant


def spin_costs(catalogue: ModelCatalogue, calibration: Calibration
               ) -> dict[str, list[DescendantCosts]]:
    """The stub costs of ``--stub-costs``: a frame takes the profile's latency, a load the
    load time measured on the real model; processor time = wall time."""
    return {name: [DescendantCosts(d.latency_s, d.latency_s, c.load_s, c.load_s)
                   for d, c in zip(entry.profiled("torch"), calibration.costs[name],
                                   strict=True)]
            for name, entry in catalogue.entries.items()}


class SpinBackend(_StubBackend):
    """Models that spin for exactly the given costs (frames and loads)."""

    def __init__(self, costs: dict[str, list[DescendantCosts]]) -> None:
        super().__init__()
        self._costs = costs

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        return _SpinModel(self._costs[entry.name], descendant, len(entry.class_names))


def frame_overhead_cpu_s(catalogue: ModelCatalogue, fps: float = 200.0,
                         seconds: float = 3.0) -> float:
    """The runtime's CPU per frame outside inference: a real runtime on stub models, one
    sender (the live run's) at ``fps``; process CPU minus the sender's own, per frame."""
    name = sorted(catalogue.entries)[0]
    runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=10**12),
                      backend=_StubBackend())
    runtime.start()
    try:
        app = runtime.register(AppSpec(model=name, fps=fps))
        sender = Sender(runtime, app.id, random_frame(catalogue.entries[name]), fps)
        cpu0 = time.process_time()
        sender.start()
        time.sleep(seconds)
        sender.halt.set()
        sender.join()
        for future in sender.futures:
            with contextlib.suppress(FrameDropped):
                future.result(timeout=60)
        process_s = time.process_time() - cpu0
    finally:
        runtime.stop()
    return max(0.0, process_s - sender.client_cpu_s) / max(1, sender.outcomes["completed"])


# ------------------------------------------------------------------------------ models


QUICK_MODELS = {  # small SYNTHETIC stand-ins of the three real models' architectures
    "synthetic-vgg16": dict(arch="vgg16", in_channels=1, input_size=28, num_classes=10,
                            width_mults=(0.0625, 0.125, 0.25), accuracies=(0.86, 0.90, 0.92)),
    "synthetic-resnet20": dict(arch="resnet20", in_channels=1, input_size=28, num_classes=10,
                               width_mults=(0.25, 0.5, 1.0), accuracies=(0.84, 0.89, 0.915)),
    "synthetic-vgg11": dict(arch="vgg11", in_channels=3, input_size=32, num_classes=5,
                            width_mults=(0.125, 0.25, 0.5), accuracies=(0.80, 0.86, 0.90)),
}


def quick_models(out_dir: Path) -> Path:
    """Three small SYNTHETIC models (random weights, assigned accuracies), written once (again
    if this nestdnn cannot read them) and re-profiled now: the simulator's latencies must be
    measured under the conditions of the live run."""
    directory = out_dir / "daemon_live_synthetic_models"
    directory.mkdir(parents=True, exist_ok=True)
    for seed, (name, spec) in enumerate(QUICK_MODELS.items()):
        nest = directory / f"{name}.nest"
        try:
            read_manifest(nest)
        except NestError:  # missing, or written by an older nestdnn
            write_synthetic_nest(nest, seed=seed, **spec)
        write_synthetic_profile(nest)
    return directory


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """A measured figure beside the simulator's (runtime model), the relative difference,
    and the fluid model's figure for reference."""

    measured: float
    simulated: float
    fluid: float | None

    @property
    def error(self) -> float | None:
        return None if self.simulated == 0 else abs(self.measured - self.simulated) / abs(
            self.simulated)


def compare(live: LiveResult, sim: SimulationResult, fluid: SimulationResult
            ) -> dict[str, Comparison]:
    """Measured vs simulated: accuracy, fps, switches, loads, busy and CPU per frame."""
    def per_frame(result: SimulationResult, seconds: float | None) -> float | None:
        frames = sum(a.frames_done for a in result.apps)
        return None if seconds is None else seconds / max(frames, 1e-9)

    sim_busy, fluid_busy = (r.summary.busy_fraction * r.duration_s for r in (sim, fluid))
    return {
        "accuracy": Comparison(live.accuracy, sim.summary.accuracy or 0.0,
                               fluid.summary.accuracy),
        "fps": Comparison(live.fps, sim.summary.fps, fluid.summary.fps),
        "switches": Comparison(live.switches, sim.summary.switches, fluid.summary.switches),
        "loads": Comparison(live.loads, sim.summary.loads or 0, None),
        "busy_s_per_frame": Comparison(live.busy_s_per_frame, per_frame(sim, sim_busy) or 0.0,
                                       per_frame(fluid, fluid_busy)),
        "cpu_s_per_frame": Comparison(live.cpu_s_per_frame,
                                      per_frame(sim, sim.summary.cpu_s) or 0.0, None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="directory of NAME.nest + NAME.profile.json")
    parser.add_argument("--quick", action="store_true",
                        help="small SYNTHETIC models generated on the spot, short trace")
    parser.add_argument("--duration", type=float, help="trace length in seconds")
    parser.add_argument("--budget-fraction", type=float, default=0.5,
                        help="memory budget as a fraction of the peak bytes of the running"
                             " apps' largest descendants")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queue-size", type=int, default=4, help="the runtime's per-app queue")
    parser.add_argument("--stub-costs", action="store_true",
                        help="check of the simulator's structure: the runtime runs stub models"
                             " that spin for known times (frame: the profile's latency; load:"
                             " the real load time measured), the simulator gets those times")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated policies to run")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.quick == (args.models is not None):
        parser.error("give exactly one of --models DIR and --quick")
    models_dir = quick_models(args.out) if args.quick else args.models
    catalogue = ModelCatalogue.load(models_dir)
    if not catalogue.entries:
        raise NestError(f"no servable model in {models_dir}")
    workload = build_workload(catalogue, args.duration or (30.0 if args.quick else 120.0),
                              args.budget_fraction)
    rows = {}
    for policy in args.policies.split(","):
        calibration = calibrate(catalogue, args.threads, workload.mean_frame_interval_s())
        backend = None
        if args.stub_costs:
            calibration.costs = spin_costs(catalogue, calibration)
            backend = SpinBackend(calibration.costs)
        swap = calibration.swap_model(catalogue)
        load_before = os.getloadavg()[0]
        live = run_live(catalogue, RuntimeSettings(
            memory_budget_bytes=workload.trace.memory_budget_bytes, policy=policy,
            threads=args.threads, queue_size=args.queue_size), workload, backend)
        model = calibration.runtime_model(workload, args.queue_size)
        rows[policy] = Row(live, simulate(workload.trace, policy, swap=swap, runtime=model),
                           simulate(workload.trace, policy, swap=swap), calibration, swap,
                           (load_before, os.getloadavg()[0]))
    report(rows, workload, catalogue, args, models_dir)
    return 0


@dataclass
class Row:
    """One policy: the live run, both simulations, the inputs measured just before it, and
    the 1-minute load average before and after the live run."""

    live: LiveResult
    sim: SimulationResult
    fluid: SimulationResult
    calibration: Calibration
    swap: SwapModel
    load_average: tuple[float, float]


def report(rows: dict[str, Row], workload: Workload, catalogue: ModelCatalogue,
           args: argparse.Namespace, models_dir: Path) -> None:
    """Print the tables (inputs; measured / simulated / error / fluid) and write the JSON."""
    trace = workload.trace
    label = "  (SYNTHETIC: random weights, assigned accuracies)" if args.quick else ""
    if args.stub_costs:
        label += "  STUB COSTS: models spin for known times (a check of the model structure)"
    print(f"\nmodels: {models_dir}{label}")
    print("apps: " + ", ".join(f"{a}={m}" for a, m in workload.models.items()))
    print(f"budget {trace.memory_budget_bytes:,} B, {len(trace.events)} events over"
          f" {trace.duration_s:g} s, 30 fps per app, {args.threads} thread(s), queue"
          f" {args.queue_size}")
    first = next(iter(rows.values())).calibration
    print("\nsimulator inputs, measured just before each policy's run (per frame: mean of"
          f" {first.frames_timed} back to back and of {first.paced_frames_timed} paced"
          f" {1e3 * first.pace_s:.1f} ms apart (the trace's mean interval: the frame finds the"
          f" worker idle), descendants interleaved; load: median of {first.load_repeats}); ms")
    names = " / ".join(rows)
    print(f"{'model':<22}{'d':>3}{'MB':>8}{'profile':>9}   wall, cpu, load wall, load cpu,"
          f" idle wall, idle cpu ({names})")
    for name in catalogue.entries:
        for k, d in enumerate(catalogue.entries[name].profiled("torch")):
            cells = "  /  ".join(
                ", ".join(f"{1e3 * v:.2f}" for v in asdict(r.calibration.costs[name][k])
                          .values()) for r in rows.values())
            print(f"{name:<22}{k:>3}{d.memory_bytes / 1e6:>8.2f}{1e3 * d.latency_s:>9.2f}"
                  f"   {cells}")
    print("runtime CPU per frame outside inference: " + " / ".join(
        f"{1e3 * r.calibration.frame_cpu_s:.3f}" for r in rows.values()) + " ms")
    print(f"\n{'policy':<16}{'figure':<18}{'measured':>12}{'simulated':>12}{'error':>8}"
          f"{'fluid':>12}")
    compared = {}
    for policy, row in rows.items():
        live = row.live
        compared[policy] = compare(live, row.sim, row.fluid)
        for figure, c in compared[policy].items():
            error = "-" if c.error is None else f"{100 * c.error:.0f}%"
            fluid_text = "-" if c.fluid is None else format(c.fluid, ".4g")
            print(f"{policy:<16}{figure:<18}{c.measured:>12.4g}{c.simulated:>12.4g}{error:>8}"
                  f"{fluid_text:>12}")
        cpu = live.cpu
        print(f"{policy:<16}CPU s: process {cpu.process_s:.2f} = clients {cpu.clients_s:.2f}"
              f" + daemon {cpu.daemon_s:.2f} (worker {cpu.worker_s:.2f}, events"
              f" {cpu.events_s:.2f}, other {cpu.daemon_s - cpu.worker_s - cpu.events_s:.2f});"
              f" load average {row.load_average[0]:.1f} -> {row.load_average[1]:.1f}")
    print(f"\n{'policy':<16}{'app':<6}{'model':<22}{'frames':>15}{'drops':>13}{'loads':>13}"
          "   (measured / simulated)")
    for policy, row in rows.items():
        for record, stats in zip(row.live.apps, row.sim.apps, strict=True):
            print(f"{policy:<16}{record.name:<6}{record.model:<22}"
                  f"{record.outcomes.get('completed', 0):>7} /{stats.frames_done:>6.0f}"
                  f"{record.outcomes.get('dropped', 0):>6} /{stats.frames_dropped:>5.0f}"
                  f"{record.loads:>6} /{stats.loads or 0:>5}")
    worst = max((c.error for cs in compared.values() for c in cs.values()
                 if c.error is not None), default=0.0)
    print(f"largest error {100 * worst:.0f}% (goal {100 * GOAL_RELATIVE_ERROR:.0f}%)")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "daemon_live" + ("_quick" if args.quick else "") + ("_stub" if args.stub_costs else "")
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps({
        "synthetic": bool(args.quick), "stub_costs": bool(args.stub_costs),
        "models_dir": str(models_dir),
        "threads": args.threads, "queue_size": args.queue_size,
        "goal_relative_error": GOAL_RELATIVE_ERROR, "largest_error": worst,
        "trace": trace.model_dump(mode="json"), "models": workload.models,
        "results": {p: {"measured": asdict(r.live) | {"cpu_daemon_s": r.live.cpu.daemon_s},
                        "simulated": r.sim.summary.model_dump(),
                        "simulated_apps": [a.model_dump() for a in r.sim.apps],
                        "fluid": r.fluid.summary.model_dump(),
                        "comparison": {f: {**asdict(c), "error": c.error}
                                       for f, c in compared[p].items()},
                        "calibration": {"frame_cpu_s": r.calibration.frame_cpu_s,
                                        "pace_s": r.calibration.pace_s,
                                        "costs": {n: [asdict(c) for c in cs]
                                                  for n, cs in r.calibration.costs.items()},
                                        "fluid_swap_model": asdict(r.swap)},
                        "load_average_1m": list(r.load_average)}
                    for p, r in rows.items()},
    }, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
