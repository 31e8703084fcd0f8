"""Errors raised by the daemon runtime: user-facing `NestError`s the API maps to HTTP answers
(4xx for the caller's requests, 503 while a model is unavailable)."""

from __future__ import annotations

from nestdnn.errors import NestError


class UnknownModel(NestError):
    """The app asked for a model the catalogue does not hold."""


class UnknownApp(NestError):
    """No registered app has this id (never registered, or unregistered)."""


class Infeasible(NestError):
    """The request would leave no plan that fits the memory budget; nothing was changed."""

    def __init__(self, message: str, bytes_missing: int) -> None:
        super().__init__(message)
        self.bytes_missing = bytes_missing


class FrameDropped(NestError):
    """A queued frame was discarded before it ran (pushed out by a newer one, or app gone)."""


class QueueFull(NestError):
    """The app's queue is full and the runtime refuses new frames (overflow mode 'refuse')."""


class ModelUnavailable(NestError):
    """The app's model cannot serve now (its file is missing, broken or being replaced); the
    app stays registered and serves again once the model is fixed and reloaded."""


class BadModelOutput(ModelUnavailable):
    """The model computed non-finite outputs (NaN or infinity) for a frame: never served."""
