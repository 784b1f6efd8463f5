"""Serving the simulator with uvicorn on a socket bound up front.

Binding first lets `--port 0` pick a free port and announce the real one; the HTTP protocol
comes from `connection.py` so `drop` faults can close the socket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from app.simulator.app import create_simulator_app
from app.simulator.config import SimulatorConfig
from app.simulator.connection import HttpImplementation, protocol_class


def format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on host:port now, so `port=0` resolves to a real port before we announce it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


class SimulatorServer(uvicorn.Server):
    """A uvicorn server that calls `on_ready(url)` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, url: str, on_ready: Callable[[str], None]) -> None:
        super().__init__(config)
        self.url = url
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_ready(self.url)


def serve(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8900,
    http: HttpImplementation = "auto",
    access_log: bool = False,
    log_level: str = "warning",
    on_ready: Callable[[str], None] = lambda url: None,
) -> None:
    """Run a simulator until SIGINT/SIGTERM (blocking)."""
    sock = bind_socket(host, port)
    url = format_url(host, sock.getsockname()[1])
    uvicorn_config = uvicorn.Config(
        create_simulator_app(config),
        http=protocol_class(http),
        access_log=access_log,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    SimulatorServer(uvicorn_config, url, on_ready).run(sockets=[sock])
