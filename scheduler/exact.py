"""Exact MinTotalCost and MinMaxCost on the discretised shares.

A plan gives every app i one option (d_i, k_i): a descendant and a positive number of share
units, with memory(plan) <= M_max and sum_i k_i <= U (U = 1 / share_step). The memory of a plan
is that of its resident objects: one copy per shared id (`scheduler.sharing`). Costs come
from `Tables`, so every solver compares bit-identical numbers.

Both solvers work on *groups* of apps (`Residency.groups`): an app alone, or apps sharing ids.
Groups share no objects, so a group's choice adds units, memory and cost to the plan's; a
group of several apps first becomes a list of such options (`_group_options`).

Ties (plans with exactly equal objective as computed) are broken by: least memory, then
fewest share units, then the lexicographically smallest choice in group order -- for a group
of one app (d, k), so without shared ids the smallest (d_0, k_0, d_1, k_1, ...) in app order;
for apps sharing ids their option that comes first (smaller resident set, then fewer units).
Unused units are handed out afterwards by `solve` (they never raise a cost).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scheduler.cost import NO_BYTES, Tables
from scheduler.sharing import Group

Plan = tuple[tuple[int, int], ...]
"""Per app in problem order: (descendant index, share units)."""

_PRUNE_RTOL = 1e-9
_BEAM = 8
_LAMBDA_GRID = 12
_LAMBDA_FINE = 6
_LAMBDAS = 4
_PROBES = 32
_CELLS = 1 << 21
"""Array cells per vectorised step over resident sets (bounds the memory of the dense
steps: about 16 MB of float64)."""


@dataclass(frozen=True)
class Options:
    """One group's candidate choices that no other choice of the group dominates in
    (units, memory, cost).

    choice[o, j] and share[o, j] are the descendant and units of the group's j-th app in
    option o; units, memory and cost are the option's totals (memory: the group's resident
    objects). For one app, options are ordered lexicographically by (descendant, units),
    which the tie rule relies on.
    """

    apps: tuple[int, ...]
    choice: np.ndarray
    share: np.ndarray
    units: np.ndarray
    memory: np.ndarray
    cost: np.ndarray

    def __len__(self) -> int:
        return len(self.units)


def all_options(tables: Tables, cap: float = np.inf) -> list[Options]:
    """Per group, in order of their first app, its options with every cost <= cap."""
    alone = _app_options(tables, cap)
    return [
        _group_options(tables, group, cap) if group.shared else alone[group.apps[0]]
        for group in tables.residency.groups
    ]


def _app_options(tables: Tables, cap: float) -> list[Options]:
    """Per app, the pairs (d, k) with cost <= cap not dominated in (units, memory, cost).

    Within a descendant, units beyond the first reaching its lowest cost are dropped. Pair
    (d, k) is dropped when another descendant d' with M(d') <= M(d) reaches a cost <= C(d, k)
    with at most k units (exact ties keep the lower index). O(n * D^2 * U), vectorised over
    all apps.
    """
    grid, memory = tables.grid, tables.bytes
    n, width, units = grid.shape
    useful = np.argmin(grid, axis=2) + 1
    k = np.arange(1, units + 1)
    k_other = np.minimum(k[None, None, :], useful[:, :, None])
    c_other = np.take_along_axis(grid, k_other - 1, axis=2)
    index = np.arange(width)
    other_better = (
        (memory[:, :, None] < memory[:, None, :])[..., None]
        | (c_other[:, :, None, :] < grid[:, None, :, :])
        | (k_other[:, :, None, :] < k)
        | (index[:, None] < index[None, :])[None, :, :, None]
    )
    dominates = (
        (memory[:, :, None] <= memory[:, None, :])[..., None]
        & (c_other[:, :, None, :] <= grid[:, None, :, :])
        & other_better
        & ~np.eye(width, dtype=bool)[None, :, :, None]
    )
    keep = (k <= useful[:, :, None]) & (grid <= cap) & np.isfinite(grid)
    keep &= ~dominates.any(axis=1)
    app, desc, unit = np.nonzero(keep)
    unit = unit + 1
    bounds = np.searchsorted(app, np.arange(n + 1))
    return [
        Options(
            apps=(i,),
            choice=desc[a:b, None],
            share=unit[a:b, None],
            units=unit[a:b],
            memory=memory[i, desc[a:b]],
            cost=grid[i, desc[a:b], unit[a:b] - 1],
        )
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def _group_options(tables: Tables, group: Group, cap: float) -> Options:
    """Options of apps sharing ids, with every cost <= cap.

    For every resident set S of the group (`Group.sets`) that fits the budget, the least cost
    of the group with exactly s units in all (`_least_cost_by_units`); its points that improve
    on s - 1 units are options (units s, memory(S), cost). Options of all sets that no other
    dominates in (units, memory, cost) remain, ordered by set (smaller first) then units; of
    exact duplicates the first stays. O(sets * g * U * K) for g apps and K useful units each.
    """
    apps = list(group.apps)
    sets = group.sets
    fits = np.flatnonzero(sets.valid(tables.usable[apps]) & (sets.memory <= tables.budget))
    grid = tables.grid[apps]
    grid = np.where(grid <= cap, grid, np.inf)
    most = tables.units - (tables.n_apps - len(apps))  # every other app needs a unit
    reach = min(most, max(int(tables.useful_units(i).max()) for i in apps))
    chunk = max(1, _CELLS // ((most + 1) * reach))
    parts = [
        _least_cost_by_units(grid[:, :, :reach], sets.allows[fits[k : k + chunk]], most)
        for k in range(0, len(fits), chunk)
    ]
    cost = np.concatenate([p[0] for p in parts])
    took = [np.concatenate([p[1][j] for p in parts]) for j in range(len(apps))]
    ran = [np.concatenate([p[2][j] for p in parts]) for j in range(len(apps))]
    before = np.concatenate([np.full((len(cost), 1), np.inf), cost[:, :-1]], axis=1)
    row, units = np.nonzero(cost < before)
    memory = sets.memory[fits[row]]
    keep = _pareto_3d(units, memory, cost[row, units])
    row, units, memory = row[keep], units[keep], memory[keep]
    choice = np.empty((len(keep), len(apps)), dtype=np.int64)
    share = np.empty((len(keep), len(apps)), dtype=np.int64)
    left = units.copy()
    for j in reversed(range(len(apps))):
        share[:, j] = took[j][row, left]
        choice[:, j] = ran[j][row, share[:, j] - 1]
        left -= share[:, j]
    return Options(group.apps, choice, share, units, memory, cost[row, units])


def _least_cost_by_units(
    grid: np.ndarray, allows: np.ndarray, most: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Per resident set, the least cost of a group's apps with exactly s units (s = 0..most).

    grid[j, d, k-1]: cost of the group's app j with descendant d and k units (k = 1..K);
    allows[set, j, d]: whether the set holds d's object. Dense DP over the apps, a min-plus
    convolution over units per set: best[set, s] = min_k best'[set, s - k] + h_j[set, k] with
    h_j the app's least cost with k units among the descendants the set allows. Returns best
    and, per app, the units it took ([set, s]: fewest on ties) and the descendant it ran
    with k units ([set, k-1]: lowest index on ties). O(sets * g * most * K).
    """
    n_sets, reach = len(allows), grid.shape[2]
    best = np.full((n_sets, most + 1), np.inf)
    best[:, 0] = 0.0
    took, ran = [], []
    for j in range(grid.shape[0]):
        masked = np.where(allows[:, j, :, None], grid[j][None], np.inf)
        desc = np.argmin(masked, axis=1)
        h = np.take_along_axis(masked, desc[:, None, :], axis=1)[:, 0, :]
        padded = np.concatenate([np.full((n_sets, reach), np.inf), best], axis=1)
        window = sliding_window_view(padded, reach, axis=1)[:, : most + 1, ::-1]
        total = window + h[:, None, :]  # [set, s, k-1]: best'[s - k] + h[k]
        k = np.argmin(total, axis=2)
        best = np.take_along_axis(total, k[:, :, None], axis=2)[:, :, 0]
        took.append(k + 1)
        ran.append(desc)
    return best, took, ran


