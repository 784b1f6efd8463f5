"""Erasure over HTTP, in process, on both stores, against the simulator: the relay forgets
companies (delivered, queued, dead-lettered, in a stored batch, linked to a Stripe customer),
suppresses them at every door, then has Userpilot delete them, paced and batched."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import itertools
import time
from typing import Any

import pytest

from app.domain.digest import company_digest
from app.domain.errors import CompanyErased
from app.domain.models import NewUpdate
from app.simulator.process import SimulatorProcess
from app.store.delivered import DELIVERED_VALUE
from app.store.deliveries import IDEMPOTENCY_PUT, Retention
from app.store.sql import Plan, Statement
from app.store.store import open_store
from tests import pg
from tests.bulk_helpers import post_bulk, running_job
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import ADMIN_KEY, INGEST_KEY

SECRET = "Distinctive-Value-7f3a91"
IDENTIFY = "/v1/companies/identify"


def relay_on(database_url: str, sim: SimulatorProcess, **extra: Any) -> InProcessRelay:
    sim.set_delete_pacing(0.05)
    settings: dict[str, Any] = {
        "relay_erasure_request_interval_seconds": 0.05,
        "relay_erasure_poll_seconds": 0.05,
        "relay_upstream_bulk": "off",
    }
    settings.update(extra)
    return InProcessRelay(database_url, endpoint=sim.url, **settings)


async def erase(relay: InProcessRelay, ids: list[str], reason: str = "gdpr") -> dict[str, Any]:
    r = await relay.post("/erasures", key=ADMIN_KEY, json={"company_ids": ids, "reason": reason})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "running"
    return body


async def finished(relay: InProcessRelay, erasure_id: str, within: float = 30) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await relay.get(f"/erasures/{erasure_id}", key=ADMIN_KEY)
        body: dict[str, Any] = r.json()
        return body if body["status"] != "running" else None

    return await eventually(done, within=within)


def test_an_erasure_forgets_every_trace_and_is_deleted_upstream(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(invalid_company_ids=["gone-dead"])

    async def main() -> tuple[dict[str, Any], list[str]]:
        async with relay_on(database_url, sim) as relay:
            wait = {"Prefer": "wait=10"}
            r = await relay.post_company("gone-delivered", {"plan": SECRET}, headers=wait)
            assert r.status_code == 200, r.text
            delivered_id = r.json()["id"]
            r = await relay.post_company("gone-dead", {"plan": SECRET}, headers=wait)
            assert r.status_code == 502, r.text
            dead_id = r.json()["id"]
            # Queued: Userpilot fails this company's identify until the erasure.
            sim.add_fault(action="status", status=503, times=100_000, company_id="gone-queued")
            r = await relay.post_company("gone-queued", {"plan": SECRET})
            queued_id = r.json()["id"]
            await relay.store.webhooks.link_customers([("cus_gone", "gone-linked")])
            r = await relay.post_company("kept", {"plan": "stays"}, headers=wait)
            assert r.status_code == 200
            ids = ["gone-delivered", "gone-dead", "gone-queued", "gone-linked"]
            erasure = await erase(relay, ids)
            assert erasure["companies"] == 4
            assert erasure["requested_by"]
            done = await finished(relay, erasure["id"])
            for gone in (delivered_id, dead_id, queued_id):
                r = await relay.get(f"/deliveries/{gone}")
                assert r.status_code == 404, r.text
            assert await relay.store.webhooks.company_for_customer("cus_gone") is None
            r = await relay.get("/suppressions/gone-queued")
            assert r.json()["suppressed"] is True
            assert r.json()["erasure_id"] == erasure["id"]
            return done, ids

    done, ids = run(main())
    assert done["status"] == "completed", done
    assert done["erased"] == 4
    assert done["upstream"]["status"] == 202
    assert done["upstream"]["request_id"]
    assert done["upstream"]["scheduled_for"] % 86400 == 7200  # 02:00 UTC
    (deletion,) = sim.deletions()
    assert sorted(deletion["company_ids"]) == sorted(ids)
    # No identify of an erased company after its delete.
    sim.clear_faults()
    accepted = deletion["accepted_at"]
    late = [
        c
        for c in sim.requests(path=IDENTIFY)
        if c["body"]["company_id"] in ids and c["time"] > accepted
    ]
    assert late == []


def test_suppressed_company_409_bulk_suppressed_and_lifting(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            erasure = await erase(relay, ["erased-co"])
            r = await relay.post_company("erased-co", {"plan": "x"})
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "company_erased"
            r = await relay.post(
                "/companies/bulk",
                json={
                    "companies": [
                        {"company_id": "a-bulk", "metadata": {"n": 1}},
                        {"company_id": "erased-co", "metadata": {"n": 2}},
                        {"company_id": "b-bulk", "metadata": {"n": 3}},
                    ]
                },
            )
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == 2
            assert r.json()["suppressed"] == [1]
            # Ingest may read a suppression, not lift it; the admin lifts it.
            r = await relay.get("/suppressions/erased-co", key=INGEST_KEY)
            assert r.json()["suppressed"] is True
            r = await relay.delete("/suppressions/erased-co", key=INGEST_KEY)
            assert r.status_code == 403
            await finished(relay, erasure["id"])
            r = await relay.delete("/suppressions/erased-co", key=ADMIN_KEY)
            assert r.status_code == 204
            r = await relay.delete("/suppressions/erased-co", key=ADMIN_KEY)
            assert r.status_code == 404
            r = await relay.get("/suppressions/erased-co")
            assert r.json() == {
                "company_id": "erased-co",
                "suppressed": False,
                "since": None,
                "erasure_id": None,
            }
            r = await relay.post_company(
                "erased-co", {"plan": "back"}, headers={"Prefer": "wait=10"}
            )
            assert r.status_code == 200, r.text

    run(main())


def test_erasure_routes_refuse_ingest_keys_and_bad_input(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with relay_on(sqlite_url, sim) as relay:
            body = {"company_ids": ["x"], "reason": "r"}
            r = await relay.post("/erasures", key=INGEST_KEY, json=body)
            assert r.status_code == 403
            r = await relay.post("/erasures", key=ADMIN_KEY, json={"company_ids": ["x"]})
            assert r.status_code == 422
            assert "reason" in r.text
            r = await relay.post(
                "/erasures", key=ADMIN_KEY, json={"company_ids": [], "reason": "r"}
            )
            assert r.status_code == 422
            assert "company_ids" in r.text
            r = await relay.post(
                "/erasures",
                key=ADMIN_KEY,
                json={"company_ids": [str(i) for i in range(10_001)], "reason": "r"},
            )
            assert r.status_code == 422
            # Ids the relay itself refuses at ingest: named by their place in the list.
            for bad in ["a\x00b", " ", "", "x" * 256]:
                body = {"company_ids": ["fine", bad], "reason": "r"}
                r = await relay.post("/erasures", key=ADMIN_KEY, json=body)
                assert r.status_code == 422, (bad, r.text)
                assert [e["field"] for e in r.json()["errors"]] == ["company_ids[1]"]
            r = await relay.get("/erasures/er_nope", key=ADMIN_KEY)
            assert r.status_code == 404
            r = await relay.get("/erasures", key=INGEST_KEY)
            assert r.status_code == 403
            made = []
            for i in range(3):  # ids sort by their millisecond of creation
                made.append((await erase(relay, [f"paged-{i}"]))["id"])
                await asyncio.sleep(0.01)
            page = (await relay.get("/erasures?limit=2", key=ADMIN_KEY)).json()
            assert [e["id"] for e in page["items"]] == made[::-1][:2]  # newest first
            rest = await relay.get(
                f"/erasures?limit=1000&cursor={page['next_cursor']}", key=ADMIN_KEY
            )
            assert [e["id"] for e in rest.json()["items"]] == made[:1]
            assert rest.json()["next_cursor"] is None
            # An id with surrounding spaces is an id the relay takes: erased as given.
            assert (await erase(relay, [" spaced "]))["companies"] == 1

    run(main())


def test_a_permanent_refusal_fails_the_erasure_with_the_reason(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    # Userpilot's refusal names the company: the audit record keeps its status, not its words.
    sim.add_fault(
        action="status",
        status=403,
        path="/v1/companies",
        method="DELETE",
        times=1,
        body={"errors": [{"error_code": "FORBIDDEN", "message": "no delete for refused-co"}]},
    )

    async def main() -> dict[str, Any]:
        async with relay_on(sqlite_url, sim) as relay:
            erasure = await erase(relay, ["refused-co"])
            return await finished(relay, erasure["id"])

    done = run(main())
    assert done["status"] == "failed"
    assert "403" in done["last_error"]
    assert "refused-co" not in str(done)


def test_a_400_to_several_erasures_sends_each_alone_before_failing_it(
    database_url: str, sim: SimulatorProcess
) -> None:
    # The request of both, then the first sent alone, are refused; the other alone is accepted.
    # Which goes alone first is not promised (two erasures of one millisecond sort either way).
    sim.add_fault(action="status", status=400, path="/v1/companies", method="DELETE", times=2)

    async def main() -> list[tuple[str, dict[str, Any]]]:
        store = open_store(database_url)
        await store.open()
        try:  # both recorded before the driver starts: it sends them in one request
            first = await store.erasures.create(["co-a"], reason="r", by="t")
            second = await store.erasures.create(["co-b"], reason="r", by="t")
        finally:
            await store.close()
        async with relay_on(database_url, sim) as relay:
            return [
                ("co-a", await finished(relay, first.id)),
                ("co-b", await finished(relay, second.id)),
            ]

    ended = sorted(run(main()), key=lambda e: str(e[1]["status"]))
    (erased, completed), (refused, failed) = ended
    assert failed["status"] == "failed" and "400" in failed["last_error"], ended
    assert completed["status"] == "completed" and completed["erased"] == 1, ended
    assert [d["company_ids"] for d in sim.deletions()] == [[erased]], ended
    assert refused != erased


def test_429_and_5xx_are_retried(sqlite_url: str, sim: SimulatorProcess) -> None:
    sim.add_faults(
        [
            {"action": "status", "status": 503, "path": "/v1/companies", "method": "DELETE"},
            {
                "action": "retry_after",
                "retry_after": 1,
                "path": "/v1/companies",
                "method": "DELETE",
            },
        ]
    )

    async def main() -> dict[str, Any]:
        async with relay_on(sqlite_url, sim) as relay:
            erasure = await erase(relay, ["retried-co"])
            return await finished(relay, erasure["id"])

    done = run(main())
    assert done["status"] == "completed", done
    assert len(sim.deletions()) == 1


def test_ten_thousand_ids_go_in_paced_requests_of_at_most_1000(
    database_url: str, sim: SimulatorProcess
) -> None:
    ids = [f"many-{i:05d}" for i in range(10_000)]

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with relay_on(database_url, sim, relay_erasure_request_interval_seconds=0.2) as relay:
            erasure = await erase(relay, ids)
            done = await finished(relay, erasure["id"], within=60)
            listed = await relay.get("/erasures?status=completed", key=ADMIN_KEY)
            assert erasure["id"] in [e["id"] for e in listed.json()["items"]]
            return done, sim.deletions()

    done, deletions = run(main(), limit=120)
    assert done["status"] == "completed"
    assert done["erased"] == 10_000
    assert len(deletions) == 10
    assert all(len(d["company_ids"]) <= 1000 for d in deletions)
    assert sorted(c for d in deletions for c in d["company_ids"]) == ids
    gaps = [b["accepted_at"] - a["accepted_at"] for a, b in itertools.pairwise(deletions)]
    assert min(gaps) >= 0.15, gaps


def test_a_stored_batch_not_yet_expanded_keeps_no_byte_of_the_company(
    database_url: str,
) -> None:
    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            updates = [NewUpdate(f"other-{i}", {"n": i}) for i in range(5)]
            updates.insert(3, NewUpdate("batched-gone", {"plan": SECRET}))
            result = await store.deliveries.enqueue(updates, source="bulk", caller="t", batch=True)
            erasure = await store.erasures.create(["batched-gone"], reason="r", by="t")
            assert await store.erasures.purge_chunk(erasure.id) == 1
            assert await store.erasures.purge_chunk(erasure.id) == 0
            assert await store.deliveries.get(f"{result.batch_id}.3") is None
            kept = await store.deliveries.get(f"{result.batch_id}.4")
            assert kept is not None and kept.company_id == "other-3"
            batch = await store.deliveries.batch(str(result.batch_id))
            assert batch is not None and batch.counts["queued"] == 5
            # and later bulk requests leave it out
            again = await store.deliveries.enqueue(
                [NewUpdate("batched-gone", {"n": 1}), NewUpdate("fine", {"n": 1})],
                source="bulk",
                caller="t",
                batch=True,
            )
            assert again.suppressed == frozenset({0})
            assert again.stored == 1
        finally:
            await store.close()

    run(main())


def test_the_database_holds_no_byte_of_an_erased_company(
    database_url: str, sim: SimulatorProcess
) -> None:
    """SQLite: the file and its WAL scanned; PostgreSQL: every row of every table, as text and
    with its bytea columns in hex."""
    company = "Scanned-Company-Id-42c9"
    sim.configure(invalid_company_ids=[company])

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            wait = {"Prefer": "wait=10"}
            r = await relay.post_company(company, {"plan": SECRET}, headers=wait)
            assert r.status_code == 502  # dead-lettered
            await relay.store.webhooks.link_customers([("cus_scan", company)])
            await relay.store.webhooks.park(
                source="stripe",
                key="evt_scan",
                payload=f'{{"c": "{company}"}}'.encode(),
                reason="r",
            )
            r = await relay.post(
                "/companies/bulk",
                json={"companies": [{"company_id": company, "metadata": {"plan": SECRET}}]},
            )
            assert r.status_code == 202
            erasure = await erase(relay, [company])
            done = await finished(relay, erasure["id"])
            assert done["status"] == "completed"

    run(main())
    needles = [company.encode(), SECRET.encode()]
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        files = [f for f in glob.glob(path + "*") if not f.endswith(".lock")]
        assert path in files
        for name in files:
            with open(name, "rb") as file:
                data = file.read()
            for needle in needles:
                assert needle not in data, name
        return
    name = database_url.rsplit("/", 1)[1].split("?")[0]
    tables = pg.query(name, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert len(tables) > 10
    for (table,) in tables:
        for needle in needles:
            hexed = "%" + needle.hex() + "%"
            found = pg.query(
                name,
                f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s OR t::text LIKE %s",
                "%" + needle.decode() + "%",
                hexed,
            )
            assert found == [(0,)], (table, needle)
    assert company_digest(company)  # what is kept instead


def test_webhook_and_backfill_updates_of_an_erased_company_are_dropped_and_counted(
    database_url: str,
) -> None:
    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            await store.erasures.create(["hooked-gone"], reason="r", by="t")
            result = await store.deliveries.enqueue(
                [
                    NewUpdate("hooked-gone", {"plan": "x"}, event_key="evt_1"),
                    NewUpdate("hooked-kept", {"plan": "y"}, event_key="evt_2"),
                ],
                source="hubspot",
                caller=None,
            )
            assert result.suppressed == frozenset({0})
            assert result.ids[0] is None and result.ids[1] is not None
        finally:
            await store.close()

    run(main())


def test_retention_prunes_finished_erasures(database_url: str) -> None:
    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            erasure = await store.erasures.create(["pruned-co"], reason="r", by="t")
            await store.erasures.fail([erasure.id], error="x", status=400, request_id=None)
            assert await store.erasures.prune(before=time.time() - 3600) == 0
            assert await store.erasures.prune(before=time.time() + 3600) == 1
            assert await store.erasures.get(erasure.id) is None
        finally:
            await store.close()

    run(main())


def test_digest_is_the_sha256_hex_of_the_id() -> None:
    assert company_digest("acme") == hashlib.sha256(b"acme").hexdigest()


def test_retention_prunes_each_table(database_url: str) -> None:
    async def count(store: Any, table: str) -> int:
        def plan() -> Plan[int]:
            row = (yield Statement(f"SELECT count(*) FROM {table}")).one()
            return int(row[0]) if row else 0

        return int(await store.engine.read(plan))

    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            result = await store.deliveries.enqueue(
                [NewUpdate("old-co", {"plan": "x"}, stamp_times=("plan",))],
                source="api",
                caller="t",
            )

            def setup() -> Plan[None]:
                yield Statement("UPDATE deliveries SET status = 'dead'")
                yield Statement(DELIVERED_VALUE, {"company": "old-co", "key": "plan", "digest": 1})
                yield Statement(
                    IDEMPOTENCY_PUT,
                    {"caller": "t", "key": "k", "fingerprint": "f", "result": b"{}", "ttl": -1},
                )

            await store.engine.write(setup)
            await store.webhooks.park(source="stripe", key="evt", payload=b"{}", reason="r")
            tables = [
                "deliveries",
                "delivered_values",
                "source_property_times",
                "parked_events",
                "idempotency_keys",
            ]
            assert result.ids[0] is not None
            # Within their retention: kept.
            await store.deliveries.prune(delivered_before=0, retention=Retention())
            assert [await count(store, t) for t in tables] == [1, 1, 1, 1, 0]
            # Past it: each table pruned.
            past = Retention(dead_letters=-60, parked_events=-60, jobs=-60, values=-60)
            await store.deliveries.prune(delivered_before=0, retention=past)
            assert [await count(store, t) for t in tables] == [0, 0, 0, 0, 0]
        finally:
            await store.close()

    run(main())


@pytest.mark.process
def test_an_erasure_waits_for_a_running_bulk_job_holding_the_company(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Its delete goes to Userpilot only after the job that holds the company ends."""
    sim.configure(bulk_rows_per_minute=0)  # the job stays running until the test lets it go
    items = [{"company_id": f"job-{i}", "metadata": {"plan": SECRET}} for i in range(200)]

    async def main() -> tuple[str, dict[str, Any]]:
        bulk = {"relay_upstream_bulk": "auto", "relay_bulk_threshold": 50}
        bulk |= {"relay_bulk_poll_seconds": 0.1, "relay_merge_window_seconds": 0.0}
        async with relay_on(database_url, sim, **bulk) as relay:
            batch_id = await post_bulk(relay, items)
            await running_job(relay)
            inside = None
            for i in range(200):
                d = (await relay.get(f"/deliveries/{batch_id}.{i}", key=ADMIN_KEY)).json()
                if d["via"] == "bulk" and d["status"] == "delivering":
                    inside = d
                    break
            assert inside is not None
            company = inside["company_id"]
            erasure = await erase(relay, [company])
            await asyncio.sleep(1.0)
            r = await relay.get(f"/erasures/{erasure['id']}", key=ADMIN_KEY)
            assert r.json()["status"] == "running"
            assert sim.deletions() == []  # the job holds it: no delete yet
            sim.configure(bulk_rows_per_minute=600_000)
            done = await finished(relay, erasure["id"], within=60)
            r = await relay.get(f"/deliveries/{inside['id']}")
            assert r.status_code == 404
            return company, done

    company, done = run(main(), limit=120)
    assert done["status"] == "completed", done
    (deletion,) = sim.deletions()
    assert deletion["company_ids"] == [company]
    late = [c for c in sim.requests(path=IDENTIFY) if c["time"] > deletion["accepted_at"]]
    assert all(c["body"]["company_id"] != company for c in late)


