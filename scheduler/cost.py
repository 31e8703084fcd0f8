"""The cost model of DESIGN.md section 8 and its tabulation on the share grid.

    C_i(d, u) = w_i * [ (A_max_i - A(d)) + alpha * max(0, L(d) / (u * T_i) - 1) ]

Shares are u = k / U for k = 1..U share units, U = 1 / share_step. Every solver reads costs
from the same table, so that equal plans have bit-identical costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.problem import App, Problem


def cost(app: App, descendant: int, share: float, alpha: float) -> float:
    """C_i(d, u) for one app, descendant index and share in (0, 1]."""
    d = app.descendants[descendant]
    excess = max(0.0, d.latency_s / (share * app.target_latency_s) - 1.0)
    return app.priority * ((app.best_accuracy - d.accuracy) + alpha * excess)


def cost_table(app: App, units: int, alpha: float) -> np.ndarray:
    """C(d, k / units) of `cost` for every descendant d and k = 1..units, at index [d, k-1].

    Same operations in the same order as `cost`, so the numbers are bit-identical.
    """
    latency = np.array([d.latency_s for d in app.descendants])[:, None]
    accuracy = np.array([d.accuracy for d in app.descendants])[:, None]
    shares = np.arange(1, units + 1, dtype=np.float64) / units
    excess = np.maximum(0.0, latency / (shares * app.target_latency_s) - 1.0)
    return app.priority * ((app.best_accuracy - accuracy) + alpha * excess)


@dataclass(frozen=True)
class Tables:
    """Per-app cost tables: cost[i][d, k-1] is app i's cost with descendant d and k units."""

    units: int
    budget: int
    cost: tuple[np.ndarray, ...]
    memory: tuple[np.ndarray, ...]
    start: tuple[int, ...]
    """Each app's smallest allowed descendant (where the greedy starts)."""

    @classmethod
    def of(cls, problem: Problem) -> Tables:
        """Tabulate every app's cost on the problem's share grid."""
        units = problem.share_units
        costs = tuple(cost_table(app, units, problem.alpha) for app in problem.apps)
        memory = tuple(
            np.array([d.memory_bytes for d in app.descendants], dtype=np.int64)
            for app in problem.apps
        )
        start = tuple(app.smallest for app in problem.apps)
        return cls(units, problem.memory_budget_bytes, costs, memory, start)

    def restricted(self, fixed: list[int | None]) -> Tables:
        """The same tables with app i allowed only descendant fixed[i] (None: any).

        Disallowed descendants get infinite cost; A_max and all other costs are unchanged.
        """
        costs = []
        for table, d in zip(self.cost, fixed, strict=True):
            if d is None:
                costs.append(table)
            else:
                only = np.full_like(table, np.inf)
                only[d] = table[d]
                costs.append(only)
        start = tuple(s if d is None else d for s, d in zip(self.start, fixed, strict=True))
        return Tables(self.units, self.budget, tuple(costs), self.memory, start)

    @property
    def n_apps(self) -> int:
        """Number of apps."""
        return len(self.cost)

    def useful_units(self, app: int) -> np.ndarray:
        """Per descendant, the fewest units reaching its lowest cost (more units never help)."""
        table = self.cost[app]
        return np.argmin(table, axis=1) + 1
