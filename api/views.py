"""Convert the runtime's objects into response bodies."""

from __future__ import annotations

import re

from api.daemon import Reloaded
from api.schemas import AppOut, AppStatusOut, RejectedModel, ReloadOut, ScheduleOut
from scheduler.daemon import AppInfo, AppStatus, Snapshot
from scheduler.daemon import RejectedModel as Rejected

_DIRECTORIES = re.compile(r"(?<![\w.])/(?:[^\s/'\"]+/)+(?=[^\s/'\"])")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def app_out(info: AppInfo) -> AppOut:
    """An app as registered or updated."""
    return AppOut(
        id=info.id,
        name=info.name,
        model=info.model,
        descendant=info.descendant,
        share=info.share,
        accuracy=info.accuracy,
        priority=info.priority,
        target_latency_ms=_ms(info.target_latency_s),
        fps=info.fps,
        state=info.state,
        problem=_without_directories(info.problem),
    )


def status_out(app: AppStatus) -> AppStatusOut:
    """An app with its live counters."""
    return AppStatusOut(
        id=app.id,
        name=app.name,
        model=app.model,
        descendant=app.descendant,
        share=app.share,
        accuracy=app.accuracy,
        priority=app.priority,
        target_latency_ms=_ms(app.target_latency_s),
        fps=app.fps,
        resident_bytes=app.resident_bytes,
        loads=app.loads,
        busy_s=app.busy_s,
        fps_measured=app.fps_measured,
        latency_p50_ms=_ms(app.latency_p50_s),
        latency_p99_ms=_ms(app.latency_p99_s),
        frames=app.frames,
        drops=app.drops,
        switches=app.switches,
        state=app.state,
        problem=_without_directories(app.problem),
        failures=app.failures,
        latency_assumed_ms=_ms(app.latency_assumed_s),
        latency_measured_ms=_ms(app.latency_measured_s),
    )


def schedule_out(snap: Snapshot, process_resident_bytes: int | None) -> ScheduleOut:
    """The policy, budget, applied plan, and the daemon's measured memory beside the
    accounted bytes."""
    return ScheduleOut(
        policy=snap.policy,
        method=snap.method,
        alpha=snap.alpha,
        memory_budget_bytes=snap.memory_budget_bytes,
        accounted_bytes=snap.accounted_bytes,
        idle_bytes=snap.idle_bytes,
        process_resident_bytes=process_resident_bytes,
        latency_scale=snap.latency_scale,
        objective=snap.objective,
        feasible=snap.feasible,
        swapping=snap.swapping,
        apps=[status_out(app) for app in snap.apps],
    )


def reload_out(reloaded: Reloaded, process_resident_bytes: int | None) -> ReloadOut:
    """What a reload changed, and the plan after it."""
    return ReloadOut(
        added=reloaded.added,
        changed=reloaded.changed,
        removed=reloaded.removed,
        rejected=[rejected_out(r) for r in reloaded.rejected],
        schedule=schedule_out(reloaded.snapshot, process_resident_bytes),
    )


def rejected_out(rejected: Rejected) -> RejectedModel:
    """A rejected model file and why, without the directories of the paths in the reason
    (the log has them; unauthenticated readers need only the file names)."""
    return RejectedModel(name=rejected.name, reason=_DIRECTORIES.sub("", rejected.reason))


def _without_directories(reason: str | None) -> str | None:
    """A problem as unauthenticated readers may see it: file names, not their directories."""
    return None if reason is None else _DIRECTORIES.sub("", reason)
