"""Trace simulator: hand-computed traces, swapping, admission, random traces, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestdnn.errors import NestError
from scheduler import App, Descendant
from scheduler.replay import DescendantCosts, RuntimeModel
from scheduler.report import plot_simulation, simulation_table
from scheduler.simulate import (
    AppStart,
    AppStop,
    BudgetChange,
    PriorityChange,
    SwapModel,
    TargetChange,
    Trace,
    load_trace,
    peak_apps,
    random_trace,
    simulate,
)
from scheduler.synthetic import synthetic_pool


def single(name: str, latency: float, target: float, memory: int = 1000, acc: float = 0.8) -> App:
    return App(
        name=name,
        target_latency_s=target,
        descendants=[Descendant(accuracy=acc, memory_bytes=memory, latency_s=latency)],
    )


def test_one_app_started_and_stopped() -> None:
    app = single("a", latency=0.01, target=0.05)
    trace = Trace(
        duration_s=10.0,
        memory_budget_bytes=10_000,
        events=[AppStart(time_s=2.0, app=app, fps=30.0), AppStop(time_s=6.0, name="a")],
    )
    result = simulate(trace, "min-total-cost", swap=SwapModel(bandwidth_bytes_per_s=1e6))
    (stats,) = result.apps
    assert (stats.start_s, stats.stop_s, stats.run_s) == (2.0, 6.0, 4.0)
    assert stats.accuracy == pytest.approx(0.8)
    assert stats.fps == pytest.approx(30.0)  # 1.0 / 0.01 = 100 fps, capped at the input rate
    assert stats.frames_in == pytest.approx(120.0) and stats.frames_done == pytest.approx(120.0)
    assert stats.frames_late == 0 and stats.frames_dropped == pytest.approx(0.0)
    assert (stats.load_bytes, stats.switches) == (1000, 0)
    # busy: 30 frames/s * 10 ms for 4 s; 1000 bytes loaded at 1 MB/s
    assert result.summary.busy_fraction == pytest.approx(30 * 0.01 * 4 / 10)
    assert result.summary.load_s == pytest.approx(1e-3)
    assert [(s.start_s, s.end_s, len(s.apps)) for s in result.timeline] == [
        (0.0, 2.0, 0),
        (2.0, 6.0, 1),
        (6.0, 10.0, 0),
    ]


def test_two_apps_share_the_processor() -> None:
    a = single("a", latency=0.02, target=0.02)
    b = single("b", latency=0.02, target=0.02)
    trace = Trace(
        duration_s=10.0,
        memory_budget_bytes=10_000,
        events=[
            AppStart(time_s=0.0, app=a),
            AppStart(time_s=4.0, app=b),
            AppStop(time_s=8.0, name="b"),
        ],
    )
    result = simulate(trace, "min-total-cost", swap=SwapModel(bandwidth_bytes_per_s=1e12))
    first, second = result.apps
    # a: 30 fps alone (50 possible); with b each has 0.5 -> 25 fps, 40 ms per frame: late
    assert first.frames_done == pytest.approx(4 * 30 + 4 * 25 + 2 * 30)
    assert first.frames_late == pytest.approx(4 * 25)
    assert first.frames_dropped == pytest.approx(4 * 5)
    assert first.fps == pytest.approx(28.0)
    assert second.frames_done == pytest.approx(100.0) and second.late_fraction == 1.0
    assert second.drop_fraction == pytest.approx(5 / 30)
    # busy: 0.6 alone, 0.5 + 0.5 together
    assert result.summary.busy_fraction == pytest.approx((4 * 0.6 + 4 * 1.0 + 2 * 0.6) / 10)
    assert result.summary.fps == pytest.approx((280 + 100) / 14)


def test_baseline_swapping_costs_compute() -> None:
    a = single("a", latency=0.02, target=0.04, memory=600)
    b = single("b", latency=0.02, target=0.04, memory=600)
    trace = Trace(
        duration_s=1.0,
        memory_budget_bytes=1000,
        events=[AppStart(time_s=0.0, app=a), AppStart(time_s=0.0, app=b)],
    )
    swap = SwapModel(bandwidth_bytes_per_s=1e6, period_s=1e-3)
    result = simulate(trace, "baseline", swap=swap)
    # 200 bytes over the budget re-read every 1 ms round at 1 MB/s: 20% of the processor
    for stats in result.apps:
        assert stats.fps == pytest.approx(0.4 / 0.02)  # share 0.5 * (1 - 0.2)
        assert stats.late_fraction == 1.0  # 0.02 / 0.4 = 50 ms > 40 ms
    assert result.summary.swapping_s == 1.0
    assert result.summary.busy_fraction == pytest.approx(0.2 + 2 * 0.4)
    assert result.summary.load_s == pytest.approx(1200 / 1e6)


def test_apps_that_do_not_fit_wait() -> None:
    small = single("small", latency=0.01, target=0.05, memory=600)
    big = single("big", latency=0.01, target=0.05, memory=900)
    trace = Trace(
        duration_s=10.0,
        memory_budget_bytes=1000,
        events=[
            AppStart(time_s=0.0, app=small),
            AppStart(time_s=1.0, app=big),
            AppStop(time_s=5.0, name="small"),
            BudgetChange(time_s=8.0, memory_budget_bytes=500),
        ],
    )
    for policy in ("min-total-cost", "min-max-cost"):
        result = simulate(trace, policy)
        first, second = result.apps
        assert first.paused_s == 0.0
        assert second.paused_s == pytest.approx(4.0 + 2.0)  # until small stops; after budget cut
        assert second.load_bytes == 900
        for segment in result.timeline:
            assert segment.memory_used_bytes <= segment.memory_budget_bytes
    result = simulate(trace, "baseline")  # swaps while both run; big alone exceeds 500 bytes
    assert [a.paused_s for a in result.apps] == [0.0, pytest.approx(2.0)]
    assert result.summary.swapping_s == pytest.approx(4.0)


def test_switches_count_nested_upgrade_bytes() -> None:
    app = App(
        name="a",
        target_latency_s=0.1,
        descendants=[
            Descendant(accuracy=0.7, memory_bytes=1000, latency_s=0.01),
            Descendant(accuracy=0.9, memory_bytes=3000, latency_s=0.02),
        ],
    )
    trace = Trace(
        duration_s=3.0,
        memory_budget_bytes=2000,
        events=[
            AppStart(time_s=0.0, app=app),
            BudgetChange(time_s=1.0, memory_budget_bytes=4000),
            BudgetChange(time_s=2.0, memory_budget_bytes=2000),
        ],
    )
    (stats,) = simulate(trace, "min-total-cost").apps
    assert (stats.switches, stats.switch_bytes, stats.load_bytes) == (2, 2000, 1000)
    assert stats.accuracy == pytest.approx((0.7 + 0.9 + 0.7) / 3)


def test_priority_change_is_applied() -> None:
    a = single("a", latency=0.02, target=0.02)
    b = single("b", latency=0.02, target=0.02)
    trace = Trace(
        duration_s=2.0,
        memory_budget_bytes=10_000,
        events=[
            AppStart(time_s=0.0, app=a),
            AppStart(time_s=0.0, app=b),
            PriorityChange(time_s=1.0, name="b", priority=4.0),
        ],
    )
    result = simulate(trace, "min-total-cost")
    shares = [{p.name: p.share for p in s.apps} for s in result.timeline]
    assert shares[0]["a"] == shares[0]["b"] == 0.5
    assert shares[1]["b"] > shares[1]["a"]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([{"kind": "stop", "time_s": 1.0, "name": "x"}], "events.0: app 'x' is not running"),
        (
            [
                {"kind": "budget", "time_s": 2.0, "memory_budget_bytes": 1},
                {"kind": "budget", "time_s": 1.0, "memory_budget_bytes": 1},
            ],
            "events.1: time_s 1.0 is before",
        ),
        ([{"kind": "budget", "time_s": 99.0, "memory_budget_bytes": 1}], "after duration_s"),
        ([{"kind": "dance", "time_s": 1.0}], "events.0"),
    ],
)
def test_bad_traces_are_rejected(tmp_path: Path, events: list, message: str) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"duration_s": 10.0, "memory_budget_bytes": 1, "events": events}))
    with pytest.raises(NestError, match=message):
        load_trace(path)


def test_random_trace_is_reproducible_and_valid() -> None:
    pool = synthetic_pool()
    kwargs = dict(
        seed=3,
        duration_s=900.0,
        memory_budget_bytes=30_000_000,
        max_apps=3,
        priority_change_rate_per_s=0.01,
    )
    trace = random_trace(pool, **kwargs)
    assert trace == random_trace(pool, **kwargs)
    assert trace != random_trace(pool, **{**kwargs, "seed": 4})
    times = [e.time_s for e in trace.events]
    assert times == sorted(times) and len(times) > 10
    running: set[str] = set()
    for event in trace.events:
        if isinstance(event, AppStart):
            running.add(event.app.name)
            assert len(running) <= 3
        elif isinstance(event, AppStop):
            running.remove(event.name)
    assert any(isinstance(e, PriorityChange) for e in trace.events)


@pytest.mark.parametrize("policy", ["min-total-cost", "min-max-cost", "baseline"])
def test_random_trace_figures_are_sane(policy: str, tmp_path: Path) -> None:
    trace = random_trace(synthetic_pool(), seed=1, duration_s=600.0, memory_budget_bytes=20_000_000)
    result = simulate(trace, policy, "greedy" if policy == "min-max-cost" else "exact")
    summary = result.summary
    assert 0.0 < summary.busy_fraction <= 1.0 + 1e-9
    assert 0.0 <= summary.fps <= 30.0 + 1e-9
    assert summary.accuracy is not None and 0.0 < summary.accuracy <= 1.0
    for segment in result.timeline:
        assert sum(p.share for p in segment.apps) <= 1.0 + 1e-9
        if policy != "baseline":
            assert segment.memory_used_bytes <= segment.memory_budget_bytes
    table = simulation_table(result)
    assert table.splitlines()[-1].startswith("overall:")
    plot_simulation(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------- the runtime (replay) model


def costs(service: float, cpu: float | None = None, load: float = 0.0) -> list[DescendantCosts]:
    cpu = service if cpu is None else cpu
    return [DescendantCosts(service_s=service, cpu_s=cpu, load_s=load, load_cpu_s=load / 2)]


def test_runtime_model_one_app_counts_every_frame_sent() -> None:
    app = single("a", latency=0.01, target=0.05)
    trace = Trace(
        duration_s=10.0,
        memory_budget_bytes=10_000,
        events=[AppStart(time_s=2.0, app=app, fps=30.0), AppStop(time_s=6.0, name="a")],
    )
    model = RuntimeModel(costs={"a": costs(0.01, cpu=0.008, load=0.004)}, frame_cpu_s=1e-4)
    result = simulate(trace, "min-total-cost", runtime=model)
    (stats,) = result.apps
    assert stats.frames_done == 120 and stats.frames_dropped == 0 and stats.frames_late == 0
    summary = result.summary
    assert (summary.model, summary.loads, summary.switches) == ("runtime", 1, 0)
    assert summary.busy_fraction * 10.0 == pytest.approx(120 * 0.01)
    assert summary.load_s == pytest.approx(0.004)
    solver_cpu = summary.cpu_s - (120 * (0.008 + 1e-4) + 0.002)
    assert 0 <= solver_cpu < 1.0  # the simulator's own planning time


def test_runtime_model_charges_idle_costs_only_to_frames_that_find_the_worker_idle() -> None:
    """A paced stream leaves the worker idle before every frame; a saturated one never."""
    idle_cost = DescendantCosts(service_s=0.01, cpu_s=0.008, load_s=0.0, load_cpu_s=0.0,
                                idle_service_s=0.013, idle_cpu_s=0.011)
    app = single("a", latency=0.01, target=1.0)
    paced = Trace(duration_s=4.0, memory_budget_bytes=10_000,
                  events=[AppStart(time_s=0.0, app=app, fps=30.0)])
    result = simulate(paced, "min-total-cost", runtime=RuntimeModel(costs={"a": [idle_cost]}))
    assert result.apps[0].frames_done == 120
    assert result.summary.busy_fraction * 4.0 == pytest.approx(120 * 0.013)
    # 200 fps against 10 ms frames: the worker goes from frame to frame; only the first
    # frame (and none after) finds it idle
    saturated = paced.model_copy(update={"events": [AppStart(time_s=0.0, app=app, fps=200.0)]})
    result = simulate(saturated, "min-total-cost",
                      runtime=RuntimeModel(costs={"a": [idle_cost]}))
    done = result.apps[0].frames_done
    assert result.summary.busy_fraction * 4.0 == pytest.approx(0.013 + (done - 1) * 0.01)


def test_runtime_model_gives_idle_share_to_the_app_that_has_frames() -> None:
    """Work conservation: b is planned a share too small for 30 fps, a leaves share idle."""
    a = single("a", latency=0.005, target=1.0)
    b = single("b", latency=0.025, target=1.0)
    trace = Trace(duration_s=4.0, memory_budget_bytes=10_000,
                  events=[AppStart(time_s=0.0, app=a), AppStart(time_s=0.0, app=b)])
    fluid = simulate(trace, "baseline")  # equal shares: b gets 0.5 / 0.025 = 20 fps
    assert fluid.apps[1].fps == pytest.approx(20.0)
    replay = simulate(trace, "baseline", runtime=RuntimeModel())
    # a uses 30 * 5 ms = 15 % of the worker; b takes what is left: 30 fps need 75 %
    assert [s.frames_done for s in replay.apps] == [120, 120]
    assert replay.summary.busy_fraction == pytest.approx(0.9)


def test_runtime_model_drops_the_oldest_frames_of_a_full_queue() -> None:
    app = single("a", latency=0.1, target=1.0)
    trace = Trace(duration_s=2.0, memory_budget_bytes=10_000,
                  events=[AppStart(time_s=0.0, app=app, fps=30.0)])
    result = simulate(trace, "min-total-cost", runtime=RuntimeModel(queue_size=4))
    (stats,) = result.apps
    # the worker serves 10 frames per second; every other frame waits or is pushed out;
    # at the end the 4 queued frames are still served (as the live benchmark waits for them)
    assert stats.frames_done == 24
    assert stats.frames_done + stats.frames_dropped == stats.frames_in == 60


def test_runtime_model_swaps_on_demand_with_least_recently_used_eviction() -> None:
    """Two 600-byte models, 1000 bytes: taking turns, every frame reloads its model, and
    the load is part of the frame's service."""
    a = single("a", latency=0.005, target=1.0, memory=600)
    b = single("b", latency=0.005, target=1.0, memory=600)
    trace = Trace(duration_s=1.0, memory_budget_bytes=1000,
                  events=[AppStart(time_s=0.0, app=a), AppStart(time_s=0.0, app=b)])
    model = RuntimeModel(costs={"a": costs(0.005, load=0.002), "b": costs(0.005, load=0.002)})
    result = simulate(trace, "baseline", runtime=model)
    frames = sum(s.frames_done for s in result.apps)
    assert [s.frames_done for s in result.apps] == [30, 30]
    assert result.summary.loads == frames
    assert result.summary.busy_fraction == pytest.approx(frames * 0.007)
    assert result.summary.swapping_s == 1.0
    roomy = trace.model_copy(update={"memory_budget_bytes": 1200})
    result = simulate(roomy, "baseline", runtime=model)
    assert result.summary.loads == 2 and result.summary.swapping_s == 0.0


