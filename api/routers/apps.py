"""Apps: register, list, show, update, unregister."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.auth import AppCaller, Trusted
from api.deps import DaemonDep
from api.openapi import problems
from api.schemas import AppCreate, AppCreated, AppOut, AppStatusOut, AppUpdate
from api.views import app_out, status_out
from scheduler.daemon import AppSpec

router = APIRouter(prefix="/v1/apps", tags=["apps"])


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


@router.post(
    "",
    status_code=201,
    response_model=AppCreated,
    responses=problems(401, 403, 404, 409),
)
def register(body: AppCreate, trusted: Trusted, daemon: DaemonDep) -> AppCreated:
    """Register an app (needs the registration or admin token, unless registration is open);
    the answer holds its token, descendant and share."""
    daemon.registration.check_priority(body.priority, trusted=trusted)
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


@router.get("/{app_id}", response_model=AppStatusOut, responses=problems(404))
def show_app(app_id: str, daemon: DaemonDep) -> AppStatusOut:
    """One app with its live counters."""
    return status_out(daemon.status(app_id))


@router.patch("/{app_id}", response_model=AppOut, responses=problems(401, 403, 404, 409))
def update_app(body: AppUpdate, caller: AppCaller, daemon: DaemonDep) -> AppOut:
    """Change an app's priority or targets (needs its token); the plan is re-solved."""
    daemon.registration.check_priority(body.priority, trusted=caller.admin)
    changes = {
        "priority": body.priority,
        "fps": body.fps,
        "target_latency_s": _seconds(body.target_latency_ms),
    }
    info = daemon.update(caller.app_id, **{k: v for k, v in changes.items() if v is not None})
    return app_out(info)


@router.delete("/{app_id}", status_code=204, responses=problems(401, 403, 404))
def unregister(caller: AppCaller, daemon: DaemonDep) -> Response:
    """Unregister an app (needs its token); its token stops working."""
    daemon.unregister(caller.app_id)
    return Response(status_code=204)
