"""``/v2/health/live`` and ``/v2/health/ready``: 200 means yes (the protocol's answer is the
status code; the body repeats it)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DaemonDep
from api.openapi import v2_errors
from api.v2.errors import V2Error
from api.v2.schemas import Live, Ready

router = APIRouter(prefix="/v2/health", tags=["v2"])


class NotReady(V2Error):
    """The daemon is not ready to infer (its runtime stopped, or no model is servable): the
    protocol's "false" is a 4xx."""


@router.get("/live", response_model=Live)
async def live() -> Live:
    """The daemon answers HTTP."""
    return Live(live=True)


@router.get("/ready", response_model=Ready, responses=v2_errors(400))
async def ready(daemon: DaemonDep) -> Ready:
    """The runtime has started and at least one model is servable (else 400)."""
    if not daemon.running:
        raise NotReady("the daemon's runtime is not running")
    if not daemon.catalogue.entries:
        raise NotReady("no model is servable: see GET /v1/models for the rejected files")
    return Ready(ready=True)
