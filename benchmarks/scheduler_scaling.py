"""Scheduler scaling: solve time of exact and greedy, and the greedy's optimality gap.

Independent apps: for 2, 4, 8, 16 and 32 apps with 5 descendants each (share_step 0.01), 20
random problems (`scheduler.synthetic.random_problem`: memory budget and compute both
binding). Shared residency (issue 16): 8 and 32 apps over 2 and 4 models with 5 descendants
each, descendant ids shared by the apps of a model, a quarter of the apps seeing only the
top descendants (`scheduler.synthetic.random_shared_problem`). Each is solved by MinTotalCost
and MinMaxCost with method exact and greedy, and re-planned as the daemon does after an event
(`resolve` from the plan for alpha + 0.5, exact). Per row: median over the problems of the
best of 3 runs' time (wall clock, and process CPU time, which other jobs on the machine
disturb less), the worst problem's best wall time of exact, and the greedy's relative gap
(greedy - exact) / exact, mean and worst. Goals (issue 6): exact <= 10 ms at 8 apps and
<= 1 s at 32; greedy gap <= 2 % mean; issue 16: a re-plan at 8 apps well under 100 ms.

Prints a table and writes runs/benchmarks/scheduler_scaling.json.
    .venv/bin/python benchmarks/scheduler_scaling.py [--sizes 2,4,8,16,32]
        [--shared 8x2,8x4,32x2,32x4] [--problems 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.problem import Method, Policy, Problem, Solution
from scheduler.solve import Tolerance, resolve, solve
from scheduler.synthetic import random_problem, random_shared_problem

POLICIES: tuple[Policy, ...] = ("min-total-cost", "min-max-cost")
METHODS: tuple[Method, ...] = ("exact", "greedy")


@dataclass(frozen=True)
class Timing:
    """Median solve times of one (size, policy, method)."""

    wall_ms: float
    cpu_ms: float


@dataclass(frozen=True)
class Row:
    """One kind of problem and policy: timings per method, a re-plan's, the greedy's gap."""

    apps: int
    models: int | None
    """Models the apps share (ids); None: independent apps."""
    policy: str
    exact: Timing
    exact_worst_ms: float
    greedy: Timing
    replan: Timing
    gap_mean: float
    gap_worst: float
    zero_cost_problems: int


def best_of(repeats: int, run: Callable[[], Solution]) -> tuple[Solution, float, float]:
    """(solution, wall seconds, CPU seconds) of the best of `repeats` runs (wall clock: the
    solution's own solve time)."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu = time.process_time()
        solution = run()
        cpus.append(time.process_time() - cpu)
        walls.append(solution.solve_time_s)
    if not solution.feasible or solution.objective is None:
        raise RuntimeError(f"random problem infeasible: {solution.reason}")
    return solution, min(walls), min(cpus)


def replanned(problem: Problem, policy: Policy) -> Callable[[], Solution]:
    """A re-plan after an event: `resolve` from the plan in force (that for alpha + 0.5)."""
    current = solve(problem.model_copy(update={"alpha": problem.alpha + 0.5}), policy)

    def run() -> Solution:
        started = time.perf_counter()
        solution = resolve(problem, current, policy, "exact", Tolerance())
        return solution.model_copy(update={"solve_time_s": time.perf_counter() - started})

    return run


def measure(
    instances: list[Problem], apps: int, models: int | None, repeats: int
) -> list[Row]:
    """Solve and re-plan the instances with every policy and method."""
    rows = []
    for policy in POLICIES:
        objective: dict[str, list[float]] = {m: [] for m in METHODS}
        wall: dict[str, list[float]] = {m: [] for m in (*METHODS, "replan")}
        cpu: dict[str, list[float]] = {m: [] for m in (*METHODS, "replan")}
        for problem in instances:
            for method in METHODS:
                solution, w, c = best_of(repeats, partial(solve, problem, policy, method))
                objective[method].append(solution.objective or 0.0)
                wall[method].append(w)
                cpu[method].append(c)
            _, w, c = best_of(repeats, replanned(problem, policy))
            wall["replan"].append(w)
            cpu["replan"].append(c)
        gaps = [
            (g - e) / e
            for e, g in zip(objective["exact"], objective["greedy"], strict=True)
            if e > 0
        ]
        timing = {
            m: Timing(1e3 * statistics.median(wall[m]), 1e3 * statistics.median(cpu[m]))
            for m in wall
        }
        rows.append(
            Row(
                apps,
                models,
                policy,
                timing["exact"],
                1e3 * max(wall["exact"]),
                timing["greedy"],
                timing["replan"],
                statistics.fmean(gaps) if gaps else 0.0,
                max(gaps, default=0.0),
                sum(1 for e in objective["exact"] if e <= 0),
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    """The printed table."""
    lines = [
        f"{'apps':>4}{'models':>7}  {'policy':<15}{'exact ms':>9}{'(cpu)':>7}{'worst':>7}"
        f"{'greedy ms':>10}{'(cpu)':>7}{'re-plan ms':>11}{'(cpu)':>7}"
        f"{'gap mean %':>11}{'gap worst %':>12}"
    ]
    for r in rows:
        models = "-" if r.models is None else str(r.models)
        lines.append(
            f"{r.apps:>4}{models:>7}  {r.policy:<15}{r.exact.wall_ms:>9.2f}{r.exact.cpu_ms:>7.2f}"
            f"{r.exact_worst_ms:>7.1f}{r.greedy.wall_ms:>10.2f}{r.greedy.cpu_ms:>7.2f}"
            f"{r.replan.wall_ms:>11.2f}{r.replan.cpu_ms:>7.2f}"
            f"{100 * r.gap_mean:>11.3f}{100 * r.gap_worst:>12.3f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2,4,8,16,32", help="numbers of independent apps")
    parser.add_argument(
        "--shared", default="8x2,8x4,32x2,32x4", help="APPSxMODELS with shared ids ('' for none)"
    )
    parser.add_argument("--problems", type=int, default=20, help="random problems per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timing: best of this many")
    parser.add_argument("--out", default="runs/benchmarks/scheduler_scaling.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    shared = [tuple(int(x) for x in s.split("x")) for s in args.shared.split(",") if s]
    solve(random_problem(args.seed, 2), "min-total-cost", "greedy")  # warm up imports
    started = time.time()
    seeds = range(args.seed, args.seed + args.problems)
    rows = [
        row
        for apps in sizes
        for row in measure([random_problem(k, apps) for k in seeds], apps, None, args.repeats)
    ]
    rows += [
        row
        for apps, models in shared
        for row in measure(
            [random_shared_problem(k, apps, models) for k in seeds], apps, models, args.repeats
        )
    ]
    print(
        f"5 descendants per app (per model), share_step 0.01; median over {args.problems} "
        f"problems of the best of {args.repeats} runs (worst: the slowest problem's best); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
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
