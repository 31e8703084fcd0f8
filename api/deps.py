"""Shared FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.daemon import Daemon


async def get_daemon(request: Request) -> Daemon:
    """The daemon object of this FastAPI app (async: no thread hop for a lookup)."""
    return request.app.state.daemon


DaemonDep = Annotated[Daemon, Depends(get_daemon)]
