"""The fast lane: `POST /companies` without FastAPI's per-request machinery.

The single update is the hot path of the relay, and FastAPI's dependency solving, routing and
exception middleware cost more than everything the route itself does (issue 11's profile). So
a `POST /companies` without an `Idempotency-Key` (`Prefer: wait` or not) is answered here, by
the very functions the route uses: `deps.admit` (the caller's key and role), `store_company`
(body, validation, the data-quality review, the commit, the answer), and the app's own
exception handlers for whatever they raise. Nothing is answered differently: the route stays the one
that is documented (OpenAPI), and serves every request this lane passes on.

It sits inside `RequestMetricsMiddleware` (which counts and logs it as the route: it sets
`scope["route"]` as FastAPI's router does) and inside Starlette's error middleware.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import companies
from app.api.companies import store_company
from app.api.deps import admit

Handler = Callable[[Request, Any], Response | Awaitable[Response]]

PATH = "/companies"
# The route validates Idempotency-Key (its length) and keeps it: such requests go there.
_ROUTE_HEADER = b"idempotency-key"


class FastLane:
    def __init__(self, app: ASGIApp, relay: FastAPI) -> None:
        self.app = app
        self.relay = relay
        self._route: APIRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or any(name == _ROUTE_HEADER for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route or self._find_route()
        request = Request(scope, receive)
        try:
            state = request.state
            settings, store = state.settings, state.store
            caller = admit(request, settings, ("ingest",), "ingest")
            response = await store_company(request, caller, settings, store)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _find_route(self) -> APIRoute:
        for route in companies.router.routes:
            if (
                isinstance(route, APIRoute)
                and route.path == PATH
                and "POST" in (route.methods or ())
            ):
                self._route = route
                return route
        raise RuntimeError("the app has no POST /companies route")

    def _handler(self, exc: Exception) -> Handler | None:
        """The app's handler for `exc`, found as Starlette finds it (the nearest class), but
        never the catch-all for `Exception`: an unexpected error goes on to Starlette's error
        middleware, which answers the same 500 through it and re-raises, as for the route."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            handler = self.relay.exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None
