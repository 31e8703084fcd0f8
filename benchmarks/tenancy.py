"""Many apps, few models: shared residency and batching against one copy per app.

Runs the daemon's runtime in-process (the default backend) and measures:

* **8 apps on 2 models at 30 fps** (4 apps per model) under a memory budget that holds one
  copy of each model's largest descendant and a little more: accounted bytes, the plan's
  accuracy, frames per second per app and the daemon's CPU per frame, with sharing and
  batching (the daemon) against one copy per app and no batching (apps that each load their
  own model).
* **throughput** with 8 and 32 concurrent senders on one model (each sends its next frame
  when the last returns), with and without batching.
* **share error**: apps of priorities 1..4 on one model, every one backlogged: the share of
  compute each got against the share the plan gave it (goal: within 0.02).

Prints tables and writes ``runs/benchmarks/tenancy[_quick].json``.

    .venv/bin/python benchmarks/tenancy.py --models runs/reproduce/models
    .venv/bin/python benchmarks/tenancy.py --quick   # SYNTHETIC stand-ins
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends import quick_models  # noqa: E402

from scheduler.daemon import (  # noqa: E402
    AppSpec,
    FrameDropped,
    ModelCatalogue,
    Runtime,
    RuntimeSettings,
)

OUT_DIR = Path("runs/benchmarks")
SHARE_GOAL = 0.02


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="directory of NAME.nest + NAME.profile.json")
    parser.add_argument("--quick", action="store_true", help="SYNTHETIC stand-ins of the models")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.quick == (args.models is not None):
        parser.error("give exactly one of --models DIR and --quick")
    return args


def frame_of(catalogue: ModelCatalogue, model: str) -> np.ndarray:
    shape = catalogue.entries[model].input_shape
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


class Sender(threading.Thread):
    """An app: sends frames paced at ``fps`` (or, with fps None, each as the last returns)."""

    def __init__(self, runtime: Runtime, app_id: str, frame: np.ndarray,
                 fps: float | None, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.runtime, self.app_id, self.frame, self.fps, self.stop = (
            runtime, app_id, frame, fps, stop)
        self.done = self.dropped = 0
        self.cpu_s = 0.0

    def run(self) -> None:
        started = time.thread_time()
        next_at = time.monotonic()
        pending = []
        while not self.stop.is_set():
            future = self.runtime.submit(self.app_id, self.frame)
            if self.fps is None:
                self._settle(future)
            else:
                pending.append(future)
                next_at += 1.0 / self.fps
                time.sleep(max(0.0, next_at - time.monotonic()))
        for future in pending:
            self._settle(future)
        self.cpu_s = time.thread_time() - started

    def _settle(self, future: object) -> None:
        try:
            future.result(timeout=60)  # type: ignore[attr-defined]
            self.done += 1
        except FrameDropped:
            self.dropped += 1


@dataclass(frozen=True)
class TenancyRow:
    config: str
    accounted_bytes: int
    copies_bytes: int
    """What one copy per app of the same plan's descendants would hold."""
    accuracy: float
    fps_per_app: float
    cpu_ms_per_frame: float
    dropped: int
    descendants: list[int]


def eight_apps(catalogue: ModelCatalogue, seconds: float) -> list[TenancyRow]:
    """8 apps on 2 models at 30 fps: shared and batched, shared alone, and one copy per app
    (what apps that each load their own model hold), under the same budget."""
    models = sorted(catalogue.entries)[:2]
    tops = {m: catalogue.entries[m].profiled("onnxruntime")[-1].memory_bytes for m in models}
    budget = int(1.15 * sum(tops.values()))
    rows = []
    for config, sharing, batching in (("shared + batched", True, True),
                                      ("shared", True, False),
                                      ("one copy per app", False, False)):
        runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=budget, sharing=sharing,
                                                     batching=batching))
        runtime.start()
        try:
            apps = [runtime.register(AppSpec(model=models[i % 2], fps=30.0)) for i in range(8)]
            stop = threading.Event()
            senders = [Sender(runtime, a.id, frame_of(catalogue, a.model), 30.0, stop)
                       for a in apps]
            cpu0 = time.process_time()
            for s in senders:
                s.start()
            time.sleep(seconds)
            stop.set()
            for s in senders:
                s.join()
            daemon_cpu = time.process_time() - cpu0 - sum(s.cpu_s for s in senders)
            snap = runtime.snapshot()
        finally:
            runtime.stop()
        frames = sum(s.done for s in senders)
        copies = sum(catalogue.entries[a.model].profiled("onnxruntime")[a.descendant].memory_bytes
                     for a in snap.apps)
        rows.append(TenancyRow(config, snap.accounted_bytes - snap.idle_bytes, copies,
                               float(np.mean([a.accuracy for a in snap.apps])),
                               frames / 8 / seconds, daemon_cpu / max(frames, 1) * 1e3,
                               sum(s.dropped for s in senders),
                               [a.descendant for a in snap.apps]))
    return rows


@dataclass(frozen=True)
class ThroughputRow:
    senders: int
    batching: bool
    frames_per_s: float
    mean_batch: float


