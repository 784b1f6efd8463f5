"""The console's plumbing: its router, templates, security headers, forms and errors.

Every console route is a `ConsoleRoute`: its answer, whatever it is (a page, a redirect, an
error), carries the security headers; an error renders as an HTML page, never as the API's
JSON; with `RELAY_CONSOLE=off` every console path is a 404. Links are built from the ASGI
`root_path`, so the console works behind an ingress that strips a path prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from app.config import Settings
from app.domain.errors import StoreUnavailable
from app.errors import RelayError
from app.store.store import Store

log = logging.getLogger("userpilot_relay.console")

HERE = Path(__file__).resolve().parent
HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
MAX_FORM_BYTES = 64 * 1024
# The erasure form carries up to 10,000 company ids (a textarea, then a hidden field).
MAX_ERASURE_FORM_BYTES = 4 * 1024 * 1024

# The navigation, in order: (path under /console, label). A page not built yet may be listed
# in PLANNED: shown greyed (see docs/console.md, "Adding a page").
NAV: tuple[tuple[str, str], ...] = (
    ("", "Overview"),
    ("/deliveries", "Deliveries"),
    ("/dead-letters", "Dead letters"),
    ("/jobs", "Bulk jobs"),
    ("/backfills", "Backfills"),
    ("/properties", "Properties"),
    ("/erasures", "Erasures"),
    ("/suppressions", "Suppressions"),
)
PLANNED: tuple[str, ...] = ()


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every value is escaped unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["when"] = _when
TEMPLATES.filters["age"] = _age


class ConsoleError(Exception):
    """A console request that cannot be served: its status and a message for the operator."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class SignInNeeded(Exception):
    """No valid session: the answer is a redirect to the sign-in page."""


def base(request: Request) -> str:
    """The console's own path as the browser sees it (behind any ingress prefix)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return f"{root}/console"


def settings_of(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def store_of(request: Request) -> Store:
    store: Store = request.state.store
    return store


def link(request: Request, path: str, **query: object) -> str:
    """A console URL: `path` under /console, with the query's non-empty values."""
    given = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    return base(request) + path + (f"?{urlencode(given)}" if given else "")


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    page = TEMPLATES.get_template(template)
    context.setdefault("active", None)
    html = page.render(
        base=base(request),
        nav=NAV,
        planned=PLANNED,
        session=getattr(request.state, "console_session", None),
        **context,
    )
    return HTMLResponse(html, status_code=status)


def redirect(request: Request, path: str, **query: object) -> RedirectResponse:
    return RedirectResponse(link(request, path, **query), status_code=303)


async def form(request: Request, *, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each), or a 400/413/415 page."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ConsoleError(415, "A form must be sent as application/x-www-form-urlencoded.")
    too_large = f"The form is too large (at most {limit // 1024} KiB)."
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ConsoleError(413, too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ConsoleError(413, too_large)
    try:
        fields = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=50
        )
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError(400, "The form could not be read.") from None
    return {name: values[0] for name, values in fields.items() if values}


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, status_code=status, message=message)


class ConsoleRoute(APIRoute):
    """A console route: security headers on every answer, errors as pages, off when off."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            response = await self._answer(handler, request)
            response.headers.update(HEADERS)
            return response

        return console_handler

    @staticmethod
    async def _answer(
        handler: Callable[[Request], Awaitable[Response]], request: Request
    ) -> Response:
        if settings_of(request).relay_console == "off":
            return HTMLResponse("Not Found", status_code=404)
        try:
            return await handler(request)
        except SignInNeeded:
            return redirect(request, "/login")
        except ConsoleError as exc:
            response = _error_page(request, exc.status, exc.message)
            response.headers.update(exc.headers)
            return response
        except RequestValidationError:
            return _error_page(request, 400, "The request's parameters could not be read.")
        except RelayError as exc:
            return _error_page(request, exc.status, exc.message)
        except StoreUnavailable:
            log.warning("the console could not read the store")
            return _error_page(request, 503, "The store is unavailable: try again shortly.")


router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)
