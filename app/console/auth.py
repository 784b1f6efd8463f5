"""Signing in and out of the console, and what every other page asks first: who is signed in.

An admin relay key signs in (a form field `key`); an ingest key or an unknown one gets the same
refusal, and failures from one address slow it down (`LoginThrottle`). Signing in and out is
logged with the key's name, never the key.
"""

from __future__ import annotations

import logging
import math

from fastapi import Request, Response

from app.api.deps import find_key
from app.console import session as sessions
from app.console.web import (
    MAX_FORM_BYTES,
    ConsoleError,
    SignInNeeded,
    base,
    form,
    redirect,
    render,
    router,
)
from app.console.web import settings_of as settings

log = logging.getLogger("userpilot_relay.console")

REFUSED = "This key cannot sign in to the console: it needs an admin relay key."


def _throttle(request: Request) -> sessions.LoginThrottle:
    state = request.app.state
    throttle: sessions.LoginThrottle | None = getattr(state, "console_throttle", None)
    if throttle is None:
        throttle = state.console_throttle = sessions.LoginThrottle()
    return throttle


def _secret(request: Request) -> bytes:
    state = request.app.state
    secret: bytes | None = getattr(state, "console_secret", None)
    if secret is None:
        secret = state.console_secret = sessions.session_secret(settings(request))
    return secret


def current(request: Request) -> sessions.Session | None:
    """The signed-in operator, when the request carries a valid session cookie."""
    found = sessions.verify(
        _secret(request), request.cookies.get(sessions.COOKIE), settings(request).relay_api_keys
    )
    request.state.console_session = found
    return found


def signed_in(request: Request) -> sessions.Session:
    """The signed-in operator, else a redirect to the sign-in page."""
    found = current(request)
    if found is None:
        raise SignInNeeded
    return found


async def checked_form(
    request: Request, *, limit: int = MAX_FORM_BYTES
) -> tuple[sessions.Session, dict[str, str]]:
    """A state-changing form's fields, once its CSRF token is this session's (else a 403)."""
    found = current(request)
    try:
        fields = await form(request, limit=limit)
    except ConsoleError as exc:
        if exc.status == 413:
            raise
        fields = {}  # not a form at all: it carries no token either
    if found is None or not sessions.csrf_matches(found, fields.get("csrf")):
        raise ConsoleError(403, "This form has expired or was not sent from this session.")
    return found, fields


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _set_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    public = settings(request).relay_public_url or ""
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=max_age,
        path=base(request),
        httponly=True,
        samesite="strict",
        secure=public.startswith("https://"),
    )


@router.get("/login")
async def login_page(request: Request) -> Response:
    if current(request) is not None:
        return redirect(request, "")
    return render(request, "login.html", error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    address = _address(request)
    throttle = _throttle(request)
    wait = throttle.wait(address)
    if wait > 0:
        seconds = math.ceil(wait)
        raise ConsoleError(
            429,
            f"Too many failed sign-ins from this address: try again in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )
    presented = (await form(request)).get("key", "").strip()
    key = find_key(settings(request).relay_api_keys, presented) if presented else None
    if key is None or key.role != "admin":
        throttle.failed(address)
        log.warning("console sign-in refused", extra={"client": address})
        return render(request, "login.html", status=401, error=REFUSED)
    throttle.succeeded(address)
    hours = settings(request).relay_console_session_hours
    value, _ = sessions.issue(_secret(request), key, hours=hours)
    log.info("console sign-in", extra={"caller": key.name, "client": address})
    response = redirect(request, "")
    _set_cookie(request, response, value, max_age=int(hours * 3600))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    found, _ = await checked_form(request)
    log.info("console sign-out", extra={"caller": found.name, "client": _address(request)})
    response = redirect(request, "/login")
    _set_cookie(request, response, "", max_age=0)
    return response
