"""Batch-1 latency: warm-up, then timed runs interleaved across descendants in rounds.

Every runner (one per descendant) is warmed up, then the timed runs are split into
``rounds``; each round times ``runs / rounds`` consecutive runs of every descendant in turn,
with ``time.perf_counter_ns`` and the garbage collector paused. A descendant's median (p90)
is the median over rounds of its per-round median (p90). Interleaving spreads each
descendant's samples over the whole measurement, so a burst of load from another process
hits every descendant alike and, if shorter than half the rounds, moves no median; and since
every round's p90 is >= its median, the reported p90 is >= the reported median.
Measured on a shared 2-core machine: see ``benchmarks/profile_stability.py``.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from nestdnn.errors import NestError
from profiles.schema import LatencyStats

Runner = Callable[[], object]
"""One batch-1 inference on a prepared input."""

INPUT_SEED = 0


def fixed_input(shape: Sequence[int]) -> np.ndarray:
    """The batch-1 float32 input every backend is timed on: seeded normal noise of ``shape``."""
    rng = np.random.default_rng(INPUT_SEED)
    return rng.standard_normal((1, *shape)).astype(np.float32)


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: timed runs (split into rounds), warm-up runs and threads."""

    runs: int = 50
    rounds: int = 5
    warmup: int = 10
    threads: int = 1

    def validate(self) -> None:
        checks = [
            (self.runs >= 1, f"runs must be at least 1, got {self.runs}"),
            (1 <= self.rounds <= self.runs, f"rounds must be in 1..runs, got {self.rounds}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise NestError(message)

    @property
    def runs_per_round(self) -> int:
        return math.ceil(self.runs / self.rounds)

    @property
    def timed_runs(self) -> int:
        """Runs actually timed: ``runs`` rounded up to a multiple of ``rounds``."""
        return self.runs_per_round * self.rounds


def time_runs(run: Runner, count: int) -> list[int]:
    """Wall time in ns of ``count`` consecutive calls of ``run``."""
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        run()
        samples.append(time.perf_counter_ns() - start)
    return samples


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector from pausing inside a timed run."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure_interleaved(
    runners: Sequence[Runner],
    settings: LatencySettings,
    after_round: Callable[[], None] | None = None,
) -> list[LatencyStats]:
    """Latency of every runner, measured in interleaved rounds (see the module docstring)."""
    settings.validate()
    for run in runners:
        for _ in range(settings.warmup):
            run()
    rounds: list[list[list[int]]] = [[] for _ in runners]
    with gc_paused():
        for _ in range(settings.rounds):
            for samples, run in zip(rounds, runners, strict=True):
                samples.append(time_runs(run, settings.runs_per_round))
            if after_round is not None:
                after_round()
    return [summarise(samples, settings) for samples in rounds]


def summarise(rounds: Sequence[Sequence[int]], settings: LatencySettings) -> LatencyStats:
    """Median over rounds of each round's median and p90, in seconds."""
    medians = [float(np.median(r)) for r in rounds]
    p90s = [float(np.percentile(r, 90)) for r in rounds]
    return LatencyStats(
        median_s=statistics.median(medians) / 1e9,
        p90_s=statistics.median(p90s) / 1e9,
        runs=sum(len(r) for r in rounds),
        rounds=len(rounds),
        threads=settings.threads,
        warmup=settings.warmup,
    )
