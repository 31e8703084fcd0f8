"""Administration beyond the schedule: reload the models directory (admin token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import require_admin
from api.deps import DaemonDep
from api.metrics import process_resident_bytes
from api.openapi import problems
from api.schemas import ReloadOut
from api.views import reload_out

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadOut,
    dependencies=[Depends(require_admin)],
    responses=problems(401, 403),
)
def reload_models(daemon: DaemonDep) -> ReloadOut:
    """Rescan the models directory (admin), as SIGHUP does: new, fixed and replaced files are
    validated and served, removed or broken ones leave their apps registered but unavailable;
    the plan is re-solved. 503 if the directory cannot be read (nothing changes)."""
    return reload_out(daemon.reload("admin"), process_resident_bytes())