@dataclass(frozen=True)
class Bounds:
    """Lagrangian lower bounds on the cost of the groups not yet planned.

    For a multiplier lam >= 0 on memory (in fractions of the budget), value[l, k, r] is the
    least sum of C + lam * M / M_max over groups k.. with at most r units (memory ignored). Any
    completion of a partial plan with r units and b bytes left costs at least
    value[l, k, r] - lam * b / M_max: the classic Lagrangian relaxation of the memory budget;
    lam = 0 is the unit-only bound.
    """

    lams: np.ndarray
    value: np.ndarray
    scale: float
    relaxed_bytes: np.ndarray
    """[l]: bytes used by a plan attaining value[l, 0, U] (a subgradient of the dual)."""

    @classmethod
    def of(cls, options: list[Options], units: int, budget: int, lams: np.ndarray) -> Bounds:
        """Backward DP over groups for every multiplier at once: O(L * sum |options| * U)."""
        scale = float(max(budget, 1))
        r = np.arange(units + 1)
        lanes = np.arange(len(lams))[:, None]
        later = np.zeros((len(lams), units + 1))
        later_bytes = np.zeros((len(lams), units + 1), dtype=np.int64)
        value = [later]
        for opts in reversed(options):
            before = r[None, :] - opts.units[:, None]
            padded = np.concatenate([np.full((len(lams), units), np.inf), later], axis=1)
            priced = opts.cost[None, :] + lams[:, None] * (opts.memory[None, :] / scale)
            total = priced[:, :, None] + padded[:, units + before]
            best = np.argmin(total, axis=1)
            later = np.take_along_axis(total, best[:, None, :], axis=1)[:, 0, :]
            rest = before[best, r[None, :]].clip(0)
            later_bytes = opts.memory[best] + later_bytes[lanes, rest]
            value.append(later)
        return cls(lams, np.stack(value[::-1], axis=1), scale, later_bytes[:, units])

    def rest(self, k: int, units_left: np.ndarray, bytes_left: np.ndarray) -> np.ndarray:
        """Lower bound on the cost of groups k.. given the units and bytes left (>= 0)."""
        value = self.value[:, k, units_left]
        if len(self.lams) == 1 and self.lams[0] == 0:
            return value[0]
        return np.max(value - self.lams[:, None] * (bytes_left / self.scale), axis=0)

    def root(self, units: int) -> np.ndarray:
        """The bound of the whole problem for each multiplier."""
        return self.value[:, 0, units] - self.lams


