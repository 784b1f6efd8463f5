"""The webhook routes under attack, in process (`tests/inprocess.py`: the real app, its lifespan,
a real store on each backend): replayable HubSpot v1/v2 signatures, malformed and oversized
signature headers, and signed batches carrying values no store or Userpilot can take.

Each test checks positive signals: the status and error body, a counter that moved, the rows
stored, the deliveries that reached Userpilot (the simulator).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import stripe
from hubspot.utils.signature import Signature
from prometheus_client import REGISTRY

from app.domain.models import Delivery
from app.simulator.process import SimulatorProcess
from app.sources import signatures
from app.sources.signatures import MAX_SIGNATURE_HEADER, MAX_STRIPE_V1
from tests.inprocess import InProcessRelay, run

HS_SECRET = "hs-client-secret-hardening"
PUBLIC_URL = "https://relay.example.com/crm"
HS_URI = f"{PUBLIC_URL}/webhooks/hubspot"
STRIPE_A, STRIPE_B = "whsec_hardening_a", "whsec_hardening_b"
JSON = {"Content-Type": "application/json"}
EVENTS = "userpilot_relay_webhook_events_total"
REJECTIONS = "userpilot_relay_webhook_rejections_total"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def hubspot_relay(database_url: str, endpoint: str, **extra: Any) -> InProcessRelay:
    return InProcessRelay(
        database_url,
        endpoint=endpoint,
        hubspot_client_secret=HS_SECRET,
        relay_public_url=PUBLIC_URL,
        hubspot_company_id_prefix="hs-",
        **extra,
    )


def stripe_relay(database_url: str, endpoint: str) -> InProcessRelay:
    return InProcessRelay(
        database_url, endpoint=endpoint, stripe_webhook_secret=f"{STRIPE_A},{STRIPE_B}"
    )


def v3_headers(body: bytes) -> dict[str, str]:
    ts = str(int(time.time() * 1000))
    signature = Signature.get_signature(HS_SECRET, body.decode(), "v3", HS_URI, "POST", ts)
    return {**JSON, "X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": ts}


def legacy_headers(body: bytes, version: str) -> dict[str, str]:
    signature = Signature.get_signature(HS_SECRET, body.decode(), version, HS_URI, "POST")
    return {**JSON, "X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": version}


def stripe_headers(body: bytes, secret: str = STRIPE_B) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    return {**JSON, "Stripe-Signature": header}


def hs_change(object_id: Any, name: str, value: str, *, event_id: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 2203,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": int(time.time() * 1000),
        "subscriptionType": "company.propertyChange",
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM_UI",
        "propertyName": name,
        "propertyValue": value,
    }


def customer_event(event_id: str, customer_id: str, company_id: str | None) -> dict[str, Any]:
    customer = {
        "id": customer_id,
        "object": "customer",
        "created": 1700000000,
        "currency": "usd",
        "delinquent": False,
        "metadata": {"company_id": company_id} if company_id is not None else {},
    }
    return {
        "id": event_id,
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()),
        "data": {"object": customer},
    }


def subscription_event(event_id: str, customer_id: str, price: dict[str, Any]) -> dict[str, Any]:
    subscription = {
        "id": "sub_1",
        "object": "subscription",
        "customer": customer_id,
        "status": "active",
        "currency": "usd",
        "current_period_end": 1717243200,
        "items": {"object": "list", "data": [{"id": "si_1", "quantity": 1, "price": price}]},
    }
    return {
        "id": event_id,
        "object": "event",
        "type": "customer.subscription.updated",
        "created": int(time.time()),
        "data": {"object": subscription},
    }


async def stored(relay: InProcessRelay) -> list[Delivery]:
    return await relay.store.list_deliveries(status=None, company_id=None, after_seq=0, limit=500)


# Finding 1: v1/v2 are replayable forever, so they are refused unless enabled ---------
def test_hubspot_v1_and_v2_only_requests_are_refused_by_default(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            before = metric(REJECTIONS, source="hubspot", reason="legacy_signature")
            for version, object_id in (("v1", 11), ("v2", 12)):
                body = json.dumps([hs_change(object_id, "name", version, event_id=1)]).encode()
                r = await relay.post(
                    "/webhooks/hubspot",
                    key=None,
                    content=body,
                    headers=legacy_headers(body, version),
                )
                assert r.status_code == 401, r.text
                assert r.json()["error"] == "legacy_signature"
                assert "v3 is required" in r.json()["message"]
                assert "HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true" in r.json()["message"]
            after = metric(REJECTIONS, source="hubspot", reason="legacy_signature")
            assert after - before == 2
            assert await stored(relay) == []
            # v3 still works on the same relay.
            body = json.dumps([hs_change(13, "name", "v3", event_id=1)]).encode()
            r = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body)
            )
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text

    run(scenario())


def test_hubspot_v1_and_v2_are_accepted_when_legacy_signatures_are_enabled(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def scenario() -> None:
        relay = hubspot_relay(database_url, sim.url, hubspot_accept_legacy_signatures=True)
        async with relay:
            for version, object_id in (("v1", 21), ("v2", 22)):
                body = json.dumps([hs_change(object_id, "name", version, event_id=1)]).encode()
                headers = legacy_headers(body, version)
                r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=headers)
                assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
                forged = {**headers, "X-HubSpot-Signature": "0" * 64}
                r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=forged)
                assert r.status_code == 401 and r.json()["error"] == "bad_signature"
            assert sorted(d.company_id for d in await stored(relay)) == ["hs-21", "hs-22"]

    run(scenario())


# Finding 2: malformed signature headers are counted 401s, never 500s ---------
STRIPE_MALFORMED: list[bytes] = [
    b"t=\xb2,v1=00",  # the reported 500: '\xb2' is superscript two as latin-1
    b"t=1\xb2,v1=00",
    "t=\u0661\u0662,v1=00".encode(),  # UTF-8 bytes, read as latin-1
    b"t=,v1=00",
    b"t=1700000000,v1=",
    b"t=1700000000",
    b"t=" + b"9" * 5000 + b",v1=00",
    b"\xff\xfe\xfd",
    b",,,,",
    b"t=1700000000," + b",".join([b"v1=00"] * (MAX_STRIPE_V1 + 1)),
    b"t=1700000000,v1=" + b"0" * MAX_SIGNATURE_HEADER,
]
HUBSPOT_MALFORMED: list[dict[str, bytes]] = [
    {"X-HubSpot-Signature-v3": b"AAAA", "X-HubSpot-Request-Timestamp": b"\xb2"},
    {"X-HubSpot-Signature-v3": b"AAAA", "X-HubSpot-Request-Timestamp": b"1693657560000\xb2"},
    {"X-HubSpot-Signature-v3": b"AAAA", "X-HubSpot-Request-Timestamp": b"9" * 5000},
    {"X-HubSpot-Signature-v3": b"AAAA", "X-HubSpot-Request-Timestamp": b"\xa01693657560000"},
    {"X-HubSpot-Signature-v3": b"\xff" * 10, "X-HubSpot-Request-Timestamp": b"1"},
    {
        "X-HubSpot-Signature-v3": b"A" * (MAX_SIGNATURE_HEADER + 1),
        "X-HubSpot-Request-Timestamp": b"1",
    },
]


def test_malformed_stripe_signature_headers_are_counted_401s(
    database_url: str, sim: SimulatorProcess
) -> None:
    body = json.dumps(customer_event("evt_h1", "cus_H1", "acme")).encode()

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url) as relay:
            before = metric(REJECTIONS, source="stripe", reason="bad_signature")
            for header in STRIPE_MALFORMED:
                headers = {**JSON, "Stripe-Signature": header}
                r = await relay.post("/webhooks/stripe", key=None, content=body, headers=headers)
                assert r.status_code == 401, (header[:40], r.text)
                assert r.json()["error"] == "bad_signature"
            after = metric(REJECTIONS, source="stripe", reason="bad_signature")
            assert after - before == len(STRIPE_MALFORMED)
            assert await stored(relay) == []

    run(scenario())


def test_malformed_hubspot_signature_headers_are_counted_401s(
    database_url: str, sim: SimulatorProcess
) -> None:
    body = json.dumps([hs_change(31, "name", "x", event_id=1)]).encode()

    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            before = metric(REJECTIONS, source="hubspot", reason="bad_signature")
            # Signed with the secret over the odd timestamp itself, so that only the timestamp
            # check can refuse it (int() of '²' used to make this a 500).
            odd = [
                {
                    "X-HubSpot-Signature-v3": Signature.get_signature(
                        HS_SECRET, body.decode(), "v3", HS_URI, "POST", ts.decode("latin-1")
                    ).encode(),
                    "X-HubSpot-Request-Timestamp": ts,
                }
                for ts in (b"\xb2", str(int(time.time() * 1000)).encode() + b"\xb2")
            ]
            for signed in [*odd, *HUBSPOT_MALFORMED]:
                headers = {**JSON, **signed}
                r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=headers)
                assert r.status_code == 401, (signed, r.text)
                assert r.json()["error"] == "bad_signature"
            after = metric(REJECTIONS, source="hubspot", reason="bad_signature")
            assert after - before == len(odd) + len(HUBSPOT_MALFORMED)
            assert await stored(relay) == []

    run(scenario())


# Finding 3: an oversized Stripe-Signature is refused before any parsing or HMAC ---------
def test_oversized_stripe_signatures_are_refused_without_computing_any_hmac(
    database_url: str, sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    hmacs: list[str] = []
    real = signatures.stripe_signature

    def counting(secret: str, timestamp: int, payload: bytes) -> str:
        hmacs.append(secret)
        return real(secret, timestamp, payload)

    monkeypatch.setattr(signatures, "stripe_signature", counting)
    body = json.dumps(customer_event("evt_big1", "cus_BIG", "big-co")).encode()
    good = stripe_headers(body)["Stripe-Signature"]

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url) as relay:
            before = metric(REJECTIONS, source="stripe", reason="bad_signature")
            just_over = good + ",v0=" + "0" * (MAX_SIGNATURE_HEADER - len(good))
            too_many = good + "," + ",".join(["v1=00"] * MAX_STRIPE_V1)
            for header, why in ((just_over, "longer than"), (too_many, "more than")):
                headers = {**JSON, "Stripe-Signature": header}
                r = await relay.post("/webhooks/stripe", key=None, content=body, headers=headers)
                assert r.status_code == 401, r.text
                assert why in r.json()["message"]
            assert metric(REJECTIONS, source="stripe", reason="bad_signature") - before == 2
            assert hmacs == []
            # The reported attack itself: 1.3 million v1 entries (8 MB). Refused whole, by
            # the general header limit (431) or this route's cap (401), never digested.
            attack = "t=1700000000," + ",".join(["v1=00"] * 1_300_000)
            headers = {**JSON, "Stripe-Signature": attack}
            r = await relay.post("/webhooks/stripe", key=None, content=body, headers=headers)
            assert r.status_code in (401, 431), r.text
            assert hmacs == []
            # The spy is wired: the genuine header is digested once per configured secret.
            r = await relay.post(
                "/webhooks/stripe", key=None, content=body, headers=stripe_headers(body)
            )
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            assert hmacs == [STRIPE_A, STRIPE_B]

    run(scenario())


def test_oversized_hubspot_signatures_are_refused_without_computing_any_digest(
    database_url: str, sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests: list[str] = []
    real = signatures.hubspot_v3_signature

    def counting(*args: Any) -> str:
        digests.append("v3")
        return real(*args)

    monkeypatch.setattr(signatures, "hubspot_v3_signature", counting)
    body = json.dumps([hs_change(41, "name", "x", event_id=1)]).encode()

    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            signed = v3_headers(body)
            for name in ("X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp"):
                padded = {**signed, name: signed[name] + " " * MAX_SIGNATURE_HEADER}
                r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=padded)
                assert r.status_code == 401 and "longer than" in r.json()["message"], r.text
            assert digests == []
            r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=signed)
            assert r.status_code == 200, r.text
            assert digests == ["v3"]

    run(scenario())


# Finding 4: one malformed event never fails its batch, and nothing unstorable is stored -------
def test_a_signed_hubspot_batch_with_malformed_events_stores_the_good_ones(
    database_url: str, sim: SimulatorProcess
) -> None:
    skipped = [
        hs_change(True, "name", "became company 1", event_id=10),
        hs_change("1" * 300, "name", "too long", event_id=11),
        hs_change(" ", "name", "blank", event_id=12),
        hs_change("", "name", "empty", event_id=13),
        hs_change("7\u0000", "name", "nul in the id", event_id=14),
        hs_change(7, "na\u0000me", "nul in the name", event_id=15),
        hs_change(7, "name", "nul in the key", event_id="e\u0000"),
        hs_change(1.5, "name", "a float", event_id=16),
    ]
    batch = [
        hs_change(501, "name", "Acme", event_id=1),
        *skipped,
        hs_change(501, "numberofemployees", "9" * 5000, event_id=2),  # a 500 for the batch
        hs_change(501, "annualrevenue", "1e999999", event_id=3),
        hs_change(501, "domain", "acme.example", event_id=4),
    ]
    body = json.dumps(batch).encode()

    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            invalid_event = metric(EVENTS, source="hubspot", outcome="invalid_event")
            invalid_value = metric(EVENTS, source="hubspot", outcome="invalid_value")
            forwarded = metric(EVENTS, source="hubspot", outcome="forwarded")
            r = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body)
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"received": len(batch), "accepted": 2}
            assert metric(EVENTS, source="hubspot", outcome="invalid_event") - invalid_event == len(
                skipped
            )
            assert metric(EVENTS, source="hubspot", outcome="invalid_value") - invalid_value == 2
            assert metric(EVENTS, source="hubspot", outcome="forwarded") - forwarded == 2
            rows = await stored(relay)
            assert {d.company_id for d in rows} == {"hs-501"}
            assert sorted(k for d in rows for k in d.metadata) == ["domain", "name"]
            # The queue keeps moving (a NUL once stalled it on PostgreSQL): delivered upstream.
            for row in rows:
                await relay.wait_for(row.id, "delivered")
            # A redelivery of the same batch is recognised: the skipped events stay skipped.
            again = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body)
            )
            assert again.status_code == 200 and again.json()["accepted"] == 0, again.text
        assert sim.company("hs-501") == {"name": "Acme", "domain": "acme.example"}
        assert sim.company("hs-1") is None

    run(scenario())


def test_a_stripe_event_with_values_no_store_can_hold_never_reaches_the_store(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def post(relay: InProcessRelay, event: dict[str, Any]) -> Any:
        body = json.dumps(event).encode()
        return await relay.post(
            "/webhooks/stripe", key=None, content=body, headers=stripe_headers(body)
        )

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url) as relay:
            malformed = metric(REJECTIONS, source="stripe", reason="malformed_body")
            # A NUL in the event id (the dedup key) or the customer id (the link): refused.
            r = await post(relay, customer_event("evt_\u0000", "cus_N1", "acme"))
            assert r.status_code == 400 and r.json()["errors"][0]["field"] == "id", r.text
            r = await post(relay, customer_event("evt_n2", "cus_\u0000", "acme"))
            assert r.status_code == 400, r.text
            assert r.json()["errors"][0]["field"] == "data.object.id"
            assert metric(REJECTIONS, source="stripe", reason="malformed_body") - malformed == 2

            # A NUL in the customer's company id: skipped and counted, no link remembered.
            invalid_event = metric(EVENTS, source="stripe", outcome="invalid_event")
            r = await post(relay, customer_event("evt_n3", "cus_N3", "ac\u0000me"))
            assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 0}, r.text
            assert metric(EVENTS, source="stripe", outcome="invalid_event") - invalid_event == 1
            assert await relay.store.company_for_customer("cus_N3") is None
            assert await stored(relay) == []

            # A price of 1e999999: MRR is unknown (dropped, counted), the rest is forwarded.
            r = await post(relay, customer_event("evt_n4", "cus_N4", "acme"))
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            invalid_value = metric(EVENTS, source="stripe", outcome="invalid_value")
            price = {
                "id": "price_x",
                "nickname": "Pro",
                "currency": "usd",
                "unit_amount": None,
                "unit_amount_decimal": "1e999999",
                "recurring": {"interval": "month", "interval_count": 1},
            }
            r = await post(relay, subscription_event("evt_n5", "cus_N4", price))
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            assert metric(EVENTS, source="stripe", outcome="invalid_value") - invalid_value == 1
            rows = await stored(relay)
            assert [d.company_id for d in rows] == ["acme", "acme"]
            assert "mrr" not in rows[1].metadata
            assert rows[1].metadata["plan"] == "Pro"
            for row in rows:
                await relay.wait_for(row.id, "delivered")
        company = sim.company("acme") or {}
        assert company.get("subscription_status") == "active" and "mrr" not in company

    run(scenario())
