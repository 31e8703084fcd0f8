"""Shared FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.daemon import Daemon


def get_daemon(request: Request) -> Daemon:
    """The daemon object of this FastAPI app."""
    return request.app.state.daemon


DaemonDep = Annotated[Daemon, Depends(get_daemon)]
