"""``POST /v2/models/{model}[/versions/{version}]/infer``: the rows of the request run under
the calling app's plan and share; ``model_version`` is the descendant that ran them.

Like /v1's infer this is the hot path: it is served by plain Starlette routes registered
ahead of the documented FastAPI routes (no dependency injection; see `api.routers.infer`).
The rows are submitted to the runtime together (at most the app's queue size at a time, so a
large request never pushes its own rows out of the queue), so the executor may run them as
one batch when batching pays.

A version in the path pins the descendant: if the plan gives the app another one, the answer
is 409 naming the descendant in force (checked before the rows run, and again after, in
case the plan switched meanwhile). Request parameters: ``timeout`` (Triton's, microseconds)
is honoured (rows not started by then are cancelled: 429); ``priority`` is refused unless 0
(an app's priority is its plan's, set with ``PATCH /v1/apps/{id}``); ``binary_data_output``
as the binary extension says. Any other parameter is refused (400).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.daemon import Daemon
from api.deps import refuse_unknown_query
from api.frames import FrameSpec
from api.openapi import v2_errors
from api.routers.infer import INLINE_DECODE_BYTES, count_bad_output
from api.v2 import model as v2model
from api.v2.codec import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH,
    JSON_MEDIA_TYPE,
    decode_inputs,
    encode_answer,
    split_body,
)
from api.v2.errors import (
    BadInferRequest,
    InferTimeout,
    UnsupportedEncoding,
    VersionNotInForce,
)
from api.v2.identity import APP_HEADER, Identities
from api.v2.models import model_entry
from api.v2.schemas import InferRequest, InferResponse
from scheduler.daemon import BadModelOutput, CatalogueEntry, Prediction

router = APIRouter(prefix="/v2/models", tags=["v2"])
PATHS = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
MAX_TIMEOUT_US = 3600 * 10**6
_REQUEST_BODY = {
    "description": "The inference request as JSON, or (binary tensor data extension) a JSON "
    "header of Inference-Header-Content-Length bytes followed by the inputs' raw bytes.",
    "content": {BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}
_HEADER_PARAMETER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Binary tensor data extension: the length of the JSON header in bytes.",
    "schema": {"type": "integer", "minimum": 0},
}
_OPENAPI = {
    "requestBody": _REQUEST_BODY,
    "parameters": [_HEADER_PARAMETER],
    "security": [{"AppToken": []}, {}],
    "responses": {"200": {"content": {
        JSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/InferResponse"}},
        BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
    }}},
}
_ERRORS = v2_errors(401, 403, 404, 409, 415, 429, 502)


@router.post("/{model}/infer", response_model=InferResponse, responses=_ERRORS,
             openapi_extra=_OPENAPI)
async def infer(request: Request, model: str, body: InferRequest) -> Response:
    """Run the rows on the calling app's descendant (the app's token; see docs/api.md).
    (Documents the operation: requests are served by `InferRoute`, ``body`` is read there.)"""
    return await serve(request, model, None)


@router.post("/{model}/versions/{version}/infer", response_model=InferResponse,
             responses=_ERRORS, openapi_extra=_OPENAPI)
async def infer_version(request: Request, model: str, version: str,
                        body: InferRequest) -> Response:
    """Run the rows if this descendant is the calling app's (else 409)."""
    return await serve(request, model, version)


class InferRoute(Route):
    """A /v2 infer path served by Starlette (see the module docstring)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, _serve, methods=["POST"], include_in_schema=False)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # the request counter labels by route template
        await super().handle(scope, receive, send)


async def _serve(request: Request) -> Response:
    params = request.path_params
    return await serve(request, params["model"], params.get("version"))


async def serve(request: Request, model: str, version: str | None) -> Response:
    """Check, decode, run and answer one inference request; failures are counted."""
    arrived = time.perf_counter()
    daemon: Daemon = request.app.state.daemon
    entry = model_entry(daemon, model)
    pinned = None if version is None else v2model.descendant_of(entry, version)
    try:
        app_id, predictions, answer = await _infer(request, daemon, entry, pinned)
    except Exception:
        daemon.metrics.inference.failure(entry.name, pinned)
        raise
    total = time.perf_counter() - arrived
    daemon.metrics.inference.success(
        entry.name, predictions[-1].descendant, len(predictions),
        sum(1.0 / p.batch for p in predictions), total,
        sum(p.queue_s for p in predictions),
        sum(p.compute_s / p.batch for p in predictions),
    )
    daemon.metrics.latency.labels(app_id).observe(total)
    return answer


async def _infer(request: Request, daemon: Daemon, entry: CatalogueEntry,
                 pinned: int | None) -> tuple[str, list[Prediction], Response]:
    if request.scope["query_string"]:  # cheaper than building query_params every request
        refuse_unknown_query(request.query_params.keys(), set())
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:32]!r} is not accepted: send "
                                  "the body uncompressed")
    identities: Identities = request.app.state.v2_identities
    app_id = await identities.app_for(daemon, entry, request.headers.get("authorization"))
    if pinned is not None:
        _check_pinned(daemon, app_id, pinned, ran=None)
    body = await request.body()
    head, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    parsed = _parse(head)
    timeout_s, binary_all = _options(parsed.parameters or {})
    wanted = _wanted(parsed, binary_all)
    frames = await _frames(daemon, parsed, binary, daemon.frame_spec(entry), len(body))
    try:
        predictions = await _run(daemon, app_id, frames, timeout_s)
    except BadModelOutput as exc:
        count_bad_output(daemon, app_id, entry, exc)
        raise
    if pinned is not None:
        _check_pinned(daemon, app_id, pinned, ran=predictions[-1].descendant)
    return app_id, predictions, _answer(entry, parsed.id, predictions, wanted, app_id)


def _answer(entry: CatalogueEntry, request_id: str | None, predictions: list[Prediction],
            wanted: v2model.Wanted, app_id: str) -> Response:
    """The inference answer: JSON, or JSON header + binary outputs."""
    ran = predictions[-1].descendant
    head: dict[str, Any] = {"model_name": entry.name, "model_version": str(ran)}
    if request_id is not None:
        head["id"] = request_id
    if any(p.descendant != ran for p in predictions):  # the plan switched the app meanwhile
        head["parameters"] = {"descendants": ",".join(str(p.descendant) for p in predictions)}
    content, header_length = encode_answer(head, v2model.outputs(predictions, entry, wanted))
    headers = {APP_HEADER: app_id}
    if header_length is None:
        return Response(content, media_type=JSON_MEDIA_TYPE, headers=headers)
    headers[HEADER_LENGTH] = str(header_length)
    return Response(content, media_type=BINARY_MEDIA_TYPE, headers=headers)


def _parse(head: bytes) -> InferRequest:
    """The JSON header as an `InferRequest` (400 saying what is wrong)."""
    try:
        return InferRequest.model_validate_json(head)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:5]
        )
        raise BadInferRequest(f"invalid inference request: {problems}") from None


def _options(parameters: dict[str, Any]) -> tuple[float | None, bool]:
    """The request parameters' timeout (seconds) and binary_data_output; others refused."""
    unknown = set(parameters) - {"timeout", "priority", "binary_data_output"}
    if unknown:
        raise BadInferRequest(
            f"request parameters not supported: {', '.join(sorted(unknown))[:200]} (supported:"
            " timeout, priority 0, binary_data_output)"
        )
    priority = parameters.get("priority", 0)
    if priority != 0:
        raise BadInferRequest(
            "per-request priority is not supported: an app's frames run at its plan's"
            " priority and share (change it with PATCH /v1/apps/{id}); send priority 0 or none"
        )
    timeout = parameters.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or not 0 < timeout <= MAX_TIMEOUT_US):
        raise BadInferRequest(f"timeout must be whole microseconds in 1..{MAX_TIMEOUT_US}")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise BadInferRequest("binary_data_output must be true or false")
    return (None if timeout is None else timeout / 1e6), binary


