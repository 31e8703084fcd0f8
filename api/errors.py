"""Map every error to a problem-details answer (`api.problems`) that says what is wrong.

The most specific handler of an error's class wins: the runtime's errors and the API's own
have their kind and status; any other `NestError` is a 422 (bad input); an HTTPException keeps
its status and headers (``about:blank``); anything else is logged and answered 500. On the
Open Inference Protocol's /v2 paths the same statuses are answered in its shape,
``{"error": ...}`` (422 as 400; `api.problems.error_answer`); `api.v2.errors.V2Error` is
raised there only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.auth import PriorityAboveCap
from api.frames import FrameError, UnsupportedMediaType
from api.middleware import BUSY, CLOSE, BodiesInFlight, BodyTimeout, BodyTooLarge
from api.problems import error_answer
from api.v2.errors import V2Error
from nestdnn.errors import NestError
from scheduler.daemon import FrameDropped, Infeasible, QueueFull, UnknownApp, UnknownModel
from scheduler.daemon.errors import BadModelOutput, ModelUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[Request, Exception], Awaitable[Response]]

KIND_OF: dict[type[Exception], tuple[int, str]] = {
    UnknownApp: (404, "unknown-app"),
    UnknownModel: (404, "unknown-model"),
    PriorityAboveCap: (403, "priority-above-cap"),
    BodyTimeout: (408, "body-timeout"),
    BodyTooLarge: (413, "body-too-large"),
    UnsupportedMediaType: (415, "unsupported-media-type"),
    FrameError: (422, "bad-frame"),
    BadModelOutput: (502, "bad-model-output"),
    ModelUnavailable: (503, "model-unavailable"),
    BodiesInFlight: (503, "bodies-in-flight"),
}
"""Errors answered with their message and no member of their own."""
HEADERS = {"body-timeout": CLOSE, "body-too-large": CLOSE, "bodies-in-flight": BUSY}
"""Answered before the body was read: the connection is closed after the answer."""


def _simple(status: int, kind: str) -> Handler:
    headers = HEADERS.get(kind)

    async def handle(request: Request, exc: Exception) -> Response:
        return error_answer(request.url.path, status, str(exc), kind, headers=headers)

    return handle


async def _infeasible(request: Request, exc: Exception) -> Response:
    missing = int(getattr(exc, "bytes_missing", 0) or 0)
    return error_answer(request.url.path, 409, str(exc), "infeasible", bytes_missing=missing)


async def _dropped(request: Request, exc: Exception) -> Response:
    return error_answer(request.url.path, 429, str(exc), "frame-dropped", reason="dropped")


async def _queue_full(request: Request, exc: Exception) -> Response:
    return error_answer(request.url.path, 429, str(exc), "queue-full", reason="queue_full")


async def _bad_input(request: Request, exc: Exception) -> Response:
    log.debug("422 on %s %s: %s", request.method, request.url.path, exc)
    return error_answer(request.url.path, 422, str(exc), "invalid-request")


async def _v2_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, V2Error)
    return error_answer(request.url.path, exc.status, str(exc), headers=exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """Field and parameter errors, listed without the values sent (a NaN or a huge string
    sent back would break the answer or bloat it)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return error_answer(
        request.url.path, 422, detail or "invalid request", "invalid-request", errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_answer(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("500 on %s %s", request.method, request.url.path, exc_info=exc)
    return error_answer(
        request.url.path,
        500,
        "the daemon failed to handle this request; see its log",
        "internal-error",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers (the most specific class of an error wins)."""
    for cls, (status, kind) in KIND_OF.items():
        app.add_exception_handler(cls, _simple(status, kind))
    app.add_exception_handler(Infeasible, _infeasible)
    app.add_exception_handler(FrameDropped, _dropped)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(V2Error, _v2_error)
    app.add_exception_handler(NestError, _bad_input)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