def test_the_dispatcher_never_claims_a_suppressed_company(database_url: str) -> None:
    """Belt and braces: an update of an erased company that is in the queue anyway (stored
    just before the erasure committed) is cancelled at claim, never leased."""

    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            first = await store.deliveries.enqueue(
                [NewUpdate("raced-co", {"plan": SECRET})], source="api", caller="t"
            )
            await store.erasures.create(["raced-co"], reason="r", by="t")
            await store.deliveries.enqueue(
                [NewUpdate("free-co", {"n": 1})], source="api", caller="t"
            )
            claim = await store.claims.claim(owner="t", lease_seconds=30, max_merge=10)
            assert claim is not None and claim.company_id == "free-co"
            assert await store.deliveries.get(str(first.ids[0])) is None
        finally:
            await store.close()

    run(main())


PACK = {"max_rows": 100, "max_merge": 10, "settle_seconds": 0.0, "fresh_seconds": 0.0}


def test_a_bulk_job_never_packs_an_erased_company(database_url: str) -> None:
    """Issue 22: an erasure accepted (its purge not yet run) before a job is packed: the job
    holds no row of the company and the company's queued updates are cancelled."""

    async def main() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            updates = [NewUpdate("acme", {"plan": SECRET}), NewUpdate("other", {"n": 1})]
            stored = await store.deliveries.enqueue(updates, source="api", caller="t", batch=True)
            await store.erasures.create(["acme"], reason="x", by=None)
            await asyncio.sleep(0.05)
            job = await store.jobs.pack(owner="t", lease_seconds=30, **PACK)
            assert job is not None
            assert await store.jobs.companies(job.id) == [("other", 1)]
            assert [c.company_id for c in await store.jobs.rows(job.id, ["acme", "other"])] == [
                "other"
            ]
            assert job.rows == 1 and job.updates == 1
            batch = await store.deliveries.batch(str(stored.batch_id))
            assert batch is not None
            assert await store.deliveries.get(f"{batch.id}.0") is None  # acme's: cancelled
            assert await store.deliveries.get(f"{batch.id}.1") is not None
        finally:
            await store.close()

    run(main())


