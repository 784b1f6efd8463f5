"""Backfills from HubSpot and Stripe, in process over the real app and a real store (both
backends), against the list-API stand-ins (`tests/list_stubs.py`) and the Userpilot simulator:
every mapped value right, through bulk jobs; 429 and 500 retried; newer webhook values kept;
reconciliations that send only what changed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, eventually, run
from tests.list_stubs import STRIPE_KEY, TOKEN, HubSpotStub, StripeListStub
from tests.relay import ADMIN_KEY
from tests.webhook_helpers import (
    HS_SECRET,
    PUBLIC_URL,
    captured_logs,
    hs_change,
    price,
    v3_headers,
)

FAST = {
    "relay_bulk_threshold": 50,
    "relay_bulk_poll_seconds": 0.1,
    "relay_merge_window_seconds": 0.0,
    "hubspot_requests_per_second": 100,
    "stripe_requests_per_second": 100,
}
OLD = "2024-01-01T00:00:00Z"  # every stub company's hs_lastmodifieddate


def hubspot_on(database_url: str, sim: SimulatorProcess, stub: HubSpotStub, **extra: Any) -> Any:
    return InProcessRelay(
        database_url,
        endpoint=sim.url,
        hubspot_access_token=TOKEN,
        hubspot_api_base=stub.url,
        hubspot_company_id_prefix="hs-",
        **{**FAST, **extra},
    )


def hubspot_company(i: int, **over: str | None) -> dict[str, str | None]:
    return {
        "name": f"Acme {i}",
        "domain": f"acme{i}.example",
        "numberofemployees": str(i),
        "is_public": "true" if i % 2 else "false",
        "createdate": "1577934245000",  # epoch ms: 2020-01-02T03:04:05Z
        "industry": "",  # empty: removes the property
        "hs_lastmodifieddate": OLD,
        "secret_notes": "never asked for",
        **over,
    }


def expected(i: int) -> dict[str, Any]:
    return {
        "name": f"Acme {i}",
        "domain": f"acme{i}.example",
        "employees": i,
        "is_public": bool(i % 2),
        "hubspot_created_at": "2020-01-02T03:04:05Z",
    }


async def start(relay: InProcessRelay, source: str, **body: Any) -> str:
    r = await relay.post("/backfills", key=ADMIN_KEY, json={"source": source, **body})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    backfill_id: str = r.json()["id"]
    return backfill_id


async def finished(relay: InProcessRelay, backfill_id: str, within: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await relay.get(f"/backfills/{backfill_id}", key=ADMIN_KEY)).json()
        return body if body["status"] != "running" else None

    result: dict[str, Any] = await eventually(done, within=within, interval=0.1)
    return result


async def drained(relay: InProcessRelay, within: float = 60) -> None:
    async def empty() -> bool:
        stats = await relay.store.deliveries.stats()
        return stats.queued == 0 and stats.delivering == 0

    await eventually(empty, within=within, interval=0.1)


@pytest.mark.process
def test_a_hubspot_backfill_of_thousands_reaches_userpilot_through_bulk_jobs(
    database_url: str, sim: SimulatorProcess
) -> None:
    count = 2500
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(count)}
        stub.trouble = [(429, {"Retry-After": "1"}), (500, {})]

        async def main() -> tuple[dict[str, Any], list[str], dict[str, Any]]:
            async with hubspot_on(database_url, sim, stub) as relay:
                before = {
                    reason: await relay.metric(
                        "userpilot_relay_backfill_errors_total", source="hubspot", reason=reason
                    )
                    for reason in ("rate_limited", "server_error")
                }
                with captured_logs() as lines:
                    backfill_id = await start(relay, "hubspot")
                    result = await finished(relay, backfill_id)
                    await drained(relay)
                for reason, value in before.items():
                    after = await relay.metric(
                        "userpilot_relay_backfill_errors_total", source="hubspot", reason=reason
                    )
                    assert after == value + 1, reason
                listed = (await relay.get("/backfills", key=ADMIN_KEY)).json()
                assert listed["items"][0] == result
                jobs = (await relay.get("/jobs", key=ADMIN_KEY)).json()["items"]
                assert jobs and all(j["status"] == "completed" for j in jobs), jobs
                return result, lines, {"metrics": (await relay.get("/metrics", key=None)).text}

        result, lines, extra = run(main(), limit=120)
    assert result["status"] == "completed", result
    assert result["pages"] == 25 and result["companies"] == count
    assert result["enqueued"] == count and result["skipped"] == 0 and result["errors"] == 0
    assert result["total"] == count and result["finished_at"] >= result["started_at"]
    # Every value as mapped; the empty industry was removed, unmapped fields never asked for.
    stored = sim.companies()
    for i in range(count):
        assert stored[f"hs-{1000 + i}"] == expected(i), i
    realtime, rows = int(sim.stats()["identify_calls"]), int(sim.stats()["bulk_rows_received"])
    assert rows > count // 2, (realtime, rows)  # the backlog went mostly through bulk jobs
    assert realtime + rows <= 1.1 * count
    # The first page was asked three times: 429 (its Retry-After honoured), 500, then read.
    firsts = [r for r in stub.requests if r["path"] == stub.COMPANIES and "after" not in r["query"]]
    assert len(firsts) == 3 and firsts[1]["at"] - firsts[0]["at"] >= 0.9
    asked = firsts[-1]["query"]
    assert asked["limit"] == "100" and asked["archived"] == "false"
    assert set(asked["properties"].split(",")) >= {
        "name",
        "numberofemployees",
        "hs_lastmodifieddate",
    }
    assert "secret_notes" not in asked["properties"]
    # One log line per page with the backfill id and page number; no token anywhere.
    pages = [json.loads(line) for line in lines if "backfill page committed" in line]
    assert sorted(p["page"] for p in pages) == list(range(1, 26))
    assert {p["backfill_id"] for p in pages} == {result["id"]}
    everything = "\n".join(lines) + json.dumps(result) + extra["metrics"]
    assert TOKEN not in everything
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in stub.requests)


def test_a_newer_webhook_value_is_not_overwritten_by_an_older_backfilled_one(
    database_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(3)}
        newer = int(time.time() * 1000)  # after the stub's hs_lastmodifieddate (2024-01-01)

        async def main() -> dict[str, Any]:
            async with hubspot_on(
                database_url,
                sim,
                stub,
                hubspot_client_secret=HS_SECRET,
                relay_public_url=PUBLIC_URL,
            ) as relay:
                body = orjson.dumps([hs_change(1000, "name", "Renamed", event_id=1, at=newer)])
                r = await relay.post(
                    "/webhooks/hubspot", content=body, headers=v3_headers(body), key=None
                )
                assert r.status_code == 200, r.text
                await drained(relay)
                backfill_id = await start(relay, "hubspot")
                result = await finished(relay, backfill_id)
                await drained(relay)
                return result

        result = run(main())
    assert result["status"] == "completed" and result["enqueued"] == 3, result
    company = sim.companies()["hs-1000"]
    assert company["name"] == "Renamed"  # the webhook's newer value stands
    assert company["employees"] == 0 and company["domain"] == "acme0.example"  # the rest came
    assert sim.history("hs-1000") is not None
    assert all(h.get("metadata", h).get("name") != "Acme 0" for h in sim.history("hs-1000") or [])


@pytest.mark.process
def test_a_reconciliation_sends_only_the_companies_that_changed(
    database_url: str, sim: SimulatorProcess
) -> None:
    count = 300
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(count)}

        async def main() -> tuple[dict[str, Any], int, int]:
            async with hubspot_on(database_url, sim, stub) as relay:
                first = await finished(relay, await start(relay, "hubspot"))
                assert first["enqueued"] == count
                await drained(relay)
                sent_before = sum(upstream(sim))
                for i in (3, 150, 299):
                    stub.companies[str(1000 + i)]["name"] = f"Changed {i}"
                    stub.companies[str(1000 + i)]["hs_lastmodifieddate"] = "2024-06-01T00:00:00Z"
                result = await finished(relay, await start(relay, "hubspot", mode="reconcile"))
                await drained(relay)
                return result, sent_before, sum(upstream(sim))

        result, sent_before, sent_after = run(main(), limit=90)
    assert result["status"] == "completed" and result["mode"] == "reconcile", result
    assert result["enqueued"] == 3 and result["unchanged"] == count - 3, result
    assert sent_after - sent_before == 3  # three companies went to Userpilot, no other
    stored = sim.companies()
    assert stored["hs-1150"]["name"] == "Changed 150" and stored["hs-1151"]["name"] == "Acme 151"


def upstream(sim: SimulatorProcess) -> tuple[int, int]:
    stats = sim.stats()
    return int(stats["identify_calls"]), int(stats["bulk_rows_received"])


@pytest.mark.process
def test_the_reconcile_interval_starts_reconciliations_by_itself(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(5)}

        async def main() -> list[dict[str, Any]]:
            async with hubspot_on(
                sqlite_url, sim, stub, relay_reconcile_interval_seconds=1
            ) as relay:

                async def two_done() -> list[dict[str, Any]] | None:
                    items: list[dict[str, Any]] = (
                        await relay.get("/backfills", key=ADMIN_KEY)
                    ).json()["items"]
                    done = [b for b in items if b["status"] == "completed"]
                    return done if len(done) >= 2 else None

                found: list[dict[str, Any]] = await eventually(two_done, within=30)
                return found

        found = run(main())
    assert all(b["mode"] == "reconcile" and b["source"] == "hubspot" for b in found)
    newest, older = found[0], found[1]
    assert older["enqueued"] == 5  # the first: nothing was delivered before
    assert newest["started_at"] - older["started_at"] >= 1


def test_a_stripe_backfill_maps_customers_then_subscriptions(
    database_url: str, sim: SimulatorProcess
) -> None:
    with StripeListStub() as stub:
        for i in range(150):
            stub.customers.append(
                {
                    "id": f"cus_{i:04d}",
                    "object": "customer",
                    "name": f"Customer {i}",
                    "email": f"person{i}@example.com",  # personal data: unmapped, never sent
                    "currency": "usd",
                    "delinquent": False,
                    "created": 1700000000,
                    "address": {"country": "DE"},
                    "metadata": {"company_id": f"co-{i}"} if i % 10 else {},
                }
            )
        for i in range(150):
            stub.subscriptions.append(subscription(f"sub_{i:04d}", f"cus_{i:04d}", "active", 2))
        # cus_0001 also has an older, canceled subscription: its live one wins.
        stub.subscriptions.append(subscription("sub_old", "cus_0001", "canceled", 9))

        async def main() -> dict[str, Any]:
            async with InProcessRelay(
                database_url,
                endpoint=sim.url,
                stripe_api_key=STRIPE_KEY,
                stripe_api_base=stub.url,
                **FAST,
            ) as relay:
                result = await finished(relay, await start(relay, "stripe"))
                await drained(relay)
                return result

        result = run(main(), limit=90)
    assert result["status"] == "completed", result
    assert result["companies"] == 150 + 151 and result["pages"] == 2 + 2
    assert result["skipped"] == 1  # the canceled subscription of a customer with a live one
    stored = sim.companies()
    one = stored["co-1"]
    assert one == {
        "stripe_customer_id": "cus_0001",
        "name": "Customer 1",
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
    assert stored["cus_0010"]["name"] == "Customer 10"  # no company id: the customer id
    assert all(r["authorization"] == f"Bearer {STRIPE_KEY}" for r in stub.requests)
    assert {r["query"].get("status") for r in stub.requests if "subscr" in r["path"]} == {"all"}


def subscription(sub_id: str, customer: str, status: str, quantity: int) -> dict[str, Any]:
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "currency": "usd",
        "current_period_end": 1717243200,
        "trial_end": None,
        "cancel_at_period_end": False,
        "items": {"object": "list", "data": [{"id": "si", "quantity": quantity, "price": price()}]},
    }


def test_backfilled_personal_data_is_stripped_and_the_catalogue_counts_the_rest(
    database_url: str, sim: SimulatorProcess
) -> None:
    # A backfill is a source like the webhooks: never refused for personal data, which is
    # stripped whatever RELAY_PII_POLICY says unless it is `allow`; the values it sent are in
    # the catalogue under its source.
    with HubSpotStub() as stub:
        stub.companies = {
            "1000": hubspot_company(0, name="jane.doe@example.com"),
            "1001": hubspot_company(1),
        }

        async def main() -> tuple[dict[str, Any], float, dict[str, Any]]:
            async with hubspot_on(database_url, sim, stub) as relay:
                labels = {"kind": "email", "action": "stripped"}
                before = await relay.metric("userpilot_relay_pii_findings_total", **labels)
                result = await finished(relay, await start(relay, "hubspot"))
                await drained(relay)
                after = await relay.metric("userpilot_relay_pii_findings_total", **labels)
                catalogue = (await relay.get("/properties", key=ADMIN_KEY)).json()
                return result, after - before, catalogue

        result, stripped, catalogue = run(main())
    assert result["status"] == "completed" and result["enqueued"] == 2, result
    assert stripped == 1
    assert "name" not in sim.companies()["hs-1000"]
    assert sim.companies()["hs-1000"]["employees"] == 0
    assert sim.companies()["hs-1001"]["name"] == "Acme 1"
    props = {p["name"]: p for p in catalogue["properties"]}
    assert props["employees"]["sources"] == ["hubspot"] and props["employees"]["count"] == 2


def test_a_source_time_from_the_future_does_not_hold_back_later_webhooks(
    database_url: str, sim: SimulatorProcess
) -> None:
    # A record claiming to be modified in the year 9999 is ordered as of the answer's time:
    # a webhook sent afterwards still applies.
    with HubSpotStub() as stub:
        stub.companies = {"1000": hubspot_company(0, hs_lastmodifieddate="9999-01-01T00:00:00Z")}

        async def main() -> dict[str, Any]:
            async with hubspot_on(
                database_url,
                sim,
                stub,
                hubspot_client_secret=HS_SECRET,
                relay_public_url=PUBLIC_URL,
            ) as relay:
                result = await finished(relay, await start(relay, "hubspot"))
                await drained(relay)
                later = int(time.time() * 1000) + 1000
                body = orjson.dumps([hs_change(1000, "name", "Renamed", event_id=5, at=later)])
                r = await relay.post(
                    "/webhooks/hubspot", content=body, headers=v3_headers(body), key=None
                )
                assert r.status_code == 200, r.text
                await drained(relay)
                return result

        result = run(main())
    assert result["status"] == "completed", result
    assert sim.companies()["hs-1000"]["name"] == "Renamed"


def test_a_backfilled_company_id_that_is_personal_data_is_skipped_and_counted(
    database_url: str, sim: SimulatorProcess
) -> None:
    # A company id cannot be stripped: the record is skipped and counted as an invalid record
    # and a rejected finding, never sent, never logged; a value over 65,535 characters is
    # dropped and counted, the record's other values sent.
    def customer(i: int, company_id: str, name: str) -> dict[str, Any]:
        return {
            "id": f"cus_p{i}",
            "object": "customer",
            "name": name,
            "currency": "usd",
            "delinquent": False,
            "created": 1700000000,
            "metadata": {"company_id": company_id},
        }

    with StripeListStub() as stub:
        stub.customers += [
            customer(1, "ap@acme.example", "Leaked"),
            customer(2, "co-fine", "Fine"),
            customer(3, "co-long", "x" * 70_000),
        ]

        async def main() -> tuple[dict[str, Any], float, float, list[str]]:
            async with InProcessRelay(
                database_url,
                endpoint=sim.url,
                stripe_api_key=STRIPE_KEY,
                stripe_api_base=stub.url,
                **FAST,
            ) as relay:
                labels = {"kind": "email", "action": "rejected"}
                before = await relay.metric("userpilot_relay_pii_findings_total", **labels)
                long_before = await relay.metric(
                    "userpilot_relay_values_too_long_total", source="stripe"
                )
                with captured_logs() as lines:
                    result = await finished(relay, await start(relay, "stripe"))
                    await drained(relay)
                rejected = await relay.metric("userpilot_relay_pii_findings_total", **labels)
                too_long = await relay.metric(
                    "userpilot_relay_values_too_long_total", source="stripe"
                )
                return result, rejected - before, too_long - long_before, lines

        result, rejected, too_long, lines = run(main(), limit=90)
    assert result["status"] == "completed", result
    assert result["errors"] == 1 and result["skipped"] == 1, result
    assert "the company id looks like an email address" in (result["last_error"] or "")
    assert "ap@acme" not in json.dumps(result)
    assert rejected == 1 and too_long == 1
    stored = sim.companies()
    assert "ap@acme.example" not in stored
    assert stored["co-fine"]["name"] == "Fine"
    assert "name" not in stored["co-long"] and stored["co-long"]["currency"] == "usd"
    assert not any("ap@acme" in line for line in lines)
