"""Every inference backend on every descendant, side by side, against the machine's limit.

For the models of a directory (NAME.nest + NAME.profile.json), one run measures:

* **speed**: batch-1 latency of every descendant on every backend (onnxruntime, torch eager,
  TFLite), all runners interleaved in the same rounds (medians over rounds, p10/p90), beside
  the *compute limit*: the descendant's MACs over the one-thread sgemm rate (a 1024x1024
  float32 matmul in torch, best of 5), measured before and after. Goals: <= 1.15x the limit
  for descendants of >= 5 M MACs, <= 0.15 ms above it (fixed cost) for smaller ones.
* **cold loads**: a descendant from the open `.nest` to a first inference, on each backend
  (derived caches warm, file validated: what the daemon does when nothing is resident).
* **switches**: through the daemon's model manager, adjacent upgrades (k-1 -> k) and
  downgrades (top -> k), against the *same backend's* cold load of the target. On backends
  that cannot switch in place both cases are measured: the target loaded anew, and the target
  still resident as a warm rung. Goals: downgrade >= 5x, adjacent upgrade >= 2x faster.
* **others keep running**: one app streams frames while another app's descendant switches
  back and forth; its frame latencies beside a run without switches.
* **memory**: per descendant, the bytes the ledger accounts (the profile's measured resident
  growth) beside the resident growth measured here when it loads.

Prints tables and writes ``runs/benchmarks/backends[_quick].json``.

    .venv/bin/python benchmarks/backends.py --models runs/reproduce/models
    .venv/bin/python benchmarks/backends.py --quick   # SYNTHETIC stand-ins of those models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiles.latency import LatencySettings, fixed_input, measure_interleaved  # noqa: E402
from profiles.memory import trimmed_rss  # noqa: E402
from profiles.schema import BACKENDS, Backend  # noqa: E402
from profiles.synthetic import write_synthetic_nest, write_synthetic_profile  # noqa: E402
from scheduler.daemon import (  # noqa: E402
    AppSpec,
    CatalogueEntry,
    InferenceBackend,
    ModelCatalogue,
    Runtime,
    RuntimeSettings,
    make_backend,
)
from scheduler.daemon.manager import ModelManager, Target  # noqa: E402

OUT_DIR = Path("runs/benchmarks")
LIMIT_RATIO_GOAL = 1.15
FIXED_COST_GOAL_S = 0.15e-3
LARGE_MACS = 5_000_000
DOWNGRADE_GOAL = 5.0
UPGRADE_GOAL = 2.0
QUICK_MODELS = {  # SYNTHETIC stand-ins of the three reproduce models' architectures
    "synthetic-vgg16": dict(arch="vgg16", in_channels=1, input_size=28, num_classes=10,
                            width_mults=(0.0625, 0.125, 0.1875, 0.25),
                            accuracies=(0.86, 0.89, 0.91, 0.92)),
    "synthetic-resnet20": dict(arch="resnet20", in_channels=1, input_size=28, num_classes=10,
                               width_mults=(0.25, 0.375, 0.5), accuracies=(0.84, 0.88, 0.90)),
    "synthetic-vgg11": dict(arch="vgg11", in_channels=3, input_size=32, num_classes=3,
                            width_mults=(0.0625, 0.125, 0.25), accuracies=(0.80, 0.86, 0.90)),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="directory of NAME.nest + NAME.profile.json")
    parser.add_argument("--quick", action="store_true",
                        help="SYNTHETIC stand-ins of the reproduce models (random weights)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated, from: " + ", ".join(BACKENDS))
    parser.add_argument("--runs", type=int, default=200, help="timed runs per descendant")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--loads", type=int, default=15, help="cold loads per descendant")
    parser.add_argument("--switches", type=int, default=15, help="repeats of each switch")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.quick == (args.models is not None):
        parser.error("give exactly one of --models DIR and --quick")
    return args


# -------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated timings, in seconds."""

    median: float
    p10: float
    p90: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        q = np.percentile(samples, [10, 90, 99])
        return cls(statistics.median(samples), float(q[0]), float(q[1]), float(q[2]),
                   len(samples))


