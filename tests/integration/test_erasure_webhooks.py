"""Erasure at the webhook doors, over HTTP in process: an erased company's HubSpot and Stripe
events are dropped and counted, never refused; with RELAY_ERASE_ON_SOURCE_DELETE a HubSpot
`company.deletion` and a Stripe `customer.deleted` start an erasure of the mapped company."""

from __future__ import annotations

from typing import Any

import orjson

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import ADMIN_KEY
from tests.webhook_helpers import (
    customer_event,
    hs_change,
    hubspot_relay,
    stripe_headers,
    stripe_relay,
    v3_headers,
)

SUPPRESSED = "userpilot_relay_suppressed_updates_total"


async def post_hubspot(relay: InProcessRelay, events: list[dict[str, Any]]) -> None:
    body = orjson.dumps(events)
    r = await relay.post("/webhooks/hubspot", content=body, headers=v3_headers(body), key=None)
    assert r.status_code < 300, r.text


async def post_stripe(relay: InProcessRelay, event: dict[str, Any]) -> None:
    body = orjson.dumps(event)
    r = await relay.post("/webhooks/stripe", content=body, headers=stripe_headers(body), key=None)
    assert r.status_code < 300, r.text


def test_an_erased_companys_hubspot_events_are_dropped_and_counted(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            r = await relay.post(
                "/erasures", key=ADMIN_KEY, json={"company_ids": ["hs-41"], "reason": "r"}
            )
            assert r.status_code == 202
            before = await relay.metric(SUPPRESSED, source="hubspot")
            await post_hubspot(
                relay,
                [
                    hs_change(41, "name", "Gone Inc", event_id=1),
                    hs_change(42, "name", "Kept Inc", event_id=2),
                ],
            )
            assert await relay.metric(SUPPRESSED, source="hubspot") == before + 1
            await eventually(lambda: sim.company("hs-42"))
            assert sim.company("hs-41") is None

    run(main())


def test_source_deletions_start_erasures_when_switched_on(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        extra = {"relay_erase_on_source_delete": True, "relay_erasure_poll_seconds": 0.05}
        sim.set_delete_pacing(0.05)
        async with hubspot_relay(database_url, sim.url, **extra) as relay:
            deletion = {
                **hs_change(77, "name", "x", event_id=9),
                "subscriptionType": "company.deletion",
            }
            await post_hubspot(relay, [deletion])
            r = await relay.get("/suppressions/hs-77")
            assert r.json()["suppressed"] is True
            erasures = (await relay.get("/erasures", key=ADMIN_KEY)).json()["items"]
            assert [(e["reason"], e["requested_by"]) for e in erasures] == [
                ("source deleted", "hubspot")
            ]
        async with stripe_relay(database_url, sim.url, **extra) as relay:
            await post_stripe(relay, customer_event("evt_c1", "cus_del", "acme-stripe"))
            deleted = {
                **customer_event("evt_c2", "cus_del", "acme-stripe"),
                "type": "customer.deleted",
            }
            await post_stripe(relay, deleted)
            r = await relay.get("/suppressions/acme-stripe")
            assert r.json()["suppressed"] is True

    run(main())


def test_source_deletions_are_ignored_by_default(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> None:
        async with hubspot_relay(database_url, sim.url) as relay:
            deletion = {
                **hs_change(78, "name", "x", event_id=10),
                "subscriptionType": "company.deletion",
            }
            await post_hubspot(relay, [deletion])
            r = await relay.get("/suppressions/hs-78")
            assert r.json()["suppressed"] is False

    run(main())