def test_a_job_packed_before_an_erasure_never_uploads_the_company(
    database_url: str, sim: SimulatorProcess
) -> None:
    """An erasure accepted after a job was packed but before its upload: the upload leaves the
    company out (its rows in the job deleted), and the erasure then completes."""

    async def pack_then_erase() -> str:
        store = open_store(database_url)
        await store.open()
        try:
            updates = [NewUpdate("acme", {"plan": SECRET}), NewUpdate("other", {"n": 1})]
            await store.deliveries.enqueue(updates, source="api", caller="t", batch=True)
            await asyncio.sleep(0.05)
            # Packed by a replica that then goes away: the relay takes the job over.
            job = await store.jobs.pack(owner="gone", lease_seconds=0.5, **PACK)
            assert job is not None and job.rows == 2
            erasure = await store.erasures.create(["acme"], reason="x", by=None)
            return erasure.id
        finally:
            await store.close()

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        erasure_id = await pack_then_erase()
        bulk = {"relay_upstream_bulk": "auto", "relay_bulk_poll_seconds": 0.1}
        async with relay_on(database_url, sim, **bulk) as relay:

            async def completed() -> list[dict[str, Any]] | None:
                r = await relay.get("/jobs", key=ADMIN_KEY, params={"status": "completed"})
                items: list[dict[str, Any]] = r.json()["items"]
                return items or None

            listed = await eventually(completed, within=30)
            return await finished(relay, erasure_id), listed

    done, listed = run(main(), limit=60)
    assert done["status"] == "completed", done
    assert listed[0]["rows"] == 1, listed
    assert sim.history("acme") is None  # never uploaded (nor sent real-time)
    history = sim.history("other")
    assert history is not None and [h["via"] for h in history] == ["bulk"], history
    assert all(SECRET not in str(j) for j in sim.jobs())