def throughput(catalogue: ModelCatalogue, seconds: float) -> list[ThroughputRow]:
    """Closed-loop senders on one model's largest descendant, with and without batching."""
    model = sorted(catalogue.entries)[0]
    rows = []
    for senders_n in (8, 32):
        for batching in (False, True):
            runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=1 << 34,
                                                         batching=batching, queue_size=4))
            runtime.start()
            try:
                apps = [runtime.register(AppSpec(model=model, fps=30.0))
                        for _ in range(senders_n)]
                stop = threading.Event()
                senders = [Sender(runtime, a.id, frame_of(catalogue, model), None, stop)
                           for a in apps]
                batches: list[int] = []
                watcher = threading.Thread(target=_sample_batches,
                                           args=(runtime, apps[0].id, model, stop, batches))
                for s in senders:
                    s.start()
                watcher.start()
                time.sleep(seconds)
                stop.set()
                for s in [*senders, watcher]:
                    s.join()
            finally:
                runtime.stop()
            rows.append(ThroughputRow(senders_n, batching,
                                      sum(s.done for s in senders) / seconds,
                                      float(np.mean(batches)) if batches else 1.0))
    return rows


def _sample_batches(runtime: Runtime, app_id: str, model: str, stop: threading.Event,
                    sizes: list[int]) -> None:
    """The batch size a probe frame ran in, twice a second."""
    frame = np.zeros(runtime.catalogue.entries[model].input_shape, dtype=np.float32)
    while not stop.is_set():
        with contextlib.suppress(FrameDropped):
            sizes.append(runtime.submit(app_id, frame).result(timeout=60).batch)
        time.sleep(0.5)


@dataclass(frozen=True)
class ShareRow:
    priority: float
    planned: float
    measured: float

    @property
    def error(self) -> float:
        return abs(self.measured - self.planned)


def share_errors(catalogue: ModelCatalogue, seconds: float) -> list[ShareRow]:
    """Apps of priorities 1..4 on one model, every one backlogged (closed-loop senders
    keeping its queue full): measured busy-time shares against the plan's."""
    model = sorted(catalogue.entries)[0]
    fastest = catalogue.entries[model].profiled("onnxruntime")[-1].latency_s
    runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=1 << 34, queue_size=8))
    runtime.start()
    try:
        apps = [runtime.register(AppSpec(model=model, target_latency_s=fastest * 2,
                                         priority=float(p))) for p in (1, 2, 3, 4)]
        stop = threading.Event()
        senders = [Sender(runtime, a.id, frame_of(catalogue, model), None, stop)
                   for a in apps for _ in range(3)]
        for s in senders:
            s.start()
        time.sleep(1.0)
        busy0 = {a.id: a.busy_s for a in runtime.snapshot().apps}
        time.sleep(seconds)
        snap = runtime.snapshot()
        stop.set()
        for s in senders:
            s.join()
    finally:
        runtime.stop()
    busy = {a.id: a.busy_s - busy0[a.id] for a in snap.apps}
    total = sum(busy.values())
    return [ShareRow(a.priority, a.share, busy[a.id] / total) for a in snap.apps]


def main() -> int:
    args = parse_args()
    models = quick_models(args.out_dir) if args.quick else args.models
    catalogue = ModelCatalogue.load(models)
    load_before = os.getloadavg()[0]
    tenancy = eight_apps(catalogue, args.seconds)
    speeds = throughput(catalogue, args.seconds / 2)
    shares = share_errors(catalogue, args.seconds)
    print("\n8 apps on 2 models at 30 fps, budget 1.15x the two largest descendants")
    print("(held: the ledger's bytes of the descendants in use; copy/app: what one copy per"
          " app of the same plan would hold)")
    print(f"{'config':18} {'held MB':>8} {'copy/app MB':>11} {'accuracy':>9} {'fps/app':>8}"
          f" {'CPU ms/frame':>13} {'dropped':>8}  descendants")
    for r in tenancy:
        print(f"{r.config:18} {r.accounted_bytes / 1e6:8.2f} {r.copies_bytes / 1e6:11.2f}"
              f" {r.accuracy:9.4f} {r.fps_per_app:8.1f} {r.cpu_ms_per_frame:13.3f}"
              f" {r.dropped:8d}  {r.descendants}")
    print("\nthroughput, closed-loop senders on one model")
    for r in speeds:
        print(f"{r.senders:3d} senders, batching {'on ' if r.batching else 'off'}:"
              f" {r.frames_per_s:8.0f} frames/s (mean batch {r.mean_batch:.1f})")
    print(f"\nshares, priorities 1..4, all backlogged (goal: within {SHARE_GOAL})")
    for r in shares:
        print(f"priority {r.priority:.0f}: planned {r.planned:.3f} measured {r.measured:.3f}"
              f" error {r.error:.3f}")
    result = {
        "models": models.name if args.models else "synthetic stand-ins",
        "synthetic": args.quick, "seconds": args.seconds,
        "load_average": [load_before, os.getloadavg()[0]],
        "tenancy": [asdict(r) for r in tenancy],
        "throughput": [asdict(r) for r in speeds],
        "shares": [{**asdict(r), "error": r.error} for r in shares],
        "max_share_error": max(r.error for r in shares),
    }
    out = args.out_dir / ("tenancy_quick.json" if args.quick else "tenancy.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
