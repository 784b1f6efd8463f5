"""HubSpot and Stripe webhooks end to end: signed requests to the real app in process (its
lifespan, a real store), the Userpilot simulator on the other side, and a local Stripe API
stand-in for customer lookups. One test runs a real relay process: what uvicorn hands the
route (the raw query string HubSpot signs) is the point there.

The backend matrix runs where store semantics decide the outcome (redeliveries, out-of-order
events, customer links, parked events); refusals and routing run on SQLite only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from hubspot.utils.signature import Signature

from app.simulator.process import SimulatorProcess
from app.sources import signatures
from app.sources.signatures import MAX_SIGNATURE_HEADER, MAX_STRIPE_V1
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import RELAY_KEYS, UPSTREAM_KEY, RelayProcess
from tests.stripe_stub import StripeStub
from tests.webhook_helpers import (
    EVENTS,
    HS_SECRET,
    HS_URI,
    IDENTIFY,
    JSON,
    PUBLIC_URL,
    REJECTIONS,
    STRIPE_NEW,
    STRIPE_OLD,
    Counters,
    captured_logs,
    customer_event,
    hs_change,
    hs_creation,
    hubspot_relay,
    legacy_headers,
    price,
    resolver,
    settled,
    stored,
    stripe_headers,
    stripe_relay,
    subscription_event,
    v3_headers,
)

MAY_1_NOON_MS = 1714564800000
QUERY = "portal=62515&next=https%3A%2F%2Fapp.example.com%2Fa%20b"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store, for what does not depend on the backend."""
    return f"sqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
def stripe_stub() -> Iterator[StripeStub]:
    with StripeStub() as stub:
        yield stub


async def post_hubspot(
    relay: InProcessRelay, events: list[dict[str, Any]], query: str = "", **sign: Any
) -> httpx.Response:
    body = json.dumps(events).encode()
    path = "/webhooks/hubspot" + (f"?{query}" if query else "")
    return await relay.post(path, key=None, content=body, headers=v3_headers(body, query, **sign))


async def post_stripe(relay: InProcessRelay, event: dict[str, Any], **sign: Any) -> httpx.Response:
    body = json.dumps(event).encode()
    return await relay.post(
        "/webhooks/stripe", key=None, content=body, headers=stripe_headers(body, **sign)
    )


def identify_calls(sim: SimulatorProcess, company_id: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests(path=IDENTIFY) if r["body"]["company_id"] == company_id]


# HubSpot ---------
def test_hubspot_batch_reaches_userpilot_as_one_merged_identify(
    database_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)
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

    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            counters = Counters()
            with captured_logs() as logs:
                r = await post_hubspot(relay, batch, QUERY)
            assert r.status_code == 200, r.text
            assert r.json() == {"received": 9, "accepted": 6}
            rows = await settled(relay)
            assert len(rows) == 6 and {d.status for d in rows} == {"delivered"}
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
            assert counters("userpilot_relay_webhook_unmapped_fields_total", source="hubspot") == 1
            assert counters(EVENTS, source="hubspot", outcome="forwarded") == 6
            assert counters(EVENTS, source="hubspot", outcome="invalid_value") == 1
            assert counters(EVENTS, source="hubspot", outcome="ignored") == 1
            assert counters(EVENTS, source="hubspot", outcome="unmapped") == 1
            assert counters("userpilot_relay_updates_accepted_total", source="hubspot") == 6
            text = "\n".join(logs)
            assert "a lot" not in text and "annualrevenue" in text

            # HubSpot retries the same batch (a new attempt is signed anew): nothing is stored,
            # so nothing new can go upstream.
            again = await post_hubspot(relay, [{**e, "attemptNumber": 1} for e in batch], QUERY)
            assert again.status_code == 200, again.text
            assert again.json()["accepted"] == 0
            assert counters(EVENTS, source="hubspot", outcome="skipped") == 6
            assert len(await settled(relay)) == 6
            assert len(identify_calls(sim, "hs-501")) == 1

    run(scenario())


