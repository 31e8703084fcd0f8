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

    def __init__(self, profiled: Callable[[Key], float], threshold: float = DEFAULT_THRESHOLD,
                 on_drift: Callable[[], None] | None = None) -> None:
        """``profiled(key)`` is the profile's latency of a descendant; ``on_drift`` is called
        (from the worker thread) when a model's measured speed strays past the threshold."""
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

    def assumed(self, key: Key) -> float:
        """The latency the plan assumes for a descendant: profile x its model's scale."""
        return self._profiled(key) * self.scale(key[0])

    def measured(self, key: Key) -> float | None:
        """The median compute time of a frame over the last frames run alone, if any."""
        with self._lock:
            window = self._measured.get(key)
            return statistics.median(window) if window else None

    def observe(self, key: Key | None, frames: int, compute_s: float) -> None:
        """A batch ran on ``key``: frames run alone update its average; past the threshold,
        the model's scale follows the measurement and ``on_drift`` is called."""
        if key is None or frames != 1:
            return
        with self._lock:
            window = self._measured.setdefault(key, deque(maxlen=MIN_FRAMES))
            window.append(compute_s)
            measured = statistics.median(window)
            assumed = self._profiled(key) * self._scales.get(key[0], 1.0)
            gap = abs(measured - assumed)
            drifted = (len(window) == MIN_FRAMES and gap > self._threshold * assumed
                       and gap > NOISE_FLOOR_S)
            if drifted:  # the newer half of the window: past the step, if it was one
                recent = statistics.median(list(window)[MIN_FRAMES // 2:])
                self._scales[key[0]] = recent / self._profiled(key)
                for other in [k for k in self._measured if k[0] == key[0]]:
                    self._measured[other] = deque(maxlen=MIN_FRAMES)
        if drifted and self._on_drift is not None:
            self._on_drift()
