"""NestDNN scheduling vs the resource-agnostic baseline on simulated traces (paper Fig. 9).

Random traces (Poisson app arrivals, exponential run times, apps drawn from a pool of
profiles, 30 fps input each) are replayed by `scheduler.simulate` under the baseline and
under MinTotalCost and MinMaxCost (exact) at several alpha values. For each: time-averaged
accuracy of the descendants in use and frames per second per app (averaged over the
traces), plus late frames, switches and busy time. Sweeping alpha traces an accuracy/FPS
curve; against the baseline's point we report the FPS ratio at the baseline's accuracy and
the accuracy gain at the baseline's FPS (interpolated on the curve; paper: 2.0x and +4.2 %).

Profiles: synthetic (`scheduler.synthetic.synthetic_pool`, said so in the output) unless
--models names a models directory (every NAME.nest + NAME.profile.json pair becomes one app
with its measured profile) or --profiles gives JSON files holding a list of apps in the
scheduler.App format (or a problem file's {"apps": [...]}).

Prints a table and writes runs/benchmarks/scheduler_vs_baseline.{json,png}.
    .venv/bin/python benchmarks/scheduler_vs_baseline.py [--traces 5] [--duration 1800]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nestdnn.errors import NestError
from profiles.schema import Backend
from scheduler.daemon import ModelCatalogue
from scheduler.problem import App, Policy, load_app_pool
from scheduler.simulate import SimulationResult, SwapModel, Trace, random_trace, simulate
from scheduler.synthetic import synthetic_pool

ALPHAS = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class Point:
    """One policy (and alpha) averaged over the traces."""

    policy: str
    alpha: float | None
    accuracy: float
    fps: float
    late_fraction: float
    busy_fraction: float
    switches: float
    swapping_s: float
    solve_ms: float


def average(policy: str, alpha: float | None, results: list[SimulationResult]) -> Point:
    """Mean figures over the traces."""
    s = [r.summary for r in results]
    return Point(
        policy=policy,
        alpha=alpha,
        accuracy=statistics.fmean(x.accuracy or 0.0 for x in s),
        fps=statistics.fmean(x.fps for x in s),
        late_fraction=statistics.fmean(x.late_fraction for x in s),
        busy_fraction=statistics.fmean(x.busy_fraction for x in s),
        switches=statistics.fmean(x.switches for x in s),
        swapping_s=statistics.fmean(x.swapping_s for x in s),
        solve_ms=1e3 * sum(x.solve_time_s for x in s) / max(1, sum(x.resolves for x in s)),
    )


def interpolate(points: list[Point], key: str, at: float, value: str) -> float | None:
    """`value` on the piecewise-linear curve through `points` where `key` equals `at`."""
    curve = sorted((getattr(p, key), getattr(p, value)) for p in points)
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x0 <= at <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    return None


def compare(curve: list[Point], base: Point) -> dict[str, float | None]:
    """The curve against the baseline's point.

    Interpolated FPS ratio at the baseline's accuracy and accuracy gain at its FPS (None
    when the baseline lies outside the curve's range), and the curve's ends: the most
    accurate point's accuracy gain and FPS ratio, and the same for the fastest point.
    """
    fps_at = interpolate(curve, "accuracy", base.accuracy, "fps")
    acc_at = interpolate(curve, "fps", base.fps, "accuracy")
    accurate = max(curve, key=lambda p: (p.accuracy, p.fps))
    fastest = max(curve, key=lambda p: (p.fps, p.accuracy))
    return {
        "fps_ratio_at_equal_accuracy": None if fps_at is None else fps_at / base.fps,
        "accuracy_gain_at_equal_fps": None if acc_at is None else acc_at - base.accuracy,
        "most_accurate_alpha": accurate.alpha,
        "most_accurate_gain": accurate.accuracy - base.accuracy,
        "most_accurate_fps_ratio": accurate.fps / base.fps,
        "fastest_alpha": fastest.alpha,
        "fastest_gain": fastest.accuracy - base.accuracy,
        "fastest_fps_ratio": fastest.fps / base.fps,
    }


def describe(policy: str, c: dict[str, float | None]) -> str:
    """One line per policy for the printed summary."""
    ratio, gain = c["fps_ratio_at_equal_accuracy"], c["accuracy_gain_at_equal_fps"]
    return (
        f"{policy}: at the baseline's accuracy "
        + ("fps n/a (outside the curve)" if ratio is None else f"fps x{ratio:.2f}")
        + ", at its fps "
        + ("accuracy n/a (outside the curve)" if gain is None else f"accuracy {100 * gain:+.2f}")
        + f"; most accurate (alpha {c['most_accurate_alpha']:g}): "
        + f"{100 * c['most_accurate_gain']:+.2f} points at fps x{c['most_accurate_fps_ratio']:.2f}"
        + f"; fastest (alpha {c['fastest_alpha']:g}): {100 * c['fastest_gain']:+.2f} points "
        + f"at fps x{c['fastest_fps_ratio']:.2f}"
    )


def run_policy(
    traces: list[Trace], policy: Policy, alpha: float, swap: SwapModel
) -> list[SimulationResult]:
    return [simulate(t, policy, "exact", alpha=alpha, swap=swap) for t in traces]


def table(points: list[Point]) -> str:
    lines = [
        f"{'policy':<16}{'alpha':>7}{'accuracy':>10}{'fps':>7}{'late %':>8}{'busy %':>8}"
        f"{'switches':>10}{'swap s':>8}{'ms/solve':>10}"
    ]
    for p in points:
        alpha = "-" if p.alpha is None else f"{p.alpha:g}"
        lines.append(
            f"{p.policy:<16}{alpha:>7}{100 * p.accuracy:>10.2f}{p.fps:>7.1f}"
            f"{100 * p.late_fraction:>8.1f}{100 * p.busy_fraction:>8.1f}{p.switches:>10.1f}"
            f"{p.swapping_s:>8.0f}{p.solve_ms:>10.2f}"
        )
    return "\n".join(lines)


def plot(points: list[Point], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for policy, marker in (("min-total-cost", "o-"), ("min-max-cost", "s--")):
        curve = sorted((p for p in points if p.policy == policy), key=lambda p: p.fps)
        ax.plot([p.fps for p in curve], [100 * p.accuracy for p in curve], marker, label=policy)
        for p in curve if policy == "min-total-cost" else []:
            ax.annotate(
                f"{p.alpha:g}",
                (p.fps, 100 * p.accuracy),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    base = next(p for p in points if p.policy == "baseline")
    ax.plot([base.fps], [100 * base.accuracy], "k*", markersize=12, label="resource-agnostic")
    ax.set_xlabel("frames per second per app (labels: alpha)")
    ax.set_ylabel("time-averaged accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pool_from(paths: list[str]) -> list[App]:
    """Apps from every --profiles file, names made unique."""
    pool: list[App] = []
    for path in paths:
        pool.extend(load_app_pool(path))
    return [a.model_copy(update={"name": f"{a.name}.{i}"}) for i, a in enumerate(pool)]


def pool_from_models(models_dir: str, backend: Backend) -> list[App]:
    """One app per servable model of a models directory (its measured profile), 30 fps."""
    catalogue = ModelCatalogue.load(models_dir)
    if not catalogue.entries:
        raise NestError(f"no servable model in {models_dir}")
    return [
        App(name=name, target_latency_s=1 / 30, descendants=entry.descendants(backend))
        for name, entry in sorted(catalogue.entries.items())
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source_group = parser.add_mutually_exclusive_group()
    source_group.add_argument("--profiles", nargs="*", help="JSON files with lists of apps")
    source_group.add_argument(
        "--models", help="a models directory (NAME.nest + NAME.profile.json): its measured profiles"
    )
    parser.add_argument("--backend", choices=("torch", "tflite"), default="torch",
                        help="whose latencies to use with --models")
    parser.add_argument("--traces", type=int, default=5, help="random traces (seeds 0..N-1)")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds per trace")
    parser.add_argument("--arrival-rate", type=float, default=1 / 30, help="apps per second")
    parser.add_argument("--mean-run", type=float, default=120.0, help="seconds")
    parser.add_argument("--max-apps", type=int, default=4)
    parser.add_argument(
        "--budget-mb",
        type=float,
        help="memory budget (default: half of what max-apps average largest models need)",
    )
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    parser.add_argument("--swap-bandwidth", type=float, default=SwapModel.bandwidth_bytes_per_s)
    parser.add_argument("--swap-period", type=float, default=SwapModel.period_s)
    parser.add_argument("--out", default="runs/benchmarks/scheduler_vs_baseline")
    args = parser.parse_args()

    if args.models:
        try:
            pool = pool_from_models(args.models, args.backend)
        except NestError as e:
            print(f"scheduler_vs_baseline: error: {e}", file=sys.stderr)
            return 2
        source = f"measured {args.backend} profiles of {args.models}"
    elif args.profiles:
        pool = pool_from(args.profiles)
        source = f"profiles from {', '.join(args.profiles)}"
    else:
        pool, source = synthetic_pool(), "synthetic profiles"
    largest = statistics.fmean(max(d.memory_bytes for d in a.descendants) for a in pool)
    budget = int(args.budget_mb * 1e6) if args.budget_mb else int(0.5 * args.max_apps * largest)
    swap = SwapModel(args.swap_bandwidth, args.swap_period)
    alphas = [float(a) for a in args.alphas.split(",")]
    traces = [
        random_trace(
            pool,
            seed=seed,
            duration_s=args.duration,
            arrival_rate_per_s=args.arrival_rate,
            mean_run_s=args.mean_run,
            max_apps=args.max_apps,
            memory_budget_bytes=budget,
        )
        for seed in range(args.traces)
    ]
    started = time.time()
    points = [average("baseline", None, run_policy(traces, "baseline", 1.0, swap))]
    for policy in ("min-total-cost", "min-max-cost"):
        points += [average(policy, a, run_policy(traces, policy, a, swap)) for a in alphas]
    base = points[0]
    comparisons = {
        policy: compare([p for p in points if p.policy == policy], base)
        for policy in ("min-total-cost", "min-max-cost")
    }

    title = (
        f"{source}: {len(pool)} apps in the pool, {args.traces} traces x {args.duration:g} s\n"
        f"<= {args.max_apps} apps at once, budget {budget / 1e6:.1f} MB, 30 fps input"
    )
    print(title.replace("\n", ", "))
    print(
        f"swap model: {swap.bandwidth_bytes_per_s / 1e6:g} MB/s, rounds of "
        f"{1e3 * swap.period_s:.1f} ms; accuracy of paused apps not counted, their fps is 0"
    )
    print(table(points))
    for policy, c in comparisons.items():
        print(describe(policy, c))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(points, title, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "profiles": source,
                "pool": [a.model_dump() for a in pool],
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                },
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": round(time.time() - started, 1),
                "settings": {**vars(args), "budget_bytes": budget},
                "points": [asdict(p) for p in points],
                "comparisons": comparisons,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