def test_hubspot_out_of_order_events_leave_the_newest_value(
    database_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)

    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            newest = hs_change(77, "name", "Newest", at=now, event_id=30)
            assert (await post_hubspot(relay, [newest])).json()["accepted"] == 1
            await settled(relay)
            assert sim.company("hs-77") == {"name": "Newest"}
            older = hs_change(77, "name", "Older", at=now - 5000, event_id=29)
            r = await post_hubspot(relay, [older])
            assert r.status_code == 200 and r.json()["accepted"] == 0
            # Within one batch too: the late event of the pair loses whatever its position.
            pair = [
                hs_change(77, "industry", "Software", at=now + 10, event_id=32),
                hs_change(77, "industry", "Hardware", at=now + 5, event_id=31),
            ]
            assert (await post_hubspot(relay, pair)).json()["accepted"] == 1
            assert len(await settled(relay)) == 2
            assert sim.company("hs-77") == {"name": "Newest", "industry": "Software"}
            assert len(identify_calls(sim, "hs-77")) == 2

    run(scenario())


def test_hubspot_refuses_unsigned_forged_stale_and_malformed_requests(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)
    events = [hs_change(9, "name", "Evil", at=now, event_id=1)]
    body = json.dumps(events).encode()

    async def scenario() -> None:
        async with hubspot_relay(sqlite_url, sim.url) as relay:

            async def send(
                headers: dict[str, str], payload: bytes = body, query: str = ""
            ) -> httpx.Response:
                path = "/webhooks/hubspot" + (f"?{query}" if query else "")
                return await relay.post(path, key=None, content=payload, headers=headers)

            counters = Counters()
            cases = {
                "missing_signature": JSON,
                "bad_signature": v3_headers(body, secret="not-the-secret"),
                "stale_timestamp": v3_headers(body, ts_ms=now - 6 * 60_000),
            }
            for reason, headers in cases.items():
                r = await send(headers)
                assert r.status_code == 401, (reason, r.text)
                assert r.json()["error"] == reason
                assert HS_SECRET not in r.text
            future = await send(v3_headers(body, ts_ms=now + 6 * 60_000))
            assert future.status_code == 401 and future.json()["error"] == "stale_timestamp"
            # Signed for one query string, sent with another.
            assert (await send(v3_headers(body, "a=1"), query="a=2")).status_code == 401
            # Signed for the relay's own address instead of the public URL.
            internal = Signature.get_signature(
                HS_SECRET, body.decode(), "v3", "http://relay/webhooks/hubspot", "POST", str(now)
            )
            headers = {
                **JSON,
                "X-HubSpot-Signature-v3": internal,
                "X-HubSpot-Request-Timestamp": str(now),
            }
            assert (await send(headers)).status_code == 401
            # v1/v2 carry no timestamp (replayable forever): refused unless enabled.
            legacy = {"X-HubSpot-Signature": "x", "X-HubSpot-Signature-Version": "v0"}
            r = await send({**JSON, **legacy})
            assert r.status_code == 401 and r.json()["error"] == "legacy_signature", r.text
            assert "HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true" in r.json()["message"]

            malformed = json.dumps({"events": events}).encode()
            r = await send(v3_headers(malformed), malformed)
            assert r.status_code == 400 and r.json()["error"] == "malformed_body"
            missing_object = json.dumps([{**events[0], "objectId": None}]).encode()
            r = await send(v3_headers(missing_object), missing_object)
            assert r.status_code == 400 and r.json()["errors"][0]["field"] == "[0]"
            assert (await send({"Content-Type": "text/plain"})).status_code == 415

            assert counters(REJECTIONS, source="hubspot", reason="missing_signature") == 1
            assert counters(REJECTIONS, source="hubspot", reason="bad_signature") == 3
            assert counters(REJECTIONS, source="hubspot", reason="legacy_signature") == 1
            assert counters(REJECTIONS, source="hubspot", reason="stale_timestamp") == 2
            assert counters(REJECTIONS, source="hubspot", reason="malformed_body") == 2
            assert counters(REJECTIONS, source="hubspot", reason="unsupported_media_type") == 1
            assert await stored(relay) == []

    run(scenario())
    assert sim.requests(path=IDENTIFY) == []


