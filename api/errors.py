"""Map the runtime's errors to HTTP answers with a message that says what is wrong."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.frames import UnsupportedMediaType
from nestdnn.errors import NestError
from scheduler.daemon import FrameDropped, Infeasible, QueueFull, UnknownApp, UnknownModel

log = logging.getLogger(__name__)


def _problem(status: int, exc: Exception, **extra: object) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": str(exc), **extra})


async def _unknown(_request: Request, exc: Exception) -> JSONResponse:
    return _problem(404, exc)


async def _infeasible(_request: Request, exc: Exception) -> JSONResponse:
    return _problem(409, exc, bytes_missing=int(getattr(exc, "bytes_missing", 0)))


async def _dropped(_request: Request, exc: Exception) -> JSONResponse:
    return _problem(429, exc, reason="dropped")


async def _queue_full(_request: Request, exc: Exception) -> JSONResponse:
    return _problem(429, exc, reason="queue_full")


async def _media_type(_request: Request, exc: Exception) -> JSONResponse:
    return _problem(415, exc)


async def _bad_input(request: Request, exc: Exception) -> JSONResponse:
    log.debug("422 on %s %s: %s", request.method, request.url.path, exc)
    return _problem(422, exc)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers (the most specific class of an error wins)."""
    app.add_exception_handler(UnknownModel, _unknown)
    app.add_exception_handler(UnknownApp, _unknown)
    app.add_exception_handler(Infeasible, _infeasible)
    app.add_exception_handler(FrameDropped, _dropped)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(UnsupportedMediaType, _media_type)
    app.add_exception_handler(NestError, _bad_input)
