"""Scheduling policies: MinTotalCost and MinMaxCost (exact or greedy), the baselines
(resource-agnostic, independent, smallest), and the switch-aware re-solve used on every
event."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from scheduler.cost import Tables
from scheduler.exact import Plan, all_options, min_max_level, min_total_plan
from scheduler.greedy import greedy_min_max, greedy_min_total
from scheduler.problem import (
    BASELINES,
    App,
    Assignment,
    Method,
    Policy,
    Problem,
    Solution,
    residents,
)

_LEVEL_RTOL = 1e-12


def solve(
    problem: Problem,
    policy: Policy = "min-total-cost",
    method: Method = "exact",
    *,
    slots: int | None = None,
) -> Solution:
    """Solve `problem` with a policy (`scheduler.problem.POLICIES`); ``slots``: the apps the
    independent baseline divides the memory budget among (default: the problem's apps)."""
    if policy == "baseline":
        return baseline(problem)
    if policy == "independent":
        return independent(problem, slots)
    if policy == "smallest":
        return smallest(problem)
    if policy == "min-total-cost":
        return min_total_cost(problem, method)
    if policy == "min-max-cost":
        return min_max_cost(problem, method)
    raise ValueError(f"unknown policy {policy!r}")


def min_total_cost(problem: Problem, method: Method = "exact") -> Solution:
    """Minimise the sum of the apps' costs under both budgets."""
    return _optimise(problem, "min-total-cost", method, Tables.of(problem))


def min_max_cost(problem: Problem, method: Method = "exact") -> Solution:
    """Minimise the largest app cost under both budgets (then the sum, among such plans)."""
    return _optimise(problem, "min-max-cost", method, Tables.of(problem))


def _optimise(problem: Problem, policy: Policy, method: Method, tables: Tables) -> Solution:
    """Run a solver on (possibly restricted) tables and package its plan."""
    start = time.perf_counter()
    trouble = infeasibility(problem, tables)
    if trouble is not None:
        reason, missing = trouble
        return _infeasible(problem, policy, method, reason, missing, time.perf_counter() - start)
    plan = _SOLVERS[policy, method](tables) if tables.n_apps else ()
    if plan is None:  # cannot happen after the checks above; kept as a guard
        elapsed = time.perf_counter() - start
        return _infeasible(problem, policy, method, "no plan fits", None, elapsed)
    plan = spread_leftover(plan, tables.units)
    return _package(problem, tables, plan, policy, method, time.perf_counter() - start)


def _exact_total(tables: Tables) -> Plan | None:
    """Exact MinTotalCost plan."""
    return min_total_plan(tables, all_options(tables))


def _exact_max(tables: Tables) -> Plan | None:
    """Exact MinMaxCost plan: the least level, then the least total at that level.

    Costs within 1e-12 (relative) of the level count as at the level, so that plans tied
    with it mathematically but not in floating point are not lost for the total.
    """
    level = min_max_level(tables)
    if level is None:
        return None
    cap = level + _LEVEL_RTOL * max(1.0, abs(level))
    return min_total_plan(tables, all_options(tables, cap=cap))


def _greedy_total(tables: Tables) -> Plan:
    """Greedy MinTotalCost plan."""
    return greedy_min_total(tables, list(tables.start))


def _greedy_max(tables: Tables) -> Plan:
    """Greedy MinMaxCost plan."""
    return greedy_min_max(tables, list(tables.start))


_SOLVERS = {
    ("min-total-cost", "exact"): _exact_total,
    ("min-max-cost", "exact"): _exact_max,
    ("min-total-cost", "greedy"): _greedy_total,
    ("min-max-cost", "greedy"): _greedy_max,
}


def infeasibility(problem: Problem, tables: Tables) -> tuple[str, int | None] | None:
    """Why no plan can exist (reason, bytes missing), or None if one does."""
    n, units = tables.n_apps, tables.units
    if n > units:
        return (
            f"{n} apps need one share step each but share_step {problem.share_step} "
            f"gives only {units}",
            None,
        )
    need = tables.least_memory
    if need > tables.budget:
        missing = need - tables.budget
        return (
            f"the smallest descendants need {need:,} bytes, {missing:,} bytes more than "
            f"the memory budget of {tables.budget:,}",
            missing,
        )
    return None


def spread_leftover(plan: Plan, units: int) -> Plan:
    """Hand the unused share units out in proportion to the units held.

    Costs never rise with more units, so the objective is unchanged. Largest remainder
    rounding; equal remainders go to the lower app index.
    """
    held = np.array([k for _, k in plan], dtype=np.int64)
    left = units - int(held.sum())
    if left <= 0 or len(held) == 0:
        return plan
    total = int(held.sum())
    extra = held * left // total
    remainder = held * left % total
    order = np.lexsort((np.arange(len(held)), -remainder))
    extra[order[: left - int(extra.sum())]] += 1
    return tuple((d, int(k + e)) for (d, k), e in zip(plan, extra, strict=True))


def baseline(problem: Problem) -> Solution:
    """Resource-agnostic baseline: the descendant a developer would pick for the device alone.

    Each app runs the most accurate descendant whose latency on the whole processor meets
    its target (ties: fewer bytes, then lower index; the smallest descendant if none meets
    it) with an equal share, floored to share_step. The memory budget is ignored by design;
    its memory counts one copy per shared id (as a model server loads one copy per model
    version); `fits_memory` says whether the models fit, and if not they are swapped in and
    out (the simulator and the daemon load a missing model on demand before its app's
    frame, evicting the least recently used others).
    """
    return _fixed(problem, "baseline", [baseline_descendant(a) for a in problem.apps])


def independent(problem: Problem, slots: int | None = None) -> Solution:
    """Independent apps: each its own copy of one fixed descendant, no coordination.

    Every app holds its own copy (shared ids are ignored: nothing is shared between apps)
    of the most accurate descendant that fits an equal part of the memory budget,
    ``memory_budget_bytes // slots`` (ties: fewer bytes, then lower index; its smallest
    descendant if none fits), where ``slots`` is the number of apps that may run at once
    (default: the problem's apps): the largest models that fit the budget together when that
    many apps run. The processor is time-sliced equally among them, as an operating system
    does with runnable processes of equal priority. If the copies do not fit the budget the
    plan says so (`fits_memory`); apps that do not fit wait, they are never swapped.
    """
    if slots is not None and slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    apps = [unshared(a) for a in problem.apps]
    quota = problem.memory_budget_bytes // (slots or max(1, len(apps)))
    alone = problem.model_copy(update={"apps": apps})
    return _fixed(alone, "independent", [independent_descendant(a, quota) for a in apps])


def smallest(problem: Problem) -> Solution:
    """Every app runs its smallest descendant (shared ids as given), with an equal share."""
    return _fixed(problem, "smallest", [a.smallest for a in problem.apps])


def _fixed(problem: Problem, policy: Policy, chosen: list[int]) -> Solution:
    """The plan of a baseline: the chosen descendants, every app ``floor(U / n)`` units."""
    start = time.perf_counter()
    tables = Tables.of(problem)
    n, units = len(problem.apps), problem.share_units
    if n > units:
        reason, _ = infeasibility(problem, tables) or ("", None)
        return _infeasible(problem, policy, None, reason, None, time.perf_counter() - start)
    plan = tuple((d, units // n) for d in chosen)
    solution = _package(problem, tables, plan, policy, None, time.perf_counter() - start)
    if solution.fits_memory:
        return solution
    over = solution.memory_used_bytes - problem.memory_budget_bytes
    outcome = "they are swapped in and out" if policy == "baseline" else "some apps must wait"
    reason = (
        f"the {policy} plan's models need {solution.memory_used_bytes:,} bytes, {over:,} bytes"
        f" over the memory budget: {outcome}"
    )
    return solution.model_copy(update={"reason": reason, "bytes_missing": over})


def baseline_descendant(app: App) -> int:
    """Most accurate descendant meeting the target on the whole processor, else the smallest."""
    meeting = [i for i, d in enumerate(app.descendants) if d.latency_s <= app.target_latency_s]
    return _most_accurate(app, meeting)


def independent_descendant(app: App, quota_bytes: int) -> int:
    """Most accurate descendant of at most ``quota_bytes``, else the smallest."""
    fitting = [i for i, d in enumerate(app.descendants) if d.memory_bytes <= quota_bytes]
    return _most_accurate(app, fitting)


def _most_accurate(app: App, candidates: list[int]) -> int:
    """The most accurate of ``candidates`` (ties: fewer bytes, lower index); the app's
    smallest descendant if there are none."""
    if not candidates:
        return app.smallest
    return min(
        candidates,
        key=lambda i: (-app.descendants[i].accuracy, app.descendants[i].memory_bytes, i),
    )


def unshared(app: App) -> App:
    """The app with every descendant's id removed: a copy of its own for each descendant."""
    if all(d.id is None for d in app.descendants):
        return app
    descendants = [d.model_copy(update={"id": None}) for d in app.descendants]
    return app.model_copy(update={"descendants": descendants})


def _package(
    problem: Problem,
    tables: Tables,
    plan: Plan,
    policy: Policy,
    method: Method | None,
    elapsed: float,
) -> Solution:
    """Turn a plan into a Solution with per-app details and its resident objects."""
    apps = []
    for app, table, (d, k) in zip(problem.apps, tables.cost, plan, strict=True):
        desc = app.descendants[d]
        share = k / tables.units
        apps.append(
            Assignment(
                name=app.name,
                descendant=d,
                share=share,
                cost=float(table[d, k - 1]),
                share_units=k,
                accuracy=desc.accuracy,
                memory_bytes=desc.memory_bytes,
                latency_s=desc.latency_s,
                frame_rate=share / desc.latency_s,
                id=desc.id,
            )
        )
    costs = [a.cost for a in apps]
    objective = max(costs, default=0.0) if policy == "min-max-cost" else float(sum(costs))
    objects = residents(problem.apps, [d for d, _ in plan])
    memory = sum(r.memory_bytes for r in objects)
    return Solution(
        feasible=True,
        objective=objective,
        solve_time_s=elapsed,
        apps=apps,
        policy=policy,
        method=method,
        memory_used_bytes=memory,
        memory_budget_bytes=problem.memory_budget_bytes,
        share_used=sum(a.share_units for a in apps) / tables.units,
        fits_memory=memory <= problem.memory_budget_bytes,
        residents=objects,
    )


def _infeasible(
    problem: Problem,
    policy: Policy,
    method: Method | None,
    reason: str,
    missing: int | None,
    elapsed: float,
) -> Solution:
    """A Solution saying that no plan exists, and why."""
    return Solution(
        feasible=False,
        objective=None,
        solve_time_s=elapsed,
        apps=[],
        policy=policy,
        method=method,
        memory_used_bytes=0,
        memory_budget_bytes=problem.memory_budget_bytes,
        share_used=0.0,
        fits_memory=missing is None,
        reason=reason,
        bytes_missing=missing,
    )


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the new optimum a kept plan may be: abs + rel * |optimum|."""

    rel: float = 0.01
    abs: float = 0.001

    def accepts(self, value: float, optimum: float) -> bool:
        """Whether `value` is within tolerance of `optimum`."""
        return value <= optimum + self.abs + self.rel * abs(optimum)


def resolve(
    problem: Problem,
    current: Solution | None,
    policy: Policy = "min-total-cost",
    method: Method = "exact",
    tolerance: Tolerance | None = None,
    *,
    slots: int | None = None,
) -> Solution:
    """Re-solve after an event, preferring the current plan to avoid flapping.

    In order: (1) the current plan unchanged, if the same apps run, it still fits both
    budgets and its objective is within tolerance of the new optimum ("kept"); (2) the best
    plan in which every app of `current` keeps its descendant -- shares may change, which
    loads nothing -- if within tolerance ("kept-descendants"); (3) the new optimum
    ("new-optimum"). The baselines have no choices and are returned as solved (``slots``:
    see `solve`).
    """
    tolerance = tolerance or Tolerance()
    new = solve(problem, policy, method, slots=slots)
    if policy in BASELINES or current is None or not new.feasible or not current.feasible:
        return new
    assert new.objective is not None
    tables = Tables.of(problem)
    previous = {a.name: a for a in current.apps}
    kept = _same_plan(problem, tables, previous)
    if kept is not None:
        solution = _package(problem, tables, kept, policy, method, new.solve_time_s)
        if solution.objective is not None and tolerance.accepts(solution.objective, new.objective):
            return solution.model_copy(
                update={"decision": "kept", "optimum_objective": new.objective}
            )
    fixed = [
        previous[a.name].descendant
        if a.name in previous and previous[a.name].descendant < len(a.descendants)
        else None
        for a in problem.apps
    ]
    restricted = _optimise(problem, policy, method, tables.restricted(fixed))
    if restricted.feasible and tolerance.accepts(restricted.objective or 0.0, new.objective):
        return restricted.model_copy(
            update={"decision": "kept-descendants", "optimum_objective": new.objective}
        )
    return new.model_copy(update={"decision": "new-optimum", "optimum_objective": new.objective})


def _same_plan(problem: Problem, tables: Tables, previous: dict[str, Assignment]) -> Plan | None:
    """The previous plan on the new problem, if the same apps run and it fits both budgets."""
    if {a.name for a in problem.apps} != set(previous):
        return None
    plan = []
    for app in problem.apps:
        was = previous[app.name]
        units = round(was.share * tables.units)
        if was.descendant >= len(app.descendants) or units < 1:
            return None
        if abs(units / tables.units - was.share) > 1e-9:
            return None
        plan.append((was.descendant, units))
    memory = tables.plan_memory([d for d, _ in plan])
    if memory > tables.budget or sum(k for _, k in plan) > tables.units:
        return None
    return tuple(plan)
