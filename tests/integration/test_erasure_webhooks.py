"""Erasure at the webhook doors, over HTTP in process: an erased company's HubSpot and Stripe
events are dropped and counted, never refused; with RELAY_ERASE_ON_SOURCE_DELETE a HubSpot
`company.deletion` and a Stripe `customer.deleted` start an erasure of the mapped company."""

from __future__ import annotations

from typing import Any

import orjson

from app.simulator.process import SimulatorProcess
from app.store.backfills import Page
from app.store.deliveries import Retention
from app.store.sql import Plan, Statement
from app.store.store import open_store
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import ADMIN_KEY
from tests.stripe_stub import StripeStub
from tests.webhook_helpers import (
    customer_event,
    hs_change,
    hubspot_relay,
    resolver,
    stripe_headers,
    stripe_relay,
    subscription_event,
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


async def links(store: Any) -> list[tuple[str, str]]:
    def plan() -> Plan[list[tuple[str, str]]]:
        rows = (yield Statement("SELECT customer_id, company_id FROM customer_links")).rows
        return sorted((str(c), str(co)) for c, co in rows)

    found: list[tuple[str, str]] = await store.engine.read(plan)
    return found


def test_an_erased_company_is_never_linked_again_nor_its_events_kept(
    database_url: str, sim: SimulatorProcess
) -> None:
    """A Stripe customer event naming an erased company, and a subscription event whose
    customer a lookup finds standing for it, leave no link and no parked event."""
    with StripeStub() as stub:
        stub.customers["cus_2"] = {
            "id": "cus_2",
            "object": "customer",
            "metadata": {"company_id": "acme-gone"},
        }
        options = {
            "stripe_api_key": "sk_test_relay_51",
            "stripe_api_base": stub.url,
            "stripe_unresolved_retry_seconds": 3600,
        }

        async def main() -> None:
            async with stripe_relay(database_url, sim.url, **options) as relay:
                r = await relay.post(
                    "/erasures", key=ADMIN_KEY, json={"company_ids": ["acme-gone"], "reason": "r"}
                )
                assert r.status_code == 202
                body = orjson.dumps(customer_event("evt_g1", "cus_1", "acme-gone"))
                r = await relay.post(
                    "/webhooks/stripe", content=body, headers=stripe_headers(body), key=None
                )
                assert r.status_code == 200 and r.json()["accepted"] == 0, r.text
                await post_stripe(relay, subscription_event("evt_g2", "cus_2"))
                await resolver(relay).run_once()
                assert await relay.store.webhooks.count_parked() == 0
                assert any(q["path"] == "/v1/customers/cus_2" for q in stub.requests)
                assert await links(relay.store) == []
                # A company not erased is linked as before.
                await post_stripe(relay, customer_event("evt_g3", "cus_3", "acme-kept"))
                assert await links(relay.store) == [("cus_3", "acme-kept")]

        run(main())


def test_the_store_never_links_a_suppressed_company_and_prunes_old_links(
    database_url: str,
) -> None:
    """`link_customers` and a Stripe backfill page's links skip suppressed companies; the
    links not written within the values retention are pruned."""

    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            await store.erasures.create(["gone-co"], reason="r", by="t")
            await store.webhooks.link_customers([("cus_a", "gone-co"), ("cus_b", "kept-co")])
            assert await links(store) == [("cus_b", "kept-co")]
            backfill = await store.backfills.start(
                source="stripe", mode="full", owner="o", lease=60
            )
            page = Page(
                number=1,
                cursor=None,
                records=[],
                read=2,
                links=[("cus_c", "gone-co"), ("cus_d", "other-co")],
            )
            await store.backfills.commit_page(backfill.id, owner="o", page=page, lease=60)
            assert await links(store) == [("cus_b", "kept-co"), ("cus_d", "other-co")]
            # An existing link is not moved to a suppressed company either.
            await store.webhooks.link_customers([("cus_b", "gone-co")])
            assert await links(store) == [("cus_b", "kept-co"), ("cus_d", "other-co")]
            await store.deliveries.prune(delivered_before=0, retention=Retention())
            assert len(await links(store)) == 2
            await store.deliveries.prune(delivered_before=0, retention=Retention(values=-60))
            assert await links(store) == []
        finally:
            await store.close()

    run(main())