def sgemm_rate() -> float:
    """MAC/s of one thread on a 1024x1024 float32 matmul (torch, else numpy), best of 5."""
    n = 1024
    try:
        import torch

        torch.set_num_threads(1)
        a, b = torch.randn(n, n), torch.randn(n, n)
        matmul: Callable[[], object] = lambda: torch.mm(a, b)  # noqa: E731
    except ImportError:
        a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
        matmul = lambda: a @ b  # noqa: E731
    matmul()
    best = min(_timed(matmul) for _ in range(5))
    return n**3 / best


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def backends_of(names: list[Backend], threads: int = 1) -> dict[str, InferenceBackend]:
    """Every named backend that can run here (a missing runtime is reported and skipped)."""
    found = {}
    for name in names:
        try:
            found[name] = make_backend(name, threads)
        except ImportError as e:
            print(f"backend {name} skipped: {e}", file=sys.stderr)
    return found


@contextlib.contextmanager
def prepared(backends: dict[str, InferenceBackend], catalogue: ModelCatalogue) -> Iterator[None]:
    entries = list(catalogue.entries.values())
    for backend in backends.values():
        backend.on_worker_start()
        backend.prepare(entries)
    try:
        yield
    finally:
        for backend in backends.values():
            backend.close()


def first_inference(model: object, entry: CatalogueEntry) -> None:
    model.logits(fixed_input(entry.input_shape))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- speed


@dataclass(frozen=True)
class SpeedRow:
    model: str
    descendant: int
    backend: str
    macs: int
    limit_s: float
    latency: Spread
    ratio: float
    fixed_s: float
    meets_goal: bool


def latencies(backends: dict[str, InferenceBackend], catalogue: ModelCatalogue, runs: int,
              rounds: int) -> list[tuple[str, CatalogueEntry, int, Spread]]:
    """Batch-1 latency of every (backend, descendant), all interleaved in the same rounds."""
    keys, runners = [], []
    for name, backend in backends.items():
        for entry in catalogue.entries.values():
            for k in range(entry.num_descendants):
                model = backend.open(entry, k)
                x = fixed_input(entry.input_shape)
                keys.append((name, entry, k))
                runners.append(lambda m=model, x=x: m.logits(x))
    stats = measure_interleaved(runners, LatencySettings(runs=runs, rounds=rounds, warmup=20))
    return [(name, entry, k, Spread(s.median_s, s.median_s, s.p90_s, s.p90_s, s.runs))
            for (name, entry, k), s in zip(keys, stats, strict=True)]


def speed_rows(measured: list[tuple[str, CatalogueEntry, int, Spread]],
               rate: float) -> list[SpeedRow]:
    """Each latency against the compute limit at the sgemm ``rate`` (MAC/s)."""
    rows = []
    for name, entry, k, latency in measured:
        macs = entry.nest.manifest.descendants[k].macs
        limit = macs / rate
        ratio, fixed = latency.median / limit, latency.median - limit
        goal = ratio <= LIMIT_RATIO_GOAL if macs >= LARGE_MACS else fixed <= FIXED_COST_GOAL_S
        rows.append(SpeedRow(entry.name, k, name, macs, limit, latency, ratio, fixed, goal))
    return rows


# --------------------------------------------------------------------------- loads, switches


def cold_loads(backends: dict[str, InferenceBackend], catalogue: ModelCatalogue,
               repeats: int) -> dict[tuple[str, str, int], Spread]:
    """Open + first inference of every descendant, descendants interleaved per repeat."""
    samples: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(repeats):
        for name, backend in backends.items():
            for entry in catalogue.entries.values():
                for k in range(entry.num_descendants):
                    start = time.perf_counter()
                    model = backend.open(entry, k)
                    first_inference(model, entry)
                    samples.setdefault((name, entry.name, k), []).append(
                        time.perf_counter() - start)
                    model.close()
                    del model
    return {key: Spread.of(values) for key, values in samples.items()}


