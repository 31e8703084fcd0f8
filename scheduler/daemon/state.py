"""The runtime's persisted state: registered apps, policy, budget and the plan in force.

Written twice, each copy atomically (temporary file in the same directory, fsync, rename, fsync
of the directory): a crash leaves a complete copy, and a damaged file is replaced by its
backup (the damaged one kept as ``state.json.corrupt-<time>``), so no registered app is lost
to one bad file. If both copies are damaged, the runtime does not start (a NestError saying
so; `nestdnn serve` exits 2) and leaves them in place: starting with no apps would silently
drop every registered one and overwrite the files at the first event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nestdnn.files import read_with_backup, write_with_backup
from scheduler.problem import Method, Policy, Solution

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
    when there is none; a NestError when both copies are damaged (they stay in place)."""
    return read_with_backup(state_dir / STATE_FILE, _parse_state, "runtime state",
                            if_removed="with no apps")


def _parse_state(raw: bytes) -> RuntimeState:
    """The state in a file's bytes; a ValueError naming the first problem (one line)."""
    try:
        return RuntimeState.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ValueError(f"{where}: {first['msg']}{more}") from None
