"""`RequestRoute`: a route documented like any other, served with the `Request` alone.

FastAPI's dependency solving costs more than everything `POST /companies` does itself (the
figures: docs/development.md), so that route is a `RequestRoute`: its OpenAPI operation comes
from its endpoint's signature as usual, but the endpoint is called with the request only and
reads its caller, headers and body itself. Starlette's routing and the app's exception handlers
stay: one request path, no lane beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.routing import request_response

IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


class RequestRoute(APIRoute):
    """An `APIRoute` whose endpoint takes the `Request` alone at run time; its other
    parameters are declared (with defaults) for the document only. It is served by
    Starlette's `request_response`: FastAPI's adds two exit stacks for dependencies with
    `yield`, which this route never has."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)

        async def handler(request: Request) -> Response:
            return await endpoint(request)

        return handler


def idempotency_key_of(request: Request) -> str | None:
    """The request's `Idempotency-Key` (the first one), or the same 422 FastAPI answers for a
    header declared with `min_length=1, max_length=255`."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None or 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        return key
    short = not key
    raise RequestValidationError(
        [
            {
                "type": "string_too_short" if short else "string_too_long",
                "loc": ("header", IDEMPOTENCY_KEY),
                "msg": "String should have at least 1 character"
                if short
                else f"String should have at most {MAX_IDEMPOTENCY_KEY} characters",
                "input": key,
                "ctx": {"min_length": 1} if short else {"max_length": MAX_IDEMPOTENCY_KEY},
            }
        ]
    )
