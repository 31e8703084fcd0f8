"""Shared residency (issue 16): descendants with the same id share one resident copy.

Exact solvers against a plain brute force that counts memory per distinct id, problems where
sharing changes the optimum, validation, the Solution's residents, the baseline, the
switch-aware re-solve, the greedy's marginal bytes and its gap.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
from collections.abc import Iterator

import numpy as np
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
    exact,
    parse_problem,
    resolve,
    solve,
)
from scheduler.cost import Tables
from scheduler.greedy import _Marginal
from scheduler.problem import load_app_pool
from scheduler.sharing import MAX_RESIDENT_SETS, Residency
from scheduler.synthetic import random_shared_problem

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POLICIES = ("min-total-cost", "min-max-cost")


def plain_memory(apps: list[App], chosen: tuple[int, ...]) -> int:
    """Bytes of a plan: one copy per distinct id, every id-less descendant counted."""
    total, seen = 0, set()
    for app, d in zip(apps, chosen, strict=True):
        desc = app.descendants[d]
        if desc.id is None or desc.id not in seen:
            total += desc.memory_bytes
        if desc.id is not None:
            seen.add(desc.id)
    return total


def plain_cost(app: App, d: int, share: float, alpha: float) -> float:
    best = max(x.accuracy for x in app.descendants)
    desc = app.descendants[d]
    excess = max(0.0, desc.latency_s / (share * app.target_latency_s) - 1.0)
    return app.priority * ((best - desc.accuracy) + alpha * excess)


def brute_force(problem: Problem) -> tuple[float, float, float] | None:
    """(least total, least max, least total among least-max plans) over every plan."""
    units = problem.share_units
    apps = problem.apps
    plans = []
    for chosen in itertools.product(*(range(len(a.descendants)) for a in apps)):
        if plain_memory(apps, chosen) > problem.memory_budget_bytes:
            continue
        for split in itertools.product(range(1, units + 1), repeat=len(apps)):
            if sum(split) > units:
                continue
            costs = [
                plain_cost(a, d, k * problem.share_step, problem.alpha)
                for a, d, k in zip(apps, chosen, split, strict=True)
            ]
            plans.append((sum(costs), max(costs)))
    if not plans:
        return None
    least_max = min(m for _, m in plans)
    return (
        min(t for t, _ in plans),
        least_max,
        min(t for t, m in plans if m <= least_max + 1e-12),
    )


accuracies = st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9])
latencies = st.sampled_from([0.001, 0.002, 0.005, 0.01, 0.02])


@st.composite
def own_descendants(draw: st.DrawFn) -> Descendant:
    return Descendant(
        accuracy=draw(accuracies),
        memory_bytes=draw(st.integers(1, 8)) * 100_000,
        latency_s=draw(latencies),
    )


@st.composite
def shared_problems(draw: st.DrawFn, max_apps: int = 4) -> Problem:
    """Apps on one or two models with ids (each app sees a subset of its model's
    descendants); some apps id-less, some with id-less descendants besides the model's."""
    step = draw(st.sampled_from([0.125, 0.2, 0.25]))
    models = [
        [
            Descendant(
                accuracy=draw(accuracies),
                memory_bytes=draw(st.integers(1, 8)) * 100_000,
                latency_s=draw(latencies),
                id=f"m{m}#{k}",
            )
            for k in range(draw(st.integers(1, 4)))
        ]
        for m in range(draw(st.integers(1, 2)))
    ]
    apps = []
    for i in range(draw(st.integers(2, max_apps))):
        kind = draw(st.sampled_from(["model", "model", "model", "id-less", "mixed"]))
        model = draw(st.sampled_from(models))
        seen = draw(st.lists(st.sampled_from(range(len(model))), min_size=1, unique=True))
        descendants = [model[k] for k in sorted(seen)]
        if kind == "id-less":
            descendants = draw(st.lists(own_descendants(), min_size=1, max_size=3))
        elif kind == "mixed":
            descendants += draw(st.lists(own_descendants(), min_size=1, max_size=2))
        apps.append(
            App(
                name=f"app{i}",
                target_latency_s=draw(st.sampled_from([0.005, 0.01, 0.02])),
                priority=draw(st.sampled_from([0.5, 1.0, 2.0])),
                descendants=descendants,
            )
        )
    least = Residency.of(apps).least_memory()
    most = sum(d.memory_bytes for a in apps for d in a.descendants)
    fraction = draw(st.floats(-0.2, 1.0))
    return Problem(
        apps=apps,
        memory_budget_bytes=max(0, least + int(fraction * (most - least))),
        alpha=draw(st.sampled_from([0.0, 0.1, 1.0, 5.0])),
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
    """Both budgets hold (memory per distinct id), costs and residents are consistent."""
    chosen = tuple(a.descendant for a in solution.apps)
    assert solution.feasible
    assert solution.memory_used_bytes == plain_memory(problem.apps, chosen)
    assert solution.memory_used_bytes == sum(r.memory_bytes for r in solution.residents)
    assert solution.memory_used_bytes <= problem.memory_budget_bytes
    assert sum(a.share_units for a in solution.apps) <= problem.share_units
    for app, got in zip(problem.apps, solution.apps, strict=True):
        assert got.share_units >= 1
        assert got.id == app.descendants[got.descendant].id
        expected = plain_cost(app, got.descendant, got.share, problem.alpha)
        assert got.cost == pytest.approx(expected, rel=1e-12, abs=1e-12)


@SETTINGS
@given(shared_problems(), st.sampled_from([None, 1]))
def test_exact_equals_brute_force_with_shared_ids(problem: Problem, beam: int | None) -> None:
    """Also with a beam of 1, so that the bounded second pass does the work."""
    truth = brute_force(problem)
    with _beam(beam):
        total = solve(problem, "min-total-cost", "exact")
        fair = solve(problem, "min-max-cost", "exact")
    if truth is None:
        assert not total.feasible and not fair.feasible
        assert total.bytes_missing == Residency.of(problem.apps).least_memory() - (
            problem.memory_budget_bytes
        )
        return
    least_total, least_max, total_at_max = truth
    check_plan(problem, total)
    check_plan(problem, fair)
    assert abs(total.objective - least_total) <= 1e-9
    assert abs(fair.objective - least_max) <= 1e-9
    assert abs(sum(a.cost for a in fair.apps) - total_at_max) <= 1e-9


@SETTINGS
@given(shared_problems(max_apps=5))
def test_greedy_with_shared_ids_is_feasible_and_never_better(problem: Problem) -> None:
    for policy in POLICIES:
        best = solve(problem, policy, "exact")
        greedy = solve(problem, policy, "greedy")
        assert greedy.feasible == best.feasible
        if best.feasible:
            check_plan(problem, greedy)
            assert greedy.objective >= best.objective - 1e-9


@SETTINGS
@given(shared_problems(max_apps=5), st.floats(0.0, 0.2), st.floats(0.0, 0.2))
def test_resolve_with_shared_ids_is_within_tolerance(
    problem: Problem, rel: float, tol: float
) -> None:
    earlier = solve(problem.model_copy(update={"alpha": problem.alpha + 0.5}))
    tolerance = Tolerance(rel=rel, abs=tol)
    for method in ("exact", "greedy"):
        again = solve(problem, "min-total-cost", method)
        kept = resolve(problem, earlier, method=method, tolerance=tolerance)
        assert kept.feasible == again.feasible
        if again.feasible:
            check_plan(problem, kept)
            assert tolerance.accepts(kept.objective, again.objective)


def on_model(name: str, descendants: list[Descendant], target: float = 0.1) -> App:
    return App(name=name, target_latency_s=target, descendants=descendants)


SMALL = Descendant(accuracy=0.7, memory_bytes=1_000_000, latency_s=0.002, id="m#0")
LARGE = Descendant(accuracy=0.9, memory_bytes=3_000_000, latency_s=0.005, id="m#1")


def without_ids(problem: Problem) -> Problem:
    apps = [
        a.model_copy(
            update={"descendants": [d.model_copy(update={"id": None}) for d in a.descendants]}
        )
        for a in problem.apps
    ]
    return problem.model_copy(update={"apps": apps})


def test_a_third_app_fits_because_its_descendant_is_resident() -> None:
    problem = Problem(
        apps=[on_model(name, [SMALL, LARGE]) for name in "abc"], memory_budget_bytes=3_200_000
    )
    for policy in POLICIES:
        for method in ("exact", "greedy"):
            plan = solve(problem, policy, method)
            assert plan.objective == 0.0
            assert [a.descendant for a in plan.apps] == [1, 1, 1]
            assert plan.memory_used_bytes == 3_000_000
            assert [(r.id, r.memory_bytes, r.apps) for r in plan.residents] == [
                ("m#1", 3_000_000, ["a", "b", "c"])
            ]
    alone = without_ids(problem)  # one copy per app: all three on the small descendant
    plan = solve(alone, "min-total-cost")
    assert [a.descendant for a in plan.apps] == [0, 0, 0]
    assert plan.objective == pytest.approx(3 * 0.2)
    assert len(plan.residents) == 3 and plan.memory_used_bytes == 3_000_000


def test_shared_copies_count_once_when_checking_feasibility() -> None:
    problem = Problem(
        apps=[on_model(name, [SMALL, LARGE]) for name in "abc"], memory_budget_bytes=1_500_000
    )
    plan = solve(problem)
    assert plan.feasible and plan.memory_used_bytes == 1_000_000
    refused = solve(without_ids(problem))
    assert not refused.feasible and refused.bytes_missing == 1_500_000
    assert "the smallest descendants need 3,000,000 bytes" in (refused.reason or "")


def test_apps_seeing_a_subset_share_by_id_not_position() -> None:
    """b has a min_accuracy floor: its descendant 0 is the model's descendant 1."""
    middle = Descendant(accuracy=0.8, memory_bytes=2_000_000, latency_s=0.003, id="m#1")
    top = LARGE.model_copy(update={"id": "m#2"})
    problem = Problem(
        apps=[on_model("a", [SMALL, middle, top]), on_model("b", [middle, top])],
        memory_budget_bytes=2_500_000,
    )
    for policy in POLICIES:
        for method in ("exact", "greedy"):
            plan = solve(problem, policy, method)
            assert [(a.descendant, a.id) for a in plan.apps] == [(1, "m#1"), (0, "m#1")]
            assert plan.memory_used_bytes == 2_000_000


def test_id_less_apps_and_descendants_are_counted_per_app() -> None:
    own = Descendant(accuracy=0.95, memory_bytes=500_000, latency_s=0.004)
    problem = Problem(
        apps=[on_model("a", [SMALL, own]), on_model("b", [SMALL]), on_model("c", [own])],
        memory_budget_bytes=10_000_000,
    )
    plan = solve(problem)
    assert [a.descendant for a in plan.apps] == [1, 0, 0]
    assert [(r.id, r.apps) for r in plan.residents] == [
        (None, ["a"]),
        ("m#0", ["b"]),
        (None, ["c"]),
    ]
    assert plan.memory_used_bytes == 2_000_000


def test_descendants_with_one_id_must_have_the_same_bytes(tmp_path) -> None:
    wrong = LARGE.model_copy(update={"memory_bytes": 4_000_000})
    data = {
        "apps": [
            {
                "name": "a",
                "target_latency_s": 0.1,
                "descendants": [SMALL.model_dump(), LARGE.model_dump()],
            },
            {"name": "b", "target_latency_s": 0.1, "descendants": [wrong.model_dump()]},
        ],
        "memory_budget_bytes": 10_000_000,
    }
    with pytest.raises(NestError, match=r"apps: descendants with id 'm#1' differ in memory_bytes"):
        parse_problem(data, "p.json")
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(data["apps"]))
    with pytest.raises(NestError, match="'m#1'"):
        load_app_pool(pool)