@dataclass(frozen=True)
class SwitchRow:
    backend: str
    model: str
    kind: str  # "upgrade" (k-1 -> k) or "downgrade" (top -> k)
    source: int
    target: int
    warm: bool  # the target was still resident (a warm rung)
    switch: Spread
    cold_load: Spread
    speedup: float
    goal: float


def no_jobs(_app_id: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def switches(backends: dict[str, InferenceBackend], catalogue: ModelCatalogue,
             loads: dict[tuple[str, str, int], Spread], repeats: int) -> list[SwitchRow]:
    """Adjacent upgrades and downgrades from the top, through the manager, as the daemon
    applies plans: the time from the plan to the app running on the target (a first
    inference on it included)."""
    rows = []
    for name, backend in backends.items():
        regimes = [True] if backend.switches_in_place else [False, True]
        for entry in catalogue.entries.values():
            top = entry.num_descendants - 1
            cases = [("upgrade", k - 1, k) for k in range(1, top + 1)]
            cases += [("downgrade", top, k) for k in range(top)]
            for kind, source, target in cases:
                for warm in regimes:
                    times = [_switch_once(backend, entry, source, target, warm)
                             for _ in range(repeats)]
                    cold = loads[name, entry.name, target]
                    spread = Spread.of(times)
                    rows.append(SwitchRow(
                        name, entry.name, kind, source, target,
                        warm and not backend.switches_in_place, spread, cold,
                        cold.median / spread.median,
                        DOWNGRADE_GOAL if kind == "downgrade" else UPGRADE_GOAL))
    return rows


def _switch_once(backend: InferenceBackend, entry: CatalogueEntry, source: int, target: int,
                 warm: bool) -> float:
    """One switch of one app in a fresh manager whose budget holds both descendants; with
    ``warm`` the target was resident before (left idle, a warm rung)."""
    sizes = [d.memory_bytes for d in backend.descendants(entry)]
    manager = ModelManager(backend, sizes[source] + sizes[target])
    if warm and not backend.switches_in_place:
        manager.apply({"a": Target(entry, target)}, manager.limit, swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entry, source)}, manager.limit, swapping=False, hold=no_jobs)
    frame = fixed_input(entry.input_shape)[0]
    start = time.perf_counter()
    manager.apply({"a": Target(entry, target)}, manager.limit, swapping=False, hold=no_jobs)
    manager.run(["a"], [frame])
    elapsed = time.perf_counter() - start
    manager.forget("a")
    return elapsed


# ------------------------------------------------------------------- others keep running


@dataclass(frozen=True)
class OthersRow:
    backend: str
    switching: bool
    streamer_latency: Spread
    switches: int


def others_keep_running(catalogue: ModelCatalogue, backend_name: Backend,
                        seconds: float = 6.0) -> list[OthersRow]:
    """App A streams frames (a new one as soon as the last returns); app B, on another model
    and of low priority, switches descendant every 100 ms as the memory budget alternates
    between room for its smallest and for its largest descendant. A's queue waits with and
    without B's switches."""
    names = sorted(catalogue.entries)
    streamer, switcher = names[0], names[-1]
    a_bytes = catalogue.entries[streamer].profiled(backend_name)[-1].memory_bytes
    b_sizes = [d.memory_bytes for d in catalogue.entries[switcher].profiled(backend_name)]
    budgets = (a_bytes + b_sizes[0], a_bytes + b_sizes[-1])
    rows = []
    for switching in (False, True):
        runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=budgets[1],
                                                     backend=backend_name))
        runtime.start()
        try:
            a = runtime.register(AppSpec(model=streamer, target_latency_s=1.0))
            b = runtime.register(AppSpec(model=switcher, target_latency_s=1.0, priority=0.1))
            latencies: list[float] = []
            stop = threading.Event()
            frame = fixed_input(catalogue.entries[streamer].input_shape)[0]
            thread = threading.Thread(target=_stream, args=(runtime, a.id, frame, stop, latencies))
            thread.start()
            deadline, flips = time.monotonic() + seconds, 0
            while time.monotonic() < deadline:
                if switching:
                    runtime.set_policy(memory_budget_bytes=budgets[flips % 2])
                    flips += 1
                time.sleep(0.1)
            stop.set()
            thread.join()
            switched = next(s.switches for s in runtime.snapshot().apps if s.id == b.id)
        finally:
            runtime.stop()
        rows.append(OthersRow(backend_name, switching, Spread.of(latencies), switched))
    return rows


