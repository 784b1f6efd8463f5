"""Errors as HTTP answers: the hierarchy, the body every error is answered with, one handler.

```
RelayError (app/domain/errors.py)   status, code, message, field errors, headers
├── StoreUnavailable > NothingStored     503 store_unavailable
├── IdempotencyConflict                  422 idempotency_key_reused
├── NotDead                              409 not_dead
├── CompanyErased                        409 company_erased
├── NotFound                             404 not_found
├── NotConfigured                        400 not_configured
├── BackfillConflict                     409 backfill_running
├── SignatureError                       401 <reason>
└── Malformed                            400 malformed_body
Starlette's HTTPException, request validation, a client gone mid-body, anything else (500):
rendered here as a `RelayError` would be.
```

Routes raise `RelayError` (or a subclass) and never translate one error into another. The body
is `{"error": <code>, "message": <what to do>, "errors": [{"field", "message"}]}`; `errors`
names every offending field (`companies[3].metadata.plan` in bulk) on a 422. Nothing from the
request's headers or from Userpilot's internals is echoed.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.domain.errors import FieldError, NothingStored, RelayError, StoreUnavailable

__all__ = ["ErrorBody", "FieldError", "RelayError", "field_path", "install_error_handlers"]

log = logging.getLogger("userpilot_relay.errors")


class ErrorBody(BaseModel):
    """Every error the relay answers."""

    error: str
    message: str
    errors: list[FieldError] | None = None


def error_response(exc: RelayError) -> JSONResponse:
    body = ErrorBody(error=exc.code, message=exc.message, errors=exc.fields)
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers
    )


def field_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """`("companies", 3, "metadata", "plan")` -> `companies[3].metadata.plan`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


_FRIENDLY = {
    "missing": "is required",
    "extra_forbidden": "is not a known field (check its spelling)",
    "string_type": "must be a string",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "json_invalid": "is not valid JSON",
}


def validation_errors(errors: list[Any], *, prefix: tuple[str, ...] = ()) -> list[FieldError]:
    """Pydantic errors as `FieldError`s naming the field, with messages a person can act on."""
    out: list[FieldError] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if loc and loc[0] in ("body",):
            loc = loc[1:]
        ctx = error.get("ctx") or {}
        if "key" in ctx:  # our metadata checks name the offending key
            loc = (*loc, ctx["key"])
        kind = error.get("type", "")
        message = _FRIENDLY.get(kind) or str(error.get("msg", "is invalid"))
        if kind == "json_invalid":
            detail = ctx.get("error")
            message = f"is not valid JSON ({detail})" if detail else message
        out.append(FieldError(field=field_path(prefix + loc), message=message))
    return out


# The routes that store new updates: when storing them failed (`NothingStored`), their 503 says
# nothing was *stored*, and is not logged once a request (an outage under ingest load would
# flood the log with one line a request; the access log counts them). Any other 503, there
# too (a read after the commit, say), says nothing was changed, and is logged.
STORING_ROUTES = frozenset({"/companies", "/companies/bulk"})


def _route(request: Request) -> str | None:
    """The matched route's path template (`/deliveries/{delivery_id}`), if any."""
    return getattr(request.scope.get("route"), "path", None)


# A client that hung up before its body was whole: nobody is there to answer, and it is no
# error of the relay's. Counted under nginx's "client closed request" status, never as a 5xx.
CLIENT_CLOSED_REQUEST = 499


def client_gone(request: Request) -> Response:
    """The (unheard) answer to a client that hung up mid-body, and its one log line."""
    log.info(
        "client disconnected before its request body was whole",
        extra={"route": _route(request) or "unmatched"},
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    """The 503 of an unreachable store: `stored` on a storing route whose updates were not
    stored, else `changed` (and logged, with the store's detail, never answered)."""
    storing = isinstance(exc, NothingStored) and _route(request) in STORING_ROUTES
    if not storing:
        log.error("store unavailable", extra={"error": str(exc)[:300]})
    return error_response(
        RelayError(
            503,
            exc.code,
            "the relay cannot reach its store; "
            f"nothing was {'stored' if storing else 'changed'}, retry later",
            headers=exc.headers,
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the one handler of `RelayError` and the renderings of what is not one."""

    @app.exception_handler(RelayError)
    async def _relay(request: Request, exc: RelayError) -> JSONResponse:
        if isinstance(exc, StoreUnavailable):
            return _store_unavailable(request, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        fields = ", ".join(e.field for e in errors)
        return error_response(
            RelayError(422, "invalid_request", f"invalid request: {fields}", errors=errors)
        )

    @app.exception_handler(ValidationError)
    async def _pydantic(_: Request, exc: ValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        return error_response(RelayError(422, "invalid_request", "invalid request", errors=errors))

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, _: ClientDisconnect) -> Response:
        return client_gone(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's body reading (400) wraps it
            return client_gone(request)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        path = request.scope.get("path", "")
        if exc.status_code == 404 and _route(request) is None and path[1:].endswith("/"):
            message = (
                "not found: the relay's paths end without a slash (/companies, not /companies/)"
            )
        return error_response(RelayError(exc.status_code, code, message, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"route": request.scope.get("route_path", request.url.path)},
        )
        return error_response(RelayError(500, "internal_error", "internal error; see the logs"))
