"""Reading a JSON body safely: 415 for another media type, 413 before a large body is read
whole, 408 for a body that stalls or trickles, 422 naming every offending field."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from app.config import Settings
from app.domain.rules import parse_ascii_int
from app.errors import RelayError, validation_errors

M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, refused with 415/413 as early as possible.

    A body that sends nothing for RELAY_BODY_IDLE_TIMEOUT_SECONDS, or is not whole after
    RELAY_BODY_TIMEOUT_SECONDS, is a 408: a client trickling bytes must not hold a request
    (and its memory) for minutes.
    """
    settings: Settings = request.state.settings
    idle_timeout = settings.relay_body_idle_timeout_seconds
    timeout = settings.relay_body_timeout_seconds
    if not _is_json(request.headers.get("content-type", "")):
        raise RelayError(
            415,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        )
    declared = parse_ascii_int(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray()
    deadline = time.monotonic() + timeout
    receive = request.receive
    more = True
    while more:  # one message for most bodies: one timeout, no task
        wait = min(idle_timeout, deadline - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                message = await receive()
        except TimeoutError:
            raise RelayError(
                408,
                "request_timeout",
                f"the body did not arrive in time (nothing for {idle_timeout:g} s, or not "
                f"whole within {timeout:g} s): send it at once",
                headers={"Connection": "close"},
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> RelayError:
    return RelayError(413, "payload_too_large", f"the body is over the limit of {limit} bytes")


def parse(model: type[M], body: bytes) -> M:
    """Validate `body` against `model`, or raise a 422 that names every bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = validation_errors(list(exc.errors(include_url=False)))
        shown = ", ".join(e.field for e in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise RelayError(
            422, "invalid_payload", f"invalid payload: {shown}{more}", errors=errors
        ) from None
