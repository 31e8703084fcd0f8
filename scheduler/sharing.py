"""Shared residency: the resident object each descendant needs, and the apps that share them.

A descendant with an `id` needs the resident object of that id; descendants of any apps with
the same id share one copy. A descendant without an id needs an object of its own (counted per
app, as before ids existed). A plan's memory is the sum of the bytes of the distinct objects
its chosen descendants need.

Apps that share objects form *groups*: the connected components of "uses an object another app
also uses". Groups never share objects, so a plan's memory is the sum over groups, and a group
of one app is exactly an app without sharing. For a group of several apps the solvers
enumerate its *resident sets*: sets S of the group's objects (the objects the group keeps
resident); each app of the group then runs a descendant whose object is in S, and the group's
memory is the bytes of S whatever each app picks inside it. Only sets that can be minimal are
listed: at most one object per app (|S| <= apps in the group), and at most one of the objects
only one app uses (its *own* objects) per app -- any other set holds an object no app needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from math import comb

import numpy as np

from nestdnn.errors import NestError
from scheduler.problem import App

MAX_RESIDENT_SETS = 4096
"""Most resident sets one group may have: beyond, the exact enumeration is refused."""

ObjectKey = str | tuple[str, int]
"""A resident object: the descendants' shared id, or (app name, descendant) without one."""


def object_key(app: App, descendant: int) -> ObjectKey:
    """The resident object app `app` needs to run `descendant`."""
    desc = app.descendants[descendant]
    return desc.id if desc.id is not None else (app.name, descendant)


@dataclass(frozen=True)
class ResidentSets:
    """A group's resident sets, smallest first (then in order of their objects' indices)."""

    memory: np.ndarray
    """[set]: bytes of the set."""
    allows: np.ndarray
    """[set, app of the group, descendant]: whether the descendant's object is in the set."""

    def valid(self, usable: np.ndarray) -> np.ndarray:
        """[set]: every app of the group has a usable descendant ([app, descendant]) in it."""
        return (self.allows & usable[None]).any(axis=2).all(axis=1)


@dataclass(frozen=True)
class Group:
    """Apps (indices in problem order) that share resident objects, directly or through others."""

    apps: tuple[int, ...]
    names: tuple[str, ...]
    objects: np.ndarray
    """[app of the group, descendant]: object index (-1: padding)."""
    object_bytes: np.ndarray
    """Bytes of every object of the problem (indexed by object)."""

    @property
    def shared(self) -> bool:
        """Whether the group has several apps (a group of one shares nothing)."""
        return len(self.apps) > 1

    @cached_property
    def sets(self) -> ResidentSets:
        """The resident sets of the group (module docstring); NestError if there are more
        than `MAX_RESIDENT_SETS`."""
        present = self.objects >= 0
        mine = np.unique(self.objects[present])
        users = {int(o): {j for j in range(len(self.apps)) if o in self.objects[j]} for o in mine}
        common = [o for o in users if len(users[o]) > 1]
        own = [[o for o in users if users[o] == {j}] for j in range(len(self.apps))]
        _check_count(self.names, len(common), [len(o) for o in own])
        sets = sorted(
            tuple(sorted(a + tuple(o for o in b if o is not None)))
            for a, b in _candidates(common, own, len(self.apps))
        )
        sets.sort(key=len)
        index = {int(o): k for k, o in enumerate(mine)}
        member = np.zeros((len(sets), len(mine)), dtype=bool)
        for row, chosen in enumerate(sets):
            member[row, [index[o] for o in chosen]] = True
        local = np.where(present, np.searchsorted(mine, self.objects), 0)
        allows = member[:, local] & present[None]
        runs = allows.any(axis=2).all(axis=1)  # every app has a descendant in the set
        return ResidentSets(member[runs] @ self.object_bytes[mine], allows[runs])


def _candidates(
    common: list[int], own: list[list[int]], apps: int
) -> list[tuple[tuple[int, ...], tuple[int | None, ...]]]:
    """(shared objects, one own object or None per app) with at most `apps` objects in all."""
    found = []
    for size in range(min(len(common), apps) + 1):
        for a in itertools.combinations(common, size):
            for b in itertools.product(*([None, *o] for o in own)):
                if size + sum(o is not None for o in b) <= apps:
                    found.append((a, b))
    return found


