"""Problems and traces without descendant ids give bit-identical results to the optimiser
before shared residency (issue 16): every solver, the baseline, the switch-aware re-solve,
and the simulator's fluid and runtime models.

The digests were computed by this module's own functions on the code before the change
(commit 0b1826c); they hash every plan's descendants, units, costs (float.hex), objective,
memory and decision, and every simulation figure except solver times. The runtime model's
digests were recomputed when its replay followed the model manager's warm rungs,
smallest-first loads and the executor's batches (issue 21): from then on they pin that
replay.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from scheduler import App, Descendant, Problem, Tolerance, resolve, solve
from scheduler.replay import RuntimeModel
from scheduler.simulate import random_trace, simulate
from scheduler.synthetic import random_problem, synthetic_pool

SOLVER_DIGESTS = {
    "min-total-cost/exact": "6efb342f3a362e22",
    "min-total-cost/greedy": "8f1683d56533694c",
    "min-max-cost/exact": "864265b03319d84c",
    "min-max-cost/greedy": "0b8be285a9b5c3ec",
    "baseline/exact": "8e11fca076d730cd",
}
SIMULATION_DIGESTS = {
    "min-total-cost/fluid": "0129639a89147734",
    "min-total-cost/runtime": "fde4c947425e8817",
    "min-max-cost/fluid": "74268e604c123f60",
    "min-max-cost/runtime": "71d6d075444f9b57",
    "baseline/fluid": "9241b3a769943da1",
    "baseline/runtime": "7e640b3a45249c3b",
}


def discrete_problem(seed: int) -> Problem:
    """A small problem drawn from few values, so that ties are frequent."""
    rng = np.random.default_rng(seed)
    step = float(rng.choice([0.1, 0.125, 0.2, 0.25, 0.05]))
    units = round(1 / step)
    apps = []
    for i in range(int(rng.integers(1, min(5, units) + 1))):
        descendants = [
            Descendant(
                accuracy=float(rng.choice([0.5, 0.6, 0.7, 0.8, 0.9])),
                memory_bytes=int(rng.integers(1, 6)) * 100_000,
                latency_s=float(rng.choice([0.001, 0.002, 0.005, 0.01, 0.02])),
            )
            for _ in range(int(rng.integers(1, 5)))
        ]
        apps.append(
            App(
                name=f"app{i}",
                target_latency_s=float(rng.choice([0.005, 0.01, 0.02])),
                priority=float(rng.choice([0.5, 1.0, 2.0])),
                descendants=descendants,
            )
        )
    least = sum(min(d.memory_bytes for d in a.descendants) for a in apps)
    most = sum(max(d.memory_bytes for d in a.descendants) for a in apps)
    budget = least + int(rng.uniform(-0.1, 1.1) * (most - least + 100_000))
    return Problem(
        apps=apps,
        memory_budget_bytes=max(0, budget),
        alpha=float(rng.choice([0.0, 0.1, 1.0, 5.0])),
        share_step=step,
    )


def fingerprint(solution) -> list:
    objective = None if solution.objective is None else solution.objective.hex()
    return [
        solution.feasible,
        objective,
        solution.memory_used_bytes,
        solution.fits_memory,
        solution.decision,
        [(a.name, a.descendant, a.share_units, a.cost.hex()) for a in solution.apps],
    ]


def solver_digests() -> dict[str, str]:
    """Per policy and method: a digest of solve and resolve on 100 problems without ids."""
    problems = [random_problem(seed, n) for seed in range(8) for n in (1, 2, 3, 5, 8)]
    problems += [discrete_problem(seed) for seed in range(60)]
    found = {}
    for key in SOLVER_DIGESTS:
        policy, method = key.split("/")
        plans = []
        for problem in problems:
            shifted = problem.model_copy(update={"alpha": problem.alpha + 0.5})
            earlier = solve(shifted, policy, method)
            again = resolve(problem, earlier, policy, method, Tolerance(0.05, 0.01))
            plans.append([fingerprint(solve(problem, policy, method)), fingerprint(again)])
        found[key] = hashlib.sha256(json.dumps(plans).encode()).hexdigest()[:16]
    return found


def simulation_digests() -> dict[str, str]:
    """Per policy and model: a digest of a random trace's simulation (no ids)."""
    trace = random_trace(
        synthetic_pool(),
        seed=2,
        duration_s=120.0,
        memory_budget_bytes=20_000_000,
        arrival_rate_per_s=1 / 10,
        mean_run_s=40.0,
        priority_change_rate_per_s=1 / 20,
    )
    found = {}
    for key in SIMULATION_DIGESTS:
        policy, model = key.split("/")
        result = simulate(trace, policy, runtime=RuntimeModel() if model == "runtime" else None)
        summary = result.summary.model_dump(exclude={"solve_time_s", "cpu_s"})
        apps = [a.model_dump() for a in result.apps]
        timeline = [s.model_dump() for s in result.timeline]
        text = json.dumps([summary, apps, timeline])
        found[key] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return found


def test_solutions_without_ids_are_unchanged() -> None:
    assert solver_digests() == SOLVER_DIGESTS


def test_simulations_without_ids_are_unchanged() -> None:
    assert simulation_digests() == SIMULATION_DIGESTS


if __name__ == "__main__":
    print(json.dumps({"solvers": solver_digests(), "simulations": simulation_digests()}, indent=1))
