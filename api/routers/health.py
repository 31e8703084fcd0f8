"""Liveness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from api.deps import DaemonDep
from api.metrics import CONTENT_TYPE
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def health(daemon: DaemonDep) -> Health:
    """The daemon is up and its runtime answers."""
    return Health(
        status="ok",
        apps=len(daemon.runtime.snapshot().apps),
        models=len(daemon.catalogue.entries),
        uptime_s=time.monotonic() - daemon.started,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
def metrics(daemon: DaemonDep) -> Response:
    """Prometheus text format: per-app frames, drops, latency, descendant, share; bytes."""
    return Response(content=daemon.metrics.render(), media_type=CONTENT_TYPE)