def two_rungs() -> App:
    return App(name="a", target_latency_s=0.05, descendants=[
        Descendant(accuracy=0.7, memory_bytes=100, latency_s=0.001),
        Descendant(accuracy=0.9, memory_bytes=400, latency_s=0.002)])


def test_runtime_model_switches_in_place_when_both_fit_and_counts_cold_loads() -> None:
    """A backend that switches in place (torch) grows and shrinks the resident."""
    trace = Trace(duration_s=3.0, memory_budget_bytes=600, events=[
        AppStart(time_s=0.0, app=two_rungs()),
        BudgetChange(time_s=1.0, memory_budget_bytes=200),
        BudgetChange(time_s=2.0, memory_budget_bytes=1000)])
    in_place = RuntimeModel(switches_in_place=True)
    result = simulate(trace, "min-total-cost", runtime=in_place)
    # d1 loaded; down to d0 in place (400 + 100 fit the old budget); up again in place
    assert (result.summary.loads, result.summary.switches) == (1, 2)
    tight = trace.model_copy(update={"events": [*trace.events[:2], BudgetChange(
        time_s=2.0, memory_budget_bytes=450)]})
    result = simulate(tight, "min-total-cost", runtime=in_place)
    assert (result.summary.loads, result.summary.switches) == (2, 2)  # 100 + 400 > 450: cold


