"""Live daemon run: a trace of apps starting and stopping, NestDNN vs the agnostic baseline.

Every app is a thread sending frames at its frame rate (30 fps) to a real `Runtime` running
real multi-capacity models; apps start and stop as the trace says. The same trace runs once
per policy -- NestDNN MinTotalCost and the resource-agnostic baseline -- under the same
memory budget. Measured per policy:

* accuracy: time-averaged accuracy (profile) of the descendant each app has in use (the
  applied plan's; every completed frame reports the descendant that computed it, kept in
  the JSON per app), over all app-seconds;
* fps: frames completed per app-second (real completions of the 30 fps streams);
* switches: descendant switches of running apps; model loads are listed beside (the
  baseline swaps models that do not fit together);
* busy_s_per_frame: the executor's busy time (inference and on-demand loads) per frame, and
  cpu_s_per_frame: the process's CPU time per frame (energy proxies; the latter includes the
  sender threads and the solver);

and beside each figure the scheduler's simulator's prediction for the same trace
(`scheduler.simulate`, its busy time per frame beside both energy proxies; model loading
charged at the load bandwidth measured here first). Goal: measured within 15 % of
simulated. Prints a table, writes JSON under runs/benchmarks/.

Real models (a directory of NAME.nest + NAME.profile.json, e.g. from the pipeline):
    .venv/bin/python benchmarks/daemon_live.py --models runs/models
Check of the machinery on tiny SYNTHETIC models generated on the spot (random weights,
assigned accuracies, measured latencies; clearly not a result about real models):
    .venv/bin/python benchmarks/daemon_live.py --quick
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nestdnn.errors import NestError
from scheduler.backends import TorchBackend
from scheduler.catalogue import ModelCatalogue
from scheduler.errors import FrameDropped, QueueFull, UnknownApp
from scheduler.executor import Prediction
from scheduler.problem import App
from scheduler.runtime import AppSpec, Runtime, RuntimeSettings
from scheduler.simulate import AppStart, AppStop, SimulationResult, SwapModel, Trace, simulate
from scheduler.synthetic_models import synthetic_models_dir, write_synthetic_profile

log = logging.getLogger("daemon_live")

POLICIES = ("min-total-cost", "baseline")
GOAL_RELATIVE_ERROR = 0.15
OUT_DIR = Path("runs/benchmarks")


@dataclass(frozen=True)
class Workload:
    """The trace (the simulator's own type) and the model each app uses."""

    trace: Trace
    models: dict[str, str]


def build_workload(catalogue: ModelCatalogue, duration_s: float, budget_fraction: float,
                   fps: float = 30.0) -> Workload:
    """Four apps over ``duration_s``, up to three at once, models assigned round robin.

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
        table = catalogue.entries[models[name]].descendants("torch")
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


class Sender(threading.Thread):
    """One app: submits a frame every 1/fps seconds and counts what became of each."""

    def __init__(self, runtime: Runtime, app_id: str, frame: torch.Tensor, fps: float) -> None:
        super().__init__(name=f"sender-{app_id}", daemon=True)
        self.runtime, self.app_id, self.frame, self.period = runtime, app_id, frame, 1.0 / fps
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.descendants: Counter[int] = Counter()
        self.futures: list[Future[Prediction]] = []

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.wait(max(0.0, next_at - time.monotonic())):
            try:
                future = self.runtime.submit(self.app_id, self.frame)
            except (QueueFull, UnknownApp):
                with self.lock:
                    self.outcomes["refused"] += 1
            else:
                future.add_done_callback(self._done)
                self.futures.append(future)
            next_at = max(next_at + self.period, time.monotonic() - self.period)

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
    apps: list[AppRecord]


def run_live(catalogue: ModelCatalogue, settings: RuntimeSettings, workload: Workload
             ) -> LiveResult:
    """Replay the trace in real time against a fresh runtime; measure every app."""
    runtime = Runtime(catalogue, settings)
    runtime.start()
    try:
        records, cpu = _replay(runtime, catalogue, workload)
    finally:
        runtime.stop()
    apps = list(records.values())
    done = sum(r.outcomes.get("completed", 0) for r in apps)
    app_seconds = sum(r.stopped - r.started for r in apps)
    return LiveResult(
        policy=settings.policy,
        accuracy=sum(r.accuracy_seconds for r in apps) / app_seconds,
        fps=done / app_seconds,
        switches=sum(r.switches for r in apps),
        loads=sum(r.loads for r in apps),
        busy_s_per_frame=sum(r.busy_s for r in apps) / max(done, 1),
        cpu_s_per_frame=cpu / max(done, 1),
        frames=done,
        app_seconds=app_seconds,
        apps=apps,
    )


def _replay(runtime: Runtime, catalogue: ModelCatalogue, workload: Workload
            ) -> tuple[dict[str, AppRecord], float]:
    """Start and stop apps at the trace's times; returns their records and the CPU seconds."""
    frames = {name: torch.randn(entry.input_shape) for name, entry in catalogue.entries.items()}
    ids: dict[str, str] = {}
    senders: dict[str, Sender] = {}
    records: dict[str, AppRecord] = {}
    accuracy_now: dict[str, float] = {}
    trace = workload.trace
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
            ids[name] = runtime.register(AppSpec(model=model, fps=event.fps, name=name,
                                                 priority=event.app.priority)).id
            records[name] = AppRecord(name, model, started=at)
            senders[name] = Sender(runtime, ids[name], frames[model], event.fps)
            senders[name].start()
        leaving = [event.name] if isinstance(event, AppStop) else [] if event else list(ids)
        _finish_apps(runtime, {name: (ids.pop(name), senders.pop(name), records[name])
                               for name in leaving}, at)
        accuracy_now = {a.name: a.accuracy for a in runtime.snapshot().apps}
    return records, time.process_time() - cpu0


def _finish_apps(runtime: Runtime, leaving: dict[str, tuple[str, Sender, AppRecord]],
                 now: float) -> None:
    """Stop the leaving apps' senders, wait for their frames, read their counters (before
    any of them unregisters and re-plans the others), then unregister them."""
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
    for app_id, _, _ in leaving.values():
        runtime.unregister(app_id)


def load_bandwidth(catalogue: ModelCatalogue, repeats: int = 3) -> float:
    """Bytes per second of loading a largest descendant from its .nest (median over models)."""
    backend, rates = TorchBackend(), []
    for entry in catalogue.entries.values():
        k = entry.num_descendants - 1
        backend.open(entry, k).close()  # warm: file in the page cache, code paths compiled
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            backend.open(entry, k).close()
            times.append(time.perf_counter() - t)
        rates.append(entry.descendants("torch")[k].memory_bytes / statistics.median(times))
    return statistics.median(rates)


def quick_models(out_dir: Path) -> Path:
    """Three tiny SYNTHETIC models (written once), re-profiled now: the simulator's latencies
    must be measured under the conditions of the live run."""
    directory = out_dir / "daemon_live_synthetic_models"
    names = ["synthetic-a", "synthetic-b", "synthetic-c"]
    if all((directory / f"{n}.nest").is_file() for n in names):
        for name in names:
            write_synthetic_profile(directory / f"{name}.nest")
    else:
        synthetic_models_dir(directory, names)
    return directory


@dataclass(frozen=True)
class Comparison:
    """A measured figure beside the simulator's, and their relative difference."""

    measured: float
    simulated: float

    @property
    def error(self) -> float | None:
        return None if self.simulated == 0 else abs(self.measured - self.simulated) / abs(
            self.simulated)


def compare(live: LiveResult, sim: SimulationResult) -> dict[str, Comparison]:
    """Measured vs simulated: accuracy, fps, switches, processor seconds per frame."""
    frames = sum(a.frames_done for a in sim.apps)
    busy_per_frame = sim.summary.busy_fraction * sim.duration_s / max(frames, 1e-9)
    return {
        "accuracy": Comparison(live.accuracy, sim.summary.accuracy or 0.0),
        "fps": Comparison(live.fps, sim.summary.fps),
        "switches": Comparison(live.switches, sim.summary.switches),
        "busy_s_per_frame": Comparison(live.busy_s_per_frame, busy_per_frame),
        "cpu_s_per_frame": Comparison(live.cpu_s_per_frame, busy_per_frame),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="directory of NAME.nest + NAME.profile.json")
    parser.add_argument("--quick", action="store_true",
                        help="tiny SYNTHETIC models generated on the spot, short trace")
    parser.add_argument("--duration", type=float, help="trace length in seconds")
    parser.add_argument("--budget-fraction", type=float, default=0.5,
                        help="memory budget as a fraction of the peak bytes of the running"
                             " apps' largest descendants")
    parser.add_argument("--threads", type=int, default=1)
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
    swap = SwapModel(bandwidth_bytes_per_s=load_bandwidth(catalogue))
    rows = {}
    for policy in POLICIES:
        live = run_live(catalogue, RuntimeSettings(
            memory_budget_bytes=workload.trace.memory_budget_bytes, policy=policy,
            threads=args.threads), workload)
        rows[policy] = (live, simulate(workload.trace, policy, swap=swap))
    report(rows, workload, swap, args, models_dir)
    return 0


def report(rows: dict[str, tuple[LiveResult, SimulationResult]], workload: Workload,
           swap: SwapModel, args: argparse.Namespace, models_dir: Path) -> None:
    """Print the table (measured / simulated / error) and write the JSON."""
    trace = workload.trace
    label = "  (SYNTHETIC: random weights, assigned accuracies)" if args.quick else ""
    print(f"\nmodels: {models_dir}{label}")
    print(f"budget {trace.memory_budget_bytes:,} B, {len(trace.events)} events over"
          f" {trace.duration_s:g} s, 30 fps per app, {args.threads} thread(s),"
          f" load bandwidth {swap.bandwidth_bytes_per_s / 1e6:.0f} MB/s,"
          f" load average {os.getloadavg()[0]:.1f}")
    print(f"{'policy':<16}{'figure':<18}{'measured':>12}{'simulated':>12}{'error':>8}")
    compared = {}
    for policy, (live, sim) in rows.items():
        compared[policy] = compare(live, sim)
        for figure, c in compared[policy].items():
            error = "-" if c.error is None else f"{100 * c.error:.0f}%"
            print(f"{policy:<16}{figure:<18}{c.measured:>12.4g}{c.simulated:>12.4g}{error:>8}")
        print(f"{policy:<16}{'model loads':<18}{live.loads:>12d}"
              f"{'swap ' + format(sim.summary.swapping_s, '.0f') + ' s':>12}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("daemon_live_quick.json" if args.quick else "daemon_live.json")
    path.write_text(json.dumps({
        "synthetic": bool(args.quick), "models_dir": str(models_dir),
        "threads": args.threads, "load_bandwidth_bytes_per_s": swap.bandwidth_bytes_per_s,
        "load_average_1m": os.getloadavg()[0], "goal_relative_error": GOAL_RELATIVE_ERROR,
        "trace": trace.model_dump(mode="json"), "models": workload.models,
        "results": {p: {"measured": asdict(live), "simulated": sim.summary.model_dump(),
                        "comparison": {f: {**asdict(c), "error": c.error}
                                       for f, c in compared[p].items()}}
                    for p, (live, sim) in rows.items()},
    }, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