def test_a_relay_process_verifies_hubspot_over_the_query_string_as_uvicorn_hands_it_over(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    relay = RelayProcess(
        {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
            "HUBSPOT_CLIENT_SECRET": HS_SECRET,
            "RELAY_PUBLIC_URL": PUBLIC_URL,
            "HUBSPOT_COMPANY_ID_PREFIX": "hs-",
        },
        tmp_path / "relay.log",
    )
    try:
        body = json.dumps([hs_change(601, "name", "Over HTTP", event_id=1)]).encode()
        path = f"/webhooks/hubspot?{QUERY}"
        r = relay.request("POST", path, key=None, content=body, headers=v3_headers(body, QUERY))
        assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 1}, r.text
        r = relay.request("POST", path, key=None, content=body, headers=v3_headers(body, "x=1"))
        assert r.status_code == 401 and r.json()["error"] == "bad_signature", r.text
        assert relay.metric(REJECTIONS, source="hubspot", reason="bad_signature") == 1
    finally:
        relay.stop()


# Stripe ---------
def test_stripe_customer_and_subscription_reach_userpilot_merged(
    database_url: str, sim: SimulatorProcess
) -> None:
    t0 = int(time.time())
    expected = {
        "stripe_customer_id": "cus_A",
        "name": "Acme GmbH",
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

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url) as relay:
            counters = Counters()
            customer = customer_event("evt_c1", "cus_A", "acme", created=t0)
            r = await post_stripe(relay, customer)
            assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 1}, r.text
            sub = subscription_event("evt_s1", "cus_A", created=t0 + 1, trial_end=None)
            # Signed with the old secret while it is being rolled.
            r = await post_stripe(relay, sub, secret=STRIPE_OLD)
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            await settled(relay)
            assert sim.company("acme") == expected
            upstream = json.dumps(sim.requests())
            for personal in ("jane.doe@example.com", "555 0100", "Hauptstr"):
                assert personal not in upstream
            calls = identify_calls(sim, "acme")
            assert calls[-1]["body"]["metadata"]["trial_end"] is None

            # Stripe redelivers the subscription event: acknowledged, not stored, not sent.
            r = await post_stripe(relay, sub)
            assert r.status_code == 200 and r.json()["accepted"] == 0
            assert counters(EVENTS, source="stripe", outcome="skipped") == 1
            assert len(await settled(relay)) == 2
            assert len(identify_calls(sim, "acme")) == len(calls)

            # Out of order: the newer update arrives first; the older one must not overwrite it.
            newer = subscription_event(
                "evt_s3",
                "cus_A",
                created=t0 + 20,
                status="past_due",
                kind="customer.subscription.updated",
            )
            older = subscription_event(
                "evt_s2",
                "cus_A",
                created=t0 + 10,
                status="canceled",
                kind="customer.subscription.deleted",
            )
            assert (await post_stripe(relay, newer)).json()["accepted"] == 1
            assert (await post_stripe(relay, older)).json()["accepted"] == 0
            assert len(await settled(relay)) == 3
            assert sim.company("acme") == {**expected, "subscription_status": "past_due"}
            assert len(identify_calls(sim, "acme")) == len(calls) + 1

    run(scenario())


