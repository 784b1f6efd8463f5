"""Source times, on both stores (issue 20, findings 8 and 9): a provider's clock running
ahead (a backfill answer's `Date`, an event dated in the future) is clamped to the relay's, so
it never holds back a later change; an event whose values lose to newer ones already applied
is counted `older`, never `forwarded`; an API update takes its acceptance as its source time,
so an older source value read after it never overwrites it."""

from __future__ import annotations

import time
from typing import Any

from app.simulator.process import SimulatorProcess
from tests.inprocess import run
from tests.integration.test_backfill import (
    FAST,
    drained,
    finished,
    hubspot_company,
    hubspot_on,
    start,
)
from tests.integration.test_webhooks_e2e import post_hubspot, post_stripe
from tests.list_stubs import STRIPE_KEY, HubSpotStub, StripeListStub
from tests.relay import INGEST_KEY
from tests.webhook_helpers import (
    EVENTS,
    HS_SECRET,
    PUBLIC_URL,
    Counters,
    customer_event,
    hs_change,
    hubspot_relay,
    settled,
    stripe_relay,
)


def test_a_stripe_clock_ahead_does_not_hold_back_a_newer_webhook(
    database_url: str, sim: SimulatorProcess
) -> None:
    with StripeListStub() as stub:
        stub.clock_ahead = 250  # within the five minutes once trusted
        stub.customers = [
            {
                "id": "cus_A",
                "object": "customer",
                "name": "Listed name",
                "currency": "usd",
                "delinquent": False,
                "created": 1700000000,
                "address": {"country": "DE"},
                "metadata": {"company_id": "acme"},
            }
        ]

        async def main() -> tuple[dict[str, Any], dict[str, Any], float, float]:
            async with stripe_relay(
                database_url,
                sim.url,
                stripe_api_key=STRIPE_KEY,
                stripe_api_base=stub.url,
                **FAST,
            ) as relay:
                result = await finished(relay, await start(relay, "stripe"))
                await drained(relay)
                assert sim.company("acme")["name"] == "Listed name"
                counters = Counters()
                # Renamed after the backfill read it, by Stripe's event clock (not ahead).
                renamed = customer_event(
                    "evt_rename", "cus_A", "acme", created=int(time.time()) + 1, name="Renamed"
                )
                r = await post_stripe(relay, renamed)
                assert r.status_code == 200, r.text
                await drained(relay)
                forwarded = counters(EVENTS, source="stripe", outcome="forwarded")
                older = counters(EVENTS, source="stripe", outcome="older")
                return result, r.json(), forwarded, older

        result, answer, forwarded, older = run(main(), limit=90)
    assert result["status"] == "completed", result
    assert answer["accepted"] == 1, answer
    assert (forwarded, older) == (1, 0)
    assert sim.company("acme")["name"] == "Renamed"


def test_an_event_dated_in_the_future_does_not_hold_back_later_ones(
    database_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)

    async def scenario() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            future = hs_change(88, "name", "Dated ahead", at=now + 86_400_000, event_id=1)
            assert (await post_hubspot(relay, [future])).json()["accepted"] == 1
            await settled(relay)
            later = hs_change(88, "name", "Later", at=now + 1000, event_id=2)
            assert (await post_hubspot(relay, [later])).json()["accepted"] == 1
            await settled(relay)
            assert sim.company("hs-88") == {"name": "Later"}

    run(scenario())


def test_an_event_whose_values_lose_to_newer_ones_is_counted_older(
    database_url: str, sim: SimulatorProcess
) -> None:
    t0 = int(time.time()) - 1000

    async def scenario() -> None:
        async with stripe_relay(database_url, sim.url) as relay:
            counters = Counters()
            # The newest: no billing country (an address without one).
            newest = customer_event("evt_1", "cus_B", "beta", created=t0 + 100, name="Newest")
            newest["data"]["object"]["address"] = {}
            assert (await post_stripe(relay, newest)).json()["accepted"] == 1
            # Older, with a country: its name loses, its country (never set) is stored.
            partly = customer_event("evt_2", "cus_B", "beta", created=t0 + 50, name="Older")
            assert (await post_stripe(relay, partly)).json()["accepted"] == 1
            # Older still, and nothing of it is newer than what was applied.
            oldest = customer_event("evt_3", "cus_B", "beta", created=t0 + 10, name="Oldest")
            oldest["data"]["object"]["address"] = {}
            assert (await post_stripe(relay, oldest)).json()["accepted"] == 0
            # A redelivery stays `skipped`.
            assert (await post_stripe(relay, newest)).json()["accepted"] == 0
            await settled(relay)
            assert counters(EVENTS, source="stripe", outcome="forwarded") == 1
            assert counters(EVENTS, source="stripe", outcome="older") == 2
            assert counters(EVENTS, source="stripe", outcome="skipped") == 1
            company = sim.company("beta")
            assert company is not None
            assert company["name"] == "Newest" and company["billing_country"] == "DE"

    run(scenario())


def test_an_api_update_is_newer_than_an_older_source_value_read_after_it(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Finding 8: an API update carries no source time; it takes its acceptance as one, so a
    reconciliation (or a webhook) with an older source time never puts the old value back."""
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(3)}
        before_api = int(time.time() * 1000)

        async def main() -> tuple[dict[str, Any], dict[str, Any], float]:
            async with hubspot_on(
                database_url,
                sim,
                stub,
                hubspot_client_secret=HS_SECRET,
                relay_public_url=PUBLIC_URL,
            ) as relay:
                first = await finished(relay, await start(relay, "hubspot"))
                await drained(relay)
                assert first["enqueued"] == 3, first
                r = await relay.post_company(
                    "hs-1000", {"name": "Named by the API"}, key=INGEST_KEY
                )
                assert r.status_code == 202, r.text
                bulk = {"companies": [{"company_id": "hs-1001", "metadata": {"name": "In bulk"}}]}
                r = await relay.post("/companies/bulk", json=bulk, key=INGEST_KEY)
                assert r.status_code == 202, r.text
                await drained(relay)
                counters = Counters()
                # A HubSpot change made before the API's update, delivered after it.
                late = hs_change(1000, "name", "Late webhook", at=before_api, event_id=7)
                answer = (await post_hubspot(relay, [late])).json()
                older = counters(EVENTS, source="hubspot", outcome="older")
                # HubSpot still has its 2024 names: they differ from what was delivered.
                result = await finished(relay, await start(relay, "hubspot", mode="reconcile"))
                await drained(relay)
                return result, answer, older

        result, answer, older = run(main(), limit=90)
    assert answer["accepted"] == 0 and older == 1
    assert result["status"] == "completed", result
    assert result["enqueued"] == 0 and result["skipped"] == 2 and result["unchanged"] == 1
    stored = sim.companies()
    assert stored["hs-1000"]["name"] == "Named by the API"
    assert stored["hs-1001"]["name"] == "In bulk"
    assert stored["hs-1002"]["name"] == "Acme 2"