def test_runtime_model_keeps_warm_rungs_while_there_is_room() -> None:
    """onnxruntime (no in-place switch): the new descendant loads beside the old one, which
    stays as a warm rung while the budget has room, so switching back loads nothing; a
    budget cut evicts it."""
    trace = Trace(duration_s=4.0, memory_budget_bytes=1000, events=[
        AppStart(time_s=0.0, app=two_rungs()),
        TargetChange(time_s=1.0, name="a", target_latency_s=0.0001),  # d0 is less late
        TargetChange(time_s=2.0, name="a", target_latency_s=0.05),  # back to d1: warm
        BudgetChange(time_s=3.0, memory_budget_bytes=450)])
    result = simulate(trace, "min-total-cost", alpha=10.0, runtime=RuntimeModel())
    plans = [[p.descendant for p in s.apps] for s in result.timeline]
    assert plans == [[1], [0], [1], [1]]
    assert (result.summary.loads, result.summary.switches) == (2, 2)
    # without room for both the old one is freed first (cold) and switching back reloads it
    tight = trace.model_copy(update={"memory_budget_bytes": 450, "events": trace.events[:3]})
    result = simulate(tight, "min-total-cost", alpha=10.0, runtime=RuntimeModel())
    assert (result.summary.loads, result.summary.switches) == (3, 2)


