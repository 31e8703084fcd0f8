"""The Open Inference Protocol (KServe v2 REST, with Triton's binary tensor data, model
configuration and statistics extensions) beside /v1, over the same runtime: a model's
versions are its descendants, and the calling app is the one whose token the request bears.
See docs/api.md ("Open Inference Protocol")."""

from __future__ import annotations

from fastapi import FastAPI

from api.v2 import health, infer, models, server
from api.v2.identity import Identities


def install(app: FastAPI) -> None:
    """Serve /v2 on ``app``: the infer paths by lean routes ahead of every other route."""
    app.state.v2_identities = Identities()
    for path in reversed(infer.PATHS):
        app.router.routes.insert(0, infer.InferRoute(path))
    for module in (server, health, models, infer):
        app.include_router(module.router)
