"""The runtime's persisted state: registered apps, policy, budget and the plan in force.

Written atomically (temporary file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new file. A file that cannot be read as
this schema is moved aside (``state.json.corrupt-<time>``) with a warning and the runtime
starts empty: a bad state file never keeps the daemon from starting.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nestdnn.errors import validation_message
from nestdnn.files import atomic_write
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
    """Write the state file atomically: temp file, fsync, rename, fsync the directory."""
    return atomic_write(state_dir / STATE_FILE, state.model_dump_json(indent=2))


def load_state(state_dir: Path) -> RuntimeState | None:
    """The persisted state, or None when there is none or it was corrupt (then moved aside)."""
    path = state_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return _move_aside(path, f"cannot be read ({exc})")
    try:
        return RuntimeState.model_validate_json(text)
    except ValidationError as exc:
        return _move_aside(path, f"is not a valid runtime state ({validation_message(exc)})")


def _move_aside(path: Path, problem: str) -> None:
    """Rename a bad state file out of the way and warn; the runtime starts empty."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    copy = 1
    while aside.exists():
        copy += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{copy}")
    os.replace(path, aside)
    log.warning("state file %s %s; moved it to %s and starting with no apps", path, problem, aside)
