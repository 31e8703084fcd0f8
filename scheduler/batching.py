"""How many queued frames of one resident descendant to run as one batch.

Used by the daemon's executor (`scheduler.daemon.executor`) and by the simulator's replay of
it (`scheduler.replay`), so that both take the same decisions from the same service times.

Per resident the executor learns the service time of a batch of n frames, t(n) = a + b * n:
``a`` the fixed cost of a call (the runtime's own work, per-layer overheads), ``b`` the cost
per frame. A batch lowers the cost per frame only when ``a`` matters; and it makes the frame
that could have run alone wait for the others, t(n) - t(1). So the batch size is the largest
n with that extra wait at most one frame time (t(n) - t(1) <= t(1), i.e. n <= 2 + a / b),
capped by the frames waiting and by `MAX_BATCH`, and 1 while batching does not pay (a below
`MIN_FIXED_SHARE` of t(1)).

t(1) and t(2) are tracked as exponential moving averages of measured batches; a batch of 2 is
tried whenever t(2) is unknown or stale (every `PROBE_EVERY` batches) and two frames wait, so
the estimates follow the machine; likewise a batch of 1 every `PROBE_EVERY` batches, so that
the runtime keeps measuring each resident's frame time alone (its drift check) under load.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

MAX_BATCH = 8
MIN_FIXED_SHARE = 0.1
PROBE_EVERY = 64
EMA_WEIGHT = 0.1
"""Weight of a new measurement in the moving averages (about the last 20 batches count)."""


@dataclass
class _Estimate:
    """Moving averages of one resident's batch times, and batches since t(2) was measured."""

    t1: float | None = None
    t2: float | None = None
    since_one: int = 0
    since_two: int = 0


def ema(old: float | None, new: float) -> float:
    return new if old is None else old + EMA_WEIGHT * (new - old)


class BatchCost:
    """Learned batch times per resident key, and the batch size they advise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._estimates: dict[Hashable, _Estimate] = {}

    def size(self, key: Hashable | None, waiting: int) -> int:
        """How many of the ``waiting`` frames of resident ``key`` to run now (>= 1)."""
        if not self.enabled or key is None or waiting < 2:
            return 1
        est = self._estimates.get(key)
        if est is None or est.t1 is None or est.since_one >= PROBE_EVERY:
            return 1
        if est.t2 is None or est.since_two >= PROBE_EVERY:
            return 2
        fixed, per_frame = 2 * est.t1 - est.t2, est.t2 - est.t1
        if fixed < MIN_FIXED_SHARE * est.t1:
            return 1
        limit = MAX_BATCH if per_frame <= 0 else math.floor(2 + fixed / per_frame)
        return max(1, min(waiting, limit, MAX_BATCH))

    def frame_seconds(self, key: Hashable | None) -> float:
        """The service time of one frame alone on ``key`` (0 before the first)."""
        est = self._estimates.get(key) if key is not None else None
        return 0.0 if est is None or est.t1 is None else est.t1

    def observe(self, key: Hashable | None, frames: int, seconds: float) -> None:
        """Record the service time of a batch of ``frames`` frames of resident ``key``."""
        if key is None:
            return
        est = self._estimates.setdefault(key, _Estimate())
        est.since_one += 1
        est.since_two += 1
        if frames == 1:
            est.t1 = ema(est.t1, seconds)
            est.since_one = 0
        elif frames == 2:
            est.t2 = ema(est.t2, seconds)
            est.since_two = 0

    def forget(self, key: Hashable) -> None:
        self._estimates.pop(key, None)
