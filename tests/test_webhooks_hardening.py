"""The webhook routes under attack, in process (`tests/inprocess.py`: the real app, its lifespan,
a real store): replayable HubSpot v1/v2 signatures, malformed and oversized signature headers,
and signed batches carrying values no store or Userpilot can take.

Each test checks positive signals: the status and error body, a counter that moved, the rows
stored, the deliveries that reached Userpilot (the simulator). Signature checks run on SQLite
only (no store is involved); what a store must refuse or hold runs on both backends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hubspot.utils.signature import Signature

from app.simulator.process import SimulatorProcess
from app.sources import signatures
from app.sources.signatures import MAX_SIGNATURE_HEADER, MAX_STRIPE_V1
from tests.inprocess import InProcessRelay, run
from tests.webhook_helpers import (
    EVENTS,
    HS_SECRET,
    HS_URI,
    JSON,
    REJECTIONS,
    STRIPE_NEW,
    STRIPE_OLD,
    Counters,
    customer_event,
    hs_change,
    hubspot_relay,
    legacy_headers,
    price,
    settled,
    stored,
    stripe_headers,
    stripe_relay,
    subscription_event,
    v3_headers,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store, for what does not depend on the backend."""
    return f"sqlite:///{tmp_path / 'relay.db'}"


# Finding 1: v1/v2 are replayable forever, so they are refused unless enabled ---------
def test_hubspot_v1_and_v2_only_requests_are_refused_by_default(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    async def scenario() -> None:
        async with hubspot_relay(sqlite_url, sim.url) as relay:
            counters = Counters()
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
            assert counters(REJECTIONS, source="hubspot", reason="legacy_signature") == 2
            assert await stored(relay) == []
            # v3 still works on the same relay.
            body = json.dumps([hs_change(13, "name", "v3", event_id=1)]).encode()
            r = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body)
            )
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text

    run(scenario())


def test_hubspot_v1_and_v2_are_verified_by_their_scheme_when_legacy_signatures_are_enabled(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    async def scenario() -> None:
        relay = hubspot_relay(sqlite_url, sim.url, hubspot_accept_legacy_signatures=True)
        async with relay:
            for version, object_id in (("v1", 21), ("v2", 22)):
                body = json.dumps([hs_change(object_id, "name", version, event_id=1)]).encode()
                headers = legacy_headers(body, version)
                r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=headers)
                assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
                forged = {**headers, "X-HubSpot-Signature": "0" * 64}
                r = await relay.post("/webhooks/hubspot", key=None, content=body, headers=forged)
                assert r.status_code == 401 and r.json()["error"] == "bad_signature"
            rows = await settled(relay)
            assert sorted(d.company_id for d in rows) == ["hs-21", "hs-22"]
            assert {d.status for d in rows} == {"delivered"}
        assert sim.company("hs-21") == {"name": "v1"}
        assert sim.company("hs-22") == {"name": "v2"}

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
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    body = json.dumps(customer_event("evt_h1", "cus_H1", "acme")).encode()

    async def scenario() -> None:
        async with stripe_relay(sqlite_url, sim.url) as relay:
            counters = Counters()
            for header in STRIPE_MALFORMED:
                headers = {**JSON, "Stripe-Signature": header}
                r = await relay.post("/webhooks/stripe", key=None, content=body, headers=headers)
                assert r.status_code == 401, (header[:40], r.text)
                assert r.json()["error"] == "bad_signature"
            assert counters(REJECTIONS, source="stripe", reason="bad_signature") == len(
                STRIPE_MALFORMED
            )
            assert await stored(relay) == []

    run(scenario())


