"""The on-device runtime: catalogue, planning, model manager, backends, executor and state.

This is the daemon's Python API (the REST layer in `api/` is a thin skin over it); see
docs/runtime.md. The optimiser it plans with is the parent package `scheduler`, which knows
nothing of this one.
"""

from scheduler.daemon.backends import InferenceBackend, LoadedModel, make_backend
from scheduler.daemon.catalogue import CatalogueEntry, ModelCatalogue, RejectedModel
from scheduler.daemon.errors import (
    BadModelOutput,
    FrameDropped,
    Infeasible,
    ModelUnavailable,
    QueueFull,
    UnknownApp,
    UnknownModel,
)
from scheduler.daemon.executor import Prediction
from scheduler.daemon.runtime import Runtime
from scheduler.daemon.specs import (
    OVERFLOWS,
    AppInfo,
    AppSpec,
    AppState,
    AppStatus,
    RuntimeSettings,
    Snapshot,
)

__all__ = [
    "OVERFLOWS",
    "AppInfo",
    "AppSpec",
    "AppState",
    "AppStatus",
    "BadModelOutput",
    "CatalogueEntry",
    "FrameDropped",
    "Infeasible",
    "InferenceBackend",
    "LoadedModel",
    "ModelCatalogue",
    "ModelUnavailable",
    "Prediction",
    "QueueFull",
    "RejectedModel",
    "Runtime",
    "RuntimeSettings",
    "Snapshot",
    "UnknownApp",
    "UnknownModel",
    "make_backend",
]
