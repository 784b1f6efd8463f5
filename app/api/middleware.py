"""Request metrics and the structured access log, as a pure ASGI middleware.

Labels use the route template and the caller's key name, so they stay bounded; `/metrics`
and the probes are left out. Neither headers (where credentials travel) nor raw paths and
query strings (where a careless caller may paste one) are logged: only the route template.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import access
from app.metrics import HTTP_DURATION, HTTP_REQUESTS

access_log = logging.getLogger("userpilot_relay.access")
_UNMEASURED = frozenset({"/metrics", "/healthz", "/readyz"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(scope: Scope) -> str:
    """The request method as a metric label: a known one, or `other` (labels stay bounded)."""
    method = str(scope.get("method", ""))
    return method if method in _METHODS else "other"


_HEADERS_TOO_LARGE = orjson.dumps(
    {
        "error": "request_header_fields_too_large",
        "message": "the request headers are over the limit (RELAY_MAX_HEADER_BYTES)",
    }
)


def headers_too_large(scope: Scope) -> bool:
    """True when the request's headers together exceed RELAY_MAX_HEADER_BYTES."""
    settings = (scope.get("state") or {}).get("settings")
    limit = settings.relay_max_header_bytes if settings is not None else 16 * 1024
    total = 0
    for name, value in scope["headers"]:
        total += len(name) + len(value)
        if total > limit:
            return True
    return False


async def refuse_headers(send: Send) -> None:
    """431, cheaply, before any route reads a header."""
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_HEADERS_TOO_LARGE)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _HEADERS_TOO_LARGE})


@functools.lru_cache(maxsize=4096)  # the labels are bounded (module docstring)
def _series(route: str, method: str, caller: str, status: str) -> tuple[Any, Any]:
    """The request's counter and duration series (prometheus_client's `labels` checks and
    locks on every call: a few microseconds a request, kept here once). Nothing removes or
    clears these series; whatever did would have to `_series.cache_clear()` too."""
    return (
        HTTP_REQUESTS.labels(route=route, method=method, caller=caller, status=status),
        HTTP_DURATION.labels(route=route, method=method, caller=caller),
    )


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and headers_too_large(scope):
            HTTP_REQUESTS.labels(
                route="unmatched", method=method_label(scope), caller="anonymous", status="431"
            ).inc()
            await refuse_headers(send)
            return
        if scope["type"] != "http" or scope["path"] in _UNMEASURED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            state = scope.get("state") or {}
            caller = state.get("caller") or "anonymous"
            method = method_label(scope)
            requests, duration = _series(route, method, caller, str(status))
            requests.inc()
            duration.observe(elapsed)
            settings = state.get("settings")
            if settings is None or settings.relay_access_log:
                fields = {
                    "method": method,
                    "route": route,
                    "status": status,
                    "caller": caller,
                    "duration_ms": round(elapsed * 1000, 2),
                }
                access(access_log, fields)
