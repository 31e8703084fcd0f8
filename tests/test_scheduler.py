"""Scheduler solvers against a plain brute force, budgets, infeasibility, baselines, re-solve."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestdnn.errors import NestError
from scheduler import (
    App,
    Descendant,
    Problem,
    Tolerance,
    baseline,
    cost,
    exact,
    independent,
    min_max_cost,
    min_total_cost,
    parse_problem,
    resolve,
    smallest,
    solve,
)
from scheduler.cost import Tables
from scheduler.problem import POLICIES
from scheduler.solve import spread_leftover

STEPS = [0.1, 0.125, 0.2, 0.25, 0.5, 1.0]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plain_cost(app: App, d: int, share: float, alpha: float) -> float:
    """The cost model of docs/scheduler.md ("Cost model"), written out."""
    best = max(x.accuracy for x in app.descendants)
    desc = app.descendants[d]
    excess = max(0.0, desc.latency_s / (share * app.target_latency_s) - 1.0)
    return app.priority * ((best - desc.accuracy) + alpha * excess)


def brute_force(problem: Problem) -> tuple[float, float, float] | None:
    """(least total, least max, least total among least-max plans) over every plan."""
    units = round(1 / problem.share_step)
    apps = problem.apps
    costs = [
        {
            (d, u): plain_cost(app, d, u * problem.share_step, problem.alpha)
            for d in range(len(app.descendants))
            for u in range(1, units + 1)
        }
        for app in apps
    ]
    plans = []
    for split in itertools.product(range(1, units + 1), repeat=len(apps)):
        if sum(split) > units:
            continue
        for descs in itertools.product(*(range(len(a.descendants)) for a in apps)):
            memory = sum(a.descendants[d].memory_bytes for a, d in zip(apps, descs, strict=True))
            if memory > problem.memory_budget_bytes:
                continue
            plan_costs = [costs[i][d, u] for i, (d, u) in enumerate(zip(descs, split, strict=True))]
            plans.append((sum(plan_costs), max(plan_costs)))
    if not plans:
        return None
    least_total = min(t for t, _ in plans)
    least_max = min(m for _, m in plans)
    total_at_max = min(t for t, m in plans if m <= least_max + 1e-12)
    return least_total, least_max, total_at_max


accuracies = st.sampled_from([0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]) | st.floats(0.0, 1.0)
latencies = st.sampled_from([0.001, 0.002, 0.005, 0.01, 0.02]) | st.floats(1e-4, 0.05)


@st.composite
def descendants(draw: st.DrawFn) -> Descendant:
    return Descendant(
        accuracy=draw(accuracies),
        memory_bytes=draw(st.integers(1, 8)) * 100_000,
        latency_s=draw(latencies),
    )


@st.composite
def problems(draw: st.DrawFn, max_apps: int = 4, max_descendants: int = 4) -> Problem:
    """Random problems; about one in six has a memory budget below the smallest models."""
    step = draw(st.sampled_from(STEPS))
    units = round(1 / step)
    apps = [
        App(
            name=f"app{i}",
            target_latency_s=draw(st.sampled_from([0.005, 0.01, 0.02, 0.05])),
            priority=draw(st.sampled_from([1.0, 0.5, 2.0]) | st.floats(0.1, 3.0)),
            descendants=draw(st.lists(descendants(), min_size=1, max_size=max_descendants)),
        )
        for i in range(draw(st.integers(1, min(max_apps, units))))
    ]
    least = sum(min(d.memory_bytes for d in a.descendants) for a in apps)
    most = sum(max(d.memory_bytes for d in a.descendants) for a in apps)
    fraction = draw(st.floats(-0.2, 1.1))
    return Problem(
        apps=apps,
        memory_budget_bytes=max(0, least + int(fraction * (most - least + 100_000))),
        alpha=draw(st.sampled_from([0.0, 0.1, 1.0, 5.0]) | st.floats(0.0, 10.0)),
        share_step=step,
    )


@contextlib.contextmanager
def _beam(width: int | None) -> Iterator[None]:
    """Temporarily narrow the exact solver's first-pass beam."""
    saved = exact._BEAM
    exact._BEAM = width or saved
    try:
        yield
    finally:
        exact._BEAM = saved


def check_plan(problem: Problem, solution) -> None:
    """Both budgets hold, shares are on the grid and costs are those of the model."""
    units = problem.share_units
    assert solution.feasible
    assert [a.name for a in solution.apps] == [a.name for a in problem.apps]
    assert sum(a.memory_bytes for a in solution.apps) <= problem.memory_budget_bytes
    assert sum(a.share_units for a in solution.apps) <= units
    for app, got in zip(problem.apps, solution.apps, strict=True):
        assert got.share_units >= 1
        assert got.share == got.share_units / units
        assert got.memory_bytes == app.descendants[got.descendant].memory_bytes
        expected = plain_cost(app, got.descendant, got.share, problem.alpha)
        assert got.cost == pytest.approx(expected, rel=1e-12, abs=1e-12)