def _wanted(parsed: InferRequest, binary_all: bool) -> v2model.Wanted:
    """The outputs to answer (all, when none is named) and which of them go binary."""
    if not parsed.outputs:
        names = v2model.OUTPUTS
        return v2model.Wanted(names, frozenset(names) if binary_all else frozenset())
    binary = set()
    for output in parsed.outputs:
        if output.name not in v2model.OUTPUTS:
            raise BadInferRequest(
                f"no output named {output.name[:64]!r}: the model has "
                f"{', '.join(v2model.OUTPUTS)}"
            )
        parameters = output.parameters or {}
        unknown = set(parameters) - {"binary_data"}
        if unknown:
            raise BadInferRequest(
                f"output parameters not supported: {', '.join(sorted(unknown))[:200]} (ask for"
                " the label and class_name outputs instead of classification)"
            )
        flag = parameters.get("binary_data", binary_all)
        if not isinstance(flag, bool):
            raise BadInferRequest("binary_data must be true or false")
        if flag:
            binary.add(output.name)
    names = tuple(dict.fromkeys(o.name for o in parsed.outputs))
    return v2model.Wanted(names, frozenset(binary))


async def _frames(daemon: Daemon, parsed: InferRequest, binary: memoryview, spec: FrameSpec,
                  size: int) -> list[np.ndarray]:
    """The rows as model input: on the loop when small, else in a decode slot's thread."""
    def decode() -> list[np.ndarray]:
        tensors = decode_inputs(parsed.inputs, binary, v2model.INPUT_DATATYPES)
        return v2model.frames(tensors, spec)

    if size <= INLINE_DECODE_BYTES:
        return decode()
    async with daemon.decodes:
        return await run_in_threadpool(decode)


async def _run(daemon: Daemon, app_id: str, frames: list[np.ndarray],
               timeout_s: float | None) -> list[Prediction]:
    """Submit the rows (at most the app's queue size queued at once) and gather them; with a
    timeout, the rows not started when it expires are cancelled (`InferTimeout`)."""
    window = max(1, daemon.runtime.settings.queue_size)
    futures: deque = deque()
    submitted = []

    async def gather() -> list[Prediction]:
        for frame in frames:
            if len(futures) >= window:
                await asyncio.wrap_future(futures.popleft())
            future = daemon.submit(app_id, frame)
            futures.append(future)
            submitted.append(future)
        return [await asyncio.wrap_future(f) for f in submitted]

    if timeout_s is None:
        return await gather()
    try:
        return await asyncio.wait_for(gather(), timeout_s)
    except asyncio.TimeoutError:
        left = sum(not f.done() for f in submitted) + len(frames) - len(submitted)
        for future in submitted:
            future.cancel()
        raise InferTimeout(
            f"timeout of {timeout_s * 1e6:.0f} us expired with {left} of {len(frames)} rows"
            " not run (they were cancelled)"
        ) from None


def _check_pinned(daemon: Daemon, app_id: str, pinned: int, ran: int | None) -> None:
    """409 unless the pinned descendant is the app's (planned, or the one that ran)."""
    in_force = daemon.runtime.info(app_id).descendant if ran is None else ran
    if in_force is None:  # waiting or unavailable: submitting says so (503)
        return
    if in_force != pinned:
        what = "the plan gives" if ran is None else "the plan switched to"
        raise VersionNotInForce(
            f"version {pinned} is not this app's descendant: {what} it descendant"
            f" {in_force}; send the request without a version (model_version in the answer"
            " says which ran), or to /versions/{in_force}"
        )