def test_solution_json_lists_the_residents() -> None:
    problem = Problem(
        apps=[on_model(name, [SMALL, LARGE]) for name in "ab"], memory_budget_bytes=10**7
    )
    data = solve(problem).model_dump(mode="json")
    assert data["residents"] == [{"id": "m#1", "memory_bytes": 3_000_000, "apps": ["a", "b"]}]
    assert [a["id"] for a in data["apps"]] == ["m#1", "m#1"]
    assert data["memory_used_bytes"] == 3_000_000
    assert "residents" in type(solve(problem)).model_json_schema()["properties"]


def test_baseline_counts_one_copy_per_id_and_swaps_when_that_does_not_fit() -> None:
    apps = [on_model(name, [SMALL, LARGE]) for name in "abc"]
    plan = baseline(Problem(apps=apps, memory_budget_bytes=3_000_000))
    assert [a.descendant for a in plan.apps] == [1, 1, 1]
    assert plan.memory_used_bytes == 3_000_000 and plan.fits_memory and plan.reason is None
    tight = baseline(Problem(apps=apps, memory_budget_bytes=2_000_000))
    assert not tight.fits_memory and tight.bytes_missing == 1_000_000
    assert "swapped" in (tight.reason or "")


def test_resolve_keeps_a_shared_plan_when_an_app_joins_its_model() -> None:
    two = Problem(
        apps=[on_model(name, [SMALL, LARGE]) for name in "ab"], memory_budget_bytes=3_200_000
    )
    current = solve(two)
    three = two.model_copy(update={"apps": [*two.apps, on_model("c", [SMALL, LARGE])]})
    again = resolve(three, current, tolerance=Tolerance(rel=0.0, abs=0.0))
    assert again.decision == "kept-descendants"
    assert [a.descendant for a in again.apps] == [1, 1, 1]


