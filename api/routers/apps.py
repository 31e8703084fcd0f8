"""Apps: register, list, show, update, unregister."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.auth import AppId
from api.deps import DaemonDep
from api.schemas import (
    AppCreate,
    AppCreated,
    AppOut,
    AppStatusOut,
    AppUpdate,
    InfeasibleProblem,
    Problem,
)
from api.views import app_out, status_out
from scheduler.daemon import AppSpec

router = APIRouter(prefix="/v1/apps", tags=["apps"])

_AUTH_ERRORS = {401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}}


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


@router.post(
    "",
    status_code=201,
    response_model=AppCreated,
    responses={404: {"model": Problem}, 409: {"model": InfeasibleProblem}},
)
def register(body: AppCreate, daemon: DaemonDep) -> AppCreated:
    """Register an app; the answer holds its token, descendant and share."""
    spec = AppSpec(
        model=body.model,
        target_latency_s=_seconds(body.target_latency_ms),
        fps=body.fps,
        priority=body.priority,
        min_accuracy=body.min_accuracy,
        name=body.name,
    )
    info, token = daemon.register(spec)
    return AppCreated(**app_out(info).model_dump(), token=token)


@router.get("", response_model=list[AppStatusOut])
def list_apps(daemon: DaemonDep) -> list[AppStatusOut]:
    """All registered apps with their live counters."""
    return [status_out(app) for app in daemon.runtime.snapshot().apps]


@router.get("/{app_id}", response_model=AppStatusOut, responses={404: {"model": Problem}})
def show_app(app_id: str, daemon: DaemonDep) -> AppStatusOut:
    """One app with its live counters."""
    return status_out(daemon.status(app_id))


@router.patch(
    "/{app_id}",
    response_model=AppOut,
    responses={**_AUTH_ERRORS, 409: {"model": InfeasibleProblem}},
)
def update_app(
    body: AppUpdate,
    app_id: AppId,
    daemon: DaemonDep,
) -> AppOut:
    """Change an app's priority or targets (needs its token); the plan is re-solved."""
    changes = {
        "priority": body.priority,
        "fps": body.fps,
        "target_latency_s": _seconds(body.target_latency_ms),
    }
    info = daemon.update(app_id, **{k: v for k, v in changes.items() if v is not None})
    return app_out(info)


@router.delete("/{app_id}", status_code=204, responses=_AUTH_ERRORS)
def unregister(
    app_id: AppId,
    daemon: DaemonDep,
) -> Response:
    """Unregister an app (needs its token); its token stops working."""
    daemon.unregister(app_id)
    return Response(status_code=204)
