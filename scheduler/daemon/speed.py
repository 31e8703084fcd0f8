"""The machine's speed now, against the profile's: what the plan assumes and what it measures.

A profile's latencies were measured on some day under some load; the reference stack timed
in the same rounds (`profiles.reference`) says how fast the machine was then. At start the
runtime times the same stack on its backend: the ratio is every model's initial *scale*, so
the plan starts from today's speed. Then every frame run alone is a measurement: per resident
descendant, the median of the backend's compute time over the last `MIN_FRAMES` frames. When
it strays more than the threshold (default 20 %, and more than `NOISE_FLOOR_S`) from the
latency the plan assumed (profile x scale), the model's scale becomes measured / profile (the
median of the newer half of the window, which a step in speed has already filled) and the
runtime re-plans (with the switch tolerance, so that noise causes no switches). Noise of a
few percent never crosses the threshold (the median filters it); a step in speed is
followed within `MIN_FRAMES` / 2 + 1 frames.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Callable, Mapping

MIN_FRAMES = 8
DEFAULT_THRESHOLD = 0.2
NOISE_FLOOR_S = 50e-6
"""Differences below this are never drift: a few tens of microseconds of call overhead around
a tiny model are no change in the machine's speed and no reason to re-plan."""

Key = tuple[str, int]


class SpeedTracker:
    """Per model the latency scale in force; per resident the measured frame time."""

    def __init__(self, profiled: Callable[[Key], float | None],
                 threshold: float = DEFAULT_THRESHOLD,
                 on_drift: Callable[[], None] | None = None) -> None:
        """``profiled(key)`` is the profile's latency of a descendant (None: no such
        descendant is served now); ``on_drift`` is called (from the worker thread) when a
        model's measured speed strays past the threshold."""
        self._profiled = profiled
        self._threshold = threshold
        self._on_drift = on_drift
        self._scales: dict[str, float] = {}
        self._measured: dict[Key, deque[float]] = {}
        self._lock = threading.Lock()

    def start_scales(self, scales: Mapping[str, float]) -> None:
        """The scales the reference stack gave at start, per model."""
        with self._lock:
            self._scales.update(scales)

    def scale(self, model: str) -> float:
        with self._lock:
            return self._scales.get(model, 1.0)

    def scales(self) -> dict[str, float]:
        with self._lock:
            return dict(self._scales)

    def assumed(self, key: Key) -> float | None:
        """The latency the plan assumes for a descendant: profile x its model's scale."""
        profiled = self._profiled(key)
        return None if profiled is None else profiled * self.scale(key[0])

    def forget(self, models: set[str]) -> None:
        """Drop the scales and measurements of models whose files changed (a reload)."""
        with self._lock:
            for model in models:
                self._scales.pop(model, None)
            for key in [k for k in self._measured if k[0] in models]:
                del self._measured[key]

    def measured(self, key: Key) -> float | None:
        """The median compute time of a frame over the last frames run alone, if any."""
        with self._lock:
            window = self._measured.get(key)
            return statistics.median(window) if window else None

    def observe(self, key: Key | None, frames: int, compute_s: float) -> None:
        """A batch ran on ``key``: frames run alone update its average; past the threshold,
        the model's scale follows the measurement and ``on_drift`` is called."""
        profiled = None if key is None or frames != 1 else self._profiled(key)
        if key is None or profiled is None:
            return
        with self._lock:
            window = self._measured.setdefault(key, deque(maxlen=MIN_FRAMES))
            window.append(compute_s)
            measured = statistics.median(window)
            assumed = profiled * self._scales.get(key[0], 1.0)
            gap = abs(measured - assumed)
            drifted = (len(window) == MIN_FRAMES and gap > self._threshold * assumed
                       and gap > NOISE_FLOOR_S)
            if drifted:  # the newer half of the window: past the step, if it was one
                recent = statistics.median(list(window)[MIN_FRAMES // 2:])
                self._scales[key[0]] = recent / profiled
                for other in [k for k in self._measured if k[0] == key[0]]:
                    self._measured[other] = deque(maxlen=MIN_FRAMES)
        if drifted and self._on_drift is not None:
            self._on_drift()