def test_too_many_resident_sets_are_refused() -> None:
    """Every app has its own id-less descendants and one shared id: 2 * 3^n sets."""
    apps = [
        on_model(
            f"a{i}",
            [
                SMALL,
                *(
                    Descendant(accuracy=0.8, memory_bytes=1000 + k, latency_s=0.001)
                    for k in range(2)
                ),
            ],
        )
        for i in range(9)
    ]
    problem = Problem(apps=apps, memory_budget_bytes=10**9)
    with pytest.raises(NestError, match=f"apps a0, a1, .* more than the {MAX_RESIDENT_SETS:,}"):
        solve(problem, "min-total-cost", "exact")
    assert baseline(problem).feasible  # the baseline enumerates nothing


@settings(max_examples=40, deadline=None)
@given(shared_problems(max_apps=5), st.integers(0, 2**32 - 1))
def test_marginal_bytes_of_switches_match_the_plans_memory(problem: Problem, seed: int) -> None:
    tables = Tables.of(problem)
    marginal = _Marginal.of(tables)
    rng = np.random.default_rng(seed)
    desc = np.array([rng.integers(w) for w in tables.widths])
    memory = plain_memory(problem.apps, tuple(desc))
    assert marginal.used(desc) == memory
    single = marginal.switch_extra(desc)
    pairs = np.array(list(itertools.combinations(range(len(desc)), 2)))
    double = marginal.pair_extra(desc, pairs)
    for i, w in enumerate(tables.widths):
        for d in range(w):
            moved = desc.copy()
            moved[i] = d
            assert single[i, d] == plain_memory(problem.apps, tuple(moved)) - memory
    for p, (i, j) in enumerate(pairs):
        for a in range(tables.widths[i]):
            for b in range(tables.widths[j]):
                moved = desc.copy()
                moved[i], moved[j] = a, b
                assert double[p, a, b] == plain_memory(problem.apps, tuple(moved)) - memory


@SETTINGS
@given(shared_problems(max_apps=5))
def test_the_greedy_start_needs_the_least_memory(problem: Problem) -> None:
    tables = Tables.of(problem)
    least = min(
        plain_memory(problem.apps, chosen)
        for chosen in itertools.product(*(range(len(a.descendants)) for a in problem.apps))
    )
    assert tables.least_memory == least
    assert plain_memory(problem.apps, tables.start) == least


@pytest.mark.parametrize("models", [2, 4])
def test_greedy_gap_on_random_shared_problems(models: int) -> None:
    """8 apps over 2 or 4 models with 5 descendants each (20 problems): mean gap <= 2 %."""
    for policy in POLICIES:
        gaps = []
        for seed in range(20):
            problem = random_shared_problem(seed, 8, models)
            best = solve(problem, policy, "exact").objective
            greedy = solve(problem, policy, "greedy").objective
            gaps.append((greedy - best) / best)
        assert statistics.fmean(gaps) <= 0.02, (policy, gaps)
