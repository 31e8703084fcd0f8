"""Which app a /v2 request comes from: the bearer token of an app (from ``POST /v1/apps``),
as on /v1; its frames are scheduled under that app's plan and share.

Without a token: refused (401) under ``--registration token``, the default; under
``--registration open`` (anyone may register anyway) token-less callers of a model share
one app of that model, registered on first use at the default priority and named
`ANONYMOUS_NAME` (found again after a restart, like every registered app). One shared app,
not one per caller: a client that never sends a token (perf_analyzer without ``-H``) would
otherwise register an app per request. Answers name the app in `APP_HEADER`.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from api.auth import bearer_credentials
from api.daemon import Daemon
from api.v2.errors import WrongModel
from scheduler.daemon import AppSpec, CatalogueEntry

log = logging.getLogger(__name__)

APP_HEADER = "nestdnn-app"
ANONYMOUS_NAME = "v2-anonymous"
ANONYMOUS_TARGET_LATENCY_S = 0.1
"""The anonymous app's latency target (an app registered through /v1 states its own)."""
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Identities:
    """Finds the calling app of a request (and the anonymous apps of open registration)."""

    def __init__(self) -> None:
        self._anonymous: dict[str, str] = {}
        self._registering = asyncio.Lock()

    async def app_for(self, daemon: Daemon, entry: CatalogueEntry,
                      authorization: str | None) -> str:
        """The id of the app the request acts for; an HTTPException (401/403) or
        `WrongModel` (403) when it may not use this model."""
        assert daemon.auth is not None, "the daemon answers requests only once started"
        credentials = bearer_credentials(authorization)
        if credentials is None:
            if daemon.registration.mode == "open":
                return await self._anonymous_app(daemon, entry)
            raise HTTPException(
                status_code=401,
                detail="missing bearer token: send 'Authorization: Bearer TOKEN' with the token"
                " of an app registered with POST /v1/apps (the daemon runs with"
                " --registration token)",
                headers=_CHALLENGE,
            )
        app_id = daemon.tokens.app_of(credentials.credentials)
        if app_id is None:
            if daemon.auth.is_admin(credentials.credentials):
                raise HTTPException(
                    status_code=403,
                    detail="the admin token acts on no app: send the token of an app",
                )
            raise HTTPException(status_code=401, detail="not the token of a registered app",
                                headers=_CHALLENGE)
        model = daemon.entry(app_id).name
        if model != entry.name:
            raise WrongModel(f"this token's app serves model {model!r}, not {entry.name!r}")
        return app_id

    async def _anonymous_app(self, daemon: Daemon, entry: CatalogueEntry) -> str:
        """The shared app of token-less callers of a model, registered on first use."""
        app_id = self._anonymous.get(entry.name)
        if app_id is not None and daemon.app_exists(app_id):
            return app_id
        async with self._registering:
            app_id = self._anonymous.get(entry.name)
            if app_id is None or not daemon.app_exists(app_id):
                app_id = await run_in_threadpool(_find_or_register, daemon, entry.name)
                self._anonymous[entry.name] = app_id
        return app_id


def _find_or_register(daemon: Daemon, model: str) -> str:
    """The registered anonymous app of a model (one from before a restart), or a new one."""
    for app in daemon.runtime.snapshot().apps:
        if app.name == ANONYMOUS_NAME and app.model == model:
            return app.id
    spec = AppSpec(model=model, target_latency_s=ANONYMOUS_TARGET_LATENCY_S,
                   name=ANONYMOUS_NAME)
    info, _token = daemon.register(spec)
    log.info("v2: app %s registered for token-less callers of %s (--registration open)",
             info.id, model)
    return info.id
