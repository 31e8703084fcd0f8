"""Pure ASGI middleware: the Host check, request body limits and per-route request counting."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import ApiMetrics
from api.problems import error_answer
from nestdnn.errors import NestError

CLOSE = {"connection": "close"}
BUSY = {**CLOSE, "retry-after": "1"}


class BodyTooLarge(NestError):
    """The request body is larger than the limit."""


class BodyTimeout(NestError):
    """The request body did not arrive within the time allowed."""


class BodiesInFlight(NestError):
    """The bodies of the requests in progress already hold the memory allowed for them."""


class BodyLimits:
    """Refuse bodies larger than a limit (413, by Content-Length or while streaming), that do
    not arrive within a time limit from the app's first read (408: a slow or stalled sender
    cannot hold a request, and its connection, open for ever), or that would take the bytes
    read by all requests in progress past ``in_flight_bytes`` (503: memory stays bounded
    however many connections send large bodies at once)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float, in_flight_bytes: int
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.in_flight_limit = max(in_flight_bytes, max_bytes)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            refusal = error_answer(
                scope["path"], 413, self._too_large(), "body-too-large", headers=CLOSE
            )
            await refusal(scope, receive, send)
            return
        if declared is not None and self.in_flight + declared > self.in_flight_limit:
            refusal = error_answer(
                scope["path"], 503, self._busy(), "bodies-in-flight", headers=BUSY
            )
            await refusal(scope, receive, send)
            return
        received = 0
        deadline: float | None = None
        complete = False

        async def limited() -> Message:
            nonlocal received, deadline, complete
            if complete:  # the body is in; the app may wait for a disconnect as long as it likes
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                self.in_flight += size
                if received > self.max_bytes:
                    raise BodyTooLarge(self._too_large())
                if self.in_flight > self.in_flight_limit:
                    raise BodiesInFlight(self._busy())
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        try:
            await self.app(scope, limited, send)
        finally:
            self.in_flight -= received

    def _too_large(self) -> str:
        return f"request body larger than the limit of {self.max_bytes} bytes"

    def _busy(self) -> str:
        return (
            f"the requests in progress already hold {self.in_flight_limit} bytes of bodies:"
            " retry in a moment"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def host_name(host: str) -> str:
    """The name of a Host header value: no port, no brackets, lower case, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    return name.rstrip(".")


class HostCheck:
    """Answer 421 unless the Host header names this daemon (any port): a web page that rebinds
    its DNS name to 127.0.0.1 sends its own name, so it cannot reach the API."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = frozenset(host_name(name) for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any:
            host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                detail = (
                    f"Host {host!r} is not one this daemon answers to (allowed: "
                    f"{', '.join(sorted(self.allowed))}; see --allowed-hosts)"
                    if host
                    else "the request has no Host header"
                )
                refusal = error_answer(
                    scope["path"], 421, detail, "host-not-allowed", headers=CLOSE
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestCounter:
    """Count responses by method, route template and status (unmatched paths share one label)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
