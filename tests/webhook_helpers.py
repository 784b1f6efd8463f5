"""What the webhook route tests share: requests signed as the providers sign them, payloads,
and the positive signals they read (counter deltas, stored rows, log lines).

Signatures come from the official SDKs' own code (`hubspot-api-client`, `stripe`), so the relay
is checked against the providers' reading of their schemes, not against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import stripe
from hubspot.utils.signature import Signature
from prometheus_client import REGISTRY

from app.domain.models import Delivery
from app.logs import JsonFormatter
from app.sources.stripe.customers import StripeResolver
from tests.inprocess import InProcessRelay

HS_SECRET = "hs-client-secret-5e0b7a"
PUBLIC_URL = "https://relay.example.com/crm"  # behind an ingress, with a path prefix
HS_URI = f"{PUBLIC_URL}/webhooks/hubspot"
STRIPE_OLD, STRIPE_NEW = "whsec_old_4c1d8e", "whsec_new_93ab20"
JSON = {"Content-Type": "application/json"}
IDENTIFY = "/v1/companies/identify"
EVENTS = "userpilot_relay_webhook_events_total"
REJECTIONS = "userpilot_relay_webhook_rejections_total"
# What HubSpot's v3 scheme decodes in the URI before signing (its documentation's list).
V3_DECODE = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip


# relays ---------
def hubspot_relay(database_url: str, endpoint: str, **extra: Any) -> InProcessRelay:
    return InProcessRelay(
        database_url,
        endpoint=endpoint,
        hubspot_client_secret=HS_SECRET,
        relay_public_url=PUBLIC_URL,
        hubspot_company_id_prefix="hs-",
        **extra,
    )


def stripe_relay(database_url: str, endpoint: str, **extra: Any) -> InProcessRelay:
    extra.setdefault("stripe_webhook_secret", f"{STRIPE_OLD},{STRIPE_NEW}")
    return InProcessRelay(database_url, endpoint=endpoint, **extra)


def resolver(relay: InProcessRelay) -> StripeResolver:
    """The relay's retrier of parked Stripe events, to run a round of it now."""
    source = relay.state["webhooks"].stripe
    assert source is not None, "the Stripe source is not enabled on this relay"
    found: StripeResolver = source.resolver
    return found


# signing, as the providers do it ---------
def v3_headers(
    body: bytes, query: str = "", *, ts_ms: int | None = None, secret: str = HS_SECRET
) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    uri = HS_URI + (f"?{query}" if query else "")
    for escape, char in V3_DECODE.items():
        uri = uri.replace(escape, char)
    signature = Signature.get_signature(secret, body.decode(), "v3", uri, "POST", ts)
    return {**JSON, "X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": ts}


def legacy_headers(body: bytes, version: str) -> dict[str, str]:
    signature = Signature.get_signature(HS_SECRET, body.decode(), version, HS_URI, "POST")
    return {**JSON, "X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": version}


def stripe_headers(
    body: bytes, *, secret: str = STRIPE_NEW, at: int | None = None
) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, at)
    return {**JSON, "Stripe-Signature": header}


# payloads ---------
def hs_change(
    object_id: Any, name: str, value: str, *, event_id: Any, at: int | None = None
) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 2203,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": int(time.time() * 1000) if at is None else at,
        "subscriptionType": "company.propertyChange",
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM_UI",
        "propertyName": name,
        "propertyValue": value,
    }


def hs_creation(object_id: int, *, at: int, event_id: int) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 2202,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": at,
        "subscriptionType": "company.creation",
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM_UI",
    }


def customer_event(
    event_id: str,
    customer_id: str,
    company_id: str | None,
    *,
    created: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    customer = {
        "id": customer_id,
        "object": "customer",
        "email": "jane.doe@example.com",
        "name": "Acme GmbH",
        "phone": "+1 555 0100",
        "created": 1700000000,
        "currency": "usd",
        "delinquent": False,
        "address": {"country": "DE", "line1": "Hauptstr. 1", "city": "Berlin"},
        "metadata": {"company_id": company_id} if company_id is not None else {},
        **fields,
    }
    return {
        "id": event_id,
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "data": {"object": customer},
    }


def price(unit_amount: int | None = 4900, **fields: Any) -> dict[str, Any]:
    return {
        "id": "price_pro_monthly",
        "object": "price",
        "nickname": "Pro",
        "currency": "usd",
        "unit_amount": unit_amount,
        "recurring": {"interval": "month", "interval_count": 1},
        **fields,
    }


def subscription_event(
    event_id: str,
    customer_id: str,
    *,
    created: int | None = None,
    status: str = "active",
    kind: str = "customer.subscription.created",
    item_price: dict[str, Any] | None = None,
    quantity: int = 2,
    trial_end: int | None = None,
) -> dict[str, Any]:
    subscription = {
        "id": "sub_1N",
        "object": "subscription",
        "customer": customer_id,
        "status": status,
        "currency": "usd",
        "current_period_end": 1717243200,  # 2024-06-01T12:00:00Z
        "trial_end": trial_end,
        "cancel_at_period_end": False,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "quantity": quantity,
                    "price": item_price or price(),
                }
            ],
        },
    }
    return {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "data": {"object": subscription},
    }


# signals ---------
class Counters:
    """Prometheus samples as their change since this snapshot: the registry is process-wide,
    shared by every in-process relay of the session."""

    def __init__(self) -> None:
        self._start = self._samples()

    @staticmethod
    def _samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in REGISTRY.collect()
            for s in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return (REGISTRY.get_sample_value(name, labels) or 0.0) - self._start.get(key, 0.0)


async def stored(relay: InProcessRelay, company_id: str | None = None) -> list[Delivery]:
    return await relay.store.deliveries.listing(
        status=None, company_id=company_id, after_seq=0, limit=500
    )


async def settled(relay: InProcessRelay, *, within: float = 15.0) -> list[Delivery]:
    """Every stored delivery once none is queued or in flight: no further upstream call can
    come, and every call made has reached the simulator."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        rows = await stored(relay)
        if all(d.status in ("delivered", "dead") for d in rows):
            return rows
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still pending: {[(d.id, d.status) for d in rows]}")
        await asyncio.sleep(0.02)


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line, as the relay's JSON formatter writes it. Enter it after the relay: its
    lifespan replaces the root logger's handlers."""
    lines: list[str] = []
    handler = _Lines(lines)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