def test_stripe_subscription_of_an_unknown_customer_waits_for_its_company(
    database_url: str, sim: SimulatorProcess
) -> None:
    t0 = int(time.time())
    # The periodic retry is an hour away: what resolves the event is the customer's link.
    options = {"stripe_webhook_secret": STRIPE_NEW, "stripe_unresolved_retry_seconds": 3600}

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url, **options) as relay:
            counters = Counters()
            sub = subscription_event(
                "evt_s9", "cus_B", created=t0, item_price=price(12000), quantity=1
            )
            r = await post_stripe(relay, sub)
            assert r.status_code == 200 and r.json()["accepted"] == 0
            assert counters(EVENTS, source="stripe", outcome="unresolved") == 1
            # A round of retries finds no company: the event stays parked, no id is guessed.
            assert await resolver(relay).run_once() == 0
            assert [k for k, _ in await relay.store.webhooks.parked(source="stripe", limit=10)] == [
                "evt_s9"
            ]
            assert await stored(relay) == []
            # Redelivered while it waits: still the one event waiting, still nothing stored.
            assert (await post_stripe(relay, sub)).status_code == 200
            assert await relay.store.webhooks.count_parked() == 1
            assert await stored(relay) == []

            customer = customer_event("evt_c9", "cus_B", "late-co", created=t0 + 5)
            assert (await post_stripe(relay, customer)).status_code == 200
            await eventually(lambda: counters(EVENTS, source="stripe", outcome="resolved") == 1)
            assert await relay.store.webhooks.count_parked() == 0
            await settled(relay)
            company = sim.company("late-co") or {}
            assert company["plan"] == "Pro" and company["mrr"] == 120.0
            assert sim.company("cus_B") is None

            # A customer without the metadata key stands for the company with its Stripe id.
            r = await post_stripe(relay, customer_event("evt_c10", "cus_C", None, created=t0))
            assert r.status_code == 200 and r.json()["accepted"] == 1
            await settled(relay)
            assert (sim.company("cus_C") or {}).get("stripe_customer_id") == "cus_C"

    run(scenario())


def test_stripe_unknown_customer_is_looked_up_through_the_api(
    database_url: str, sim: SimulatorProcess, stripe_stub: StripeStub
) -> None:
    stripe_stub.customers["cus_R"] = {
        "id": "cus_R",
        "object": "customer",
        "email": "ops@remote.example",
        "metadata": {"company_id": "remote-co"},
    }
    options = {
        "stripe_webhook_secret": STRIPE_NEW,
        "stripe_api_key": "sk_test_relay_51",
        "stripe_api_base": stripe_stub.url,
        "stripe_unresolved_retry_seconds": 3600,  # rounds run when an event is parked, or here
    }
    t0 = int(time.time())

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url, **options) as relay:
            with captured_logs() as logs:
                counters = Counters()
                r = await post_stripe(relay, subscription_event("evt_r1", "cus_R", created=t0))
                assert r.status_code == 200, r.text
                await eventually(lambda: counters(EVENTS, source="stripe", outcome="resolved"))
                await settled(relay)
                assert (sim.company("remote-co") or {}).get("subscription_status") == "active"
                assert stripe_stub.requests == [
                    {"path": "/v1/customers/cus_R", "authorization": "Bearer sk_test_relay_51"}
                ]
                # The link is remembered: the next event of that customer needs no lookup.
                updated = subscription_event(
                    "evt_r2",
                    "cus_R",
                    created=t0 + 1,
                    status="past_due",
                    kind="customer.subscription.updated",
                )
                assert (await post_stripe(relay, updated)).json()["accepted"] == 1
                await settled(relay)
                assert (sim.company("remote-co") or {}).get("subscription_status") == "past_due"
                assert len(stripe_stub.requests) == 1

                # Stripe is down: the lookup fails, the event waits (parked again).
                stripe_stub.fail_with = 503
                r = await post_stripe(relay, subscription_event("evt_x1", "cus_X", created=t0))
                assert r.status_code == 200 and r.json()["accepted"] == 0
                await eventually(
                    lambda: any("wait for their customer's company" in line for line in logs)
                )
                assert any(q["path"] == "/v1/customers/cus_X" for q in stripe_stub.requests)
                assert any("stripe customer lookup failed" in line for line in logs)
                assert await relay.store.webhooks.count_parked() == 1
                assert await stored(relay, "cus_X") == []
                # Back, and it knows the customer now; without the metadata key it stands for
                # the company named by its customer id.
                stripe_stub.fail_with = None
                stripe_stub.customers["cus_X"] = {"id": "cus_X", "object": "customer"}
                assert await resolver(relay).run_once() == 1
                await settled(relay)
                assert (sim.company("cus_X") or {}).get("plan") == "Pro"
            assert "sk_test_relay_51" not in "\n".join(logs)

    run(scenario())


