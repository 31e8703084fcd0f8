"""Prometheus metrics: live runtime state read at scrape time, plus latency and request counts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
        for app in snap.apps:
            for field, family in per_app.items():
                family.add_metric([app.id, app.model], float(getattr(app, field)))
        yield from per_app.values()
        yield CounterMetricFamily(
            "nestdnn_switches",
            "Descendant switches, all apps.",
            value=float(sum(app.switches for app in snap.apps)),
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
        self.registry.register(RuntimeCollector(snapshot))

    def forget_app(self, app_id: str) -> None:
        """Drop an unregistered app's latency series."""
        try:
            self.latency.remove(app_id)
        except KeyError:
            return

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
