"""Errors of the Open Inference Protocol's routes: each carries the HTTP status it answers.

They are raised on /v2 paths only and answered as ``{"error": "..."}`` by the API's exception
handlers (`api.errors`); the errors shared with /v1 (frames, unknown models, tokens, dropped
frames) keep their own classes and statuses.
"""

from __future__ import annotations

from nestdnn.errors import NestError


class V2Error(NestError):
    """An error answered with ``status`` (and ``headers``) on a /v2 path."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers


class BadInferRequest(V2Error):
    """The inference request cannot be used: its JSON, its tensors or its parameters."""


class UnknownVersion(V2Error):
    """The model has no descendant of this index."""

    status = 404


class ModelNotReady(V2Error):
    """The model (or version) cannot serve now; the protocol's "not ready" is a 4xx."""


class VersionNotInForce(V2Error):
    """The version asked for is not the descendant the plan gives the calling app."""

    status = 409


class WrongModel(V2Error):
    """The calling app's token is for another model."""

    status = 403


class InferTimeout(V2Error):
    """The request's ``timeout`` expired before all its rows ran (they are cancelled)."""

    status = 429


class UnsupportedEncoding(V2Error):
    """A compressed body (``Content-Encoding``): not accepted."""

    status = 415