def _check_count(apps: tuple[str, ...], common: int, own: list[int]) -> None:
    """Refuse a group with more resident sets than `MAX_RESIDENT_SETS` (counted, not built)."""
    by_size = np.array([1], dtype=object)  # by_size[t]: ways to pick t own objects
    for p in own:
        by_size = np.convolve(by_size, np.array([1, p], dtype=object))
    count = sum(
        comb(common, a) * int(by_size[b])
        for a in range(common + 1)
        for b in range(len(by_size))
        if a + b <= len(apps)
    )
    if count > MAX_RESIDENT_SETS:
        raise NestError(
            f"apps {', '.join(apps)} share ids in {count:,} possible resident sets, "
            f"more than the {MAX_RESIDENT_SETS:,} the exact solver enumerates (ids should name "
            f"one descendant of one model)"
        )


@dataclass(frozen=True)
class Residency:
    """Objects per descendant, their bytes, and the groups of apps sharing them."""

    objects: np.ndarray
    """[app, descendant]: object index (-1: padding beyond the app's descendants)."""
    object_bytes: np.ndarray
    groups: tuple[Group, ...]
    """In order of their first app."""

    @classmethod
    def of(cls, apps: Sequence[App]) -> Residency:
        """Number the objects in order of first appearance; group the apps sharing them."""
        width = max((len(a.descendants) for a in apps), default=0)
        objects = np.full((len(apps), width), -1, dtype=np.int64)
        number: dict[str, int] = {}
        sizes: list[int] = []
        for i, app in enumerate(apps):
            for d, desc in enumerate(app.descendants):
                if desc.id is None or desc.id not in number:
                    sizes.append(desc.memory_bytes)
                    if desc.id is not None:
                        number[desc.id] = len(sizes) - 1
                objects[i, d] = len(sizes) - 1 if desc.id is None else number[desc.id]
        object_bytes = np.array(sizes, dtype=np.int64)
        groups = tuple(
            Group(
                members,
                tuple(apps[i].name for i in members),
                objects[list(members)],
                object_bytes,
            )
            for members in _components(objects)
        )
        return cls(objects, object_bytes, groups)

    def memory(self, chosen: Sequence[int]) -> int:
        """Bytes of a plan in which app i runs descendant chosen[i]."""
        if len(chosen) == 0:
            return 0
        used = np.unique(self.objects[np.arange(len(chosen)), np.asarray(chosen)])
        return int(self.object_bytes[used].sum())

    def least_memory(self, usable: np.ndarray | None = None) -> int:
        """Fewest bytes of any plan running only usable descendants ([app, descendant];
        default: all of them)."""
        usable = self.objects >= 0 if usable is None else usable
        return sum(self._least(group, usable) for group in self.groups)

    def _least(self, group: Group, usable: np.ndarray) -> int:
        """Fewest bytes of a group's plans (usable [app, descendant] of the whole problem)."""
        mine = usable[list(group.apps)]
        if not group.shared:
            objects = group.objects[0][mine[0]]
            return int(self.object_bytes[objects].min())
        sets = group.sets
        return int(sets.memory[sets.valid(mine)].min())

    def least_memory_plan(
        self, usable: np.ndarray, memory: np.ndarray, latency: np.ndarray
    ) -> tuple[int, ...]:
        """A plan of least memory: per app its smallest usable descendant (fewest bytes, then
        lowest latency, then lowest index) among those the group's resident set of least
        memory (the first such set) allows."""
        chosen = [0] * len(self.objects)
        for group in self.groups:
            mine = usable[list(group.apps)]
            if group.shared:
                sets = group.sets
                bytes_ = np.where(sets.valid(mine), sets.memory, np.iinfo(np.int64).max)
                mine = mine & sets.allows[int(np.argmin(bytes_))]
            for j, i in enumerate(group.apps):
                candidates = np.flatnonzero(mine[j])
                chosen[i] = int(
                    min(candidates, key=lambda d, i=i: (memory[i, d], latency[i, d], d))
                )
        return tuple(chosen)


def _components(objects: np.ndarray) -> list[tuple[int, ...]]:
    """Apps connected through shared objects (union-find), ordered by their first app."""
    parent = list(range(len(objects)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_user: dict[int, int] = {}
    for i, row in enumerate(objects):
        for o in row[row >= 0]:
            j = first_user.setdefault(int(o), i)
            parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(len(objects)):
        members.setdefault(root(i), []).append(i)
    return sorted((tuple(m) for m in members.values()), key=lambda m: m[0])
