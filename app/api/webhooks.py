"""`POST /webhooks/hubspot` and `POST /webhooks/stripe`: verified, mapped, deduplicated, stored.

These routes authenticate by the provider's signature over the raw body, not by relay keys.
They answer as soon as the events are committed to the store; delivery happens later.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.body import read_body
from app.api.deps import SettingsDep, State, StoreDep
from app.errors import ErrorBody, FieldError, RelayError
from app.metrics import WEBHOOK_REJECTIONS
from app.sources.common import Malformed, Source, commit
from app.sources.hubspot import MAX_EVENTS, parse_batch, plan_batch
from app.sources.service import WebhookSources
from app.sources.signatures import SignatureError, hubspot_uri, verify_hubspot, verify_stripe
from app.sources.stripe import parse_event

log = logging.getLogger("userpilot_relay.webhooks")
router = APIRouter(tags=["webhooks"])

HUBSPOT_PATH = "/webhooks/hubspot"
STRIPE_PATH = "/webhooks/stripe"


class WebhookState(State):
    """The lifespan state with the webhook sources."""

    webhooks: WebhookSources


async def get_webhooks(request: Request) -> WebhookSources:
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
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    webhooks: WebhooksDep,
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
    secret = settings.hubspot_client_secret
    rules = webhooks.hubspot_rules
    if secret is None or rules is None or settings.relay_public_url is None:
        raise _reject("hubspot", "disabled", 404, "not found: the HubSpot webhook is not enabled")
    body = await _read(request, "hubspot", settings.relay_max_body_bytes)
    query = request.scope.get("query_string", b"").decode("latin-1")
    try:
        verify_hubspot(
            secret=secret.get_secret_value(),
            method=request.method,
            uri=hubspot_uri(settings.relay_public_url, HUBSPOT_PATH, query),
            body=body,
            headers=request.headers,
            now=time.time(),
            accept_legacy=settings.hubspot_accept_legacy_signatures,
        )
    except SignatureError as exc:
        raise _reject("hubspot", exc.reason, 401, exc.message) from None
    try:
        events = parse_batch(body)
    except Malformed as exc:
        raise _malformed("hubspot", exc) from None
    plans = plan_batch(events, rules, settings.hubspot_company_id_prefix)
    result = await commit(store, plans, source="hubspot")
    return WebhookAck(received=len(events), accepted=result.stored)


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
    processor = webhooks.stripe
    secrets = settings.stripe_webhook_secrets
    if not secrets or processor is None:
        raise _reject("stripe", "disabled", 404, "not found: the Stripe webhook is not enabled")
    body = await _read(request, "stripe", settings.relay_max_body_bytes)
    try:
        verify_stripe(
            secrets=[s.get_secret_value() for s in secrets],
            header=request.headers.get("stripe-signature"),
            body=body,
            tolerance=settings.stripe_webhook_tolerance_seconds,
            now=time.time(),
        )
    except SignatureError as exc:
        raise _reject("stripe", exc.reason, 401, exc.message) from None
    try:
        event = parse_event(body)
    except Malformed as exc:
        raise _malformed("stripe", exc) from None
    _, stored = await processor.process(event, body)
    return WebhookAck(received=1, accepted=stored)
