"""Latency measurement: warm-up, interleaved rounds, median/p90 of per-round figures."""

from __future__ import annotations

import pytest

from nestdnn.errors import NestError
from profiles.latency import LatencySettings, fixed_input, measure_interleaved, summarise


def test_runners_are_warmed_up_then_interleaved_round_by_round() -> None:
    calls: list[str] = []
    runners = [lambda: calls.append("a"), lambda: calls.append("b")]
    settings = LatencySettings(runs=6, rounds=3, warmup=2, threads=1)
    stats = measure_interleaved(runners, settings)
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 3
    assert [(s.runs, s.rounds, s.warmup, s.threads) for s in stats] == [(6, 3, 2, 1)] * 2


def test_runs_are_rounded_up_to_whole_rounds() -> None:
    settings = LatencySettings(runs=50, rounds=3)
    assert (settings.runs_per_round, settings.timed_runs) == (17, 51)


def test_median_and_p90_are_medians_over_rounds_of_round_figures() -> None:
    # Round medians 2, 3, 100 ms -> median 3 ms; a burst in one round does not move it.
    rounds = [
        [1_000_000, 2_000_000, 3_000_000],
        [3_000_000, 3_000_000, 3_000_000],
        [100_000_000, 100_000_000, 100_000_000],
    ]
    stats = summarise(rounds, LatencySettings(runs=9, rounds=3, warmup=0))
    assert stats.median_s == pytest.approx(0.003)
    # Round p90s (linear interpolation): 2.8, 3 and 100 ms -> median 3 ms.
    assert stats.p90_s == pytest.approx(0.003)
    assert stats.runs == 9 and stats.rounds == 3


def test_measured_latencies_are_positive_with_p90_not_below_median() -> None:
    total = []
    runners = [lambda n=n: total.append(sum(range(n))) for n in (100, 10_000)]
    stats = measure_interleaved(runners, LatencySettings(runs=20, rounds=2, warmup=1))
    for s in stats:
        assert s.median_s > 0 and s.p90_s >= s.median_s
    assert stats[1].median_s > stats[0].median_s


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LatencySettings(runs=0), "runs must be at least 1"),
        (LatencySettings(runs=5, rounds=6), "rounds must be in 1..runs"),
        (LatencySettings(warmup=-1), "warmup must be >= 0"),
        (LatencySettings(threads=0), "threads must be at least 1"),
    ],
)
def test_invalid_settings_are_nest_errors(settings: LatencySettings, message: str) -> None:
    with pytest.raises(NestError, match=message):
        measure_interleaved([lambda: None], settings)


def test_fixed_input_is_reproducible_float32_batch_of_one() -> None:
    x = fixed_input((1, 4, 4))
    assert x.shape == (1, 1, 4, 4) and x.dtype == "float32"
    assert (x == fixed_input((1, 4, 4))).all()