def test_runtime_model_frees_idle_rungs_when_no_running_app_can_use_them() -> None:
    """a leaves m#1 idle (a warm rung): c finds it resident while a runs, but once a (the
    model's last app) stops, m's residents are freed and c must load it."""
    other = App(name="b", target_latency_s=1.0, descendants=[
        Descendant(accuracy=0.8, memory_bytes=500, latency_s=0.001, id="n#0")])
    events = [AppStart(time_s=0.0, app=on_model("a")), AppStart(time_s=0.0, app=other),
              TargetChange(time_s=1.0, name="a", target_latency_s=1e-4)]  # a to m#0
    c = on_model("c")
    while_a_runs = Trace(duration_s=4.0, memory_budget_bytes=10_000,
                         events=[*events, AppStart(time_s=3.0, app=c)])
    after_a = Trace(duration_s=4.0, memory_budget_bytes=10_000,
                    events=[*events, AppStop(time_s=2.0, name="a"), AppStart(time_s=3.0, app=c)])
    for trace, c_loads in ((while_a_runs, 0), (after_a, 1)):
        result = simulate(trace, "min-total-cost", alpha=10.0, runtime=RuntimeModel())
        loads = {s.name: s.loads for s in result.apps}
        assert loads == {"a": 2, "b": 1, "c": c_loads}