def test_malformed_hubspot_signature_headers_are_counted_401s(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    body = json.dumps([hs_change(31, "name", "x", event_id=1)]).encode()

    async def scenario() -> None:
        async with hubspot_relay(sqlite_url, sim.url) as relay:
            counters = Counters()
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
            assert counters(REJECTIONS, source="hubspot", reason="bad_signature") == len(odd) + len(
                HUBSPOT_MALFORMED
            )
            assert await stored(relay) == []

    run(scenario())


# Finding 3: an oversized Stripe-Signature is refused before any parsing or HMAC ---------
def test_oversized_stripe_signatures_are_refused_without_computing_any_hmac(
    sqlite_url: str, sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
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
        async with stripe_relay(sqlite_url, sim.url) as relay:
            counters = Counters()
            just_over = good + ",v0=" + "0" * (MAX_SIGNATURE_HEADER - len(good))
            too_many = good + "," + ",".join(["v1=00"] * MAX_STRIPE_V1)
            for header, why in ((just_over, "longer than"), (too_many, "more than")):
                headers = {**JSON, "Stripe-Signature": header}
                r = await relay.post("/webhooks/stripe", key=None, content=body, headers=headers)
                assert r.status_code == 401, r.text
                assert why in r.json()["message"]
            assert counters(REJECTIONS, source="stripe", reason="bad_signature") == 2
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
            assert hmacs == [STRIPE_OLD, STRIPE_NEW]

    run(scenario())


def test_oversized_hubspot_signatures_are_refused_without_computing_any_digest(
    sqlite_url: str, sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests: list[str] = []
    real = signatures.hubspot_v3_signature

    def counting(*args: Any) -> str:
        digests.append("v3")
        return real(*args)

    monkeypatch.setattr(signatures, "hubspot_v3_signature", counting)
    body = json.dumps([hs_change(41, "name", "x", event_id=1)]).encode()

    async def scenario() -> None:
        async with hubspot_relay(sqlite_url, sim.url) as relay:
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
            counters = Counters()
            r = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body)
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"received": len(batch), "accepted": 2}
            assert counters(EVENTS, source="hubspot", outcome="invalid_event") == len(skipped)
            assert counters(EVENTS, source="hubspot", outcome="invalid_value") == 2
            assert counters(EVENTS, source="hubspot", outcome="forwarded") == 2
            rows = await stored(relay)
            assert {d.company_id for d in rows} == {"hs-501"}
            assert sorted(k for d in rows for k in d.metadata) == ["domain", "name"]
            # The queue keeps moving (a NUL once stalled it on PostgreSQL): delivered upstream.
            assert {d.status for d in await settled(relay)} == {"delivered"}
            # A redelivery of the same batch is recognised: the skipped events stay skipped.
            again = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body)
            )
            assert again.status_code == 200 and again.json()["accepted"] == 0, again.text
            assert counters(EVENTS, source="hubspot", outcome="skipped") == 2
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
            counters = Counters()
            # A NUL in the event id (the dedup key) or the customer id (the link): refused.
            r = await post(relay, customer_event("evt_\u0000", "cus_N1", "acme"))
            assert r.status_code == 400 and r.json()["errors"][0]["field"] == "id", r.text
            r = await post(relay, customer_event("evt_n2", "cus_\u0000", "acme"))
            assert r.status_code == 400, r.text
            assert r.json()["errors"][0]["field"] == "data.object.id"
            assert counters(REJECTIONS, source="stripe", reason="malformed_body") == 2

            # A NUL in the customer's company id: skipped and counted, no link remembered.
            r = await post(relay, customer_event("evt_n3", "cus_N3", "ac\u0000me"))
            assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 0}, r.text
            assert counters(EVENTS, source="stripe", outcome="invalid_event") == 1
            assert await relay.store.webhooks.company_for_customer("cus_N3") is None
            assert await stored(relay) == []

            # A price of 1e999999: MRR is unknown (dropped, counted), the rest is forwarded.
            r = await post(relay, customer_event("evt_n4", "cus_N4", "acme"))
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            huge = price(None, id="price_x", unit_amount_decimal="1e999999")
            sub = subscription_event(
                "evt_n5", "cus_N4", kind="customer.subscription.updated", item_price=huge
            )
            r = await post(relay, sub)
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            assert counters(EVENTS, source="stripe", outcome="invalid_value") == 1
            rows = await stored(relay)
            assert [d.company_id for d in rows] == ["acme", "acme"]
            assert "mrr" not in rows[1].metadata
            assert rows[1].metadata["plan"] == "Pro"
            assert {d.status for d in await settled(relay)} == {"delivered"}
        company = sim.company("acme") or {}
        assert company.get("subscription_status") == "active" and "mrr" not in company

    run(scenario())
