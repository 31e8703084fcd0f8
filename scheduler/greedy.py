"""Greedy MinTotalCost / MinMaxCost in the spirit of NestDNN's heuristic.

Both start every app at its smallest descendant with an equal share and take improving
moves, best first, until none is left. Neither backtracks, so neither is optimal in general;
both keep both budgets at every step, so they are feasible whenever exact is (the start --
smallest descendants, least memory with shared ids, >= 1 unit each -- is feasible whenever
any plan is).

MinTotalCost moves: (a) share units move one at a time from the app (or free pool) that
loses least to the app that gains most, while that lowers the total -- for fixed
descendants this reaches the best split, the cost being convex in the units, and it is
computed directly as "each app's base units plus the U - sum(base) largest marginal gains";
(b) one app switches descendant (upgrade or downgrade), followed by (a); (c) when no single
switch helps, two apps switch together (e.g. one up, one down), followed by (a). Among
switches the one with the largest cost reduction per resource taken goes first, the
resource being extra bytes / M_max + extra units / U (units after the re-split); switches
taking neither rank first. Ties: larger reduction, then lower app and descendant indices.
A sweep costs O(n * D * U) for (b) and O(n^2 * D^2 * U) for (c).
A switch (or pair) is taken only if it lowers the total of the re-split plan, evaluated the
same way for every plan, by more than 1e-12 relative: the vectorised estimates only rank the
candidates (a no-op could look like a 1e-11 gain and be taken forever). The total strictly
falls at each move, so no plan recurs and greedy ends; a move bound warns as a safety net.

MinMaxCost moves: the worst app (ties: lowest index) switches descendant and/or takes t
units -- from the pool first, then the other apps' cheapest units -- as long as every other
app stays strictly below the current maximum; the move with the largest cost reduction per
resource (extra bytes / M_max + t / U) goes first. When the worst app cannot improve, the
MinTotalCost moves follow, restricted to plans whose every cost stays <= that maximum.

Shared ids (`scheduler.sharing`): the start is a plan of least memory and every move counts
marginal bytes (`_Marginal`: nothing for an object another app keeps resident; leaving an
object frees it only if no other app runs on it). Moves that exist only with shared ids, so
that problems without ids keep their plans: MinTotalCost consolidations (`_consolidate`,
after the pair switches), the worst app taking the other apps on its object along
(`_GroupSwitch`), and apps of sharing groups stepping down to free units for it
(`_WorstFirst.compact`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from scheduler.cost import NO_BYTES, Tables
from scheduler.exact import Plan

_GAIN_EPS = 1e-12
_log = logging.getLogger(__name__)


def greedy_min_total(
    tables: Tables, start: list[int], cap: float = np.inf, max_moves: int | None = None
) -> Plan:
    """MinTotalCost moves from descendants `start`, every cost kept <= cap.

    A move is taken only if it lowers the objective of the re-split plan, as `_Splitter.total`
    computes it, by more than `_accept_tol`; the vectorised estimates only rank the moves
    (their sums cancel in a different order, so a no-op can look like a 1e-11 gain). The
    objective being a function of the descendants alone, it strictly falls at every move and
    no plan comes back: the loop ends. `max_moves` (default `_move_limit`) is a safety net on
    top of that; reaching it logs a warning and returns the current (feasible) plan.
    """
    split = _Splitter(tables, cap)
    desc = np.array(start, dtype=np.int64)
    memory = _Marginal.of(tables)
    rows = np.arange(tables.n_apps)
    pairs = np.array(list(itertools.combinations(rows, 2)), dtype=np.int64).reshape(-1, 2)
    limit = _move_limit(tables) if max_moves is None else max_moves
    objective = split.total(desc)
    for _ in range(limit):
        used = memory.used(desc)
        after, units = split.cost_after_switch(desc)
        held = units[rows, desc]
        extra = (memory.switch_extra(desc), units - held[:, None])
        same = np.arange(split.width)[None, :] == desc[:, None]
        gain = np.where(same, -np.inf, objective - after)
        move = _take(gain, extra, used, tables, split, desc, objective, _switch)
        if move is None:
            i, j = pairs[:, 0], pairs[:, 1]
            after, units = split.cost_after_pairs(desc, pairs)
            extra = (
                memory.pair_extra(desc, pairs),
                units - (held[i] + held[j])[:, None, None],
            )
            # Pairs in which an app keeps its descendant are single switches, tried above.
            keeps = (np.arange(split.width)[None, :] == desc[i][:, None])[:, :, None] | (
                np.arange(split.width)[None, :] == desc[j][:, None]
            )[:, None, :]
            gain = np.where(keeps, -np.inf, objective - after)
            move = _take(gain, extra, used, tables, split, desc, objective, _pair_switch(pairs))
        if move is None:
            move = _consolidate(tables, memory, split, desc, objective)
        if move is None:
            return split.plan(desc)
        desc, objective = move
    _log.warning(
        "greedy MinTotalCost stopped after %d moves without converging (%d apps, %d units); "
        "returning the current plan",
        limit,
        tables.n_apps,
        tables.units,
    )
    return split.plan(desc)


def _consolidate(
    tables: Tables, memory: _Marginal, split: _Splitter, desc: np.ndarray, objective: float
) -> tuple[np.ndarray, float] | None:
    """The best consolidation that fits the budget and lowers the objective (or None).

    Apps sharing ids can only change their resident set together: moving one app onto a new
    object keeps the old one resident for the others. A consolidation moves the apps of a
    sharing group that run on some of its objects -- one object; all smaller, or all larger,
    than a target; or all of them -- onto the target object (each app that has it), followed
    by the re-split. O(groups * K^2) candidates for K objects per group, each evaluated in
    full. Without shared ids there are none.
    """
    tol = _accept_tol(objective)
    best: tuple[np.ndarray, float] | None = None
    for new in _consolidations(tables, memory, desc):
        if memory.used(new) > tables.budget:
            continue
        value = split.total(new)
        if value < objective - tol and (best is None or value < best[1]):
            best = (new, value)
    return best


def _consolidations(tables: Tables, memory: _Marginal, desc: np.ndarray) -> Iterator[np.ndarray]:
    """Descendants after each consolidation (see `_consolidate`), in a fixed order."""
    running = memory.objects[np.arange(len(desc)), desc]
    for group in tables.residency.groups:
        if not group.shared:
            continue
        apps = np.array(group.apps)
        used = sorted({int(o) for o in running[apps]}, key=lambda o: (memory.sizes[o], o))
        targets = np.unique(memory.objects[apps][memory.objects[apps] < len(memory.sizes) - 1])
        for target in targets:
            size = memory.sizes[target]
            moving = [{o} for o in used if o != target]
            moving += [
                {o for o in used if memory.sizes[o] < size},
                {o for o in used if memory.sizes[o] > size},
                set(used) - {target},
            ]
            seen: list[set[int]] = []
            for sources in moving:
                if sources and sources not in seen:
                    seen.append(sources)
                    yield _moved(memory, desc, apps, running, sources, int(target))


def _moved(
    memory: _Marginal,
    desc: np.ndarray,
    apps: np.ndarray,
    running: np.ndarray,
    sources: set[int],
    target: int,
) -> np.ndarray:
    """Descendants after the apps running on `sources` move onto `target` (those that can)."""
    new = desc.copy()
    for i in apps:
        if int(running[i]) in sources:
            match = np.flatnonzero(memory.objects[i] == target)
            if len(match):
                new[i] = match[0]
    return new


def _move_limit(tables: Tables) -> int:
    """Safety bound on greedy moves: far above what converging runs take."""
    return 100 * tables.n_apps * max(tables.widths, default=1) + 1000


def _accept_tol(objective: float) -> float:
    """Least decrease of the objective that counts as an improvement."""
    return _GAIN_EPS * max(1.0, abs(objective))


def _switch(desc: np.ndarray, move: tuple[int, ...]) -> np.ndarray:
    """Descendants after app move[0] switches to move[1]."""
    i, d = move
    new = desc.copy()
    new[i] = d
    return new


def _pair_switch(pairs: np.ndarray) -> Callable[[np.ndarray, tuple[int, ...]], np.ndarray]:
    """Descendants after apps pairs[move[0]] switch to move[1] and move[2]."""

    def apply(desc: np.ndarray, move: tuple[int, ...]) -> np.ndarray:
        p, a, b = move
        new = desc.copy()
        new[pairs[p, 0]], new[pairs[p, 1]] = a, b
        return new

    return apply


def _take(
    gain: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray],
    used: int,
    tables: Tables,
    split: _Splitter,
    desc: np.ndarray,
    objective: float,
    apply: Callable[[np.ndarray, tuple[int, ...]], np.ndarray],
) -> tuple[np.ndarray, float] | None:
    """The best-ranked move that truly lowers the objective: (new descendants, objective).

    Candidates go in `_ranked` order; each is re-evaluated with `split.total` and taken only
    if it beats `objective` by more than `_accept_tol` (estimates within float noise of zero
    are rejected here). None when no candidate does.
    """
    tol = _accept_tol(objective)
    for move in _ranked(gain, extra, used, tables, tol):
        new = apply(desc, move)
        value = split.total(new)
        if value < objective - tol:
            return new, value
    return None


def _ranked(
    gain: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray],
    used: int,
    tables: Tables,
    tol: float,
) -> Iterator[tuple[int, ...]]:
    """Indices of the moves that fit the budget and gain more than `tol`, best first.

    Best is the largest gain per resource taken: the extra bytes as a fraction of the budget
    plus the extra units (after the re-split) as a fraction of the processor; moves taking
    neither rank first. Ties go to the larger gain, then the lowest index.
    """
    extra_bytes, extra_units = extra
    ok = (used + extra_bytes <= tables.budget) & np.isfinite(gain) & (gain > tol)
    if not ok.any():
        return
    resource = np.maximum(extra_bytes, 0) / max(tables.budget, 1) + (
        np.maximum(extra_units, 0) / tables.units
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(resource > 0, gain / resource, np.inf)
    flat = np.flatnonzero(ok)
    order = np.lexsort((flat, -gain.ravel()[flat], -score.ravel()[flat]))
    for best in flat[order]:
        yield tuple(int(x) for x in np.unravel_index(best, gain.shape))


@dataclass(frozen=True)
class _Marginal:
    """Memory of plans and marginal bytes of switches, with shared resident objects.

    A switch frees the app's object only if no other app runs on it, and loads the new one
    only if no other app keeps it resident (0 bytes then). Without shared ids this is
    M(d') - M(d), as for independent apps.
    """

    objects: np.ndarray
    """[app, descendant]: object index; padding points at a last, empty object."""
    sizes: np.ndarray

    @classmethod
    def of(cls, tables: Tables) -> _Marginal:
        residency = tables.residency
        empty = len(residency.object_bytes)
        objects = np.where(residency.objects >= 0, residency.objects, empty)
        return cls(objects, np.append(residency.object_bytes, 0))

    def _users(self, desc: np.ndarray) -> np.ndarray:
        """[object]: apps running on it."""
        return np.bincount(self.objects[np.arange(len(desc)), desc], minlength=len(self.sizes))

    def used(self, desc: np.ndarray) -> int:
        """Bytes of the plan's distinct objects."""
        return int(self.sizes[self._users(desc) > 0].sum())

    def held_by_others(self, desc: np.ndarray, app: int) -> np.ndarray:
        """[d]: whether another app keeps descendant d's object of `app` resident."""
        users = self._users(desc)
        mine = self.objects[app, desc[app]]
        return users[self.objects[app]] - (self.objects[app] == mine) > 0

    def switch_extra(self, desc: np.ndarray) -> np.ndarray:
        """[i, d]: change of the plan's bytes if app i switches to descendant d."""
        users = self._users(desc)
        mine = self.objects[np.arange(len(desc)), desc]
        freed = np.where(users[mine] == 1, self.sizes[mine], 0)
        others = users[self.objects] - (self.objects == mine[:, None])
        return np.where(others == 0, self.sizes[self.objects], 0) - freed[:, None]

    def pair_extra(self, desc: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """[p, a, b]: change of the plan's bytes if apps pairs[p] switch to a and b."""
        users = self._users(desc)
        mine = self.objects[np.arange(len(desc)), desc]
        first, second = mine[pairs[:, 0]], mine[pairs[:, 1]]

        def others(objects: np.ndarray) -> np.ndarray:
            """Users of the objects besides the pair's two apps."""
            shape = (-1,) + (1,) * (objects.ndim - 1)
            return (
                users[objects]
                - (objects == first.reshape(shape))
                - (objects == second.reshape(shape))
            )

        freed = np.where(others(first) == 0, self.sizes[first], 0) + np.where(
            (others(second) == 0) & (second != first), self.sizes[second], 0
        )
        a, b = self.objects[pairs[:, 0]], self.objects[pairs[:, 1]]
        added_a = np.where(others(a) == 0, self.sizes[a], 0)
        added_b = np.where(others(b) == 0, self.sizes[b], 0)
        added = added_a[:, :, None] + np.where(
            b[:, None, :] == a[:, :, None], 0, added_b[:, None, :]
        )
        return added - freed[:, None, None]


class _Splitter:
    """Best split of the units for given descendants, with every cost kept <= cap.

    App i with descendant d needs base[i, d] units (the fewest with cost <= cap; 1 when cap
    is inf) and each further unit t gains gains[i, d, t] >= 0, non-increasing in t (convex
    costs; only units that lower the cost are listed). The best split gives the
    U - sum(base) free units to the largest gains; free units beyond those stay unused.
    """

    def __init__(self, tables: Tables, cap: float) -> None:
        n, units = tables.n_apps, tables.units
        self.units = units
        self.costs = tables.cost
        self.width = max(t.shape[0] for t in tables.cost)
        self.base = np.full((n, self.width), units + 1, dtype=np.int64)
        self.base_cost = np.full((n, self.width), np.inf)
        rows: dict[tuple[int, int], np.ndarray] = {}
        for i, table in enumerate(tables.cost):
            useful = tables.useful_units(i)
            for d, row in enumerate(table):
                within = np.flatnonzero((row <= cap) & np.isfinite(row))
                if len(within) == 0:
                    continue
                b = int(within[0])
                self.base[i, d] = b + 1
                self.base_cost[i, d] = row[b]
                rows[i, d] = row[b : useful[d] - 1] - row[b + 1 : useful[d]]
        self.length = max((len(r) for r in rows.values()), default=0)
        self.gains = np.zeros((n, self.width, self.length))
        for (i, d), row in rows.items():
            self.gains[i, d, : len(row)] = row
        self.prefix = np.concatenate(
            [np.zeros((n, self.width, 1)), np.cumsum(self.gains, axis=2)], axis=2
        )

    def _others(self, desc: np.ndarray, excluded: np.ndarray) -> np.ndarray:
        """[r, x]: the x largest gains of the apps not in row r of `excluded` (x = 0..U)."""
        n = len(desc)
        gains = self.gains[np.arange(n), desc]
        flat, owner = gains.ravel(), np.repeat(np.arange(n), self.length)
        order = np.lexsort((owner, -flat))[: self.units + excluded.shape[1] * self.length]
        flat, owner = flat[order], owner[order]
        keep = owner[None, :] != excluded[:, :1]
        for column in range(1, excluded.shape[1]):
            keep &= owner[None, :] != excluded[:, column : column + 1]
        count = np.cumsum(keep, axis=1)
        total = np.cumsum(np.where(keep, flat, 0.0), axis=1)
        others = np.full((len(excluded), self.units + 1), -np.inf)
        others[:, 0] = 0.0
        r, p = np.nonzero(keep & (count <= self.units))
        others[r, count[r, p]] = total[r, p]
        return np.maximum.accumulate(others, axis=1)

    def cost_after_switch(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[i, d]: least total cost if app i switches to d (inf if it cannot), and app i's
        units in that split."""
        n, rows = len(desc), np.arange(len(desc))
        base_now = self.base[rows, desc]
        free = self.units - (base_now.sum() - base_now[:, None] + self.base)
        others = self._others(desc, rows[:, None])
        best_gain, taken = _best_split(self.prefix, others, free)
        cost_now = self.base_cost[rows, desc]
        total = cost_now.sum() - cost_now[:, None] + self.base_cost - best_gain
        total = np.where(np.isfinite(total), total, np.inf).reshape(n, self.width)
        return total, self.base + taken

    def cost_after_pairs(
        self, desc: np.ndarray, pairs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """[p, a, b]: least total cost if apps pairs[p] switch to a and b, and the two apps'
        units together in that split."""
        rows = np.arange(len(desc))
        i, j = pairs[:, 0], pairs[:, 1]
        base_now = self.base[rows, desc]
        rest = base_now.sum() - base_now[i] - base_now[j]
        free = self.units - (
            rest[:, None, None] + self.base[i][:, :, None] + self.base[j][:, None, :]
        )
        both = np.concatenate(
            np.broadcast_arrays(self.gains[i][:, :, None, :], self.gains[j][:, None, :, :]),
            axis=3,
        )
        both = -np.sort(-both, axis=3)
        zero = np.zeros((*both.shape[:3], 1))
        own = np.concatenate([zero, np.cumsum(both, axis=3)], axis=3)
        others = self._others(desc, pairs)
        best_gain, taken = _best_split(own, others, free)
        cost_now = self.base_cost[rows, desc]
        rest_cost = cost_now.sum() - cost_now[i] - cost_now[j]
        total = (
            rest_cost[:, None, None]
            + self.base_cost[i][:, :, None]
            + self.base_cost[j][:, None, :]
            - best_gain
        )
        units = self.base[i][:, :, None] + self.base[j][:, None, :] + taken
        return np.where(np.isfinite(total), total, np.inf), units

    def total(self, desc: np.ndarray) -> float:
        """Total cost of `plan(desc)`, summed in app order (inf if the bases do not fit).

        The objective the moves must lower: a function of the descendants alone, the same
        for the same descendants however it is reached.
        """
        plan = self.plan(desc)
        if sum(k for _, k in plan) > self.units:
            return np.inf
        return float(sum(float(self.costs[i][d, k - 1]) for i, (d, k) in enumerate(plan)))

    def plan(self, desc: np.ndarray) -> Plan:
        """The split itself: base units plus the positive gains among the largest free ones."""
        n = len(desc)
        units = self.base[np.arange(n), desc].copy()
        gains = self.gains[np.arange(n), desc]
        flat, owner = gains.ravel(), np.repeat(np.arange(n), self.length)
        order = np.lexsort((owner, -flat))[: max(0, self.units - int(units.sum()))]
        chosen = order[flat[order] > 0]
        units += np.bincount(owner[chosen], minlength=n)
        return tuple((int(d), int(k)) for d, k in zip(desc, units, strict=True))


def greedy_min_max(tables: Tables, start: list[int], max_moves: int | None = None) -> Plan:
    """MinMaxCost moves of the worst app, then MinTotalCost moves under the maximum reached.

    Each worst-app move lowers (maximum, number of apps at the maximum) lexicographically --
    the worst app drops, apps tied with it keep their cost, donors stay strictly below it --
    and compacting (`_WorstFirst.compact`) keeps every other app strictly below the maximum,
    so the first phase ends; `max_moves` bounds each phase as a safety net (with a warning).
    """
    state = _WorstFirst(tables, start)
    limit = _move_limit(tables) if max_moves is None else max_moves
    for _ in range(limit):
        if not (state.improve_worst() or state.improve_worst_after_compacting()):
            break
    else:
        _log.warning(
            "greedy MinMaxCost stopped after %d worst-app moves without converging "
            "(%d apps, %d units); continuing from the current plan",
            limit,
            tables.n_apps,
            tables.units,
        )
    plan = state.plan()
    worst = max(tables.cost[i][d, k - 1] for i, (d, k) in enumerate(plan))
    return greedy_min_total(tables, [d for d, _ in plan], cap=worst, max_moves=max_moves)


@dataclass
class _WorstFirst:
    """Plan under MinMaxCost moves: descendants, units, free units and memory used."""

    tables: Tables
    desc: np.ndarray
    units: np.ndarray
    pool: int
    marginal: _Marginal
    memory: int
    sharing: list[int]

    def __init__(self, tables: Tables, start: list[int]) -> None:
        n = tables.n_apps
        self.tables = tables
        self.desc = np.array(start, dtype=np.int64)
        self.units = np.full(n, tables.units // n, dtype=np.int64)
        self.pool = tables.units - int(self.units.sum())
        self.marginal = _Marginal.of(tables)
        self.memory = self.marginal.used(self.desc)
        self.sharing = [i for g in tables.residency.groups if g.shared for i in g.apps]
        self._release()

    def plan(self) -> Plan:
        """The current plan."""
        return tuple((int(d), int(k)) for d, k in zip(self.desc, self.units, strict=True))

    def _cost(self, i: int, units: int | None = None) -> float:
        """App i's cost with its descendant and `units` (default: its own)."""
        k = int(self.units[i]) if units is None else units
        return float(self.tables.cost[i][self.desc[i], k - 1])

    def _release(self) -> None:
        """Return to the pool every unit an app holds beyond the fewest reaching its cost."""
        for i in range(self.tables.n_apps):
            row = self.tables.cost[i][self.desc[i]]
            need = int(np.argmax(row <= row[self.units[i] - 1])) + 1
            self.pool += int(self.units[i] - need)
            self.units[i] = need

    def _donors(self, worst: int, cap: float) -> list[int]:
        """Units others can give, cheapest first, as owners (-1: the pool).

        Donor j gives units one by one (its losses rise, the cost being convex in units)
        while it keeps >= 1 unit and its cost stays strictly below the cap.
        """
        entries = [(0.0, -1)] * self.pool
        for j in range(self.tables.n_apps):
            if j == worst:
                continue
            before = self._cost(j)
            for k in range(int(self.units[j]) - 1, 0, -1):
                after = self._cost(j, k)
                if after >= cap:
                    break
                entries.append((after - before, j))
                before = after
        return [j for _, j in sorted(entries, key=lambda e: e[0])]

    def improve_worst(self) -> bool:
        """Take the worst app's best move; False when it has none.

        A move switches the worst app's descendant and/or gives it t more units (from the
        pool, then the donors). With shared ids the switch may also take every other app on
        the worst app's object along to the new descendant's object (`_GroupSwitch`), which
        frees the old object: listed after the plain switches, so they win ties.
        """
        tables = self.tables
        costs = [self._cost(i) for i in range(tables.n_apps)]
        i = int(np.argmax(costs))
        donors = self._donors(i, costs[i])
        table = tables.cost[i]
        k = int(self.units[i])
        most = min(len(donors), tables.units - k)
        extra = self.marginal.switch_extra(self.desc)[i, : len(table)]
        group = _GroupSwitch.of(self, i, costs[i], donors)
        gain = costs[i] - table[:, k - 1 : k + most]
        reach = np.minimum(group.supply, tables.units - k)
        group_gain = np.where(np.arange(most + 1)[None, :] <= reach[:, None], gain, -np.inf)
        gain = np.concatenate([gain, group_gain])
        extra = np.concatenate([extra, group.change])
        ok = (self.memory + extra <= tables.budget)[:, None] & (
            gain > _GAIN_EPS * max(1.0, abs(costs[i]))
        )
        if not ok.any():
            return False
        resource = np.maximum(extra, 0)[:, None] / max(tables.budget, 1) + (
            np.arange(most + 1)[None, :] / tables.units
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(ok, np.where(resource > 0, gain / resource, np.inf), -np.inf)
        best = np.lexsort((np.arange(score.size), -gain.ravel(), -score.ravel()))[0]
        row, t = (int(x) for x in np.unravel_index(best, score.shape))
        d = row % len(table)
        if row >= len(table):
            donors = group.apply(self, d)
        self.memory += int(extra[row])
        self.desc[i] = d
        self._take_units(donors[:t])
        self.units[i] += t
        self._release()
        return True

    def _take_units(self, owners: list[int]) -> None:
        """Remove one unit per entry from its owner (-1: the pool)."""
        for j in owners:
            if j < 0:
                self.pool -= 1
            else:
                self.units[j] -= 1

    def improve_worst_after_compacting(self) -> bool:
        """`compact`, then the worst app's move; the plan is left as it was if either fails."""
        saved = (self.desc.copy(), self.units.copy(), self.pool, self.memory)
        if self.compact() and self.improve_worst():
            return True
        self.desc, self.units, self.pool, self.memory = saved
        return False

    def compact(self) -> bool:
        """Move other apps that share resident objects onto descendants on which fewer units
        keep them strictly below the maximum (within the memory budget), freeing those
        units; whether any app moved.

        Only apps in groups sharing ids move: there an upgrade onto an object another app
        holds costs no bytes, so worst-first moves tend to over-upgrade them; without shared
        ids no app ever moves here.
        """
        tables = self.tables
        costs = [self._cost(i) for i in range(tables.n_apps)]
        worst = int(np.argmax(costs))
        moved = False
        for j in self.sharing:
            if j == worst:
                continue
            table = tables.cost[j]
            below = table < costs[worst]
            need = np.where(below.any(axis=1), np.argmax(below, axis=1) + 1, tables.units + 1)
            extra = self.marginal.switch_extra(self.desc)[j, : len(table)]
            other = np.arange(len(table)) != self.desc[j]
            allowed = (self.memory + extra <= tables.budget) & other
            need = np.where(allowed, need, tables.units + 1)
            d = int(np.argmin(need))
            if need[d] >= self.units[j]:
                continue
            self.memory += int(extra[d])
            self.desc[j] = d
            self.pool += int(self.units[j] - need[d])
            self.units[j] = need[d]
            moved = True
        return moved


@dataclass
class _GroupSwitch:
    """The worst app switching to descendant d together with every other app on its object
    (the *movers*), who go to their descendant with d's object and the fewest units that
    keep them strictly below the maximum; the old object is freed.

    Per d: `moves` (mover -> (descendant, units)), `change` of the plan's bytes (`NO_BYTES`
    where impossible: a mover lacks d's object or cannot stay below the maximum, d is the
    worst app's own object, or no other app runs on it) and `supply`, the units the worst
    app can then take: from the pool and the donors that are not movers, after the movers'
    extra units (units movers free come first, as free ones).
    """

    movers: list[int]
    donors: list[int]
    moves: dict[int, dict[int, tuple[int, int]]]
    change: np.ndarray
    supply: np.ndarray

    @classmethod
    def of(cls, state: _WorstFirst, i: int, cap: float, donors: list[int]) -> _GroupSwitch:
        """The group switches open to the worst app i (every cost kept below `cap`)."""
        tables, objects = state.tables, state.marginal.objects
        mine = objects[i, state.desc[i]]
        running = objects[np.arange(tables.n_apps), state.desc]
        movers = [int(j) for j in np.flatnonzero(running == mine) if j != i]
        free = [j for j in donors if j not in movers]
        width = tables.widths[i]
        switch = cls(
            movers,
            free,
            {},
            np.full(width, NO_BYTES, dtype=np.int64),
            np.full(width, -1, dtype=np.int64),
        )
        if not movers:
            return switch
        held = state.marginal.held_by_others(state.desc, i)
        for d in range(width):
            moves = switch._moves(state, int(objects[i, d]), int(mine), cap)
            if moves is not None:
                switch.moves[d] = moves
                added = 0 if held[d] else int(state.marginal.sizes[objects[i, d]])
                switch.change[d] = added - int(state.marginal.sizes[mine])
                net = sum(k for _, k in moves.values()) - sum(int(state.units[j]) for j in moves)
                switch.supply[d] = len(free) - net
        return switch

    def _moves(
        self, state: _WorstFirst, target: int, mine: int, cap: float
    ) -> dict[int, tuple[int, int]] | None:
        """Each mover's descendant with object `target` and fewest units below `cap`."""
        if target == mine:
            return None
        tables = state.tables
        moves = {}
        for j in self.movers:
            match = np.flatnonzero(state.marginal.objects[j, : tables.widths[j]] == target)
            below = np.flatnonzero(tables.cost[j][match[0]] < cap) if len(match) else []
            if len(below) == 0:
                return None
            moves[j] = (int(match[0]), int(below[0]) + 1)
        return moves

    def apply(self, state: _WorstFirst, d: int) -> list[int]:
        """Move the movers for descendant d; the units the worst app may take, in order."""
        net = 0
        for j, (e, k) in self.moves[d].items():
            net += k - int(state.units[j])
            state.desc[j], state.units[j] = e, k
        if net <= 0:
            state.pool -= net
            return [-1] * -net + self.donors
        state._take_units(self.donors[:net])
        return self.donors[net:]


def _best_split(
    own: np.ndarray, others: np.ndarray, free: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """max over y <= free of own[..., y] + others[..., free - y] (the best use of the free
    units) and the y attaining it (fewest on ties).

    own[r, ..., y] is the gain of y units to the switching app(s) of row r, others[r, x] that
    of x units to the rest (constant once their gains run out); -inf where `free` < 0 (the
    bases alone do not fit).
    """
    idx = free[..., None] - np.arange(own.shape[-1])
    rows = np.arange(len(others)).reshape((-1,) + (1,) * (idx.ndim - 1))
    total = np.where(idx >= 0, own + others[rows, idx.clip(0, others.shape[1] - 1)], -np.inf)
    best = np.argmax(total, axis=-1)
    return np.take_along_axis(total, best[..., None], axis=-1)[..., 0], best
