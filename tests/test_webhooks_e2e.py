"""HubSpot and Stripe webhooks end to end: a real relay process, signed requests over HTTP, the
Userpilot simulator on the other side (and a local Stripe API stand-in for customer lookups).

Requests are signed with the official SDKs' own code (`hubspot-api-client`, `stripe`), so the
relay is checked against the providers' reading of their schemes, not against itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe
from hubspot.utils.signature import Signature

from app.simulator.process import SimulatorProcess
from tests.conftest import RelayFactory
from tests.relay import ADMIN_KEY, RelayProcess, wait_until
from tests.stripe_stub import StripeStub

HS_SECRET = "hs-client-secret-5e0b7a"
PUBLIC_URL = "https://relay.example.com/crm"  # behind an ingress, with a path prefix
STRIPE_OLD, STRIPE_NEW = "whsec_old_4c1d8e", "whsec_new_93ab20"
IDENTIFY = "/v1/companies/identify"
V3_DECODE = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
MAY_1_NOON_MS = 1714564800000


# signing, as the providers do it ---------
def hubspot_headers(
    body: bytes, query: str = "", *, ts_ms: int | None = None, secret: str = HS_SECRET
) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    uri = f"{PUBLIC_URL}/webhooks/hubspot" + (f"?{query}" if query else "")
    for escape, char in V3_DECODE.items():
        uri = uri.replace(escape, char)
    signature = Signature.get_signature(secret, body.decode(), "v3", uri, "POST", ts)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": ts,
    }


def post_hubspot(
    relay: RelayProcess,
    events: list[dict[str, Any]],
    query: str = "",
    headers: dict[str, str] | None = None,
    **sign: Any,
) -> httpx.Response:
    body = json.dumps(events).encode()
    path = "/webhooks/hubspot" + (f"?{query}" if query else "")
    return relay.request(
        "POST",
        path,
        key=None,
        content=body,
        headers=headers or hubspot_headers(body, query, **sign),
    )


def stripe_headers(
    body: bytes, *, secret: str = STRIPE_NEW, at: int | None = None
) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, at)
    return {"Content-Type": "application/json", "Stripe-Signature": header}


def post_stripe(relay: RelayProcess, event: dict[str, Any], **sign: Any) -> httpx.Response:
    body = json.dumps(event).encode()
    return relay.request(
        "POST", "/webhooks/stripe", key=None, content=body, headers=stripe_headers(body, **sign)
    )


# payloads ---------
def hs_change(object_id: int, name: str, value: str, *, at: int, event_id: int) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 2203,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": at,
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
    event_id: str, customer_id: str, *, created: int, company_id: str | None, **fields: Any
) -> dict[str, Any]:
    customer = {
        "id": customer_id,
        "object": "customer",
        "email": "jane.doe@example.com",
        "name": "Jane Doe",
        "phone": "+1 555 0100",
        "created": 1700000000,
        "currency": "usd",
        "delinquent": False,
        "address": {"country": "DE", "line1": "Hauptstr. 1", "city": "Berlin"},
        "metadata": {"company_id": company_id} if company_id else {},
        **fields,
    }
    return {
        "id": event_id,
        "object": "event",
        "type": "customer.created",
        "created": created,
        "livemode": False,
        "data": {"object": customer},
    }


def subscription_event(
    event_id: str,
    customer_id: str,
    *,
    created: int,
    status: str = "active",
    kind: str = "customer.subscription.created",
    unit_amount: int = 4900,
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
                    "price": {
                        "id": "price_pro_monthly",
                        "object": "price",
                        "nickname": "Pro",
                        "currency": "usd",
                        "unit_amount": unit_amount,
                        "recurring": {"interval": "month", "interval_count": 1},
                    },
                }
            ],
        },
    }
    return {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": created,
        "livemode": False,
        "data": {"object": subscription},
    }


# helpers ---------
def identify_calls(sim: SimulatorProcess, company_id: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests(path=IDENTIFY) if r["body"]["company_id"] == company_id]


def deliveries(relay: RelayProcess, company_id: str | None = None) -> list[dict[str, Any]]:
    params = {"company_id": company_id} if company_id else {}
    r = relay.request("GET", "/deliveries", key=ADMIN_KEY, params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def settle(relay: RelayProcess) -> None:
    """Wait until nothing is queued or in flight (no further upstream call can come)."""
    wait_until(lambda: all(d["status"] in ("delivered", "dead") for d in deliveries(relay)))
    time.sleep(0.4)  # longer than the merge window and the dispatcher's idle poll


@pytest.fixture
def stripe_stub() -> Iterator[StripeStub]:
    with StripeStub() as stub:
        yield stub


@pytest.fixture
def hubspot_relay(relay_factory: RelayFactory) -> RelayProcess:
    return relay_factory(
        HUBSPOT_CLIENT_SECRET=HS_SECRET,
        RELAY_PUBLIC_URL=PUBLIC_URL,
        HUBSPOT_COMPANY_ID_PREFIX="hs-",
    )


@pytest.fixture
def stripe_relay(relay_factory: RelayFactory) -> RelayProcess:
    return relay_factory(STRIPE_WEBHOOK_SECRET=f"{STRIPE_OLD},{STRIPE_NEW}")


# HubSpot ---------
def test_hubspot_batch_reaches_userpilot_as_one_merged_identify(
    hubspot_relay: RelayProcess, sim: SimulatorProcess
) -> None:
    relay, now = hubspot_relay, int(time.time() * 1000)
    batch = [
        hs_creation(501, at=now - 50, event_id=1),
        hs_change(501, "name", "Acme GmbH", at=now, event_id=2),
        hs_change(501, "numberofemployees", "42", at=now, event_id=3),
        hs_change(501, "createdate", str(MAY_1_NOON_MS), at=now, event_id=4),
        hs_change(501, "is_public", "false", at=now, event_id=5),
        hs_change(501, "domain", "", at=now, event_id=6),
        hs_change(501, "hs_private_notes", "call Jane on her cell", at=now, event_id=7),
        hs_change(501, "annualrevenue", "a lot", at=now, event_id=8),
        {**hs_creation(502, at=now, event_id=9), "subscriptionType": "company.deletion"},
    ]
    query = "portal=62515&next=https%3A%2F%2Fapp.example.com%2Fa%20b"
    r = post_hubspot(relay, batch, query)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 9, "accepted": 6}

    wait_until(lambda: identify_calls(sim, "hs-501"))
    settle(relay)
    calls = identify_calls(sim, "hs-501")
    assert len(calls) == 1, calls
    assert calls[0]["body"]["metadata"] == {
        "name": "Acme GmbH",
        "employees": 42,
        "hubspot_created_at": "2024-05-01T12:00:00Z",
        "is_public": False,
        "domain": None,
    }
    assert sim.company("hs-501") == {
        "name": "Acme GmbH",
        "employees": 42,
        "hubspot_created_at": "2024-05-01T12:00:00Z",
        "is_public": False,
    }
    assert "Jane" not in json.dumps(sim.requests())
    assert relay.metric("userpilot_relay_webhook_unmapped_fields_total", source="hubspot") == 1
    events = "userpilot_relay_webhook_events_total"
    assert relay.metric(events, source="hubspot", outcome="forwarded") == 6
    assert relay.metric(events, source="hubspot", outcome="invalid_value") == 1
    assert relay.metric(events, source="hubspot", outcome="ignored") == 1
    assert relay.metric(events, source="hubspot", outcome="unmapped") == 1
    assert relay.metric("userpilot_relay_updates_accepted_total", source="hubspot") == 6
    assert "a lot" not in relay.logs() and "annualrevenue" in relay.logs()

    # HubSpot retries the same batch (a new attempt is signed anew): nothing new upstream.
    stored = len(deliveries(relay, "hs-501"))
    again = post_hubspot(relay, [{**e, "attemptNumber": 1} for e in batch], query)
    assert again.status_code == 200, again.text
    assert again.json()["accepted"] == 0
    settle(relay)
    assert len(identify_calls(sim, "hs-501")) == 1
    assert len(deliveries(relay, "hs-501")) == stored
    assert relay.metric(events, source="hubspot", outcome="skipped") == 6


def test_hubspot_out_of_order_events_leave_the_newest_value(
    hubspot_relay: RelayProcess, sim: SimulatorProcess
) -> None:
    relay, now = hubspot_relay, int(time.time() * 1000)
    newest = hs_change(77, "name", "Newest", at=now, event_id=30)
    assert post_hubspot(relay, [newest]).json()["accepted"] == 1
    wait_until(lambda: sim.company("hs-77") == {"name": "Newest"})
    older = hs_change(77, "name", "Older", at=now - 5000, event_id=29)
    r = post_hubspot(relay, [older])
    assert r.status_code == 200 and r.json()["accepted"] == 0
    # Within one batch too: the late event of the pair loses whatever its position.
    pair = [
        hs_change(77, "industry", "Software", at=now + 10, event_id=32),
        hs_change(77, "industry", "Hardware", at=now + 5, event_id=31),
    ]
    assert post_hubspot(relay, pair).json()["accepted"] == 1
    settle(relay)
    assert sim.company("hs-77") == {"name": "Newest", "industry": "Software"}
    assert len(identify_calls(sim, "hs-77")) == 2


def test_hubspot_refuses_unsigned_forged_stale_and_malformed_requests(
    hubspot_relay: RelayProcess, sim: SimulatorProcess
) -> None:
    relay, now = hubspot_relay, int(time.time() * 1000)
    events = [hs_change(9, "name", "Evil", at=now, event_id=1)]
    body = json.dumps(events).encode()

    def send(headers: dict[str, str], payload: bytes = body, query: str = "") -> httpx.Response:
        path = "/webhooks/hubspot" + (f"?{query}" if query else "")
        return relay.request("POST", path, key=None, content=payload, headers=headers)

    cases = {
        "missing_signature": {"Content-Type": "application/json"},
        "bad_signature": hubspot_headers(body, secret="not-the-secret"),
        "stale_timestamp": hubspot_headers(body, ts_ms=now - 6 * 60_000),
    }
    for reason, headers in cases.items():
        r = send(headers)
        assert r.status_code == 401, (reason, r.text)
        assert r.json()["error"] == reason
        assert HS_SECRET not in r.text
    future = send(hubspot_headers(body, ts_ms=now + 6 * 60_000))
    assert future.status_code == 401 and future.json()["error"] == "stale_timestamp"
    # Signed for one query string, sent with another.
    assert send(hubspot_headers(body, "a=1"), query="a=2").status_code == 401
    # Signed for the relay's internal address instead of the public URL.
    internal = Signature.get_signature(
        HS_SECRET, body.decode(), "v3", f"{relay.url}/webhooks/hubspot", "POST", str(now)
    )
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": internal,
        "X-HubSpot-Request-Timestamp": str(now),
    }
    assert send(headers).status_code == 401
    # v1/v2 carry no timestamp (replayable forever): refused unless enabled, whatever version.
    legacy = {"X-HubSpot-Signature": "x", "X-HubSpot-Signature-Version": "v0"}
    r = send({"Content-Type": "application/json", **legacy})
    assert r.status_code == 401 and r.json()["error"] == "legacy_signature", r.text
    assert "HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true" in r.json()["message"]

    malformed = json.dumps({"events": events}).encode()
    r = send(hubspot_headers(malformed), malformed)
    assert r.status_code == 400 and r.json()["error"] == "malformed_body"
    missing_object = json.dumps([{**events[0], "objectId": None}]).encode()
    r = send(hubspot_headers(missing_object), missing_object)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "[0]"
    assert send({"Content-Type": "text/plain"}).status_code == 415

    rejections = "userpilot_relay_webhook_rejections_total"
    assert relay.metric(rejections, source="hubspot", reason="missing_signature") == 1
    assert relay.metric(rejections, source="hubspot", reason="bad_signature") == 3
    assert relay.metric(rejections, source="hubspot", reason="legacy_signature") == 1
    assert relay.metric(rejections, source="hubspot", reason="stale_timestamp") == 2
    assert relay.metric(rejections, source="hubspot", reason="malformed_body") == 2
    assert relay.metric(rejections, source="hubspot", reason="unsupported_media_type") == 1
    assert deliveries(relay) == []
    assert sim.requests(path=IDENTIFY) == []


def test_hubspot_legacy_v1_and_v2_signatures_are_verified_by_their_scheme_when_enabled(
    relay_factory: RelayFactory, sim: SimulatorProcess
) -> None:
    relay = relay_factory(
        HUBSPOT_CLIENT_SECRET=HS_SECRET,
        RELAY_PUBLIC_URL=PUBLIC_URL,
        HUBSPOT_COMPANY_ID_PREFIX="hs-",
        HUBSPOT_ACCEPT_LEGACY_SIGNATURES="true",
    )
    now = int(time.time() * 1000)
    for version, object_id in (("v1", 11), ("v2", 12)):
        body = json.dumps([hs_change(object_id, "name", version, at=now, event_id=1)]).encode()
        signature = Signature.get_signature(
            HS_SECRET, body.decode(), version, f"{PUBLIC_URL}/webhooks/hubspot", "POST"
        )
        headers = {
            "Content-Type": "application/json",
            "X-HubSpot-Signature": signature,
            "X-HubSpot-Signature-Version": version,
        }
        r = relay.request("POST", "/webhooks/hubspot", key=None, content=body, headers=headers)
        assert r.status_code == 200, r.text
        forged = {**headers, "X-HubSpot-Signature": "0" * 64}
        r = relay.request("POST", "/webhooks/hubspot", key=None, content=body, headers=forged)
        assert r.status_code == 401 and r.json()["error"] == "bad_signature"
    wait_until(
        lambda: sim.company("hs-11") == {"name": "v1"} and sim.company("hs-12") == {"name": "v2"}
    )


# Stripe ---------
def test_stripe_customer_and_subscription_reach_userpilot_merged(
    stripe_relay: RelayProcess, sim: SimulatorProcess
) -> None:
    relay, t0 = stripe_relay, int(time.time())
    r = post_stripe(relay, customer_event("evt_c1", "cus_A", created=t0, company_id="acme"))
    assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 1}, r.text
    sub = subscription_event("evt_s1", "cus_A", created=t0 + 1, trial_end=None)
    # Signed with the old secret while it is being rolled.
    r = post_stripe(relay, sub, secret=STRIPE_OLD)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    expected = {
        "stripe_customer_id": "cus_A",
        "currency": "usd",
        "delinquent": False,
        "stripe_customer_since": "2023-11-14T22:13:20Z",
        "billing_country": "DE",
        "plan": "Pro",
        "subscription_status": "active",
        "mrr": 98.0,
        "current_period_end": "2024-06-01T12:00:00Z",
        "cancel_at_period_end": False,
    }
    wait_until(lambda: sim.company("acme") == expected)
    settle(relay)
    upstream = json.dumps(sim.requests())
    for personal in ("jane.doe@example.com", "Jane Doe", "555 0100", "Hauptstr"):
        assert personal not in upstream
    calls = identify_calls(sim, "acme")
    assert calls[-1]["body"]["metadata"]["trial_end"] is None

    # Stripe redelivers the subscription event: acknowledged, not enqueued, not sent.
    before = len(calls)
    r = post_stripe(relay, sub)
    assert r.status_code == 200 and r.json()["accepted"] == 0
    settle(relay)
    assert len(identify_calls(sim, "acme")) == before
    assert (
        relay.metric("userpilot_relay_webhook_events_total", source="stripe", outcome="skipped")
        == 1
    )

    # Out of order: the newer update arrives first; the older one must not overwrite it.
    newer = subscription_event(
        "evt_s3", "cus_A", created=t0 + 20, status="past_due", kind="customer.subscription.updated"
    )
    older = subscription_event(
        "evt_s2", "cus_A", created=t0 + 10, status="canceled", kind="customer.subscription.deleted"
    )
    assert post_stripe(relay, newer).json()["accepted"] == 1
    assert post_stripe(relay, older).json()["accepted"] == 0
    wait_until(lambda: (sim.company("acme") or {}).get("subscription_status") == "past_due")
    settle(relay)
    assert sim.company("acme") == {**expected, "subscription_status": "past_due"}
    assert len(identify_calls(sim, "acme")) == before + 1


def test_stripe_subscription_of_an_unknown_customer_waits_for_its_company(
    relay_factory: RelayFactory, sim: SimulatorProcess
) -> None:
    relay = relay_factory(STRIPE_WEBHOOK_SECRET=STRIPE_NEW, STRIPE_UNRESOLVED_RETRY_SECONDS="0.5")
    t0 = int(time.time())
    sub = subscription_event("evt_s9", "cus_B", created=t0, unit_amount=12000, quantity=1)
    r = post_stripe(relay, sub)
    assert r.status_code == 200 and r.json()["accepted"] == 0
    time.sleep(1.2)  # a couple of retries: still nothing to send, and no guessed id
    assert sim.requests(path=IDENTIFY) == []
    assert deliveries(relay) == []
    events = "userpilot_relay_webhook_events_total"
    assert relay.metric(events, source="stripe", outcome="unresolved") == 1
    # Redelivered while it waits: still one event waiting, still nothing sent.
    assert post_stripe(relay, sub).status_code == 200

    r = post_stripe(relay, customer_event("evt_c9", "cus_B", created=t0 + 5, company_id="late-co"))
    assert r.status_code == 200
    wait_until(lambda: (sim.company("late-co") or {}).get("plan") == "Pro")
    settle(relay)
    assert (sim.company("late-co") or {})["mrr"] == 120.0
    assert sim.company("cus_B") is None
    assert relay.metric(events, source="stripe", outcome="resolved") == 1

    # A customer without the metadata key stands for the company with its Stripe id (default).
    r = post_stripe(relay, customer_event("evt_c10", "cus_C", created=t0, company_id=None))
    assert r.status_code == 200
    wait_until(lambda: sim.company("cus_C") is not None)


def test_stripe_unknown_customer_is_looked_up_through_the_api(
    relay_factory: RelayFactory, sim: SimulatorProcess, stripe_stub: StripeStub
) -> None:
    stripe_stub.customers["cus_R"] = {
        "id": "cus_R",
        "object": "customer",
        "email": "ops@remote.example",
        "metadata": {"company_id": "remote-co"},
    }
    relay = relay_factory(
        STRIPE_WEBHOOK_SECRET=STRIPE_NEW,
        STRIPE_API_KEY="sk_test_relay_51",
        STRIPE_API_BASE=stripe_stub.url,
        STRIPE_UNRESOLVED_RETRY_SECONDS="0.5",
    )
    t0 = int(time.time())
    r = post_stripe(relay, subscription_event("evt_r1", "cus_R", created=t0))
    assert r.status_code == 200, r.text
    wait_until(lambda: (sim.company("remote-co") or {}).get("subscription_status") == "active")
    assert stripe_stub.requests[0] == {
        "path": "/v1/customers/cus_R",
        "authorization": "Bearer sk_test_relay_51",
    }
    # The link is remembered: the next event of that customer needs no lookup.
    lookups = len(stripe_stub.requests)
    updated = subscription_event(
        "evt_r2", "cus_R", created=t0 + 1, status="past_due", kind="customer.subscription.updated"
    )
    assert post_stripe(relay, updated).json()["accepted"] == 1
    wait_until(lambda: (sim.company("remote-co") or {}).get("subscription_status") == "past_due")
    assert len(stripe_stub.requests) == lookups

    # Stripe does not know the customer yet (or is down): the event waits and is retried.
    stripe_stub.fail_with = 503
    r = post_stripe(relay, subscription_event("evt_x1", "cus_X", created=t0))
    assert r.status_code == 200
    wait_until(lambda: any(q["path"] == "/v1/customers/cus_X" for q in stripe_stub.requests))
    stripe_stub.fail_with = None
    time.sleep(0.6)
    assert sim.company("cus_X") is None
    stripe_stub.customers["cus_X"] = {"id": "cus_X", "object": "customer", "metadata": {}}
    # Without the metadata key it stands for the company named by its customer id.
    wait_until(lambda: (sim.company("cus_X") or {}).get("plan") == "Pro")
    assert "sk_test_relay_51" not in relay.logs()


def test_stripe_skip_mode_and_other_event_types(
    relay_factory: RelayFactory, sim: SimulatorProcess
) -> None:
    relay = relay_factory(STRIPE_WEBHOOK_SECRET=STRIPE_NEW, STRIPE_MISSING_COMPANY="skip")
    t0 = int(time.time())
    r = post_stripe(relay, customer_event("evt_k1", "cus_K", created=t0, company_id=None))
    assert r.status_code == 200 and r.json()["accepted"] == 0
    invoice = {
        "id": "evt_i1",
        "object": "event",
        "type": "invoice.paid",
        "created": t0,
        "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_K"}},
    }
    r = post_stripe(relay, invoice)
    assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 0}
    events = "userpilot_relay_webhook_events_total"
    assert relay.metric(events, source="stripe", outcome="no_company") == 1
    assert relay.metric(events, source="stripe", outcome="ignored") == 1
    assert deliveries(relay) == []
    assert sim.requests(path=IDENTIFY) == []


def test_stripe_refuses_forged_stale_future_v0_and_malformed_requests(
    stripe_relay: RelayProcess, sim: SimulatorProcess
) -> None:
    relay, now = stripe_relay, int(time.time())
    event = subscription_event("evt_f1", "cus_F", created=now)
    body = json.dumps(event).encode()

    def send(signature: str | None, payload: bytes = body) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        return relay.request("POST", "/webhooks/stripe", key=None, content=payload, headers=headers)

    good = stripe.WebhookSignature._compute_signature(f"{now}.{body.decode()}", STRIPE_NEW)
    cases = [
        ("missing_signature", None),
        ("bad_signature", f"t={now},v1={'0' * 64}"),
        ("bad_signature", stripe_headers(body, secret="whsec_forged")["Stripe-Signature"]),
        ("bad_signature", f"t={now},v0={good}"),  # v0 only: never accepted
        ("bad_signature", f"t={now + 1},v1={good}"),  # the timestamp is signed too
        ("stale_timestamp", stripe_headers(body, at=now - 360)["Stripe-Signature"]),
        ("stale_timestamp", stripe_headers(body, at=now + 360)["Stripe-Signature"]),
    ]
    for reason, signature in cases:
        r = send(signature)
        assert r.status_code == 401, (reason, r.text)
        assert r.json()["error"] == reason
        assert STRIPE_NEW not in r.text and good not in r.text
    # A captured request replayed after the tolerance: refused though its signature matches.
    captured = stripe_headers(body, at=now - 400)["Stripe-Signature"]
    assert send(captured).status_code == 401

    malformed = b'{"id": "evt_m1", "object": "event"}'
    r = send(stripe_headers(malformed)["Stripe-Signature"], malformed)
    assert r.status_code == 400 and r.json()["error"] == "malformed_body"
    not_json = b"{oops"
    assert send(stripe_headers(not_json)["Stripe-Signature"], not_json).status_code == 400

    rejections = "userpilot_relay_webhook_rejections_total"
    assert relay.metric(rejections, source="stripe", reason="missing_signature") == 1
    assert relay.metric(rejections, source="stripe", reason="bad_signature") == 4
    assert relay.metric(rejections, source="stripe", reason="stale_timestamp") == 3
    assert relay.metric(rejections, source="stripe", reason="malformed_body") == 2
    assert deliveries(relay) == []
    assert sim.requests(path=IDENTIFY) == []
    assert STRIPE_NEW not in relay.logs() and good not in relay.logs()


def test_webhook_routes_answer_404_when_their_source_is_not_configured(
    relay: RelayProcess,
) -> None:
    for source in ("hubspot", "stripe"):
        headers = {"Content-Type": "application/json"}
        r = relay.request("POST", f"/webhooks/{source}", key=None, content=b"[]", headers=headers)
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"
        rejections = "userpilot_relay_webhook_rejections_total"
        assert relay.metric(rejections, source=source, reason="disabled") == 1
