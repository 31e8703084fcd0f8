"""Prometheus metrics: live runtime state read at scrape time, plus latency and request counts,
and per model and version (descendant) the inference figures Triton users read."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.daemon import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def process_resident_bytes() -> int | None:
    """This process's resident memory (RSS) now, from /proc/self/statm; None without /proc."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class RuntimeCollector(Collector):
    """Per-app frames, drops, switches, descendant and share; accounted and budget bytes."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        labels = ["app", "model"]
        per_app = {
            "frames": CounterMetricFamily(
                "nestdnn_app_frames", "Frames run for the app.", labels=labels
            ),
            "drops": CounterMetricFamily(
                "nestdnn_app_drops", "Frames dropped or refused for the app.", labels=labels
            ),
            "switches": CounterMetricFamily(
                "nestdnn_app_switches", "Descendant switches of the app.", labels=labels
            ),
            "switch_bytes": CounterMetricFamily(
                "nestdnn_app_switch_bytes",
                "Bytes loaded from storage to switch the app's descendant (a switch to a warm "
                "rung or an already loaded shared descendant moves none).",
                labels=labels,
            ),
            "descendant": GaugeMetricFamily(
                "nestdnn_app_descendant", "Assigned descendant index.", labels=labels
            ),
            "share": GaugeMetricFamily(
                "nestdnn_app_share", "Assigned processor share.", labels=labels
            ),
            "resident_bytes": GaugeMetricFamily(
                "nestdnn_app_resident_bytes", "Resident weight bytes of the app.", labels=labels
            ),
        }
        states = GaugeMetricFamily(
            "nestdnn_app_state",
            "1 for the app's state: serving, waiting (no room in the plan) or unavailable (its"
            " model is missing or broken).",
            labels=[*labels, "state"],
        )
        for app in snap.apps:
            for field, family in per_app.items():
                value = getattr(app, field)
                if value is not None:  # an app that is not serving has no descendant
                    family.add_metric([app.id, app.model], float(value))
            states.add_metric([app.id, app.model, app.state], 1.0)
        yield from per_app.values()
        yield states
        yield CounterMetricFamily(
            "nestdnn_switches",
            "Descendant switches, all apps.",
            value=float(sum(app.switches for app in snap.apps)),
        )
        yield CounterMetricFamily(
            "nestdnn_switch_bytes",
            "Bytes loaded from storage by descendant switches, all apps.",
            value=float(sum(app.switch_bytes for app in snap.apps)),
        )
        yield GaugeMetricFamily("nestdnn_apps", "Registered apps.", value=len(snap.apps))
        yield GaugeMetricFamily(
            "nestdnn_accounted_bytes", "Accounted model bytes.", value=snap.accounted_bytes
        )
        yield GaugeMetricFamily(
            "nestdnn_memory_budget_bytes", "Memory budget.", value=snap.memory_budget_bytes
        )
        resident = process_resident_bytes()
        if resident is not None:
            yield GaugeMetricFamily(
                "nestdnn_process_resident_bytes",
                "The daemon process's resident memory (RSS): compare with the accounted bytes.",
                value=resident,
            )


@dataclass(frozen=True)
class Tally:
    """Inference figures of one model version since the daemon started (as Triton's
    statistics: requests that succeeded or failed, rows run, durations in microseconds, the
    last inference in milliseconds since the epoch)."""

    success: int = 0
    failure: int = 0
    rows: int = 0
    executions: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_us: float = 0.0
    last_inference_ms: int = 0


@dataclass
class _Counts:
    """The mutable figures behind a `Tally` (updated in place on the hot path)."""

    success: int = 0
    failure: int = 0
    rows: int = 0
    executions: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_us: float = 0.0
    last_inference_ms: int = 0


class InferenceTallies(Collector):
    """Per (model, version) `Tally`, fed by both APIs' infer routes; exported as
    ``nestdnn_inference_*`` counters and read by /v2's statistics."""

    FAMILIES = (
        ("request_success", "success", "Inference requests that succeeded."),
        ("request_failure", "failure", "Inference requests that failed (any error answer)."),
        ("count", "rows", "Frames (rows) inferred."),
        ("exec_count", "executions", "Backend calls (batches) that ran the frames."),
        ("request_duration_us", "request_us", "Request time, arrival to answer (us)."),
        ("queue_duration_us", "queue_us", "Time the frames waited in the app's queue (us)."),
        ("compute_infer_duration_us", "compute_us",
         "Compute time of the frames, each its part of its batch (us)."),
    )

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], _Counts] = {}
        self._lock = threading.Lock()

    def success(self, model: str, version: int, rows: int, executions: float,
                request_s: float, queue_s: float, compute_s: float) -> None:
        """Count a request that ran ``rows`` frames on descendant ``version``, as
        ``executions`` backend calls (a frame of a batch of n counts 1/n)."""
        key = (model, str(version))
        with self._lock:
            counts = self._counts.setdefault(key, _Counts())
            counts.success += 1
            counts.rows += rows
            counts.executions += executions
            counts.request_us += request_s * 1e6
            counts.queue_us += queue_s * 1e6
            counts.compute_us += compute_s * 1e6
            counts.last_inference_ms = int(time.time() * 1000)

    def failure(self, model: str, version: int | None) -> None:
        """Count a failed request (``version`` None: before any descendant was known)."""
        key = (model, "" if version is None else str(version))
        with self._lock:
            self._counts.setdefault(key, _Counts()).failure += 1

    def of(self, model: str) -> dict[str, Tally]:
        """The tallies of a model's versions."""
        with self._lock:
            return {v: Tally(**vars(c)) for (m, v), c in self._counts.items() if m == model}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tallies = {key: Tally(**vars(c)) for key, c in self._counts.items()}
        for suffix, field, text in self.FAMILIES:
            family = CounterMetricFamily(f"nestdnn_inference_{suffix}", text,
                                         labels=["model", "version"])
            for (model, version), tally in sorted(tallies.items()):
                family.add_metric([model, version], float(getattr(tally, field)))
            yield family


class ApiMetrics:
    """The API's own registry (not the process-global one, so several apps can coexist)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "nestdnn_infer_latency_seconds",
            "Infer request latency, arrival to answer.",
            ["app"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "nestdnn_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.replans = Counter(
            "nestdnn_replans",
            "Re-plans, by the event that caused them.",
            ["event"],
            registry=self.registry,
        )
        self.bad_outputs = Counter(
            "nestdnn_bad_model_outputs",
            "Frames whose model output was NaN or infinite (answered 502, never served).",
            ["model"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "nestdnn_http_connections_closed",
            "Connections the daemon closed or refused: header_timeout, headers_too_large, "
            "idle_evicted (to admit a new one at the limit), over_limit (refused with 503).",
            ["reason"],
            registry=self.registry,
        )
        self.inference = InferenceTallies()
        self.registry.register(RuntimeCollector(snapshot))
        self.registry.register(self.inference)

    def forget_app(self, app_id: str) -> None:
        """Drop an unregistered app's latency series."""
        try:
            self.latency.remove(app_id)
        except KeyError:
            return

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
