"""Executor: weighted-fair busy-time shares, drop-oldest queues, holds, one outcome per frame."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from nestdnn.models import build_model
from scheduler.batching import MAX_BATCH
from scheduler.daemon.errors import FrameDropped, QueueFull, UnknownApp
from scheduler.daemon.executor import Executor, Prediction, Runner, RunResult, percentile

FRAME = np.zeros((1, 16, 16), dtype=np.float32)


def one_by_one(run: Callable[[str, np.ndarray], tuple[list[float], int]]) -> Runner:
    """A batch runner from a per-frame function (batches of one when nothing groups apps)."""

    def runner(app_ids: list[str], frames: list[np.ndarray]) -> RunResult:
        outputs = [run(app_id, frame) for app_id, frame in zip(app_ids, frames, strict=True)]
        return RunResult([p for p, _ in outputs], outputs[0][1], compute_s=0.0)

    return runner


class GatedRunner:
    """A runner whose jobs wait for the test to open a gate (no sleeps, no timing)."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()
        self.ran: list[str] = []

    def __call__(self, app_id: str, frame: np.ndarray) -> tuple[list[float], int]:
        self.ran.append(app_id)
        self.started.release()
        self.gate.wait()
        return [0.25, 0.75], 0


def outcome(future: Future[Prediction]) -> str:
    try:
        future.result(timeout=60)
    except FrameDropped:
        return "dropped"
    return "result"


def test_busy_time_shares_match_assigned_shares_when_saturated() -> None:
    """Three backlogged apps with shares 0.5/0.3/0.2 get busy time in those proportions.

    The apps run models of different sizes, so equal frame counts would not give the shares:
    the scheduler must charge measured service time. Shares are measured over the span in
    which every app still had queued frames.
    """
    torch.manual_seed(0)
    models = {
        "a": build_model("vgg11", in_channels=1, num_classes=4, input_size=16,
                         width_mult=0.125).eval(),
        "b": build_model("vgg11", in_channels=1, num_classes=4, input_size=16,
                         width_mult=0.5).eval(),
        "c": build_model("vgg11", in_channels=1, num_classes=4, input_size=16,
                         width_mult=0.0625).eval(),
    }

    def runner(app_id: str, frame: np.ndarray) -> tuple[list[float], int]:
        with torch.inference_mode():
            logits = models[app_id](torch.from_numpy(frame).unsqueeze(0))
        return torch.softmax(logits[0], 0).tolist(), 0

    saturated_busy: dict[str, float] = {}
    one_queue_empty = threading.Event()

    def observe(_app_id: str, _service_s: float) -> None:
        if not saturated_busy and min(executor.backlog().values()) == 0:
            saturated_busy.update({a: executor.counters(a).busy_s for a in models})
            one_queue_empty.set()

    executor = Executor(one_by_one(runner), queue_size=150,
                        on_start=lambda: torch.set_num_threads(1), observer=observe)
    assigned = {"a": 0.5, "b": 0.3, "c": 0.2}
    for app_id, share in assigned.items():
        executor.add_app(app_id, share)
    for app_id in models:
        for _ in range(150):
            executor.submit(app_id, FRAME)
    executor.start()
    try:
        assert one_queue_empty.wait(timeout=300)
    finally:
        executor.stop()
    total = sum(saturated_busy.values())
    measured = {a: busy / total for a, busy in saturated_busy.items()}
    for app_id, share in assigned.items():
        assert measured[app_id] == pytest.approx(share, abs=0.05), measured


def test_idle_share_goes_to_the_busy_app() -> None:
    """Work-conserving: an app alone runs every job although its share is small."""
    executor = Executor(one_by_one(lambda a, f: ([1.0], 0)), queue_size=50)
    executor.add_app("small", 0.1)
    executor.add_app("idle", 0.9)
    futures = [executor.submit("small", FRAME) for _ in range(50)]
    executor.start()
    try:
        assert [outcome(f) for f in futures] == ["result"] * 50
    finally:
        executor.stop()
    assert executor.counters("small").frames == 50


def test_full_queue_drops_the_oldest_frame_and_tells_its_caller() -> None:
    executor = Executor(one_by_one(lambda a, f: ([0.1, 0.9], 3)), queue_size=2)
    executor.add_app("cam", 1.0)
    first, second, third = (executor.submit("cam", FRAME) for _ in range(3))
    assert first.done()
    with pytest.raises(FrameDropped, match="newer frame"):
        first.result()
    executor.start()
    try:
        prediction = second.result(timeout=60)
        assert third.result(timeout=60).label == 1
    finally:
        executor.stop()
    assert (prediction.label, prediction.descendant) == (1, 3)
    assert prediction.probabilities == [0.1, 0.9]
    counters = executor.counters("cam")
    assert (counters.frames, counters.drops) == (2, 1)


def test_refuse_mode_raises_queue_full_and_keeps_queued_frames() -> None:
    executor = Executor(one_by_one(lambda a, f: ([1.0], 0)), queue_size=1, overflow="refuse")
    executor.add_app("cam", 1.0)
    kept = executor.submit("cam", FRAME)
    with pytest.raises(QueueFull):
        executor.submit("cam", FRAME)
    assert not kept.done()
    executor.start()
    try:
        assert outcome(kept) == "result"
    finally:
        executor.stop()