def test_runtime_model_batches_frames_of_one_resident() -> None:
    """Two apps on one shared resident send frames in step faster than the worker serves
    them one at a time: with a fixed cost per call, batches form (BatchCost) and every
    frame is served in less busy time."""
    shared = Descendant(accuracy=0.9, memory_bytes=100, latency_s=0.004, id="m#0")
    apps = [App(name=n, target_latency_s=1.0, descendants=[shared]) for n in "ab"]
    trace = Trace(duration_s=2.0, memory_budget_bytes=1000,
                  events=[AppStart(time_s=0.0, app=app, fps=150.0) for app in apps])
    fixed = DescendantCosts(service_s=0.004, cpu_s=0.004, load_s=0.0, load_cpu_s=0.0,
                            batch_frame_s=0.001, batch_frame_cpu_s=0.001)
    costs = {"a": [fixed], "b": [fixed]}
    batched = simulate(trace, "min-total-cost", runtime=RuntimeModel(costs=costs))
    alone = simulate(trace, "min-total-cost",
                     runtime=RuntimeModel(costs=costs, batching=False))
    # alone: 4 ms a frame, 500 of the 600 frames in 2 s (and the 8 still queued at the
    # end); batched: pairs in 5 ms
    assert 500 <= sum(s.frames_done for s in alone.apps) <= 508
    assert sum(s.frames_done for s in batched.apps) == 600
    assert batched.summary.busy_fraction == pytest.approx(300 * 0.005 / 2.0, rel=0.03)