@SETTINGS
@given(problems(), st.sampled_from([None, 1]))
def test_exact_equals_brute_force(problem: Problem, beam: int | None) -> None:
    """Also with a beam of 1, so that the bounded second pass does the work."""
    truth = brute_force(problem)
    with _beam(beam):
        total = min_total_cost(problem, "exact")
        fair = min_max_cost(problem, "exact")
    if truth is None:
        assert not total.feasible and not fair.feasible
        return
    least_total, least_max, total_at_max = truth
    check_plan(problem, total)
    check_plan(problem, fair)
    assert abs(total.objective - least_total) <= 1e-9
    assert abs(fair.objective - least_max) <= 1e-9
    assert fair.objective == max(a.cost for a in fair.apps)
    assert abs(sum(a.cost for a in fair.apps) - total_at_max) <= 1e-9


@SETTINGS
@given(problems())
def test_greedy_feasible_and_never_better(problem: Problem) -> None:
    for policy in ("min-total-cost", "min-max-cost"):
        exact = solve(problem, policy, "exact")
        greedy = solve(problem, policy, "greedy")
        assert greedy.feasible == exact.feasible
        if exact.feasible:
            check_plan(problem, greedy)
            assert greedy.objective >= exact.objective - 1e-9


@SETTINGS
@given(problems(max_apps=6, max_descendants=5))
def test_larger_problems_respect_budgets_and_use_the_processor(problem: Problem) -> None:
    for policy, method in itertools.product(
        ("min-total-cost", "min-max-cost"), ("exact", "greedy")
    ):
        solution = solve(problem, policy, method)
        if solution.feasible:
            check_plan(problem, solution)
            assert sum(a.share_units for a in solution.apps) == problem.share_units


@SETTINGS
@given(problems(max_apps=6, max_descendants=5))
def test_baseline_matches_its_definition(problem: Problem) -> None:
    solution = baseline(problem)
    units, n = problem.share_units, len(problem.apps)
    if n > units:
        assert not solution.feasible
        return
    for app, got in zip(problem.apps, solution.apps, strict=True):
        meeting = [d for d in app.descendants if d.latency_s <= app.target_latency_s]
        chosen = app.descendants[got.descendant]
        if meeting:
            assert chosen.latency_s <= app.target_latency_s
            assert chosen.accuracy == max(d.accuracy for d in meeting)
        else:
            assert chosen.memory_bytes == min(d.memory_bytes for d in app.descendants)
        assert got.share_units == units // n
    memory = sum(a.memory_bytes for a in solution.apps)
    assert solution.fits_memory == (memory <= problem.memory_budget_bytes)
    assert solution.objective == pytest.approx(sum(a.cost for a in solution.apps))


def two_apps(budget: int = 10_000_000, step: float = 0.01) -> Problem:
    fast = [(0.70, 300_000, 0.004), (0.80, 900_000, 0.008), (0.86, 2_000_000, 0.015)]
    slow = [(0.60, 500_000, 0.010), (0.75, 1_500_000, 0.020), (0.90, 4_000_000, 0.040)]
    return Problem(
        apps=[
            App.from_columns("fast", *zip(*fast, strict=True), target_latency_s=0.033),
            App.from_columns("slow", *zip(*slow, strict=True), target_latency_s=0.1),
        ],
        memory_budget_bytes=budget,
        share_step=step,
    )


def test_infeasible_memory_reports_missing_bytes() -> None:
    problem = two_apps(budget=700_000)
    for policy in ("min-total-cost", "min-max-cost"):
        for method in ("exact", "greedy"):
            solution = solve(problem, policy, method)
            assert not solution.feasible
            assert solution.objective is None and solution.apps == []
            assert solution.bytes_missing == 100_000
            assert "100,000 bytes more" in (solution.reason or "")


def test_infeasible_when_more_apps_than_share_steps() -> None:
    problem = two_apps(step=1.0)
    solution = min_total_cost(problem)
    assert not solution.feasible and solution.bytes_missing is None
    assert "2 apps" in (solution.reason or "")
    assert not baseline(problem).feasible