def _stream(runtime: Runtime, app_id: str, frame: np.ndarray, stop: threading.Event,
            waits: list[float]) -> None:
    """Send a frame as soon as the last one returned, until ``stop``; record queue waits."""
    while not stop.is_set():
        waits.append(runtime.submit(app_id, frame).result(timeout=60).queue_s)


# --------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryRow:
    backend: str
    model: str
    descendant: int
    accounted_bytes: int
    measured_bytes: int

    @property
    def error(self) -> float:
        return self.accounted_bytes / max(self.measured_bytes, 1) - 1.0


def memory(backends: dict[str, InferenceBackend], catalogue: ModelCatalogue) -> list[MemoryRow]:
    """Per descendant: what the ledger accounts, and the resident growth of loading it here,
    in this long-running process (trimmed RSS before and after a load and a first inference,
    the model kept; as the daemon, which trims after every model it frees)."""
    rows = []
    for name, backend in backends.items():
        for entry in catalogue.entries.values():
            accounted = backend.descendants(entry)
            for k in range(entry.num_descendants):
                before = trimmed_rss()
                model = backend.open(entry, k)
                first_inference(model, entry)
                grown = trimmed_rss() - before
                rows.append(MemoryRow(name, entry.name, k, accounted[k].memory_bytes, grown))
                model.close()
                del model
    return rows


# ---------------------------------------------------------------------------------- report


def quick_models(out_dir: Path) -> Path:
    """The SYNTHETIC stand-ins, written and profiled (with memory) once."""
    directory = out_dir / "backends_synthetic_models"
    directory.mkdir(parents=True, exist_ok=True)
    for seed, (name, spec) in enumerate(QUICK_MODELS.items()):
        nest = directory / f"{name}.nest"
        if not nest.exists():
            write_synthetic_nest(nest, seed=seed, **spec)
            write_synthetic_profile(nest, backends=BACKENDS, measure_rss=True)
    return directory