def test_stripe_skip_mode_and_other_event_types(sqlite_url: str, sim: SimulatorProcess) -> None:
    options = {"stripe_webhook_secret": STRIPE_NEW, "stripe_missing_company": "skip"}

    async def scenario() -> None:
        async with stripe_relay(sqlite_url, sim.url, **options) as relay:
            counters = Counters()
            r = await post_stripe(relay, customer_event("evt_k1", "cus_K", None))
            assert r.status_code == 200 and r.json()["accepted"] == 0
            invoice = {
                "id": "evt_i1",
                "object": "event",
                "type": "invoice.paid",
                "created": int(time.time()),
                "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_K"}},
            }
            r = await post_stripe(relay, invoice)
            assert r.status_code == 200 and r.json() == {"received": 1, "accepted": 0}
            assert counters(EVENTS, source="stripe", outcome="no_company") == 1
            assert counters(EVENTS, source="stripe", outcome="ignored") == 1
            assert await relay.store.webhooks.company_for_customer("cus_K") is None
            assert await stored(relay) == []

    run(scenario())


def test_stripe_refuses_forged_stale_future_v0_and_malformed_requests(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time())
    body = json.dumps(subscription_event("evt_f1", "cus_F", created=now)).encode()
    good = stripe.WebhookSignature._compute_signature(f"{now}.{body.decode()}", STRIPE_NEW)

    def signed(payload: bytes, **sign: Any) -> str:
        return stripe_headers(payload, **sign)["Stripe-Signature"]

    async def scenario() -> None:
        async with stripe_relay(sqlite_url, sim.url) as relay:

            async def send(signature: str | None, payload: bytes = body) -> httpx.Response:
                headers = dict(JSON)
                if signature is not None:
                    headers["Stripe-Signature"] = signature
                return await relay.post(
                    "/webhooks/stripe", key=None, content=payload, headers=headers
                )

            counters = Counters()
            with captured_logs() as logs:
                cases = [
                    ("missing_signature", None),
                    ("bad_signature", f"t={now},v1={'0' * 64}"),
                    ("bad_signature", signed(body, secret="whsec_forged")),
                    ("bad_signature", f"t={now},v0={good}"),  # v0 only: never accepted
                    ("bad_signature", f"t={now + 1},v1={good}"),  # the timestamp is signed too
                    ("stale_timestamp", signed(body, at=now - 360)),
                    ("stale_timestamp", signed(body, at=now + 360)),
                ]
                for reason, signature in cases:
                    r = await send(signature)
                    assert r.status_code == 401, (reason, r.text)
                    assert r.json()["error"] == reason
                    assert STRIPE_NEW not in r.text and good not in r.text
                # A captured request replayed after the tolerance: refused though it matches.
                assert (await send(signed(body, at=now - 400))).status_code == 401

                malformed = b'{"id": "evt_m1", "object": "event"}'
                r = await send(signed(malformed), malformed)
                assert r.status_code == 400 and r.json()["error"] == "malformed_body"
                not_json = b"{oops"
                assert (await send(signed(not_json), not_json)).status_code == 400

            assert counters(REJECTIONS, source="stripe", reason="missing_signature") == 1
            assert counters(REJECTIONS, source="stripe", reason="bad_signature") == 4
            assert counters(REJECTIONS, source="stripe", reason="stale_timestamp") == 3
            assert counters(REJECTIONS, source="stripe", reason="malformed_body") == 2
            assert await stored(relay) == []
            text = "\n".join(logs)
            assert "webhook rejected" in text  # the log was captured: its lines say no secret
            assert STRIPE_NEW not in text and good not in text

    run(scenario())
    assert sim.requests(path=IDENTIFY) == []


def test_webhook_routes_answer_404_when_their_source_is_not_configured(sqlite_url: str) -> None:
    async def scenario() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            counters = Counters()
            for source in ("hubspot", "stripe"):
                r = await relay.post(f"/webhooks/{source}", key=None, content=b"[]", headers=JSON)
                assert r.status_code == 404, r.text
                assert r.json()["error"] == "not_found"
                assert counters(REJECTIONS, source=source, reason="disabled") == 1

    run(scenario())


# --- under attack (from the adversarial review): replayable HubSpot v1/v2 signatures, malformed
# and oversized signature headers, signed batches carrying values no store can take ---------------


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
