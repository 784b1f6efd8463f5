"""`POST /webhooks/hubspot` and `POST /webhooks/stripe`: verified, mapped, deduplicated, stored.

These routes authenticate by the provider's signature over the raw body, not by relay keys.
They answer as soon as the events are committed to the store; delivery happens later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.api.body import read_body
from app.api.deps import SettingsDep, WebhooksDep
from app.domain.errors import Malformed, SignatureError, StoreUnavailable
from app.errors import ErrorBody, RelayError
from app.metrics import WEBHOOK_REJECTIONS
from app.sources.common import Source
from app.sources.hubspot import MAX_EVENTS

log = logging.getLogger("userpilot_relay.webhooks")
router = APIRouter(tags=["webhooks"])

HUBSPOT_PATH = "/webhooks/hubspot"
STRIPE_PATH = "/webhooks/stripe"


class WebhookAck(BaseModel):
    """The events are verified and committed to the store; delivery follows."""

    received: int = Field(description="Events in the request.")
    accepted: int = Field(
        description=(
            "Company updates stored for delivery. Redeliveries, events older than what was "
            "already applied, ignored types and events waiting for their company add none."
        )
    )


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": WebhookAck, "description": "Verified and stored (or acknowledged)."},
    400: _error("Signed, but not a body the provider documents: nothing was stored."),
    401: _error(
        "Missing, malformed or wrong signature, a timestamp too far from now, or (HubSpot) "
        "only a v1/v2 signature while HUBSPOT_ACCEPT_LEGACY_SIGNATURES is off."
    ),
    404: _error("This source is not enabled on this relay."),
    408: _error("The body stalled or trickled past the read timeouts: nothing was stored."),
    413: _error("The body is over the configured limit."),
    415: _error("The body is not application/json."),
    503: _error("The store is unreachable: nothing was stored; the provider retries."),
}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}, "description": description}


HUBSPOT_OPENAPI: dict[str, Any] = {
    "parameters": [
        _header(
            "X-HubSpot-Signature-v3",
            "Base64 HMAC-SHA256 of method, public URI, body and timestamp (app client secret).",
        ),
        _header("X-HubSpot-Request-Timestamp", "Epoch milliseconds; at most 5 minutes off."),
        _header(
            "X-HubSpot-Signature",
            "v1/v2 signature: replayable (no timestamp), accepted only with "
            "HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true and only when no v3 header is sent.",
        ),
        _header("X-HubSpot-Signature-Version", "v1 or v2, for X-HubSpot-Signature."),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "maxItems": MAX_EVENTS,
                    "items": {"type": "object", "additionalProperties": True},
                }
            }
        },
    },
}
STRIPE_OPENAPI: dict[str, Any] = {
    "parameters": [
        _header(
            "Stripe-Signature",
            "t=<epoch s>,v1=<hex HMAC-SHA256>[,v1=...]; only v1 is accepted.",
        )
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}
        },
    },
}


# The reason each refusal is counted under, by the status of a body that could not be read.
_BODY_REASONS = {408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type"}


@contextlib.contextmanager
def _counted(source: Source) -> Iterator[None]:
    """Count (and log) every refusal of a webhook request under its reason, then let it on to
    the one handler (app/errors.py): a signature (401), a body (400, 408, 413, 415)."""
    try:
        yield
    except RelayError as exc:
        if isinstance(exc, SignatureError | Malformed):
            WEBHOOK_REJECTIONS.labels(source=source, reason=exc.code).inc()
            log.warning(
                "webhook rejected",
                extra={"source": source, "reason": exc.code, "status": exc.status},
            )
        elif not isinstance(exc, StoreUnavailable):
            reason = _BODY_REASONS.get(exc.status, "malformed_body")
            WEBHOOK_REJECTIONS.labels(source=source, reason=reason).inc()
        raise


def _disabled(source: Source, name: str) -> RelayError:
    WEBHOOK_REJECTIONS.labels(source=source, reason="disabled").inc()
    return RelayError(404, "not_found", f"not found: the {name} webhook is not enabled")


@router.post(
    HUBSPOT_PATH,
    response_model=WebhookAck,
    responses=RESPONSES,
    openapi_extra=HUBSPOT_OPENAPI,
)
async def hubspot_webhook(
    request: Request, settings: SettingsDep, webhooks: WebhooksDep
) -> WebhookAck:
    """Receive a HubSpot webhook batch (up to 100 events).

    Verified by `X-HubSpot-Signature-v3` over `RELAY_PUBLIC_URL` + this path + the query
    string. v1/v2 signatures (`X-HubSpot-Signature`) carry no timestamp and can be replayed:
    they are refused unless `HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true`, and then used only when no
    v3 header is sent. `company.creation` identifies the company, `company.propertyChange` sets
    one mapped property (`""` removes it); other types are acknowledged. Redeliveries and
    events older than the value already applied store nothing; an event whose company id or
    identity cannot be stored (a bad `objectId`, control characters) is skipped and counted
    while the rest of the batch is stored.
    """
    request.state.caller = "hubspot"
    source = webhooks.hubspot
    if source is None:
        raise _disabled("hubspot", "HubSpot")
    with _counted("hubspot"):
        body = await read_body(request, limit=settings.relay_max_body_bytes)
        ack = await source.handle(
            method=request.method,
            path=HUBSPOT_PATH,
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=request.headers,
            body=body,
        )
    return WebhookAck(received=ack.received, accepted=ack.accepted)


@router.post(
    STRIPE_PATH,
    response_model=WebhookAck,
    responses=RESPONSES,
    openapi_extra=STRIPE_OPENAPI,
)
async def stripe_webhook(
    request: Request, settings: SettingsDep, webhooks: WebhooksDep
) -> WebhookAck:
    """Receive a Stripe event.

    Verified by `Stripe-Signature` (any `v1` matching any configured secret, within the
    tolerance). Customer events update the company the customer stands for; subscription
    events set its plan, status, MRR, period end and trial end. A subscription whose company
    is not known yet is kept and retried, never dropped. Other types are acknowledged.
    """
    request.state.caller = "stripe"
    source = webhooks.stripe
    if source is None:
        raise _disabled("stripe", "Stripe")
    with _counted("stripe"):
        body = await read_body(request, limit=settings.relay_max_body_bytes)
        ack = await source.handle(headers=request.headers, body=body)
    return WebhookAck(received=ack.received, accepted=ack.accepted)
