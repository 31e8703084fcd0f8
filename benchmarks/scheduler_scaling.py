"""Scheduler scaling: solve time of exact and greedy, and the greedy's optimality gap.

For 2, 4, 8, 16 and 32 apps with 5 descendants each (share_step 0.01), 20 random problems
(`scheduler.synthetic.random_problem`: memory budget and compute both binding), solved by
MinTotalCost and MinMaxCost with method exact and greedy. Per size: median over the problems
of the best of 3 runs' solve time (wall clock, and process CPU time, which other jobs on the
machine disturb less) and the greedy's relative gap (greedy - exact) / exact, mean and
worst. Goals (issue 6): exact <= 10 ms at 8 apps and <= 1 s at 32; greedy gap <= 2 % mean.

Prints a table and writes runs/benchmarks/scheduler_scaling.json.
    .venv/bin/python benchmarks/scheduler_scaling.py [--sizes 2,4,8,16,32] [--problems 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.problem import Method, Policy, Problem
from scheduler.solve import solve
from scheduler.synthetic import random_problem

POLICIES: tuple[Policy, ...] = ("min-total-cost", "min-max-cost")
METHODS: tuple[Method, ...] = ("exact", "greedy")


@dataclass(frozen=True)
class Timing:
    """Median solve times of one (size, policy, method)."""

    wall_ms: float
    cpu_ms: float


@dataclass(frozen=True)
class Row:
    """One size and policy: timings per method and the greedy's gap."""

    apps: int
    policy: str
    exact: Timing
    greedy: Timing
    gap_mean: float
    gap_worst: float
    zero_cost_problems: int


def timed(
    problem: Problem, policy: Policy, method: Method, repeats: int
) -> tuple[float, float, float]:
    """(objective, wall seconds, CPU seconds) of a solve, times the best of `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu = time.process_time()
        solution = solve(problem, policy, method)
        cpus.append(time.process_time() - cpu)
        walls.append(solution.solve_time_s)
    if not solution.feasible or solution.objective is None:
        raise RuntimeError(f"random problem infeasible: {solution.reason}")
    return solution.objective, min(walls), min(cpus)


def measure(apps: int, problems: int, seed: int, repeats: int) -> list[Row]:
    """Solve `problems` random problems of `apps` apps with every policy and method."""
    rows = []
    instances = [random_problem(seed + k, apps) for k in range(problems)]
    for policy in POLICIES:
        objective: dict[str, list[float]] = {m: [] for m in METHODS}
        wall: dict[str, list[float]] = {m: [] for m in METHODS}
        cpu: dict[str, list[float]] = {m: [] for m in METHODS}
        for problem in instances:
            for method in METHODS:
                value, w, c = timed(problem, policy, method, repeats)
                objective[method].append(value)
                wall[method].append(w)
                cpu[method].append(c)
        gaps = [
            (g - e) / e
            for e, g in zip(objective["exact"], objective["greedy"], strict=True)
            if e > 0
        ]
        zero = sum(1 for e in objective["exact"] if e <= 0)
        timing = {
            m: Timing(1e3 * statistics.median(wall[m]), 1e3 * statistics.median(cpu[m]))
            for m in METHODS
        }
        rows.append(
            Row(
                apps,
                policy,
                timing["exact"],
                timing["greedy"],
                statistics.fmean(gaps) if gaps else 0.0,
                max(gaps, default=0.0),
                zero,
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    """The printed table."""
    lines = [
        f"{'apps':>4}  {'policy':<15}{'exact ms':>10}{'(cpu)':>8}{'greedy ms':>11}{'(cpu)':>8}"
        f"{'gap mean %':>12}{'gap worst %':>13}"
    ]
    for r in rows:
        lines.append(
            f"{r.apps:>4}  {r.policy:<15}{r.exact.wall_ms:>10.2f}{r.exact.cpu_ms:>8.2f}"
            f"{r.greedy.wall_ms:>11.2f}{r.greedy.cpu_ms:>8.2f}"
            f"{100 * r.gap_mean:>12.3f}{100 * r.gap_worst:>13.3f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2,4,8,16,32", help="numbers of apps")
    parser.add_argument("--problems", type=int, default=20, help="random problems per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timing: best of this many")
    parser.add_argument("--out", default="runs/benchmarks/scheduler_scaling.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    solve(random_problem(args.seed, 2), "min-total-cost", "greedy")  # warm up imports
    started = time.time()
    rows = [row for apps in sizes for row in measure(apps, args.problems, args.seed, args.repeats)]
    print(
        f"5 descendants per app, share_step 0.01; median over {args.problems} problems of the "
        f"best of {args.repeats} runs; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": round(time.time() - started, 1),
                "problems_per_size": args.problems,
                "repeats": args.repeats,
                "load_average": os.getloadavg()[0],
                "rows": [asdict(r) for r in rows],
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