def print_tables(result: dict) -> None:
    print(f"\none-thread sgemm: {result['sgemm_gmacs']:.1f} GMAC/s (before/after:"
          f" {result['sgemm_before_gmacs']:.1f}/{result['sgemm_after_gmacs']:.1f});"
          f" load average {result['load_average'][0]:.2f} -> {result['load_average'][1]:.2f}")
    print("\nspeed, batch 1, one thread: median ms (p90), x the compute limit, ms above it")
    print(f"{'model':20} {'d':>2} {'MMACs':>7} {'limit':>7}  " + "  ".join(
        f"{b:>27}" for b in result["backends"]))
    rows = {(r["model"], r["descendant"], r["backend"]): r for r in result["speed"]}
    for model, k in sorted({(r["model"], r["descendant"]) for r in result["speed"]}):
        cells = []
        for b in result["backends"]:
            r = rows[model, k, b]
            mark = "" if r["meets_goal"] else " !"
            cells.append(f"{r['latency']['median'] * 1e3:6.3f} ({r['latency']['p90'] * 1e3:6.3f})"
                         f" {r['ratio']:5.2f}x {r['fixed_s'] * 1e3:+6.3f}{mark:2}")
        any_row = rows[model, k, result["backends"][0]]
        print(f"{model:20} {k:>2} {any_row['macs'] / 1e6:7.2f} {any_row['limit_s'] * 1e3:7.3f}  "
              + "  ".join(cells))
    print("  (! misses the goal: <= 1.15x the limit at >= 5 M MACs, <= 0.15 ms above it below)")
    print("\nswitches vs the same backend's cold load of the target: median ms (p99), speed-up")
    for r in result["switches"]:
        warm = "warm rung" if r["warm"] else ("in place" if r["backend"] == "torch" else "loaded")
        print(f"{r['backend']:12} {r['model']:20} {r['kind']:9} d{r['source']}->d{r['target']}"
              f" {warm:9} {r['switch']['median'] * 1e3:7.3f} ({r['switch']['p99'] * 1e3:7.3f})"
              f"  cold {r['cold_load']['median'] * 1e3:7.3f} ({r['cold_load']['p99'] * 1e3:7.3f})"
              f"  {r['speedup']:5.1f}x (goal {r['goal']:.0f}x)")
    print("\nan app's frames (queue wait ms p50 / p90 / p99) while another app switches")
    for r in result["others"]:
        s = r["streamer_latency"]
        print(f"{r['backend']:12} switching={r['switching']!s:5} switches {r['switches']:3}"
              f"  {s['median'] * 1e3:.3f} / {s['p90'] * 1e3:.3f} / {s['p99'] * 1e3:.3f}")
    print("\nmemory: accounted vs measured resident growth of a load (kB), error")
    for r in result["memory"]:
        error = r["accounted_bytes"] / max(r["measured_bytes"], 1) - 1
        print(f"{r['backend']:12} {r['model']:20} d{r['descendant']}"
              f" {r['accounted_bytes'] / 1e3:9.1f} {r['measured_bytes'] / 1e3:9.1f} {error:+7.1%}")


def main() -> int:
    args = parse_args()
    models_dir = quick_models(args.out_dir) if args.quick else args.models
    catalogue = ModelCatalogue.load(models_dir)
    names = [b for b in args.backends.split(",") if b]
    backends = backends_of(names)  # type: ignore[arg-type]
    load_before = os.getloadavg()[0]
    with prepared(backends, catalogue):
        for name in list(backends):
            try:
                for entry in catalogue.entries.values():
                    entry.profiled(name)  # type: ignore[arg-type]
            except Exception as e:  # a profile without this backend's figures
                print(f"backend {name} skipped: {e}", file=sys.stderr)
                del backends[name]
        before = sgemm_rate()
        measured = latencies(backends, catalogue, args.runs, args.rounds)
        after = sgemm_rate()
        rate = (before + after) / 2
        speed = speed_rows(measured, rate)
        loads = cold_loads(backends, catalogue, args.loads)
        switch_rows = switches(backends, catalogue, loads, args.switches)
        memory_rows = memory(backends, catalogue)
    others = others_keep_running(catalogue, "onnxruntime") if "onnxruntime" in backends else []
    result = {
        "models": str(models_dir) if args.models else "synthetic stand-ins",
        "synthetic": args.quick,
        "backends": list(backends),
        "sgemm_gmacs": rate / 1e9, "sgemm_before_gmacs": before / 1e9,
        "sgemm_after_gmacs": after / 1e9,
        "load_average": [load_before, os.getloadavg()[0]],
        "speed": [asdict(r) for r in speed],
        "cold_loads": [{"backend": b, "model": m, "descendant": k, **asdict(s)}
                       for (b, m, k), s in loads.items()],
        "switches": [asdict(r) for r in switch_rows],
        "others": [asdict(r) for r in others],
        "memory": [asdict(r) for r in memory_rows],
    }
    print_tables(result)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / ("backends_quick.json" if args.quick else "backends.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
