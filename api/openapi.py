"""The OpenAPI document: every error answer of every operation, as problem details.

Routes name the statuses particular to them (`problems`); `install_openapi` adds those any
operation can get (`EVERY_OPERATION`; and for an operation with a body: unparsable,
oversized or late bodies), and serves all of them as ``application/problem+json`` with the
schema of their status. The Open Inference Protocol's /v2 operations answer errors in its
shape instead (`v2_errors`: ``{"error": ...}`` as application/json; 400 for a request that
cannot be used), except what the connection guard below the app sends (431, and 503 for too
many connections), which stays a problem.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.problems import PROBLEM_MEDIA_TYPE, is_v2
from api.schemas import InfeasibleProblem, OverloadProblem, Problem, ValidationProblem
from api.v2.schemas import Error

DESCRIPTIONS = {
    400: "The body cannot be parsed (malformed JSON or multipart).",
    401: "No bearer token.",
    403: "The token does not allow this.",
    404: "No such app or model.",
    408: "The body did not arrive in time.",
    409: "No plan fits the memory budget; nothing was changed (`bytes_missing`).",
    413: "The body is larger than the daemon's limit.",
    415: "The Content-Type is not one the operation takes.",
    421: "The Host header does not name this daemon (DNS-rebinding guard).",
    422: "A field, parameter or frame is invalid (`errors` lists fields and parameters).",
    429: "The frame was not run (`reason`: `dropped` or `queue_full`).",
    431: "The request headers are larger than the daemon's limit.",
    502: "The model produced NaN or infinite outputs for this frame (counted in /metrics).",
    503: "Too many connections or too much request data in flight (retry), or the app's "
    "model cannot serve now.",
}
V2_DESCRIPTIONS = {
    400: "The request cannot be used (what is wrong, in `error`), or the model or version is "
    "not ready.",
    404: "No such model or version.",
    409: "The version asked for is not the calling app's descendant in force.",
    415: "A compressed body (Content-Encoding).",
    429: "The frames were not run: dropped from the app's queue, or the timeout expired.",
}
V2_EVERY_OPERATION = (400, 421, 431, 503)
"""Unknown query parameters, the Host check, oversized headers, too many connections."""
V2_JSON_MEDIA_TYPE = "application/json"
_GUARD = (431, 503)
"""Statuses the connection guard may send on any path, as problems."""
SCHEMAS: dict[int, type[BaseModel]] = {
    409: InfeasibleProblem,
    422: ValidationProblem,
    429: OverloadProblem,
}
EVERY_OPERATION = (421, 422, 431, 503)
"""The Host check, unknown query parameters, oversized headers, too many connections."""
WITH_BODY = (400, 408, 413)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for error statuses particular to it."""
    return {status: _response(status) for status in statuses}


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a /v2 route for error statuses particular to it."""
    return {status: _v2_response(status) for status in statuses}


def _v2_response(status: int) -> dict[str, Any]:
    content = {V2_JSON_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{Error.__name__}"}}}
    if status in _GUARD:
        content.update(_response(status)["content"])
    description = V2_DESCRIPTIONS.get(status) or DESCRIPTIONS[status]
    return {"description": description, "content": content}


def _response(status: int) -> dict[str, Any]:
    name = SCHEMAS.get(status, Problem).__name__
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {
        "description": DESCRIPTIONS[status],
        "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
    }


def install_openapi(app: FastAPI, *, open_registration: bool) -> None:
    """Serve the OpenAPI document with the problem answers of every operation. With open
    registration, registering needs no token (an empty security requirement)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _document_problems(schema)
            if open_registration:
                schema["paths"]["/v1/apps"]["post"]["security"].append({})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_problems(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, Error, *SCHEMAS.values()):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(definition.pop("$defs", {}))
        components[model.__name__] = definition
    for path, operations in schema["paths"].items():
        v2 = is_v2(path)
        every, answer = (V2_EVERY_OPERATION, _v2_response) if v2 else (EVERY_OPERATION, _response)
        for operation in operations.values():
            responses = operation["responses"]
            common = every + (WITH_BODY if "requestBody" in operation else ())
            for status in common:
                responses.setdefault(str(status), answer(status))
            if v2:
                responses.pop("422", None)  # the protocol says 400
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = answer(int(status))["content"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
