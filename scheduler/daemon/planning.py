"""From registered apps to the scheduler's problem and back: the runtime's planning step.

Each app becomes one `scheduler.problem.App` named by its app id: its model's descendants on
the runtime's backend (only those reaching the app's ``min_accuracy``, if it set one), its
latency target T (``target_latency_s``, or ``1 / fps`` when only a frame rate was given) and
its priority. Every descendant carries the id of its resident (``model#k``): apps on the same
descendant of the same model share one loaded copy, and the optimiser counts its bytes once.
Latencies are the backend's, scaled to the machine's speed now (`scheduler.daemon.speed`).
The switch-aware re-solve of the scheduler decides, given the plan in force; the answer is
mapped back to the model's own descendant indices.

The baselines (`scheduler.problem.BASELINES`) plan by their rule: the resource-agnostic
``baseline`` may exceed the budget (its models are swapped in and out, each must fit alone);
``independent`` (each app its own copy of the best descendant within ``budget / slots``;
run it with ``RuntimeSettings(sharing=False)`` for one copy per app) and ``smallest`` never
swap: when their models do not fit, the plan is refused and the newest apps wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nestdnn.errors import NestError
from scheduler.daemon.backends import InferenceBackend
from scheduler.daemon.catalogue import CatalogueEntry
from scheduler.daemon.errors import Infeasible
from scheduler.daemon.specs import AppSpec
from scheduler.problem import App, Method, Policy, Problem, Solution
from scheduler.solve import Tolerance, resolve

NEVER_SWAP: tuple[Policy, ...] = ("independent", "smallest")
"""Baselines whose apps wait when their models do not fit (only ``baseline`` swaps)."""


@dataclass(frozen=True)
class PlannedApp:
    """An app as the planner sees it: id, model and spec."""

    id: str
    entry: CatalogueEntry
    spec: AppSpec


def allowed_descendants(app: PlannedApp, backend: InferenceBackend) -> list[int]:
    """Descendant indices the app may run: those reaching its min_accuracy (all if unset)."""
    table = backend.descendants(app.entry)
    floor = app.spec.min_accuracy
    allowed = [k for k, d in enumerate(table) if floor is None or d.accuracy >= floor]
    if not allowed:
        best = max(d.accuracy for d in table)
        raise NestError(
            f"no descendant of {app.entry.name} reaches min_accuracy {floor}"
            f" (the best has {best:.4f})"
        )
    return allowed


def plan(
    apps: Sequence[PlannedApp],
    backend: InferenceBackend,
    *,
    policy: Policy,
    method: Method,
    alpha: float,
    memory_budget_bytes: int,
    share_step: float,
    switch_tolerance: float,
    current: Solution | None,
    latency_scale: Mapping[str, float] | None = None,
    sharing: bool = True,
    slots: int | None = None,
) -> Solution:
    """The switch-aware plan for ``apps``; raises `Infeasible` (with bytes missing) if none fits.

    ``current`` is the plan in force (in model descendant indices), kept when the new optimum
    is not better by more than ``switch_tolerance`` (relative). When swapping (the
    resource-agnostic baseline's models do not fit together), every single model must still
    fit the budget; the other baselines must fit as a whole. ``slots``: the apps the
    independent baseline divides the budget among (None: ``apps``).
    """
    allowed = {app.id: allowed_descendants(app, backend) for app in apps}
    problem = Problem(
        apps=[_problem_app(app, backend, allowed[app.id],
                           (latency_scale or {}).get(app.entry.name, 1.0), sharing)
              for app in apps],
        memory_budget_bytes=memory_budget_bytes,
        alpha=alpha,
        share_step=share_step,
    )
    in_problem = None if current is None else _reindexed(
        current, {a: {k: i for i, k in enumerate(ks)} for a, ks in allowed.items()})
    solution = resolve(problem, in_problem, policy=policy, method=method,
                       tolerance=Tolerance(rel=switch_tolerance), slots=slots)
    if not solution.feasible or (policy in NEVER_SWAP and not solution.fits_memory):
        raise Infeasible(f"refused: {solution.reason}", bytes_missing=solution.bytes_missing or 0)
    largest = max((a.memory_bytes for a in solution.apps), default=0)
    if largest > memory_budget_bytes:
        raise Infeasible(
            f"refused: a model of {largest:,} bytes cannot be swapped in within the memory"
            f" budget of {memory_budget_bytes:,}", bytes_missing=largest - memory_budget_bytes)
    return _reindexed(solution, {a: dict(enumerate(ks)) for a, ks in allowed.items()})


def _problem_app(app: PlannedApp, backend: InferenceBackend, allowed: list[int],
                 scale: float, sharing: bool) -> App:
    """The app as the optimiser sees it: latencies scaled to the machine's speed now, and each
    descendant named by its resident (``model#k``), so that apps sharing it count its bytes
    once."""
    table = backend.descendants(app.entry)
    descendants = [table[k].model_copy(update={
        "latency_s": table[k].latency_s * scale,
        "id": f"{app.entry.name}#{k}" if sharing else None}) for k in allowed]
    return App(name=app.id, target_latency_s=app.spec.latency_target_s,
               priority=app.spec.priority, descendants=descendants)


def _reindexed(solution: Solution, index: Mapping[str, Mapping[int, int]]) -> Solution:
    """The solution with each app's descendant mapped through ``index[app]``.

    Apps not in ``index`` (gone since) stay as they are: the re-solve must see that the set
    of apps changed, exactly as the simulator's re-solve does.
    """
    apps = [a.model_copy(update={"descendant": index[a.name][a.descendant]})
            if a.name in index else a for a in solution.apps]
    return solution.model_copy(update={"apps": apps})
