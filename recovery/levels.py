"""Choosing the descendants among the roadmap's steps and ordering channels by level.

Level 0 is the smallest chosen step (the seed by default), level K-1 the largest (the
vanilla by default). Every group's channels are reordered by the level that adds them (seed
channels first, then those added at level 1, ...; ascending original index within a level),
so that descendant k is the prefix ``[:widths[k][g]]`` of every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nestdnn.errors import NestError
from pruning.roadmap import RoadmapStep
from recovery.prune_run import PruneRun


@dataclass(frozen=True)
class LevelPlan:
    """The chosen roadmap steps (smallest first) and every group's channels in level order."""

    steps: list[RoadmapStep]
    files: list[Path]  # each level's step checkpoint
    order: dict[str, Tensor]  # group -> original channel indices, level by level

    @property
    def num_levels(self) -> int:
        return len(self.steps)

    def widths(self, level: int) -> dict[str, int]:
        return dict(self.steps[level].widths)

    def local_indices(self, level: int) -> dict[str, Tensor]:
        """Indices into level ``level``'s step model that put its channels in level order."""
        step = self.steps[level]
        local: dict[str, Tensor] = {}
        for group, kept in step.kept.items():
            kept_t = torch.tensor(kept, dtype=torch.long)
            wanted = self.order[group][: step.widths[group]]
            local[group] = torch.searchsorted(kept_t, wanted)
        return local


def choose_steps(run: PruneRun, descendants: int) -> list[int]:
    """K steps from the seed to the vanilla, as evenly spread in parameter count as possible."""
    candidates = list(range(run.seed_step, -1, -1))  # seed ... vanilla, growing params
    if descendants < 2:
        raise NestError(f"need at least 2 descendants (seed and vanilla), got {descendants}")
    if descendants > len(candidates):
        raise NestError(
            f"asked for {descendants} descendants but the roadmap has only {len(candidates)}"
            f" steps from the seed (step {run.seed_step}) to the vanilla (step 0)"
        )
    params = [run.step(s).params for s in candidates]
    lo, hi = params[0], params[-1]
    targets = [lo + (hi - lo) * i / (descendants - 1) for i in range(descendants)]
    chosen = _closest_increasing(params, targets)
    return [candidates[i] for i in chosen]


def _closest_increasing(values: Sequence[float], targets: Sequence[float]) -> list[int]:
    """Strictly increasing positions, first and last fixed, minimising sum |value - target|.

    Dynamic programming over (target, position): best[t][p] is the least cost of matching
    targets[:t+1] with target t at position p.
    """
    n, k = len(values), len(targets)
    inf = float("inf")
    best = [[inf] * n for _ in range(k)]
    back = [[-1] * n for _ in range(k)]
    best[0][0] = abs(values[0] - targets[0])
    for t in range(1, k):
        for p in range(t, n):
            prev = min(range(t - 1, p), key=lambda q: best[t - 1][q])
            best[t][p] = best[t - 1][prev] + abs(values[p] - targets[t])
            back[t][p] = prev
    positions = [n - 1]
    for t in range(k - 1, 0, -1):
        positions.append(back[t][positions[-1]])
    return positions[::-1]


def validate_steps(run: PruneRun, steps: Sequence[int]) -> list[int]:
    """Explicit steps: distinct, in the roadmap; returned smallest model first."""
    if len(steps) < 2:
        raise NestError(f"need at least 2 steps to nest, got {list(steps)}")
    if len(set(steps)) != len(steps):
        raise NestError(f"steps must be distinct, got {list(steps)}")
    for s in steps:
        run.step(s)
    return sorted(steps, reverse=True)


def plan_levels(run: PruneRun, steps: Sequence[int]) -> LevelPlan:
    """Order every group's channels by the level (chosen step, smallest first) that adds them."""
    chosen = [run.step(s) for s in steps]
    order: dict[str, Tensor] = {}
    for group in chosen[0].kept:
        seen: set[int] = set()
        ordered: list[int] = []
        for step in chosen:
            added = sorted(set(step.kept[group]) - seen)
            ordered += added
            seen.update(added)
        order[group] = torch.tensor(ordered, dtype=torch.long)
    return LevelPlan(steps=chosen, files=[run.step_file(s) for s in steps], order=order)
