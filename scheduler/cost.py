"""The cost model (docs/scheduler.md, "Cost model") and its tabulation on the share grid.

    C_i(d, u) = w_i * [ (A_max_i - A(d)) + alpha * max(0, L(d) / (u * T_i) - 1) ]

Shares are u = k / U for k = 1..U share units, U = 1 / share_step. Every solver reads costs
from the same table, so that equal plans have bit-identical costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from scheduler.problem import App, Problem
from scheduler.sharing import Residency


def cost(app: App, descendant: int, share: float, alpha: float) -> float:
    """C_i(d, u) for one app, descendant index and share in (0, 1]."""
    d = app.descendants[descendant]
    excess = max(0.0, d.latency_s / (share * app.target_latency_s) - 1.0)
    return app.priority * ((app.best_accuracy - d.accuracy) + alpha * excess)


NO_BYTES = np.iinfo(np.int64).max // 4
"""Memory of a padding descendant (apps with fewer descendants than the widest)."""


def cost_grid(problem: Problem) -> np.ndarray:
    """[i, d, k-1]: `cost` of app i, descendant d, k / U of the processor (inf: padding).

    Same operations in the same order as `cost`, so the numbers are bit-identical.
    """
    width = max((len(a.descendants) for a in problem.apps), default=0)
    latency = np.full((len(problem.apps), width), np.inf)
    accuracy = np.zeros((len(problem.apps), width))
    for i, app in enumerate(problem.apps):
        latency[i, : len(app.descendants)] = [d.latency_s for d in app.descendants]
        accuracy[i, : len(app.descendants)] = [d.accuracy for d in app.descendants]
    best = np.array([a.best_accuracy for a in problem.apps])[:, None, None]
    target = np.array([a.target_latency_s for a in problem.apps])[:, None, None]
    priority = np.array([a.priority for a in problem.apps])[:, None, None]
    units = problem.share_units
    shares = np.arange(1, units + 1, dtype=np.float64) / units
    with np.errstate(invalid="ignore"):  # padding: alpha = 0 times infinite excess
        excess = np.maximum(0.0, latency[:, :, None] / (shares * target) - 1.0)
        grid = priority * ((best - accuracy[:, :, None]) + problem.alpha * excess)
    return np.where(np.isinf(latency)[:, :, None], np.inf, grid)


@dataclass(frozen=True)
class Tables:
    """Per-app cost tables: cost[i][d, k-1] is app i's cost with descendant d and k units.

    `grid` and `bytes` hold the same for all apps at once, padded to the widest app with
    infinite cost and `NO_BYTES`; `cost` and `memory` are per-app views without padding.
    `residency` says which resident object each descendant needs (shared ids).
    """

    units: int
    budget: int
    grid: np.ndarray
    bytes: np.ndarray
    latency: np.ndarray
    widths: tuple[int, ...]
    residency: Residency

    @classmethod
    def of(cls, problem: Problem) -> Tables:
        """Tabulate every app's cost on the problem's share grid."""
        widths = tuple(len(a.descendants) for a in problem.apps)
        width = max(widths, default=0)
        memory = np.full((len(widths), width), NO_BYTES, dtype=np.int64)
        latency = np.full((len(widths), width), np.inf)
        for i, app in enumerate(problem.apps):
            memory[i, : widths[i]] = [d.memory_bytes for d in app.descendants]
            latency[i, : widths[i]] = [d.latency_s for d in app.descendants]
        return cls(
            problem.share_units,
            problem.memory_budget_bytes,
            cost_grid(problem),
            memory,
            latency,
            widths,
            Residency.of(problem.apps),
        )

    @cached_property
    def usable(self) -> np.ndarray:
        """[i, d]: descendants with finite costs (not padding, not excluded by `restricted`)."""
        return np.isfinite(self.grid[:, :, -1])

    @cached_property
    def start(self) -> tuple[int, ...]:
        """A plan of least memory (where the greedy starts): each app's smallest descendant,
        within the least resident set of its group when apps share ids."""
        return self.residency.least_memory_plan(self.usable, self.bytes, self.latency)

    @cached_property
    def least_memory(self) -> int:
        """Fewest bytes any plan needs."""
        return self.residency.least_memory(self.usable)

    def plan_memory(self, descendants: Sequence[int]) -> int:
        """Bytes of the plan's resident objects (shared ids counted once)."""
        return self.residency.memory(descendants)

    @cached_property
    def cost(self) -> tuple[np.ndarray, ...]:
        """Per-app tables [d, k-1] (views of `grid`)."""
        return tuple(self.grid[i, :w] for i, w in enumerate(self.widths))

    @cached_property
    def memory(self) -> tuple[np.ndarray, ...]:
        """Per-app descendant bytes (views of `bytes`)."""
        return tuple(self.bytes[i, :w] for i, w in enumerate(self.widths))

    def restricted(self, fixed: list[int | None]) -> Tables:
        """The same tables with app i allowed only descendant fixed[i] (None: any).

        Disallowed descendants get infinite cost; A_max and all other costs are unchanged.
        """
        grid = self.grid.copy()
        for i, d in enumerate(fixed):
            if d is not None:
                grid[i, :d] = np.inf
                grid[i, d + 1 :] = np.inf
        return Tables(
            self.units, self.budget, grid, self.bytes, self.latency, self.widths, self.residency
        )

    @property
    def n_apps(self) -> int:
        """Number of apps."""
        return len(self.widths)

    def useful_units(self, app: int) -> np.ndarray:
        """Per descendant, the fewest units reaching its lowest cost (more units never help)."""
        return np.argmin(self.cost[app], axis=1) + 1