def test_hold_waits_for_the_job_in_flight_and_blocks_new_ones() -> None:
    runner = GatedRunner()
    executor = Executor(one_by_one(runner), queue_size=4)
    executor.add_app("cam", 1.0)
    executor.start()
    try:
        in_flight = executor.submit("cam", FRAME)
        runner.started.acquire()
        queued = executor.submit("cam", FRAME)
        seen_in_hold: list[tuple[list[str], bool]] = []

        def hold_app() -> None:
            with executor.hold("cam"):
                seen_in_hold.append((list(runner.ran), queued.done()))

        holder = threading.Thread(target=hold_app)
        holder.start()
        while not executor._apps["cam"].held:  # wait until the holder waits (white-box)
            time.sleep(0.001)
        runner.gate.set()
        holder.join(timeout=60)
        assert seen_in_hold == [(["cam"], False)]  # entered after the job, before the next
        assert outcome(in_flight) == outcome(queued) == "result"
        assert runner.ran == ["cam", "cam"]
    finally:
        runner.gate.set()
        executor.stop()


def test_remove_app_drops_queued_frames_and_refuses_new_ones() -> None:
    runner = GatedRunner()
    executor = Executor(one_by_one(runner), queue_size=8)
    executor.add_app("cam", 1.0)
    executor.start()
    try:
        in_flight = executor.submit("cam", FRAME)
        runner.started.acquire()
        queued = [executor.submit("cam", FRAME) for _ in range(3)]
        remover = threading.Thread(target=executor.remove_app, args=("cam",))
        remover.start()
        runner.gate.set()
        remover.join(timeout=60)
        assert outcome(in_flight) == "result"
        assert [outcome(f) for f in queued] == ["dropped"] * 3
        with pytest.raises(UnknownApp):
            executor.submit("cam", FRAME)
    finally:
        runner.gate.set()
        executor.stop()


def test_stop_drops_queued_frames_and_later_ones() -> None:
    executor = Executor(one_by_one(lambda a, f: ([1.0], 0)), queue_size=8)
    executor.add_app("cam", 1.0)
    queued = [executor.submit("cam", FRAME) for _ in range(3)]
    executor.stop()
    late = executor.submit("cam", FRAME)
    assert [outcome(f) for f in [*queued, late]] == ["dropped"] * 4


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


# ---------------------------------------------------------------------------------- batching


class FixedPlusPerFrame:
    """A runner whose batch of n frames takes a + b * n seconds on its own clock (the
    executor's service clock in these tests: no wall-clock time is involved)."""

    def __init__(self, fixed_s: float, per_frame_s: float) -> None:
        self.fixed_s, self.per_frame_s = fixed_s, per_frame_s
        self.now = 0.0
        self.sizes: list[int] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, app_ids: list[str], frames: list[np.ndarray]) -> RunResult:
        self.sizes.append(len(frames))
        self.now += self.fixed_s + self.per_frame_s * len(frames)
        return RunResult([[0.5, 0.5]] * len(frames), 0, compute_s=0.0)


def saturated_run(runner: FixedPlusPerFrame, shares: dict[str, float], frames: int,
                  batching: bool = True) -> dict[str, float]:
    """Backlog every app (one shared resident) and return the busy seconds each had while
    all were still backlogged."""
    saturated: dict[str, float] = {}
    done = threading.Event()

    def observe(_app_id: str, _service_s: float) -> None:
        if not saturated and min(executor.backlog().values()) == 0:
            saturated.update({a: executor.counters(a).busy_s for a in shares})
            done.set()

    executor = Executor(runner, queue_size=frames, observer=observe, clock=runner.clock,
                        group=lambda _app: ("model", 0), batching=batching)
    for app_id, share in shares.items():
        executor.add_app(app_id, share)
        for _ in range(frames):
            executor.submit(app_id, FRAME)
    executor.start()
    assert done.wait(timeout=120)
    executor.stop()
    return saturated


def test_frames_of_one_resident_run_as_batches_when_the_fixed_cost_pays() -> None:
    """With a 2 ms call cost and 0.25 ms per frame, batches grow to the waiting bound
    n <= 2 + a / b = 10, capped at MAX_BATCH; without a fixed cost they stay single."""
    runner = FixedPlusPerFrame(fixed_s=0.002, per_frame_s=0.00025)
    saturated_run(runner, {"a": 0.5, "b": 0.5}, frames=60)
    assert runner.sizes[:2] == [1, 2]  # learn t(1), then try t(2)
    assert max(runner.sizes) == MAX_BATCH
    flat = FixedPlusPerFrame(fixed_s=0.0, per_frame_s=0.001)
    saturated_run(flat, {"a": 0.5, "b": 0.5}, frames=30)
    assert flat.sizes == [1, 2] + [1] * (len(flat.sizes) - 2)  # the probe, then alone
    off = FixedPlusPerFrame(fixed_s=0.002, per_frame_s=0.00025)
    saturated_run(off, {"a": 0.5, "b": 0.5}, frames=30, batching=False)
    assert set(off.sizes) == {1}


def test_a_batch_never_makes_a_frame_wait_more_than_one_frame_time() -> None:
    """a = 0.6 ms, b = 0.3 ms: t(n) - t(1) <= t(1) allows n <= 4."""
    runner = FixedPlusPerFrame(fixed_s=0.0006, per_frame_s=0.0003)
    saturated_run(runner, {"a": 1.0}, frames=80)
    assert max(runner.sizes) == 4


def test_weighted_shares_hold_with_batches() -> None:
    """Apps sharing one resident, shares 0.7 / 0.3, batched: busy time splits 0.7 / 0.3
    within 0.02 while both are backlogged."""
    runner = FixedPlusPerFrame(fixed_s=0.002, per_frame_s=0.0005)
    busy = saturated_run(runner, {"a": 0.7, "b": 0.3}, frames=150)
    total = sum(busy.values())
    assert abs(busy["a"] / total - 0.7) <= 0.02
    assert max(runner.sizes) > 2
