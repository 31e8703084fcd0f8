"""Greedy termination: every accepted move must lower the objective, so greedy always ends.

Regression for a problem (3 apps with identical descendants, alpha 1e3) on which greedy
MinTotalCost cycled forever on a no-op switch whose estimated gain was float noise (4e-11).
Every greedy run here is guarded twice: a small `max_moves` whose warning fails the test,
and a SIGALRM timeout, so that a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import App, Descendant, Problem, solve
from scheduler.cost import Tables
from scheduler.greedy import greedy_min_max, greedy_min_total

POLICIES = ("min-total-cost", "min-max-cost")
REPORTED = [
    {"accuracy": 0.62, "memory_bytes": 584272, "latency_s": 0.018900438},
    {"accuracy": 0.72, "memory_bytes": 2320464, "latency_s": 0.021504273},
    {"accuracy": 0.778, "memory_bytes": 9248848, "latency_s": 0.04302636425},
]
MOVES = 200
"""Move bound for the guarded runs: far above what these small problems need."""


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise _Timeout if the block runs longer than `seconds` (SIGALRM; main thread)."""

    def expire(signum: int, frame: object) -> None:
        raise _Timeout(f"greedy did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def no_move_limit_warning() -> Iterator[None]:
    """Fail if greedy reports reaching its move bound."""
    handler = _Records()
    logger = logging.getLogger("scheduler.greedy")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages


def reported_problem() -> Problem:
    apps = [
        App(
            name=f"app{i}",
            target_latency_s=0.2,
            priority=w,
            descendants=[Descendant(**d) for d in REPORTED],
        )
        for i, w in enumerate((1.0, 2.0, 0.5))
    ]
    return Problem(apps=apps, memory_budget_bytes=28_000_000, alpha=1000.0, share_step=0.01)


def check_greedy(problem: Problem) -> None:
    """Greedy ends within the move bound and is feasible iff exact is, never better."""
    tables = Tables.of(problem)
    with deadline(20), no_move_limit_warning():
        greedy_min_total(tables, list(tables.start), max_moves=MOVES)
        greedy_min_max(tables, list(tables.start), max_moves=MOVES)
        for policy in POLICIES:
            exact = solve(problem, policy, "exact")
            greedy = solve(problem, policy, "greedy")
            assert greedy.feasible == exact.feasible
            if exact.feasible:
                assert sum(a.memory_bytes for a in greedy.apps) <= problem.memory_budget_bytes
                assert sum(a.share_units for a in greedy.apps) <= problem.share_units
                assert all(a.share_units >= 1 for a in greedy.apps)
                assert greedy.objective >= exact.objective - 1e-9


@pytest.mark.parametrize("policy", POLICIES)
def test_reported_problem_terminates(policy: str) -> None:
    problem = reported_problem()
    tables = Tables.of(problem)
    with deadline(10), no_move_limit_warning():
        greedy_min_total(tables, list(tables.start), max_moves=MOVES)
        greedy = solve(problem, policy, "greedy")
    exact = solve(problem, policy, "exact")
    assert greedy.feasible and exact.feasible
    assert sum(a.memory_bytes for a in greedy.apps) <= problem.memory_budget_bytes
    assert sum(a.share_units for a in greedy.apps) <= problem.share_units
    assert greedy.objective >= exact.objective - 1e-9


def test_move_limit_warns_and_returns_a_feasible_plan(caplog: pytest.LogCaptureFixture) -> None:
    problem = reported_problem()
    tables = Tables.of(problem)
    with caplog.at_level(logging.WARNING, logger="scheduler.greedy"):
        plan = greedy_min_total(tables, list(tables.start), max_moves=1)
    assert any("without converging" in r.getMessage() for r in caplog.records)
    assert sum(int(tables.memory[i][d]) for i, (d, _) in enumerate(plan)) <= tables.budget
    assert sum(k for _, k in plan) <= tables.units


@st.composite
def duplicated_problems(draw: st.DrawFn, shared: bool = False) -> Problem:
    """Several copies of one app (identical descendants, maybe different priorities and
    targets; with `shared`, one model: the copies share its ids) plus maybe a few other
    apps; extreme alphas."""
    template = draw(
        st.lists(
            st.builds(
                Descendant,
                accuracy=st.sampled_from([0.5, 0.62, 0.72, 0.778, 0.9]),
                memory_bytes=st.integers(1, 10).map(lambda m: m * 500_000),
                latency_s=st.sampled_from([0.002, 0.0189, 0.0215, 0.043, 0.1]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    if shared:
        template = [d.model_copy(update={"id": f"model#{k}"}) for k, d in enumerate(template)]
    same_priority = draw(st.booleans())
    copies = draw(st.integers(2, 5))
    apps = [
        App(
            name=f"copy{i}",
            target_latency_s=draw(st.sampled_from([0.05, 0.2])),
            priority=1.0 if same_priority else draw(st.sampled_from([0.5, 1.0, 2.0])),
            descendants=template,
        )
        for i in range(copies)
    ]
    for i in range(draw(st.integers(0, 2))):
        apps.append(
            App(
                name=f"other{i}",
                target_latency_s=0.1,
                descendants=[
                    Descendant(accuracy=0.7, memory_bytes=1_000_000, latency_s=0.01),
                    Descendant(accuracy=0.8, memory_bytes=4_000_000, latency_s=0.03),
                ],
            )
        )
    least = sum(min(d.memory_bytes for d in a.descendants) for a in apps)
    most = sum(max(d.memory_bytes for d in a.descendants) for a in apps)
    return Problem(
        apps=apps,
        memory_budget_bytes=least + int(draw(st.floats(0.0, 1.0)) * (most - least)),
        alpha=draw(st.sampled_from([0.0, 1e3, 1e6])),
        share_step=draw(st.sampled_from([0.01, 0.05, 0.1])),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(duplicated_problems())
def test_greedy_terminates_on_duplicated_apps(problem: Problem) -> None:
    check_greedy(problem)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(duplicated_problems(shared=True))
def test_greedy_terminates_on_apps_sharing_a_model(problem: Problem) -> None:
    """As above with the copies sharing one resident per descendant (issue 16)."""
    tables = Tables.of(problem)
    with deadline(20), no_move_limit_warning():
        greedy_min_total(tables, list(tables.start), max_moves=MOVES)
        greedy_min_max(tables, list(tables.start), max_moves=MOVES)
        for policy in POLICIES:
            exact = solve(problem, policy, "exact")
            greedy = solve(problem, policy, "greedy")
            assert greedy.feasible == exact.feasible
            if exact.feasible:
                assert greedy.memory_used_bytes <= problem.memory_budget_bytes
                assert sum(a.share_units for a in greedy.apps) <= problem.share_units
                assert greedy.objective >= exact.objective - 1e-9
