"""The schedule: current policy, budget and plan; changing them needs the admin token."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import require_admin
from api.deps import DaemonDep
from api.metrics import process_resident_bytes
from api.openapi import problems
from api.schemas import ScheduleOut, ScheduleUpdate
from api.views import schedule_out

router = APIRouter(prefix="/v1/schedule", tags=["schedule"])


@router.get("", response_model=ScheduleOut)
def show_schedule(daemon: DaemonDep) -> ScheduleOut:
    """The policy, alpha, memory budget, accounted and measured bytes, objective and per-app
    plan."""
    return schedule_out(daemon.runtime.snapshot(), process_resident_bytes())


@router.put(
    "",
    response_model=ScheduleOut,
    dependencies=[Depends(require_admin)],
    responses=problems(401, 403, 409),
)
def change_schedule(body: ScheduleUpdate, daemon: DaemonDep) -> ScheduleOut:
    """Change the policy, alpha or memory budget (admin); the plan is re-solved and applied."""
    changes = body.model_dump(exclude_none=True)
    return schedule_out(daemon.set_policy(**changes), process_resident_bytes())
