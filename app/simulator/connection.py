"""Which TCP connection carried the current request, so a fault can drop it.

A `drop` fault must close the socket without a single response byte, so the client sees a
connection error rather than a 5xx. ASGI gives an app no handle on the connection, and an app
that returns without answering makes uvicorn send a 500. So the simulator runs uvicorn with
thin subclasses of its HTTP protocols that publish the connection's transport in a context
variable while they parse incoming bytes: uvicorn starts each request's task from there, the
task inherits the variable, and the middleware can `abort()` exactly that connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

HttpImplementation = Literal["auto", "h11", "httptools"]

_transport: ContextVar[asyncio.Transport | None] = ContextVar(
    "userpilot_simulator_transport", default=None
)


def current_transport() -> asyncio.Transport | None:
    """The transport of the connection that carried the current request, if served by us."""
    return _transport.get()


class DroppableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, exposing its transport to the request tasks it starts."""

    def data_received(self, data: bytes) -> None:
        token = _transport.set(self.transport)
        try:
            super().data_received(data)
        finally:
            _transport.reset(token)


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional (uvicorn[standard] brings it)
        return None

    class DroppableHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, exposing its transport to the request tasks."""

        def data_received(self, data: bytes) -> None:
            token = _transport.set(self.transport)
            try:
                super().data_received(data)
            finally:
                _transport.reset(token)

    return DroppableHttpToolsProtocol


def protocol_class(http: HttpImplementation) -> type[asyncio.Protocol]:
    """The drop-capable protocol for `http` ("auto" prefers the faster httptools)."""
    if http == "h11":
        return DroppableH11Protocol
    httptools_protocol = _httptools_protocol()
    if httptools_protocol is not None:
        return httptools_protocol
    if http == "httptools":
        raise RuntimeError("httptools is not installed: use --http h11")
    return DroppableH11Protocol


class DropUnsupportedError(RuntimeError):
    """The app is not served by `app.simulator.server`, so there is no socket to drop."""


async def drop_connection(receive: Callable[[], Awaitable[Mapping[str, object]]]) -> None:
    """Abort the current request's TCP connection, then wait until the server has noticed.

    Waiting for `http.disconnect` matters: uvicorn answers 500 for a request that ends without
    a response unless it already knows the client is gone.
    """
    transport = current_transport()
    if transport is None:
        raise DropUnsupportedError(
            "drop faults need the simulator's own server (python -m app.simulator, "
            "or app.simulator.server.serve)"
        )
    transport.abort()
    try:
        async with asyncio.timeout(2):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass
