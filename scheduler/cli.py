"""Command line of the scheduler: `nestdnn schedule`, `nestdnn simulate` (and `trace`).

The top-level `nestdnn` command calls `configure_<name>(parser)` and `run_<name>(args)`;
`python -m scheduler.cli schedule|simulate|trace ...` runs them directly. Bad input raises
NestError (one line; exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from nestdnn.errors import NestError, validation_message
from scheduler.problem import METHODS, POLICIES, Problem, load_app_pool, load_problem
from scheduler.report import plot_simulation, simulation_table
from scheduler.simulate import SwapModel, Trace, load_trace, random_trace, simulate
from scheduler.solve import Tolerance, solve
from scheduler.synthetic import synthetic_pool


def _add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", choices=POLICIES, default="min-total-cost")
    parser.add_argument(
        "--method", choices=METHODS, default="exact", help="solver (ignored by the baseline)"
    )


def configure_schedule(parser: argparse.ArgumentParser) -> None:
    """Options of `nestdnn schedule`."""
    parser.description = (
        "Choose a descendant and a compute share per app. PROBLEM is a JSON file of the"
        " scheduler.Problem schema ('-' reads stdin); the solution is printed as one JSON"
        " object (feasible, objective, solve_time_s, apps: name, descendant, share, cost, ...)."
    )
    parser.add_argument("problem", nargs="?", help="problem JSON file, or - for stdin")
    _add_policy(parser)
    parser.add_argument("--alpha", type=float, help="override the problem's alpha")
    parser.add_argument(
        "--schema", action="store_true", help="print the problem's JSON schema and exit"
    )


def run_schedule(args: argparse.Namespace) -> int:
    """Solve and print the solution JSON; exit 0 also when infeasible."""
    if args.schema:
        print(json.dumps(Problem.model_json_schema(), indent=1))
        return 0
    if args.problem is None:
        raise NestError("give a PROBLEM file ('-' for stdin), or --schema")
    problem = load_problem(args.problem)
    if args.alpha is not None:
        if args.alpha < 0:
            raise NestError(f"--alpha must be >= 0, not {args.alpha}")
        problem = problem.model_copy(update={"alpha": args.alpha})
    solution = solve(problem, args.policy, args.method)
    print(json.dumps(solution.model_dump(mode="json")))
    return 0


def configure_simulate(parser: argparse.ArgumentParser) -> None:
    """Options of `nestdnn simulate`."""
    parser.description = (
        "Replay a trace of app starts, stops and changes (JSON of the scheduler.simulate.Trace"
        " schema) through a policy, re-solving at every event, and print per-app and overall"
        " accuracy, FPS, latency misses, switches and busy time."
    )
    parser.add_argument("trace", nargs="?", help="trace JSON file, or - for stdin")
    _add_policy(parser)
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of latency excess")
    parser.add_argument(
        "--switch-tolerance",
        type=float,
        default=Tolerance.rel,
        help="keep the current plan if within this relative cost of the new optimum",
    )
    parser.add_argument(
        "--switch-tolerance-abs", type=float, default=Tolerance.abs, help="... plus this much"
    )
    parser.add_argument(
        "--swap-bandwidth",
        type=float,
        default=SwapModel.bandwidth_bytes_per_s,
        help="bytes/s at which models load (switches, starts, baseline swapping)",
    )
    parser.add_argument(
        "--swap-period",
        type=float,
        default=SwapModel.period_s,
        help="seconds per round in which swapped models are re-read",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="plot shares and accuracy over time")
    parser.add_argument("--json", metavar="OUT.json", help="write the full result as JSON")
    parser.add_argument(
        "--schema", action="store_true", help="print the trace's JSON schema and exit"
    )


def run_simulate(args: argparse.Namespace) -> int:
    """Simulate and print the table; optionally write the plot and the JSON result."""
    if args.schema:
        print(json.dumps(Trace.model_json_schema(), indent=1))
        return 0
    if args.trace is None:
        raise NestError("give a TRACE file ('-' for stdin), or --schema")
    for name in ("alpha", "switch_tolerance", "switch_tolerance_abs"):
        if getattr(args, name) < 0:
            raise NestError(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("swap_bandwidth", "swap_period"):
        if getattr(args, name) <= 0:
            raise NestError(f"--{name.replace('_', '-')} must be > 0")
    trace = load_trace(args.trace)
    result = simulate(
        trace,
        args.policy,
        args.method,
        alpha=args.alpha,
        tolerance=Tolerance(rel=args.switch_tolerance, abs=args.switch_tolerance_abs),
        swap=SwapModel(bandwidth_bytes_per_s=args.swap_bandwidth, period_s=args.swap_period),
    )
    print(simulation_table(result))
    if args.json:
        _write(Path(args.json), result.model_dump_json(indent=1))
    if args.plot:
        plot_simulation(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


def configure_trace(parser: argparse.ArgumentParser) -> None:
    """Options of `trace`: a random trace like the paper's benchmark."""
    parser.description = (
        "Write a random trace (Poisson arrivals, exponential run times) drawing apps from a"
        " pool: a JSON list of scheduler.App objects (default: built-in synthetic profiles)."
    )
    parser.add_argument("--pool", help="JSON file: a list of apps (scheduler.App schema)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--arrival-rate", type=float, default=1 / 30, help="apps per second")
    parser.add_argument("--mean-run", type=float, default=120.0, help="mean app run, seconds")
    parser.add_argument("--max-apps", type=int, default=4, help="arrivals beyond are turned away")
    parser.add_argument("--budget", type=int, required=True, help="memory budget in bytes")
    parser.add_argument("--fps", type=float, default=30.0, help="input frame rate of every app")
    parser.add_argument("--share-step", type=float, default=0.01)
    parser.add_argument("--priority-rate", type=float, default=0.0, help="changes per second")
    parser.add_argument("--out", help="output file (default: stdout)")


def run_trace(args: argparse.Namespace) -> int:
    """Generate and write the trace."""
    positive = ("duration", "arrival_rate", "mean_run", "max_apps", "fps")
    for name in positive:
        if getattr(args, name) <= 0:
            raise NestError(f"--{name.replace('_', '-')} must be > 0")
    pool = load_app_pool(args.pool) if args.pool else synthetic_pool()
    try:
        trace = random_trace(
            pool,
            seed=args.seed,
            duration_s=args.duration,
            arrival_rate_per_s=args.arrival_rate,
            mean_run_s=args.mean_run,
            max_apps=args.max_apps,
            memory_budget_bytes=args.budget,
            fps=args.fps,
            share_step=args.share_step,
            priority_change_rate_per_s=args.priority_rate,
        )
    except ValidationError as exc:
        raise NestError(f"trace: invalid: {validation_message(exc)}") from exc
    text = trace.model_dump_json(indent=1)
    if args.out:
        _write(Path(args.out), text)
    else:
        print(text)
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


_COMMANDS = {
    "schedule": (configure_schedule, run_schedule),
    "simulate": (configure_simulate, run_simulate),
    "trace": (configure_trace, run_trace),
}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m scheduler.cli COMMAND ...`: NestError -> one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m scheduler.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, _) in _COMMANDS.items():
        configure(sub.add_parser(name))
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command][1](args)
    except NestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
