"""`POST /webhooks/hubspot` and `POST /webhooks/stripe`: verified, mapped, deduplicated, stored.

These routes authenticate by the provider's signature over the raw body, not by relay keys.
They answer as soon as the events are committed to the store; delivery happens later.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.body import read_body
from app.api.deps import SettingsDep, State
from app.errors import ErrorBody, FieldError, RelayError
from app.metrics import WEBHOOK_REJECTIONS
from app.sources.common import Malformed, Source
from app.sources.hubspot import MAX_EVENTS
from app.sources.service import WebhookSources
from app.sources.signatures import SignatureError

log = logging.getLogger("userpilot_relay.webhooks")
router = APIRouter(tags=["webhooks"])

HUBSPOT_PATH = "/webhooks/hubspot"
STRIPE_PATH = "/webhooks/stripe"


class WebhookState(State):
    """The lifespan state with the webhook sources."""

    webhooks: WebhookSources


async def get_webhooks(request: Request) -> WebhookSources:
    """The sources the lifespan built (`WebhookState.webhooks`)."""
    webhooks: WebhookSources = request.state.webhooks
    return webhooks


WebhooksDep = Annotated[WebhookSources, Depends(get_webhooks)]


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


def _reject(
    source: Source,
    reason: str,
    status: int,
    message: str,
    *,
    errors: list[FieldError] | None = None,
) -> RelayError:
    WEBHOOK_REJECTIONS.labels(source=source, reason=reason).inc()
    if reason != "disabled":
        log.warning(
            "webhook rejected", extra={"source": source, "reason": reason, "status": status}
        )
    code = "not_found" if status == 404 else reason
    return RelayError(status, code, message, errors=errors)


async def _read(request: Request, source: Source, limit: int) -> bytes:
    try:
        return await read_body(request, limit=limit)
    except RelayError as exc:
        reason = {
            408: "request_timeout",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }.get(exc.status)
        WEBHOOK_REJECTIONS.labels(source=source, reason=reason or "malformed_body").inc()
        raise


def _malformed(source: Source, exc: Malformed) -> RelayError:
    errors = [FieldError(field=f, message=m) for f, m in exc.errors[:50]] or None
    return _reject(source, "malformed_body", 400, exc.message, errors=errors)


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
        raise _reject("hubspot", "disabled", 404, "not found: the HubSpot webhook is not enabled")
    body = await _read(request, "hubspot", settings.relay_max_body_bytes)
    try:
        ack = await source.handle(
            method=request.method,
            path=HUBSPOT_PATH,
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=request.headers,
            body=body,
        )
    except SignatureError as exc:
        raise _reject("hubspot", exc.reason, 401, exc.message) from None
    except Malformed as exc:
        raise _malformed("hubspot", exc) from None
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
        raise _reject("stripe", "disabled", 404, "not found: the Stripe webhook is not enabled")
    body = await _read(request, "stripe", settings.relay_max_body_bytes)
    try:
        ack = await source.handle(headers=request.headers, body=body)
    except SignatureError as exc:
        raise _reject("stripe", exc.reason, 401, exc.message) from None
    except Malformed as exc:
        raise _malformed("stripe", exc) from None
    return WebhookAck(received=ack.received, accepted=ack.accepted)
