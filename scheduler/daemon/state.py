"""The runtime's persisted state: registered apps, policy, budget and the plan in force.

Written twice, each copy atomically (temporary file in the same directory, fsync, rename, fsync
of the directory): a crash leaves a complete copy, and a damaged file is replaced by its
backup (the damaged one kept as ``state.json.corrupt-<time>``), so no registered app is lost
to one bad file. Only if both copies are damaged does the runtime start with no apps (an
error in the log): a bad state file never keeps the daemon from starting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nestdnn.errors import NestError
from nestdnn.files import read_with_backup, write_with_backup
from scheduler.problem import Method, Policy, Solution

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
_STRICT = ConfigDict(extra="forbid")


class PersistedApp(BaseModel):
    """One registered app: its id and the spec it registered with (as updated)."""

    model_config = _STRICT

    id: str
    name: str
    model: str
    target_latency_s: float | None
    fps: float | None
    priority: float
    min_accuracy: float | None


class RuntimeState(BaseModel):
    """Everything the runtime restores at start."""

    model_config = _STRICT

    format: Literal["nestdnn-runtime-state"] = "nestdnn-runtime-state"
    version: Literal[1] = 1
    policy: Policy
    method: Method
    alpha: float = Field(ge=0.0)
    memory_budget_bytes: int = Field(gt=0)
    apps: list[PersistedApp]
    plan: Solution | None = Field(description="The plan in force (model descendant indices).")


def save_state(state_dir: Path, state: RuntimeState) -> Path:
    """Write the state file and its backup copy, each atomically (`write_with_backup`)."""
    return write_with_backup(state_dir / STATE_FILE, state.model_dump_json(indent=2))


def load_state(state_dir: Path) -> RuntimeState | None:
    """The persisted state (from the backup copy if the file is damaged or missing), or None
    when there is none; if both copies are damaged they are kept aside and the runtime starts
    with no apps, with an error in the log."""
    try:
        return read_with_backup(state_dir / STATE_FILE, RuntimeState.model_validate_json,
                                "runtime state")
    except NestError as exc:
        log.error("%s; starting with no apps", exc)
        return None
