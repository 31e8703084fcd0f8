"""Inference: one frame in, the prediction, the descendant used and the latency out.

This is the daemon's hot path, and every microsecond the event loop holds the GIL slows the
inference worker down (measured: a thread holding the GIL 30 % of the time stretches a
VGG-16 x0.25 forward pass from 4.5 to 6.6 ms). So:

* the endpoint takes no FastAPI dependencies: each one (the app token, the daemon, the
  ``top_k`` query parameter) cost 80-135 us of event-loop CPU per request. The token is
  checked with the same function as the other app endpoints (`api.auth.check_app_token`),
  ``top_k`` validated with the same constraints and the same 422 answer FastAPI gives;
* requests are served by a plain Starlette route (`InferRoute`) registered ahead of the
  FastAPI route, which only documents the operation (OpenAPI: parameters, security, body,
  answers) and never sees a request: FastAPI's request handling cost ~70 us more than
  Starlette's for the same endpoint. Both call `infer`; errors go through the same
  exception handlers, limits and metrics (middleware) as every other route.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.auth import bearer_credentials, check_app_token
from api.daemon import Daemon
from api.deps import refuse_unknown_query
from api.frames import (
    IMAGE_TYPES,
    JSON_TYPES,
    MULTIPART_TYPES,
    NPY_TYPES,
    FrameError,
    FrameSpec,
    decode_frame,
    media_type,
    sniff_type,
)
from api.middleware import BodyTooLarge
from api.openapi import problems
from api.schemas import InferJSON, InferOut, TopK
from scheduler.daemon import CatalogueEntry, Prediction
from scheduler.daemon.errors import BadModelOutput

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/apps", tags=["inference"])

INLINE_DECODE_BYTES = 64 << 10
"""Smaller .npy / JSON bodies decode on the event loop; images and larger bodies in a thread,
at most `ApiSettings.decode_slots` at a time (each decode may take a few MB)."""
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "description": "One frame. Float arrays are normalised model input; images and uint8 "
    "arrays are pixels (converted, resized, normalised). See docs/api.md.",
    "content": {
        **{kind: _BINARY for kind in (*NPY_TYPES, *IMAGE_TYPES)},
        **{kind: {"schema": InferJSON.model_json_schema()} for kind in JSON_TYPES},
        **{
            kind: {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
            for kind in MULTIPART_TYPES
        },
    },
}
_ERRORS = problems(401, 403, 404, 415, 429, 502)
TOP_K_MAX = 1000
_TOP_K = TypeAdapter(Annotated[int, Field(ge=1, le=TOP_K_MAX)])
_TOP_K_PARAMETER: dict[str, Any] = {  # as FastAPI documents Query(ge=1, le=1000) of int | None
    "description": "Classes to return.",
    "in": "query",
    "name": "top_k",
    "required": False,
    "schema": {
        "anyOf": [{"maximum": TOP_K_MAX, "minimum": 1, "type": "integer"}, {"type": "null"}],
        "description": "Classes to return.",
        "title": "Top K",
    },
}


@router.post(
    "/{app_id}/infer",
    response_model=InferOut,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": _REQUEST_BODY,
        "parameters": [_TOP_K_PARAMETER],
        "security": [{"AppToken": []}],
    },
)
async def infer(request: Request, app_id: str) -> Response:
    """Run one frame on the app's current descendant (needs the app's token)."""
    arrived = time.perf_counter()
    daemon: Daemon = request.app.state.daemon
    assert daemon.auth is not None, "the daemon answers requests only once started"
    check_app_token(daemon.auth, app_id, bearer_credentials(request.headers.get("authorization")))
    top_k = _top_k(request)
    entry = daemon.entry(app_id)
    try:
        frame = await _read_frame(request, daemon, daemon.frame_spec(entry))
        prediction = await asyncio.wrap_future(daemon.submit(app_id, frame))
    except BadModelOutput as exc:
        count_bad_output(daemon, app_id, entry, exc)
        daemon.metrics.inference.failure(entry.name, None)
        raise
    except Exception:
        daemon.metrics.inference.failure(entry.name, None)
        raise
    total = time.perf_counter() - arrived
    daemon.metrics.latency.labels(app_id).observe(total)
    daemon.metrics.inference.success(
        entry.name, prediction.descendant, 1, 1.0 / prediction.batch, total,
        prediction.queue_s, prediction.compute_s / prediction.batch)
    answer = _answer(prediction, entry, top_k or daemon.settings.top_k, total)
    return Response(answer.model_dump_json(), media_type="application/json")  # built once


def count_bad_output(daemon: Daemon, app_id: str, entry: CatalogueEntry,
                     exc: BadModelOutput) -> None:
    """Log and count a frame whose model outputs were NaN or infinite (answered 502)."""
    daemon.metrics.bad_outputs.labels(entry.name).inc()
    log.error("app %s, model %s: %s (answered 502)", app_id, entry.name, exc)


class InferRoute(Route):
    """``POST /v1/apps/{app_id}/infer`` served by Starlette (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(f"{router.prefix}/{{app_id}}/infer", _serve, methods=["POST"],
                         include_in_schema=False)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # as FastAPI does: the request counter labels by route template
        await super().handle(scope, receive, send)


async def _serve(request: Request) -> Response:
    return await infer(request, request.path_params["app_id"])


async def _read_frame(request: Request, daemon: Daemon, spec: FrameSpec) -> np.ndarray:
    """Read the body (or the multipart 'file' part) and decode it: on the loop when small,
    else in a thread once one of the daemon's decode slots is free."""
    kind = media_type(request.headers.get("content-type"))
    if kind in MULTIPART_TYPES:
        body, kind = await _multipart_file(request)
    else:
        body = await request.body()
    limit = daemon.settings.max_json_frame_bytes
    if kind in JSON_TYPES and len(body) > limit:
        raise BodyTooLarge(f"JSON frames are limited to {limit} bytes: send .npy or an image")
    if len(body) <= INLINE_DECODE_BYTES and kind not in IMAGE_TYPES:
        return decode_frame(body, kind, spec)
    async with daemon.decodes:
        return await run_in_threadpool(decode_frame, body, kind, spec)


async def _multipart_file(request: Request) -> tuple[bytes, str]:
    """The bytes and media type of the 'file' part of a multipart form."""
    async with request.form(max_files=1, max_fields=4) as form:
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise FrameError("multipart body needs a file part named 'file'")
        data = await part.read()
        declared = media_type(part.content_type)
    known = (*NPY_TYPES, *IMAGE_TYPES, *JSON_TYPES)
    return data, declared if declared in known else (sniff_type(data) or declared)


def _answer(prediction: Prediction, entry: CatalogueEntry, k: int, total: float) -> InferOut:
    """The response body: label, class name and the top-k classes."""
    probs = prediction.probabilities
    best = heapq.nlargest(k, range(len(probs)), key=probs.__getitem__)
    names = entry.class_names
    return InferOut(
        label=prediction.label,
        class_name=_name(names, prediction.label),
        top_k=[TopK(label=i, class_name=_name(names, i), score=probs[i]) for i in best],
        descendant=prediction.descendant,
        queue_ms=prediction.queue_s * 1000.0,
        compute_ms=prediction.compute_s * 1000.0,
        total_ms=total * 1000.0,
    )


def _top_k(request: Request) -> int | None:
    """The ``top_k`` query parameter (the last if repeated), or a 422 as FastAPI words it;
    any other query parameter is a 422 too (`api.deps.known_query_only`)."""
    params = request.query_params
    if len(params) > ("top_k" in params):
        refuse_unknown_query(params.keys(), {"top_k"})
    raw = params.get("top_k")
    if raw is None:
        return None
    try:
        return _TOP_K.validate_python(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", "top_k", *e["loc"])}
                  for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)