def test_baseline_that_does_not_fit_is_still_a_plan() -> None:
    problem = two_apps(budget=3_000_000)
    solution = baseline(problem)
    assert solution.feasible and not solution.fits_memory
    assert [a.descendant for a in solution.apps] == [2, 2]
    assert [a.share for a in solution.apps] == [0.5, 0.5]
    assert solution.bytes_missing == 3_000_000
    assert "swapped" in (solution.reason or "")


def test_independent_apps_take_the_best_copy_within_an_equal_part_of_the_budget() -> None:
    problem = two_apps(budget=3_000_000)
    solution = independent(problem)  # 1.5 MB each
    assert [a.descendant for a in solution.apps] == [1, 1]
    assert [a.share for a in solution.apps] == [0.5, 0.5]
    assert solution.fits_memory and solution.memory_used_bytes == 2_400_000
    # four apps may run at once: 750 kB each; "slow" has nothing that small: its smallest
    quarter = independent(problem, slots=4)
    assert [a.descendant for a in quarter.apps] == [0, 0]
    assert solve(problem, "independent", slots=4).apps == quarter.apps
    with pytest.raises(ValueError, match="slots"):
        independent(problem, slots=0)


def test_independent_apps_share_nothing_and_may_not_fit() -> None:
    """Two apps on one model hold a copy each (ids ignored); over the budget the plan says
    that some apps must wait (no swapping)."""
    d = Descendant(accuracy=0.9, memory_bytes=1000, latency_s=0.01, id="m#0")
    apps = [App(name=n, target_latency_s=0.1, descendants=[d]) for n in "ab"]
    problem = Problem(apps=apps, memory_budget_bytes=1500)
    assert min_total_cost(problem).memory_used_bytes == 1000  # shared: one copy
    solution = independent(problem)
    assert solution.feasible and not solution.fits_memory
    assert solution.memory_used_bytes == 2000 and solution.bytes_missing == 500
    assert [r.id for r in solution.residents] == [None, None]
    assert "must wait" in (solution.reason or "")


def test_smallest_runs_every_app_on_its_smallest_descendant() -> None:
    problem = two_apps(budget=10_000_000)
    solution = smallest(problem)
    assert [a.descendant for a in solution.apps] == [0, 0]
    assert [a.share for a in solution.apps] == [0.5, 0.5] and solution.fits_memory
    assert resolve(problem, solution, "smallest").apps == solution.apps


def test_example_of_the_issue() -> None:
    problem = parse_problem(
        {
            "apps": [
                {
                    "name": "a",
                    "target_latency_s": 0.02,
                    "priority": 1.0,
                    "descendants": [
                        {"accuracy": 0.81, "memory_bytes": 400000, "latency_s": 0.004},
                        {"accuracy": 0.90, "memory_bytes": 1600000, "latency_s": 0.011},
                    ],
                }
            ],
            "memory_budget_bytes": 5000000,
            "alpha": 1.0,
            "share_step": 0.01,
        }
    )
    for method in ("exact", "greedy"):
        solution = min_total_cost(problem, method)
        assert solution.feasible and solution.objective == 0.0
        assert [(a.name, a.descendant, a.share, a.cost) for a in solution.apps] == [
            ("a", 1, 1.0, 0.0)
        ]


def test_ties_prefer_less_memory_then_lower_index() -> None:
    same = Descendant(accuracy=0.9, memory_bytes=1000, latency_s=0.001)
    bigger = Descendant(accuracy=0.9, memory_bytes=2000, latency_s=0.001)
    app = App(name="a", target_latency_s=0.1, descendants=[bigger, same, same])
    solution = min_total_cost(Problem(apps=[app], memory_budget_bytes=10_000))
    assert solution.apps[0].descendant == 1


def test_empty_problem_is_trivially_feasible() -> None:
    for policy in POLICIES:
        solution = solve(Problem(apps=[], memory_budget_bytes=0), policy)
        assert solution.feasible and solution.objective == 0.0 and solution.apps == []


def test_solutions_are_deterministic() -> None:
    problem = two_apps(budget=3_000_000)
    for policy in ("min-total-cost", "min-max-cost"):
        for method in ("exact", "greedy"):
            first, second = solve(problem, policy, method), solve(problem, policy, method)
            assert first.apps == second.apps


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=8), st.integers(0, 100))
def test_spread_leftover_fills_the_processor(held: list[int], extra: int) -> None:
    units = sum(held) + extra
    spread = spread_leftover(tuple((0, k) for k in held), units)
    got = [k for _, k in spread]
    assert sum(got) == units
    for before, after in zip(held, got, strict=True):
        share = before * extra / sum(held)
        assert math.floor(share) <= after - before <= math.ceil(share)


