"""The FastAPI application factory: routers, auth, error mapping, limits, OpenAPI, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from api import v2
from api.daemon import ApiSettings, Daemon
from api.deps import known_query_only
from api.errors import install_error_handlers
from api.middleware import BodyLimits, HostCheck, RequestCounter
from api.openapi import install_openapi
from api.routers import admin, apps, health, infer, models, schedule
from scheduler.daemon import Runtime

API_VERSION = "1"


def create_app(runtime: Runtime, settings: ApiSettings) -> FastAPI:
    """A FastAPI app serving ``runtime``; the runtime starts and stops with the app's lifespan."""
    daemon = Daemon(runtime, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(daemon.start)
        try:
            yield
        finally:
            await run_in_threadpool(daemon.stop)

    app = FastAPI(
        title="nestdnn daemon",
        version=API_VERSION,
        description="Multi-tenant on-device inference with multi-capacity models: apps "
        "register, send frames and get predictions; the scheduler picks each "
        "app's descendant and processor share. See docs/api.md.",
        lifespan=lifespan,
        dependencies=[Depends(known_query_only)],
    )
    app.state.daemon = daemon
    app.router.routes.append(infer.InferRoute())  # serves infer ahead of the documented route
    for module in (apps, infer, schedule, models, admin, health):
        app.include_router(module.router)
    v2.install(app)  # the Open Inference Protocol (KServe v2) beside /v1
    install_error_handlers(app)
    install_openapi(app, open_registration=settings.registration == "open")
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        in_flight_bytes=settings.body_bytes_in_flight,
    )
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(RequestCounter, metrics=daemon.metrics)  # outermost: counts every answer
    return app
