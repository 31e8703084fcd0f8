"""Inference executor: per-app bounded queues served by one worker with weighted-fair sharing.

The processor is time-shared by a single worker thread (intra-op threads set explicitly), which
is what the scheduler's compute shares model. Apps are picked by *start-time fair queueing*
(stride scheduling charged by measured service time): each app has a virtual ``pass``; the
runnable app with the smallest pass runs next and, after the job, its pass advances by
``service_seconds / share``. Apps that stay backlogged therefore get busy time in proportion to
their shares; an app that goes idle gets no credit for it (its pass is raised to the current
virtual time when it becomes backlogged again), and idle share goes to whoever has work
(work-conserving).

A full queue drops its *oldest* frame (for a video stream the newest frame matters) and fails
that frame's future with `FrameDropped`, or, in overflow mode ``"refuse"``, refuses the new
frame with `QueueFull`. Every submitted frame gets exactly one outcome.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from scheduler.batching import BatchCost
from scheduler.daemon.errors import FrameDropped, QueueFull, UnknownApp
from scheduler.problem import MIN_SHARE

log = logging.getLogger(__name__)

Overflow = Literal["drop-oldest", "refuse"]
JobObserver = Callable[[str, float], None]
"""Called with (app id, its part of a batch's service seconds) after every job."""


@dataclass(frozen=True)
class RunResult:
    """A batch's outcome: per frame the class probabilities, the descendant that computed
    them and the seconds the backend itself took for the whole batch."""

    probabilities: list[list[float]]
    descendant: int
    compute_s: float


Runner = Callable[[list[str], list[np.ndarray]], RunResult]
"""Runs frames of apps on one resident descendant (one frame per app id, ids may repeat)."""
Grouper = Callable[[str], Hashable | None]
"""The resident an app runs on now: frames of apps with equal keys may share a batch."""

LATENCY_WINDOW = 1024  # completions kept for the latency percentiles
FPS_WINDOW_S = 5.0  # completions counted for the measured frame rate


@dataclass(frozen=True)
class Prediction:
    """One frame's result: label, class probabilities, the descendant used and its timings."""

    label: int
    probabilities: list[float]
    descendant: int
    queue_s: float
    compute_s: float
    batch: int = 1


@dataclass
class _Job:
    frame: np.ndarray
    future: Future[Prediction]
    submitted: float


@dataclass(frozen=True)
class AppCounters:
    """Measured figures of one app since it was added to the executor."""

    frames: int
    drops: int
    failures: int
    busy_s: float
    fps_measured: float
    latency_p50_s: float | None
    latency_p99_s: float | None


@dataclass
class _AppQueue:
    """Scheduling state and measurements of one app."""

    app_id: str
    share: float
    capacity: int
    added: float
    jobs: deque[_Job] = field(default_factory=deque)
    pass_value: float = 0.0
    in_flight: int = 0
    held: int = 0
    frames: int = 0
    drops: int = 0
    failures: int = 0
    busy_s: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    completions: deque[float] = field(default_factory=deque)

    @property
    def runnable(self) -> bool:
        return bool(self.jobs) and self.held == 0

    @property
    def active(self) -> bool:
        return bool(self.jobs) or self.in_flight > 0


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of ``values`` by nearest rank, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def _prediction(probabilities: list[float], result: RunResult, queue_s: float,
                batch: int) -> Prediction:
    """A frame's prediction (compute_s is set once the batch's service time is known)."""
    label = max(range(len(probabilities)), key=probabilities.__getitem__)
    return Prediction(label, probabilities, result.descendant, queue_s=queue_s, compute_s=0.0,
                      batch=batch)


def _fail(future: Future[Prediction], error: Exception) -> None:
    """Fail a future unless the caller already cancelled it."""
    if not future.done():
        future.set_exception(error)


class Executor:
    """Per-app bounded queues and one worker thread sharing the processor by weighted fairness."""

    def __init__(
        self,
        runner: Runner,
        *,
        queue_size: int = 4,
        overflow: Overflow = "drop-oldest",
        on_start: Callable[[], None] | None = None,
        observer: JobObserver | None = None,
        group: Grouper | None = None,
        batching: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``group`` gives each app's resident; without it (or with ``batching`` off) every
        frame runs alone. ``clock`` times the service of a batch (tests give a model's)."""
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._runner = runner
        self._clock = clock
        self._group = group
        self._batches = BatchCost(enabled=batching and group is not None)
        self.on_batch: Callable[[Hashable | None, int, RunResult], None] | None = None
        """Called by the worker after every batch (key, frames, result): the runtime's
        measured speed."""
        self._queue_size = queue_size
        self._overflow = overflow
        self._on_start = on_start
        self._observer = observer
        self._apps: dict[str, _AppQueue] = {}
        self._cond = threading.Condition()
        self._virtual_time = 0.0
        self._stopping = False
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._worker is not None:
                return
            self._stopping = False
            self._worker = threading.Thread(target=self._work, name="nestdnn-executor",
                                            daemon=True)
            self._worker.start()

    def stop(self) -> None:
        """Let the job in flight finish, drop every queued frame, and end the worker."""
        with self._cond:
            self._stopping = True
            dropped = [job for app in self._apps.values() for job in self._drain(app)]
            self._cond.notify_all()
            worker, self._worker = self._worker, None
        for job in dropped:
            _fail(job.future, FrameDropped("the runtime is stopping"))
        if worker is not None:
            worker.join()

    # ------------------------------------------------------------------ apps

    def add_app(self, app_id: str, share: float) -> None:
        """Start serving an app with the given compute share."""
        with self._cond:
            self._apps[app_id] = _AppQueue(app_id, max(share, MIN_SHARE), self._queue_size,
                                           added=time.monotonic(), pass_value=self._virtual_time)

    def remove_app(self, app_id: str) -> None:
        """Stop serving an app: queued frames are dropped, the job in flight finishes first."""
        with self._cond:
            app = self._apps.pop(app_id, None)
            if app is None:
                raise UnknownApp(f"no app with id '{app_id}'")
            dropped = self._drain(app)
            while app.in_flight:
                self._cond.wait()
        for job in dropped:
            _fail(job.future, FrameDropped(f"app '{app_id}' was unregistered"))

    def set_shares(self, shares: Mapping[str, float]) -> None:
        """Change the compute shares of the given apps (takes effect at the next dispatch)."""
        with self._cond:
            for app_id, share in shares.items():
                self._app(app_id).share = max(share, MIN_SHARE)

    def shares(self) -> dict[str, float]:
        """The share each app is scheduled with."""
        with self._cond:
            return {app_id: app.share for app_id, app in self._apps.items()}

    @contextmanager
    def hold(self, app_id: str) -> Iterator[None]:
        """Keep new jobs of ``app_id`` from starting; entered once its job in flight finished."""
        with self._cond:
            app = self._app(app_id)
            app.held += 1
            while app.in_flight:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                app.held -= 1
                self._cond.notify_all()

    def backlog(self) -> dict[str, int]:
        """Queued frames per app."""
        with self._cond:
            return {app_id: len(app.jobs) for app_id, app in self._apps.items()}

    def counters(self, app_id: str) -> AppCounters:
        """Frames, drops, busy time, frame rate and latency percentiles measured for an app."""
        with self._cond:
            app = self._app(app_id)
            now = time.monotonic()
            self._forget_old_completions(app, now)
            window = min(FPS_WINDOW_S, now - app.added)
            latencies = list(app.latencies)
            return AppCounters(
                frames=app.frames, drops=app.drops, failures=app.failures, busy_s=app.busy_s,
                fps_measured=len(app.completions) / window if window > 0 else 0.0,
                latency_p50_s=percentile(latencies, 0.50),
                latency_p99_s=percentile(latencies, 0.99),
            )

    # ------------------------------------------------------------------ frames

    def submit(self, app_id: str, frame: np.ndarray) -> Future[Prediction]:
        """Queue a frame; the future gives its `Prediction` or raises `FrameDropped`."""
        job = _Job(frame, Future(), time.monotonic())
        with self._cond:
            app = self._app(app_id)
            if self._stopping:
                _fail(job.future, FrameDropped("the runtime is stopping"))
                return job.future
            pushed_out = None
            if len(app.jobs) >= app.capacity:
                if self._overflow == "refuse":
                    raise QueueFull(f"app '{app_id}' has {app.capacity} frames queued")
                pushed_out = app.jobs.popleft()
                app.drops += 1
            if not app.active:
                app.pass_value = max(app.pass_value, self._virtual_time)
            app.jobs.append(job)
            self._cond.notify_all()
        if pushed_out is not None:
            _fail(pushed_out.future, FrameDropped(
                f"app '{app_id}': a newer frame replaced this one in the full queue"))
        return job.future

    # ------------------------------------------------------------------ internals

    def _app(self, app_id: str) -> _AppQueue:
        app = self._apps.get(app_id)
        if app is None:
            raise UnknownApp(f"no app with id '{app_id}'")
        return app

    def _drain(self, app: _AppQueue) -> list[_Job]:
        """Take every queued job of an app out of its queue, counting them as drops."""
        jobs = list(app.jobs)
        app.jobs.clear()
        app.drops += len(jobs)
        return jobs

    @staticmethod
    def _forget_old_completions(app: _AppQueue, now: float) -> None:
        while app.completions and app.completions[0] < now - FPS_WINDOW_S:
            app.completions.popleft()

    def _next_batch(self) -> list[tuple[_AppQueue, _Job]] | None:
        """Wait for work and take the next batch; None once stopping.

        The runnable app with the smallest pass goes first; frames of the same resident
        (this app's next ones, and other apps' on the same resident) join its batch, each
        time from the app with the smallest pass, as many as `BatchCost` advises.
        """
        with self._cond:
            while True:
                if self._stopping:
                    return None
                runnable = [app for app in self._apps.values() if app.runnable]
                if runnable:
                    break
                self._cond.wait()
            first = min(runnable, key=lambda a: a.pass_value)
            self._virtual_time = first.pass_value
            key = self._group(first.app_id) if self._group is not None else None
            mates = [a for a in runnable if key is not None and self._group(a.app_id) == key]
            size = self._batches.size(key, sum(len(a.jobs) for a in mates) or 1)
            frame_s = self._batches.frame_seconds(key)
            taken = {a.app_id: 0 for a in mates} | {first.app_id: 0}
            batch: list[tuple[_AppQueue, _Job]] = []
            app = first
            while True:
                batch.append((app, app.jobs.popleft()))
                app.in_flight += 1
                taken[app.app_id] += 1
                left = [a for a in mates or [first] if a.jobs]
                if len(batch) >= size or not left:
                    return batch
                app = min(left, key=lambda a: a.pass_value + taken[a.app_id] * frame_s / a.share)

    def _work(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while (batch := self._next_batch()) is not None:
            running = []
            for app, job in batch:
                if job.future.set_running_or_notify_cancel():
                    running.append((app, job))
                else:  # cancelled by its caller
                    self._finish(app, service_s=0.0, latency_s=None, failed=False)
            if running:
                self._run(running)

    def _run(self, batch: list[tuple[_AppQueue, _Job]]) -> None:
        """Run one batch, charge each app its frames' part of the service time, resolve."""
        started = time.monotonic()
        t0 = self._clock()
        key = self._group(batch[0][0].app_id) if self._group is not None else None
        try:
            result = self._runner([app.app_id for app, _ in batch],
                                  [job.frame for _, job in batch])
            predictions = [_prediction(p, result, started - job.submitted, len(batch))
                           for (_, job), p in zip(batch, result.probabilities, strict=True)]
        except Exception as error:  # the callers get the error; the worker keeps serving
            log.exception("inference failed for apps %s",
                          ", ".join(sorted({app.app_id for app, _ in batch})))
            each = (self._clock() - t0) / len(batch)
            for app, job in batch:
                self._finish(app, each, latency_s=None, failed=True)
                _fail(job.future, error)
            return
        service = self._clock() - t0
        self._batches.observe(key, len(batch), service)
        if self.on_batch is not None:
            self.on_batch(key, len(batch), result)
        done = time.monotonic()
        each = service / len(batch)
        for (app, job), prediction in zip(batch, predictions, strict=True):
            self._finish(app, each, latency_s=done - job.submitted, failed=False)
            job.future.set_result(replace(prediction, compute_s=service))

    def _finish(self, app: _AppQueue, service_s: float, latency_s: float | None,
                failed: bool) -> None:
        """Account a finished job: pass, busy time, counters; wake threads waiting on it."""
        with self._cond:
            app.in_flight -= 1
            app.pass_value += service_s / app.share
            app.busy_s += service_s
            if failed:
                app.failures += 1
            elif latency_s is not None:
                app.frames += 1
                app.latencies.append(latency_s)
                now = time.monotonic()
                app.completions.append(now)
                self._forget_old_completions(app, now)
            self._cond.notify_all()
        if self._observer is not None and service_s > 0:
            self._observer(app.app_id, service_s)