def test_runtime_model_dispatch_time_delays_frames_but_is_not_busy() -> None:
    app = single("a", latency=0.004, target=1.0)
    trace = Trace(duration_s=1.0, memory_budget_bytes=10_000,
                  events=[AppStart(time_s=0.0, app=app, fps=400.0)])
    result = simulate(trace, "min-total-cost",
                      runtime=RuntimeModel(costs={"a": costs(0.004)}, dispatch_s=0.001))
    (stats,) = result.apps
    # one frame per 5 ms of worker time, of which 4 ms are service
    assert stats.frames_done == pytest.approx(200, abs=5)
    assert result.summary.busy_fraction == pytest.approx(stats.frames_done * 0.004, rel=0.01)


@pytest.mark.parametrize("policy", ["min-total-cost", "baseline"])
def test_runtime_model_on_a_random_trace_accounts_every_frame(policy: str) -> None:
    """Priority changes, stops, a budget the baseline must swap in: every frame sent is
    served or dropped, and the model's figures stay within what one worker can do."""
    trace = random_trace(synthetic_pool(), seed=2, duration_s=120.0, memory_budget_bytes=20_000_000,
                         arrival_rate_per_s=1 / 10, mean_run_s=40.0,
                         priority_change_rate_per_s=1 / 20)
    result = simulate(trace, policy, runtime=RuntimeModel())
    summary = result.summary
    assert summary.model == "runtime" and summary.cpu_s is not None and summary.loads
    assert 0.0 < summary.busy_fraction <= 1.05  # the last queued frames finish after the end
    for stats in result.apps:
        sent = stats.frames_done + stats.frames_dropped
        assert stats.frames_done >= 0 and stats.frames_dropped >= 0
        assert abs(sent - stats.frames_in) <= 1  # frames_in is fps * run time
    assert summary.swapping_s > 0 or policy != "baseline"


# ------------------------------------------------------------- shared residency (ids)

SMALL = Descendant(accuracy=0.7, memory_bytes=1000, latency_s=0.01, id="m#0")
LARGE = Descendant(accuracy=0.9, memory_bytes=3000, latency_s=0.02, id="m#1")


def on_model(name: str) -> App:
    return App(name=name, target_latency_s=0.1, descendants=[SMALL, LARGE])


def shared_trace() -> Trace:
    """a alone on the large descendant; b joins it (no load); the budget halves, both move to
    the small one; c joins there (admitted: one copy fits); b stops."""
    return Trace(
        duration_s=5.0,
        memory_budget_bytes=3500,
        events=[
            AppStart(time_s=0.0, app=on_model("a")),
            AppStart(time_s=1.0, app=on_model("b")),
            BudgetChange(time_s=2.0, memory_budget_bytes=2000),
            AppStart(time_s=3.0, app=on_model("c")),
            AppStop(time_s=4.0, name="b"),
        ],
    )


def test_apps_sharing_an_id_load_and_hold_one_copy() -> None:
    result = simulate(shared_trace(), "min-total-cost", swap=SwapModel(bandwidth_bytes_per_s=1e6))
    plans = [[(p.name, p.descendant) for p in s.apps] for s in result.timeline]
    assert plans == [
        [("a", 1)],
        [("a", 1), ("b", 1)],
        [("a", 0), ("b", 0)],
        [("a", 0), ("b", 0), ("c", 0)],
        [("a", 0), ("c", 0)],
    ]
    assert [s.memory_used_bytes for s in result.timeline] == [3000, 3000, 1000, 1000, 1000]
    # a loads the large copy; b finds it resident; both shrink it in place (nothing to load);
    # c finds the small copy resident
    stats = {s.name: (s.load_bytes, s.switch_bytes, s.switches, s.paused_s) for s in result.apps}
    assert stats == {"a": (3000, 0, 1, 0.0), "b": (0, 0, 1, 0.0), "c": (0, 0, 0, 0.0)}
    assert result.summary.load_s == pytest.approx(3000 / 1e6)


def test_runtime_model_loads_a_shared_resident_once() -> None:
    result = simulate(shared_trace(), "min-total-cost", runtime=RuntimeModel())
    # the large copy for a; at the budget cut 3000 + 1000 bytes do not fit the old budget of
    # 3500 together: a cold load of the small copy, which b and then c run on too
    assert [(s.name, s.loads) for s in result.apps] == [("a", 2), ("b", 0), ("c", 0)]
    assert result.summary.loads == 2
    assert result.summary.load_s == pytest.approx((3000 + 1000) / 1e9)


