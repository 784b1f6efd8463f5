"""Reading a JSON body safely: 415 for another media type, 413 before a large body is read
whole, 422 naming every offending field."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.errors import RelayError, validation_errors

M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, refused with 415/413 as early as possible."""
    if not _is_json(request.headers.get("content-type", "")):
        raise RelayError(
            415,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
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
