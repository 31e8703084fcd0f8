"""Inference: one frame in, the prediction, the descendant used and the latency out."""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth import AppId
from api.deps import DaemonDep
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
from api.schemas import InferJSON, InferOut, OverloadProblem, Problem, TopK
from scheduler.runtime import CatalogueEntry, Prediction

router = APIRouter(prefix="/v1/apps", tags=["inference"])

INLINE_DECODE_BYTES = 64 << 10  # smaller .npy / JSON bodies decode on the event loop
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
_ERRORS = {status: {"model": Problem} for status in (400, 401, 403, 404, 413, 415, 422)} | {
    429: {"model": OverloadProblem}
}


@router.post(
    "/{app_id}/infer",
    response_model=InferOut,
    responses=_ERRORS,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def infer(
    request: Request,
    app_id: AppId,
    daemon: DaemonDep,
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="Classes to return.")] = None,
) -> Response:
    """Run one frame on the app's current descendant (needs the app's token)."""
    arrived = time.perf_counter()
    entry = daemon.entry(app_id)
    frame = await _read_frame(request, daemon.frame_spec(entry))
    future = daemon.submit(app_id, frame)
    prediction = await asyncio.wrap_future(future)
    total = time.perf_counter() - arrived
    daemon.metrics.latency.labels(app_id).observe(total)
    answer = _answer(prediction, entry, top_k or daemon.settings.top_k, total)
    return Response(answer.model_dump_json(), media_type="application/json")  # built once


async def _read_frame(request: Request, spec: FrameSpec) -> torch.Tensor:
    """Read the body (or the multipart 'file' part) and decode it off the loop when large."""
    kind = media_type(request.headers.get("content-type"))
    if kind in MULTIPART_TYPES:
        body, kind = await _multipart_file(request)
    else:
        body = await request.body()
    if len(body) <= INLINE_DECODE_BYTES and kind not in IMAGE_TYPES:
        return decode_frame(body, kind, spec)
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


def _name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)