def test_swapping_evicts_and_reloads_per_resident_not_per_app() -> None:
    """a and b share a 3000-byte resident, d needs 2000 bytes of its own, the budget holds
    3000: every round of frames loads each resident once (two loads), not each app's."""
    shared = LARGE.model_copy(update={"latency_s": 0.005})
    own = Descendant(accuracy=0.8, memory_bytes=2000, latency_s=0.005, id="n#0")
    apps = [
        App(name=name, target_latency_s=1.0, descendants=[d])
        for name, d in (("a", shared), ("b", shared), ("d", own))
    ]
    trace = Trace(
        duration_s=1.0,
        memory_budget_bytes=3000,
        events=[AppStart(time_s=0.0, app=app) for app in apps],
    )
    model = RuntimeModel(costs={name: costs(0.005, load=0.002) for name in "abd"})
    result = simulate(trace, "baseline", runtime=model)
    assert [s.frames_done for s in result.apps] == [30, 30, 30]
    assert result.summary.loads == 60
    assert result.summary.busy_fraction == pytest.approx(90 * 0.005 + 60 * 0.002)
    # the fluid model: 5000 bytes resident, 2000 over the budget
    fluid = simulate(trace, "baseline", swap=SwapModel(bandwidth_bytes_per_s=1e6, period_s=1e-2))
    assert fluid.timeline[0].memory_used_bytes == 5000
    assert fluid.summary.busy_fraction == pytest.approx(0.2 + 3 * 30 * 0.005)
    roomy = trace.model_copy(update={"memory_budget_bytes": 5000})
    assert simulate(roomy, "baseline", runtime=model).summary.loads == 2


def test_a_trace_with_one_id_of_two_sizes_is_rejected(tmp_path: Path) -> None:
    wrong = LARGE.model_copy(update={"memory_bytes": 4000})
    events = [
        AppStart(time_s=0.0, app=on_model("a")).model_dump(),
        AppStart(time_s=1.0, app=App(name="b", target_latency_s=0.1, descendants=[wrong]))
        .model_dump(),
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"duration_s": 2.0, "memory_budget_bytes": 10, "events": events}))
    with pytest.raises(NestError, match="descendants with id 'm#1' differ in memory_bytes"):
        load_trace(path)


def test_independent_apps_divide_the_budget_among_the_most_apps_running_at_once() -> None:
    """Three apps on one model, at most two at once: each holds its own copy of the best
    descendant within half the budget; a third copy does not fit and that app waits."""
    events = [AppStart(time_s=0.0, app=on_model("a")), AppStart(time_s=1.0, app=on_model("b")),
              AppStop(time_s=2.0, name="a"), AppStart(time_s=3.0, app=on_model("c"))]
    trace = Trace(duration_s=4.0, memory_budget_bytes=6000, events=events)
    assert peak_apps(trace) == 2
    result = simulate(trace, "independent", runtime=RuntimeModel())
    assert [[(p.name, p.descendant) for p in s.apps] for s in result.timeline] == [
        [("a", 1)], [("a", 1), ("b", 1)], [("b", 1)], [("b", 1), ("c", 1)]]
    assert result.summary.loads == 3  # a copy per app, never shared
    assert result.method is None
    # with room for one large copy per slot of three, c waits while a and b run
    crowded = trace.model_copy(update={"events": [*events[:2], AppStart(time_s=1.5,
                                                                        app=on_model("c"))]})
    result = simulate(crowded, "independent", slots=2)
    paused = {s.name: s.paused_s for s in result.apps}
    assert paused == {"a": 0.0, "b": 0.0, "c": pytest.approx(2.5)}


def test_smallest_and_resource_agnostic_baselines_in_the_runtime_model() -> None:
    trace = shared_trace()
    smallest = simulate(trace, "smallest", runtime=RuntimeModel())
    assert {p.descendant for s in smallest.timeline for p in s.apps} == {0}
    assert smallest.summary.loads == 1  # one shared copy of m#0
    agnostic = simulate(trace, "baseline", runtime=RuntimeModel())
    # its model (3000 bytes) alone exceeds the budget of 2000 from t = 2: nothing runs
    assert [{p.descendant for p in s.apps} for s in agnostic.timeline] == [
        {1}, {1}, {None}, {None}, {None}]
    assert agnostic.summary.paused_app_s == pytest.approx(3.0 + 2.0 + 2.0)