def test_a_dead_letter_of_an_erased_company_is_not_replayed(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Between an erasure's 202 and its purge, replaying the company's dead letter answers 409
    `company_erased` and stores nothing; a replay of every dead letter skips it."""
    sim.configure(bulk_rows_per_minute=0)  # the job holding `held` stays running

    async def dead(store: Any, company: str) -> str:
        stored = await store.deliveries.enqueue(
            [NewUpdate(company, {"plan": SECRET})], source="api", caller="t"
        )
        claim = await store.claims.claim(owner="t", lease_seconds=30, max_merge=10)
        assert claim is not None and claim.company_id == company
        await store.claims.mark_dead(claim, status=400, error="refused", request_id=None)
        return str(stored.ids[0])

    async def setup() -> tuple[str, str]:
        store = open_store(database_url)
        await store.open()
        try:
            erased_id = await dead(store, "acme")
            kept_id = await dead(store, "kept")
            # A company of the same erasure held in flight (in a job that stays running at
            # Userpilot): the erasure's purge waits meanwhile.
            await store.deliveries.enqueue([NewUpdate("held", {"n": 1})], source="api", caller="t")
            await asyncio.sleep(0.05)
            job = await store.jobs.pack(owner="other", lease_seconds=300, **PACK)
            assert job is not None and job.rows == 1
            await store.erasures.create(["acme", "held"], reason="x", by=None)
            # At the store, on both engines: the replay is refused and changes nothing.
            with pytest.raises(CompanyErased):
                await store.deliveries.replay(erased_id)
            assert await store.deliveries.replay_dead(company_id="acme") == 0
            still = await store.deliveries.get(erased_id)
            assert still is not None and still.status == "dead" and still.attempts == 1
            return erased_id, kept_id
        finally:
            await store.close()

    async def main() -> None:
        erased_id, kept_id = await setup()
        if not database_url.startswith("postgresql"):
            # Over HTTP the purge must be held off by a job another replica leases; a SQLite
            # relay, the file's only process, takes every lease over at start-up (and then
            # drops the erased company from the job), so nothing can hold the purge there.
            return
        bulk = {"relay_upstream_bulk": "auto", "relay_bulk_poll_seconds": 0.1}
        async with relay_on(database_url, sim, **bulk) as relay:
            r = await relay.post(f"/deliveries/{erased_id}/replay", key=ADMIN_KEY)
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "company_erased", r.text
            still = await relay.store.deliveries.get(erased_id)
            assert still is not None and still.status == "dead" and still.attempts == 1
            r = await relay.post("/deliveries/replay", key=ADMIN_KEY)
            assert r.status_code == 200, r.text
            assert r.json()["replayed"] == 1
            r = await relay.post("/deliveries/replay", key=ADMIN_KEY, params={"company_id": "acme"})
            assert r.json()["replayed"] == 0
            after = await relay.store.deliveries.get(erased_id)
            assert after is not None and after.status == "dead"
            kept = await relay.store.deliveries.get(kept_id)
            assert kept is not None and kept.status != "dead"

    run(main())


def test_hostile_erasure_and_suppression_input_is_refused_and_changes_nothing(
    database_url: str, sim: SimulatorProcess
) -> None:
    """A lone surrogate, NUL, a Unicode digit or a 100,000-character value in an erasure's
    body, its list's query or a suppression's path is a 4xx, never a 500, and stores nothing."""

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            headers = {"Content-Type": "application/json"}
            for raw in [
                b'{"company_ids": ["\\ud800"], "reason": "r"}',
                b'{"company_ids": ["ok"], "reason": "\\u0000"}',
                b'{"company_ids": ["ok"], "reason": "' + b"x" * 100_000 + b'"}',
                b'{"company_ids": [12345678901234567890123], "reason": "r"}',
            ]:
                r = await relay.post("/erasures", key=ADMIN_KEY, content=raw, headers=headers)
                assert 400 <= r.status_code < 500, (raw[:60], r.status_code, r.text)
            for query in ["cursor=%00", "cursor=\u0661", "limit=\u0665", "status=%ED%A0%80"]:
                r = await relay.get(f"/erasures?{query}", key=ADMIN_KEY)
                assert 400 <= r.status_code < 500, (query, r.status_code, r.text)
            for path in ["%00", "%ED%A0%80", "x" * 2000]:
                r = await relay.get(f"/erasures/{path}", key=ADMIN_KEY)
                assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
                r = await relay.get(f"/suppressions/{path}", key=ADMIN_KEY)
                assert r.status_code < 500, (path, r.status_code, r.text)
                r = await relay.request("DELETE", f"/suppressions/{path}", key=ADMIN_KEY)
                assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            listed = (await relay.get("/erasures", key=ADMIN_KEY)).json()
            assert listed["items"] == []

    run(main())
