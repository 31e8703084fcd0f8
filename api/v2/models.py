"""Model metadata, readiness, configuration and statistics: ``/v2/models/{model}[/versions/
{version}]`` and its ``/ready``, ``/config`` and ``/stats``; ``/v2/models/stats``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.auth import bearer_credentials
from api.daemon import Daemon
from api.deps import DaemonDep
from api.metrics import Tally
from api.openapi import v2_errors
from api.v2 import model as v2model
from api.v2.errors import ModelNotReady
from api.v2.schemas import (
    Duration,
    InferStats,
    ModelConfig,
    ModelMetadata,
    ModelReady,
    ModelStat,
    ModelStats,
)
from scheduler.daemon import CatalogueEntry, UnknownModel

router = APIRouter(prefix="/v2/models", tags=["v2"])
_MODEL = "/{model}"
_VERSION = "/{model}/versions/{version}"


def model_entry(daemon: Daemon, name: str) -> CatalogueEntry:
    """The servable model of this name, or `UnknownModel` (404)."""
    entry = daemon.catalogue.entries.get(name)
    if entry is None:
        known = ", ".join(sorted(daemon.catalogue.entries)) or "none"
        raise UnknownModel(f"no model named {name[:128]!r} (served: {known})")
    return entry


@router.get("/stats", response_model=ModelStats)
async def all_stats(daemon: DaemonDep) -> ModelStats:
    """Statistics of every version of every model that has served a request."""
    return ModelStats(model_stats=[
        stat for name in sorted(daemon.catalogue.entries) for stat in _stats(daemon, name, None)
    ])


@router.get(_MODEL, response_model=ModelMetadata, responses=v2_errors(404))
async def model_metadata(model: str, daemon: DaemonDep) -> ModelMetadata:
    """Name, versions (the descendants), platform, inputs and outputs."""
    return v2model.metadata(model_entry(daemon, model))


@router.get(_VERSION, response_model=ModelMetadata, responses=v2_errors(404))
async def version_metadata(model: str, version: str, daemon: DaemonDep) -> ModelMetadata:
    """The model's metadata (every descendant has the same inputs and outputs)."""
    entry = model_entry(daemon, model)
    v2model.descendant_of(entry, version)
    return v2model.metadata(entry)


@router.get(f"{_MODEL}/ready", response_model=ModelReady, responses=v2_errors(400, 404))
async def model_ready(model: str, daemon: DaemonDep) -> ModelReady:
    """200 when the model is servable and the runtime running (400 otherwise)."""
    entry = model_entry(daemon, model)
    if not daemon.running:
        raise ModelNotReady(f"model {model!r} is not ready: the runtime is not running")
    return ModelReady(name=entry.name, ready=True)


@router.get(f"{_VERSION}/ready", response_model=ModelReady,
            responses=v2_errors(400, 401, 404),
            openapi_extra={"security": [{"AppToken": []}, {}]})
async def version_ready(model: str, version: str, request: Request,
                        daemon: DaemonDep) -> ModelReady:
    """200 when this descendant is in force: for the calling app's token, the app's planned
    descendant; without a token, any app's. 400 otherwise (infer then answers 409)."""
    entry = model_entry(daemon, model)
    descendant = v2model.descendant_of(entry, version)
    if not daemon.running:
        raise ModelNotReady(f"model {model!r} is not ready: the runtime is not running")
    in_force = _in_force(daemon, entry, request.headers.get("authorization"))
    if descendant not in in_force:
        planned = ", ".join(map(str, sorted(in_force))) or "none"
        raise ModelNotReady(
            f"version {descendant} of {model!r} is not in force (planned now: {planned})"
        )
    return ModelReady(name=entry.name, ready=True)


@router.get(f"{_MODEL}/config", response_model=ModelConfig, responses=v2_errors(404))
async def model_config(model: str, daemon: DaemonDep) -> ModelConfig:
    """Triton's model configuration (what perf_analyzer and tritonclient read)."""
    return v2model.config(model_entry(daemon, model), daemon.runtime.settings.backend)


@router.get(f"{_VERSION}/config", response_model=ModelConfig, responses=v2_errors(404))
async def version_config(model: str, version: str, daemon: DaemonDep) -> ModelConfig:
    """The model's configuration (the same for every descendant)."""
    entry = model_entry(daemon, model)
    v2model.descendant_of(entry, version)
    return v2model.config(entry, daemon.runtime.settings.backend)


@router.get(f"{_MODEL}/stats", response_model=ModelStats, responses=v2_errors(404))
async def model_stats(model: str, daemon: DaemonDep) -> ModelStats:
    """Statistics of every version of the model that has served a request."""
    return ModelStats(model_stats=_stats(daemon, model_entry(daemon, model).name, None))


@router.get(f"{_VERSION}/stats", response_model=ModelStats, responses=v2_errors(404))
async def version_stats(model: str, version: str, daemon: DaemonDep) -> ModelStats:
    """Statistics of one version (zero counts if it has served none)."""
    entry = model_entry(daemon, model)
    return ModelStats(model_stats=_stats(daemon, entry.name,
                                         str(v2model.descendant_of(entry, version))))


def _in_force(daemon: Daemon, entry: CatalogueEntry, authorization: str | None) -> set[int]:
    """The descendants of the model the plan gives the caller's app (with an app token of
    this model) or any of the model's apps."""
    credentials = bearer_credentials(authorization)
    app_id = None if credentials is None else daemon.tokens.app_of(credentials.credentials)
    return {app.descendant for app in daemon.runtime.snapshot().apps
            if app.model == entry.name and app.descendant is not None
            and (app_id is None or app.id == app_id)}


def _stats(daemon: Daemon, model: str, version: str | None) -> list[ModelStat]:
    tallies = daemon.metrics.inference.of(model)
    if version is not None:
        return [_stat(model, version, tallies.get(version, Tally()))]
    return [_stat(model, v, tally) for v, tally in sorted(tallies.items()) if v]


def _stat(model: str, version: str, tally: Tally) -> ModelStat:
    done = tally.success

    def duration(count: int, us: float) -> Duration:
        return Duration(count=count, ns=int(us * 1000))

    return ModelStat(
        name=model,
        version=version,
        last_inference=tally.last_inference_ms,
        inference_count=tally.rows,
        execution_count=round(tally.executions),
        inference_stats=InferStats(
            success=duration(done, tally.request_us),
            fail=duration(tally.failure, 0.0),
            queue=duration(done, tally.queue_us),
            compute_input=duration(done, 0.0),
            compute_infer=duration(done, tally.compute_us),
            compute_output=duration(done, 0.0),
        ),
        batch_stats=[],
    )