def _multipliers(options: list[Options], units: int, budget: int) -> np.ndarray:
    """0 and the best few multipliers of a geometric grid, refined once around the best."""
    grid = np.geomspace(1e-4, 1e4, _LAMBDA_GRID)
    step = grid[1] / grid[0]
    root = Bounds.of(options, units, budget, grid).root(units)
    best = grid[int(np.argmax(root))]
    fine = np.geomspace(best / step, best * step, _LAMBDA_FINE)
    root = Bounds.of(options, units, budget, fine).root(units)
    top = fine[np.argsort(-root, kind="stable")[: _LAMBDAS - 1]]
    return np.concatenate([[0.0], np.sort(top)])


def _pareto_3d(s: np.ndarray, m: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated in (units s, memory m, cost c), all minimised.

    A point is dominated by another with s' <= s, m' <= m, c' <= c; of exact duplicates the
    first one stays. The least cost per (s, m) cell goes on a dense grid over the distinct s
    and m values, whose 2-D prefix minimum gives each point the least cost with fewer units
    or fewer bytes: O(P log P + S * Q) for P points, S distinct unit counts and Q distinct
    byte counts. Returned in ascending index order.
    """
    order = np.lexsort((c, m, s))
    s, m, c = s[order], m[order], c[order]
    new_s = np.empty(len(s), dtype=bool)
    new_s[0] = True
    new_s[1:] = s[1:] != s[:-1]
    first = new_s.copy()
    first[1:] |= m[1:] != m[:-1]
    si = np.cumsum(new_s) - 1
    m_values, mi = np.unique(m, return_inverse=True)
    grid = np.full((int(si[-1]) + 2, len(m_values) + 1), np.inf)
    grid[si[first] + 1, mi[first] + 1] = c[first]
    np.minimum.accumulate(grid, axis=0, out=grid)
    np.minimum.accumulate(grid, axis=1, out=grid)
    better = np.minimum(grid[si, mi + 1], grid[si + 1, mi])
    return np.sort(order[first & (better > c)])


@dataclass
class _Layer:
    """Surviving partial plans after some apps, in lexicographic order of their choices
    (the tie rule), with parents and options for backtracking."""

    units: np.ndarray
    memory: np.ndarray
    cost: np.ndarray
    parent: np.ndarray
    option: np.ndarray

    @classmethod
    def root(cls) -> _Layer:
        """The empty plan before the first app."""
        zero = np.zeros(1, dtype=np.int64)
        return cls(zero, zero, np.zeros(1), zero, zero)


def min_total_plan(tables: Tables, options: list[Options]) -> Plan | None:
    """Exact MinTotalCost: Pareto dynamic programming over groups (`all_options`) with
    bounding.

    Layer k holds the partial plans of groups 0..k-1 that no other partial plan dominates in
    (units used, memory used, cost) -- any completion of a dominated plan also completes the
    dominating one at no higher cost (groups share no objects, so memory adds up), so the
    optimum survives. A partial plan is also dropped when it cannot be completed (fewer units
    or bytes left than the remaining groups' options need at least) or when its cost plus a
    lower bound of the rest (`Bounds`) exceeds the
    objective of a known plan. That plan comes from a first pass of the same DP keeping only
    the `_BEAM` most promising partial plans per layer (if the beam never had to drop one,
    that pass was exact already; if it found no plan, there is no bound). Returns None when
    no plan fits.

    Complexity: O(sum_k P_k * |options_k|) candidate plans per pass and O(P log P + U * P) to
    filter a layer, P_k the front size: at most U times the number of distinct memory sums,
    in practice hundreds to a few thousand after bounding.
    """
    units, budget = tables.units, tables.budget
    bound = Bounds.of(options, units, budget, np.zeros(1))
    incumbent, truncated = _pareto_dp(tables, options, bound, np.inf, beam=_BEAM)
    if not truncated:
        return None if incumbent is None else _plan_of(options, incumbent)
    upper = np.inf if incumbent is None else _total(options, incumbent)
    if bound.relaxed_bytes[0] > budget:  # memory binds: Lagrangian bounds are stronger
        bound = Bounds.of(options, units, budget, _multipliers(options, units, budget))
        guided, _ = _pareto_dp(tables, options, bound, upper, beam=_BEAM)
        if guided is not None and _total(options, guided) < upper:
            incumbent, upper = guided, _total(options, guided)
    best, _ = _pareto_dp(tables, options, bound, upper, beam=None)
    if best is None:
        return None if incumbent is None else _plan_of(options, incumbent)
    return _plan_of(options, best)


def _suffix_sums(values: list[int]) -> np.ndarray:
    """[k]: sum of values[k:], for k = 0..len(values)."""
    return np.concatenate([np.cumsum(values[::-1])[::-1], [0]]).astype(np.int64)


def _total(options: list[Options], chosen: list[int]) -> float:
    """Objective of a plan given as option indices."""
    return sum(float(o.cost[i]) for o, i in zip(options, chosen, strict=True))


def _plan_of(options: list[Options], chosen: list[int]) -> Plan:
    """Option indices per group -> (descendant, units) per app in problem order."""
    plan: dict[int, tuple[int, int]] = {}
    for o, i in zip(options, chosen, strict=True):
        for j, app in enumerate(o.apps):
            plan[app] = (int(o.choice[i, j]), int(o.share[i, j]))
    return tuple(plan[app] for app in sorted(plan))


def _pareto_dp(
    tables: Tables,
    options: list[Options],
    bound: Bounds,
    upper: float,
    beam: int | None,
) -> tuple[list[int] | None, bool]:
    """One pass of the Pareto DP (see `min_total_plan`).

    Returns the option index per group of the best plan found (None if none fits) and
    whether the beam dropped any non-dominated partial plan (if not, the plan is optimal).
    """
    units, budget = tables.units, tables.budget
    min_memory_after = _suffix_sums([int(o.memory.min()) for o in options])
    min_units_after = _suffix_sums([int(o.units.min()) for o in options])
    slack = _PRUNE_RTOL * max(1.0, abs(upper)) if np.isfinite(upper) else 0.0
    layer = _Layer.root()
    layers: list[_Layer] = []
    truncated = False
    for k, opts in enumerate(options):
        s = layer.units[:, None] + opts.units[None, :]
        m = layer.memory[:, None] + opts.memory[None, :]
        fits = (s <= units - min_units_after[k + 1]) & (m <= budget - min_memory_after[k + 1])
        parent, option = np.nonzero(fits)  # row-major: lexicographic order of the plans
        s, m = s[parent, option], m[parent, option]
        c = layer.cost[parent] + opts.cost[option]
        rest = bound.rest(k + 1, units - s, budget - m)
        promising = np.flatnonzero(c + rest <= upper + slack)
        if len(promising) == 0:
            return None, truncated
        keep = promising[_pareto_3d(s[promising], m[promising], c[promising])]
        if beam is not None and len(keep) > beam:
            truncated = True
            keep = np.sort(keep[np.argsort((c + rest)[keep], kind="stable")[:beam]])
        layer = _Layer(s[keep], m[keep], c[keep], parent[keep], option[keep])
        layers.append(layer)
    best = np.lexsort((layer.units, layer.memory, layer.cost))[0]
    return _backtrack(layers, int(best)), truncated


def _backtrack(layers: list[_Layer], point: int) -> list[int]:
    """Follow parent links from a point of the last layer back to the first group."""
    chosen = []
    for layer in reversed(layers):
        chosen.append(int(layer.option[point]))
        point = int(layer.parent[point])
    return chosen[::-1]


def min_max_level(tables: Tables) -> float | None:
    """Exact MinMaxCost objective: the least cost level c every app can stay at or below.

    The optimum is one of the finitely many table costs. For a level c each app needs, per
    descendant d, the fewest units k_d(c) with C(d, k) <= c (if any); `_fits_at` decides with
    a DP over units whether some choice fits both budgets, O(n * D * U) per level. Feasibility
    is monotone in c, so a search over the sorted distinct costs (`_PROBES` levels at a time,
    vectorised) needs O(log(n * D * U)) rounds: O(n * D * U * log(n * D * U)) in all.
    """
    levels = np.unique(np.concatenate([t.ravel() for t in tables.cost]))
    levels = levels[np.isfinite(levels)]
    floor = max(float(t.min()) for t in tables.cost)
    lo, hi = int(np.searchsorted(levels, floor)), len(levels) - 1
    verified = False  # is levels[hi] known to fit?
    while lo < hi or not verified:
        probes = np.unique(np.linspace(lo, hi, min(_PROBES, hi - lo + 1)).astype(np.int64))
        fits = _fits_at(tables, levels[probes])
        if not fits[-1]:
            return None  # only possible in the first round, where probes[-1] is the top level
        verified = True
        first = int(np.argmax(fits))
        hi = int(probes[first])
        lo = int(probes[first - 1]) + 1 if first > 0 else lo
    return float(levels[hi])


def _fits_at(tables: Tables, levels: np.ndarray) -> np.ndarray:
    """Per level: can every app have cost <= level within both budgets?

    need[l, i, d] is the fewest units giving app i cost <= level l with descendant d (U + 1:
    none); least[l, s] the fewest bytes the groups so far need with at most s units (columns
    0..U hold "no way", so that s - need indexes it without bounds checks). A group adds one
    of its choices (`_level_choices`): units needed and bytes.
    """
    units = tables.units
    need = (tables.grid[None] > levels[:, None, None, None]).sum(axis=3) + 1
    least = np.zeros((len(levels), 2 * units + 2), dtype=np.int64)
    least[:, : units + 1] = NO_BYTES
    row = np.arange(len(levels))[:, None, None]
    s = np.arange(units + 1, 2 * units + 2)[None, None, :]
    for group in tables.residency.groups:
        wants, nbytes = _level_choices(tables, group, need)
        chunk = max(1, _CELLS // (len(levels) * (units + 1)))
        after = np.full((len(levels), units + 1), NO_BYTES, dtype=np.int64)
        for k in range(0, len(nbytes), chunk):
            part = slice(k, k + chunk)
            options = least[row, s - wants[:, part, None]] + nbytes[None, part, None]
            after = np.minimum(after, options.min(axis=1))
        least[:, units + 1 :] = after
    return least[:, -1] <= tables.budget


def _level_choices(
    tables: Tables, group: Group, need: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A group's choices at each level: units needed [level, choice] and bytes [choice].

    An app alone chooses a descendant. Apps sharing ids choose a resident set S (that fits
    the budget): each app then needs the fewest units among the descendants S allows, and
    the group needs the bytes of S (U + 1 units: some app cannot reach the level in S).
    """
    i = group.apps[0]
    if not group.shared:
        return need[:, i, :], tables.bytes[i]
    sets = group.sets
    fits = sets.memory <= tables.budget
    allows = sets.allows[fits]
    wants = np.zeros((len(need), len(allows)), dtype=np.int64)
    for j, app in enumerate(group.apps):
        mine = need[:, app, None, :]
        wants += np.where(allows[None, :, j, :], mine, tables.units + 1).min(axis=2)
    return np.minimum(wants, tables.units + 1), sets.memory[fits]
