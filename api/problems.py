"""RFC 9457 problem details: every error answer of the API has one body shape.

On the Open Inference Protocol's paths (``/v2``, `api.v2`) the protocol's own shape is
answered instead: ``{"error": "..."}`` as ``application/json``, with 400 where /v1 says 422
(`error_answer` picks by path, for the exception handlers and the middleware alike).

``{"type", "title", "status", "detail"}`` plus, for some kinds, a member of their own
(``bytes_missing``, ``reason``, ``errors``), served as ``application/problem+json``. ``type``
is ``urn:nestdnn:problem:KIND`` for the kinds listed in `KINDS` (docs/api.md describes each),
or ``about:blank`` when the status says it all (then ``title`` is the status phrase).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

PROBLEM_MEDIA_TYPE = "application/problem+json"
V2_PREFIX = "/v2"
TYPE_PREFIX = "urn:nestdnn:problem:"
MAX_DETAIL_CHARS = 1000
_ADDRESS = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Kind:
    """A kind of problem: its status and its title (the same for every occurrence)."""

    name: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.name


KINDS = {
    kind.name: kind
    for kind in (
        Kind("priority-above-cap", 403, "Priority above the cap for this caller"),
        Kind("unknown-app", 404, "No such app"),
        Kind("unknown-model", 404, "No such model"),
        Kind("body-timeout", 408, "Request body not received in time"),
        Kind("infeasible", 409, "No plan fits the memory budget"),
        Kind("body-too-large", 413, "Request body too large"),
        Kind("unsupported-media-type", 415, "Unsupported media type"),
        Kind("host-not-allowed", 421, "Host not allowed"),
        Kind("invalid-request", 422, "Invalid request"),
        Kind("bad-frame", 422, "Frame cannot be used"),
        Kind("frame-dropped", 429, "Frame dropped"),
        Kind("queue-full", 429, "App queue full"),
        Kind("headers-too-large", 431, "Request headers too large"),
        Kind("internal-error", 500, "Internal error"),
        Kind("bad-model-output", 502, "Model produced an invalid output"),
        Kind("model-unavailable", 503, "Model unavailable"),
        Kind("too-many-connections", 503, "Too many connections"),
        Kind("bodies-in-flight", 503, "Too much request data in flight"),
    )
}


def clean_detail(text: str) -> str:
    """A detail fit to send: no memory addresses (``<... at 0x7f...>``), at most
    `MAX_DETAIL_CHARS` characters (details may quote what the client sent)."""
    text = _ADDRESS.sub("", text)
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


def problem_body(
    status: int, detail: str, kind: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The problem object of a given kind (`KINDS`), or of ``about:blank`` when None."""
    if kind is None:
        head = {"type": "about:blank", "title": HTTPStatus(status).phrase}
    else:
        known = KINDS[kind]
        assert known.status == status, f"{kind} is a {known.status}, not a {status}"
        head = {"type": known.type, "title": known.title}
    return {**head, "status": status, "detail": clean_detail(detail), **extra}


def problem(
    status: int,
    detail: str,
    kind: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem answer for the ASGI app."""
    return JSONResponse(
        problem_body(status, detail, kind, **extra),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def is_v2(path: str) -> bool:
    """Whether a request path is one of the Open Inference Protocol's (``/v2``...)."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def v2_status(status: int) -> int:
    """The protocol's status for one of ours: a request that cannot be used is a 400."""
    return 400 if status == 422 else status


def error_answer(
    path: str,
    status: int,
    detail: str,
    kind: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The error answer for a request to ``path``: ``{"error": detail}`` on /v2 (the
    protocol's, without the problem's extra members), else a problem of this kind."""
    if is_v2(path):
        return JSONResponse(
            {"error": clean_detail(detail)}, status_code=v2_status(status), headers=headers
        )
    return problem(status, detail, kind, headers=headers, **extra)


def raw_problem(status: int, detail: str, kind: str | None = None) -> bytes:
    """A whole HTTP/1.1 problem answer that closes the connection, for the layers below the
    ASGI app (the connection guard) and for middleware answering before the app runs."""
    body = json.dumps(problem_body(status, detail, kind)).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body