def test_resolve_keeps_the_plan_within_tolerance() -> None:
    problem = two_apps(budget=3_000_000)
    current = min_total_cost(problem)
    nudged = problem.model_copy(
        update={"apps": [problem.apps[0].model_copy(update={"priority": 1.001}), problem.apps[1]]}
    )
    again = resolve(nudged, current, tolerance=Tolerance(rel=0.05, abs=0.01))
    assert again.decision == "kept"
    assert again.apps[0].share == current.apps[0].share
    assert again.descendants() == current.descendants()
    assert again.objective <= again.optimum_objective + 0.01 + 0.05 * again.optimum_objective


def test_resolve_moves_when_the_optimum_is_much_better() -> None:
    problem = two_apps(budget=3_000_000)
    current = min_total_cost(problem)
    roomy = problem.model_copy(update={"memory_budget_bytes": 20_000_000})
    again = resolve(roomy, current, tolerance=Tolerance(rel=0.0, abs=0.0))
    fresh = min_total_cost(roomy)
    assert again.objective == pytest.approx(fresh.objective)
    assert again.decision in ("new-optimum", "kept-descendants")


def test_resolve_keeps_descendants_when_an_app_joins() -> None:
    problem = two_apps(budget=6_000_000)
    alone = problem.model_copy(update={"apps": problem.apps[:1]})
    current = min_total_cost(alone)
    again = resolve(problem, current, tolerance=Tolerance(rel=1.0, abs=1.0))
    assert again.decision == "kept-descendants"
    assert again.apps[0].descendant == current.apps[0].descendant


@SETTINGS
@given(problems(), st.floats(0.0, 0.2), st.floats(0.0, 0.2))
def test_resolve_is_within_tolerance_of_the_optimum(
    problem: Problem, rel: float, tol: float
) -> None:
    current = min_total_cost(problem.model_copy(update={"alpha": problem.alpha + 0.5}))
    tolerance = Tolerance(rel=rel, abs=tol)
    again = resolve(problem, current, tolerance=tolerance)
    fresh = min_total_cost(problem)
    assert again.feasible == fresh.feasible
    if fresh.feasible:
        check_plan(problem, again)
        assert tolerance.accepts(again.objective, fresh.objective)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"latency_s": -0.01}, "latency_s"),
        ({"accuracy": 1.5}, "accuracy"),
        ({"memory_bytes": -1}, "memory_bytes"),
    ],
)
def test_bad_descendant_is_named(change: dict, field: str) -> None:
    data = {
        "apps": [
            {
                "name": "a",
                "target_latency_s": 0.02,
                "descendants": [{"accuracy": 0.8, "memory_bytes": 1, "latency_s": 0.01} | change],
            }
        ],
        "memory_budget_bytes": 10,
    }
    with pytest.raises(NestError, match=rf"apps\.0\.descendants\.0\.{field}"):
        parse_problem(data, "p.json")


def test_empty_descendants_share_step_and_names_are_checked() -> None:
    app = {"name": "a", "target_latency_s": 0.02, "descendants": []}
    with pytest.raises(NestError, match=r"apps\.0\.descendants"):
        parse_problem({"apps": [app], "memory_budget_bytes": 1})
    good = app | {"descendants": [{"accuracy": 0.8, "memory_bytes": 1, "latency_s": 0.01}]}
    with pytest.raises(NestError, match=r"share_step.*does not divide 1"):
        parse_problem({"apps": [good], "memory_budget_bytes": 1, "share_step": 0.03})
    with pytest.raises(NestError, match=r"apps.*unique"):
        parse_problem({"apps": [good, good], "memory_budget_bytes": 1})
    with pytest.raises(NestError) as caught:
        parse_problem({"apps": [good], "memory_budget_bytes": 1, "alhpa": 2})
    assert "alhpa" in str(caught.value) and "\n" not in str(caught.value)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_public_cost_matches_the_tables(problem: Problem) -> None:
    tables = Tables.of(problem)
    for app, table in zip(problem.apps, tables.cost, strict=True):
        for d in range(len(app.descendants)):
            for k in (1, problem.share_units):
                share = k / problem.share_units
                assert cost(app, d, share, problem.alpha) == table[d, k - 1]
                assert cost(app, d, share, problem.alpha) == pytest.approx(
                    plain_cost(app, d, share, problem.alpha), rel=1e-12, abs=1e-12
                )


def test_problem_from_columns() -> None:
    app = App.from_columns("a", [0.7, 0.9], [10, 20], [0.01, 0.02], target_latency_s=0.05)
    assert [d.memory_bytes for d in app.descendants] == [10, 20]
    with pytest.raises(ValueError, match="differ in length"):
        App.from_columns("a", [0.7], [10, 20], [0.01], target_latency_s=0.05)
