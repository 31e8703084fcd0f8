"""Connections below the app: a guard on uvicorn's HTTP protocol (slowloris, descriptor floods).

uvicorn closes a keep-alive connection idle after a response, but it waits for ever for the
first request of a connection and for the rest of a request's headers, and it accepts
connections until the process runs out of file descriptors (then nothing, ``/healthz``
included, gets in). The guard, shared by the connections of one server:

- closes a connection that has not completed its request headers within ``header_timeout_s``
  of opening, or of its previous answer;
- answers 431 and closes when more than ``max_header_bytes`` arrive without completing the
  headers;
- keeps at most ``max_connections`` open: a new connection beyond that closes the connection
  idle the longest (no request in progress: it is waiting, or still sending headers), and if
  none is idle, the newcomer gets 503 and is closed.

Requests in progress are never cut here: their bodies have the app's own time limit
(`api.middleware.BodyLimits`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from api.problems import raw_problem


class ConnectionGuard:
    """The open connections of one server and the limits they live by."""

    def __init__(
        self,
        max_connections: int,
        header_timeout_s: float,
        max_header_bytes: int,
        on_close: Callable[[str], None],
    ) -> None:
        """``on_close(reason)`` is called for every connection the guard closes or refuses."""
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.on_close = on_close
        self.open: dict[GuardedConnection, None] = {}

    def admit(self, connection: GuardedConnection) -> bool:
        """Take a new connection, making room by closing the longest-idle one if needed;
        False when every open connection has a request in progress."""
        if len(self.open) >= self.max_connections:
            idle = [c for c in self.open if not c.in_request]
            if not idle:
                self.on_close("over_limit")
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            self.release(oldest)
            oldest.transport.close()
            self.on_close("idle_evicted")
        self.open[connection] = None
        return True

    def release(self, connection: GuardedConnection) -> None:
        """Forget a connection (closed, or being closed)."""
        self.open.pop(connection, None)


class GuardedConnection:
    """Mixin over uvicorn's HTTP protocol class (`guarded_protocol` builds the class);
    relies on uvicorn's ``cycle`` (the request in progress), ``loop`` and ``transport``."""

    guard: ConnectionGuard
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None
        self.idle_since = self.loop.time()
        if not self.guard.admit(self):
            self._refuse(503, "too many connections: try again later", "too-many-connections")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.in_request:
            self._pending = 0
            return
        self._pending += len(data)
        if self._pending > self.guard.max_header_bytes and not self.transport.is_closing():
            self.guard.on_close("headers_too_large")
            self._refuse(
                431,
                f"request headers larger than {self.guard.max_header_bytes} bytes",
                "headers-too-large",
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._pending = 0
        self.idle_since = self.loop.time()
        self._arm()

    @property
    def in_request(self) -> bool:
        """Whether a request's headers are complete and its answer is not yet sent."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.guard.header_timeout_s, self._expire)

    def _expire(self) -> None:
        if not self.in_request and not self.transport.is_closing():
            self.guard.on_close("header_timeout")
            self.guard.release(self)
            self.transport.close()

    def _refuse(self, status: int, detail: str, kind: str) -> None:
        self.guard.release(self)
        self.transport.write(raw_problem(status, detail, kind))
        self.transport.close()


def guarded_protocol(base: type[asyncio.Protocol], guard: ConnectionGuard) -> type:
    """uvicorn's HTTP protocol class ``base`` with the guard's limits."""
    return type(f"Guarded{base.__name__}", (GuardedConnection, base), {"guard": guard})
