"""A drain's big transactions cut short (issue 20, finding 6): a bulk job is packed and marked
delivered a chunk of companies at a time, and an expired lease is found through the index of
leased rows while a job holds many rows in flight. Store-level, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest

from app.domain.models import BulkJob, NewUpdate
from app.store import claims as store_claims
from app.store import jobs as store_jobs
from app.store.postgres.engine import POSTGRES
from app.store.sqlite.engine import SQLITE
from app.store.store import Store
from tests.integration.test_store_shared import execute, opened, run

COMPANIES, PER_COMPANY = 12, 3


async def backlog(store: Store) -> None:
    """Every company's three updates, interleaved as they would arrive."""
    for n in range(PER_COMPANY):
        updates = [
            NewUpdate(company_id=f"co-{c}", metadata={"n": n, f"p{n}": c}) for c in range(COMPANIES)
        ]
        await store.deliveries.enqueue(updates, source="api", caller="t")


def pack_args(owner: str = "packer") -> dict[str, Any]:
    return {
        "owner": owner,
        "lease_seconds": 60,
        "max_rows": 10_000,
        "max_merge": 100,
        "settle_seconds": 0,
        "fresh_seconds": 0,
    }


async def statuses(url: str) -> dict[str, set[str]]:
    rows = await execute(url, "SELECT company_id, status FROM deliveries")
    out: dict[str, set[str]] = {}
    for company, status in rows:
        out.setdefault(str(company), set()).add(str(status))
    return out


def test_a_job_is_packed_in_short_transactions_holding_every_company(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_jobs, "PACK_CHUNK", 2 * PER_COMPANY)  # two companies a chunk
    assert len(store_jobs.pack_chunks([(f"c{i}", i, PER_COMPANY) for i in range(12)])) == 6

    async def main() -> tuple[BulkJob | None, list[tuple[str, int]], dict[str, set[str]]]:
        store = await opened(database_url)
        try:
            await backlog(store)
            job = await store.jobs.pack(**pack_args())
            assert job is not None
            return job, await store.jobs.companies(job.id), await statuses(database_url)
        finally:
            await store.close()

    job, companies, status = run(main)
    assert job is not None
    assert (job.rows, job.updates, job.status, job.owner) == (12, 36, "waiting", "packer")
    assert sorted(companies) == sorted((f"co-{c}", PER_COMPANY) for c in range(COMPANIES))
    assert all(s == {"delivering"} for s in status.values()), status


def test_a_company_claimed_between_pack_chunks_stays_out_of_the_job(database_url: str) -> None:
    async def main() -> tuple[BulkJob | None, list[tuple[str, int]], str, int]:
        store = await opened(database_url)
        try:
            await backlog(store)
            picked = await store.engine.read(
                lambda: store_jobs.pick(max_rows=100, settle=0, fresh=0), snapshot=True
            )
            assert len(picked) == COMPANIES
            claim = await store.claims.claim(owner="rt", lease_seconds=30, max_merge=100)
            assert claim is not None  # the oldest company, now in flight real-time
            chunks = store_jobs.pack_chunks(picked, 2 * PER_COMPANY)
            job = None
            for i, chunk in enumerate(chunks):
                packed = await store.jobs.pack_chunk(
                    job_id="job-t",
                    owner="packer",
                    lease_seconds=60,
                    chunk=chunk,
                    max_merge=100,
                    first=i == 0,
                )
                job = packed or job
            assert job is not None
            companies = await store.jobs.companies(job.id)
            return job, companies, claim.company_id, len(claim.updates)
        finally:
            await store.close()

    job, companies, claimed, leased = run(main)
    assert job is not None and claimed == "co-0" and leased == PER_COMPANY
    assert (job.rows, job.updates) == (COMPANIES - 1, (COMPANIES - 1) * PER_COMPANY)
    assert claimed not in {c for c, _ in companies}
    assert len(companies) == COMPANIES - 1


async def running_job(store: Store) -> BulkJob:
    job = await store.jobs.pack(**pack_args())
    assert job is not None
    assert await store.jobs.uploading(job, owner="packer", lease=60)
    assert await store.jobs.submitted(
        job,
        owner="packer",
        upstream_id="up-1",
        upstream_status="queued",
        lease=60,
        http_status=202,
        request_id="r-1",
        within=30,
    )
    found = await store.jobs.get(job.id)
    assert found is not None and found.status == "running"
    return found


def test_a_completed_job_is_marked_delivered_a_chunk_at_a_time_by_its_holder_only(
    database_url: str,
) -> None:
    first = [f"co-{c}" for c in range(COMPANIES // 2)]
    rest = [f"co-{c}" for c in range(COMPANIES // 2, COMPANIES)]

    async def main() -> dict[str, Any]:
        store = await opened(database_url)
        try:
            await backlog(store)
            job = await running_job(store)
            rows = await execute(
                database_url, "SELECT company_id, max(seq) FROM deliveries GROUP BY company_id"
            )
            newest = {str(c): int(s) for c, s in rows}

            def sent(names: list[str]) -> dict[str, dict[str, int]]:
                return {c: {"n": newest[c], "p2": newest[c]} for c in names}

            out: dict[str, Any] = {}
            out["stranger"] = await store.jobs.delivered_part(
                job, owner="other", companies=first, sent_versions=sent(first)
            )
            out["after_stranger"] = await statuses(database_url)
            out["part"] = await store.jobs.delivered_part(
                job, owner="packer", companies=first, sent_versions=sent(first), completed_rows=12
            )
            out["after_part"] = await statuses(database_url)
            out["versions"] = await execute(
                database_url, "SELECT company_id, key, seq FROM property_versions"
            )
            out["digests"] = await execute(
                database_url, "SELECT DISTINCT company_id FROM delivered_values"
            )
            out["newest"] = newest
            # A crash here leaves the rest in flight in the job: its holder (or whoever takes
            # the job over) marks the rest and ends it.
            assert await store.jobs.delivered_part(
                job, owner="packer", companies=rest, sent_versions=sent(rest), completed_rows=12
            )
            out["done"] = await store.jobs.completed(
                job, owner="packer", sent_versions={}, completed_rows=12
            )
            out["job"] = await store.jobs.get(job.id)
            out["final"] = await statuses(database_url)
            out["all_versions"] = await execute(
                database_url, "SELECT count(*) FROM property_versions WHERE key = 'p2'"
            )
            return out
        finally:
            await store.close()

    out = run(main)
    assert out["stranger"] is False
    assert all(s == {"delivering"} for s in out["after_stranger"].values())
    assert out["part"] is True
    assert all(out["after_part"][c] == {"delivered"} for c in first), out["after_part"]
    assert all(out["after_part"][c] == {"delivering"} for c in rest), out["after_part"]
    # The chunk's versions and digests went with it, and only the chunk's.
    recorded = {(str(c), str(k)): int(s) for c, k, s in out["versions"]}
    assert recorded == {(c, k): out["newest"][c] for c in first for k in ("n", "p2")}, recorded
    assert sorted(str(r[0]) for r in out["digests"]) == sorted(first)
    assert out["done"] is True
    assert out["job"].status == "completed"
    assert all(s == {"delivered"} for s in out["final"].values()), out["final"]
    assert int(out["all_versions"][0][0]) == COMPANIES


def test_an_expired_lease_is_found_through_the_lease_index_while_a_job_is_in_flight(
    database_url: str,
) -> None:
    async def main() -> tuple[str, str | None, list[Any]]:
        store = await opened(database_url)
        try:
            await store.deliveries.enqueue(
                [NewUpdate(company_id="lone", metadata={"n": 1})], source="api", caller="t"
            )
            claim = await store.claims.claim(owner="crashed", lease_seconds=30, max_merge=10)
            assert claim is not None
            await backlog(store)
            await running_job(store)  # many rows in flight without a lease of their own
            # The crashed holder's lease runs out: the next claim puts its update back in line.
            await execute(
                database_url, "UPDATE deliveries SET lease_until = 1 WHERE company_id = 'lone'"
            )
            again = await store.claims.claim(owner="next", lease_seconds=30, max_merge=10)
            if database_url.startswith("sqlite:///"):
                conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
                plan = conn.execute(
                    "EXPLAIN QUERY PLAN " + SQLITE.render(store_claims.EXPIRE_LEASES), {"now": 1e10}
                ).fetchall()
                conn.close()
            else:
                sql = POSTGRES.render(store_claims.EXPIRE_LEASES).replace("%%", "%")
                async with await psycopg.AsyncConnection.connect(database_url) as aconn:
                    await aconn.execute("SET enable_seqscan = off")  # a table this small
                    plan = await (await aconn.execute("EXPLAIN " + sql)).fetchall()  # type: ignore[arg-type]
            return claim.company_id, again.company_id if again else None, plan
        finally:
            await store.close()

    first, again, plan = run(main)
    assert first == again == "lone"
    text = " ".join(str(row) for row in plan)
    assert "deliveries_lease_until" in text, text
    assert "deliveries_status_seq" not in text, text


def test_a_claim_with_a_job_in_flight_checks_each_candidate_company_not_every_row_in_flight(
    database_url: str,
) -> None:
    # PostgreSQL turned the pick's "is the company busy?" check into an anti-join: a hash of
    # every row in flight and a sort of every ready row, 0.4 to 1.7 s a claim during a drain,
    # while a job's packing waited for it. The check must stay a probe per candidate company
    # (a subplan on PostgreSQL, through the busy index on SQLite), and pick a free company.
    async def main() -> tuple[str | None, list[Any]]:
        store = await opened(database_url)
        try:
            await backlog(store)
            await running_job(store)  # every company of the backlog in flight in the job
            await store.deliveries.enqueue(
                [NewUpdate(company_id="co-0", metadata={"n": 9})], source="api", caller="t"
            )  # a company in the job: busy
            await store.deliveries.enqueue(
                [NewUpdate(company_id="free", metadata={"n": 1})], source="api", caller="t"
            )
            params: dict[str, Any] = {"settle": 0.0, "scan": 64, "skip": []}
            plan: list[Any] = []
            for pick in (store_claims.PICK_COMPANY, store_claims.PICK_SINGLE):
                if database_url.startswith("sqlite:///"):
                    conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
                    plan += conn.execute(
                        "EXPLAIN QUERY PLAN " + SQLITE.render(pick),
                        {**params, "skip": "[]", "now": 1e10},
                    ).fetchall()
                    conn.close()
                else:
                    sql = POSTGRES.render(pick).replace("%%", "%")
                    async with await psycopg.AsyncConnection.connect(database_url) as aconn:
                        await aconn.execute("ANALYZE deliveries")
                        await aconn.execute("SET enable_seqscan = off")  # a table this small
                        explained = await aconn.execute("EXPLAIN " + sql, params)  # type: ignore[arg-type]
                        plan += await explained.fetchall()
            claim = await store.claims.claim(owner="rt", lease_seconds=30, max_merge=10)
            return claim.company_id if claim else None, plan
        finally:
            await store.close()

    picked, plan = run(main)
    assert picked == "free"
    text = " ".join(str(row) for row in plan)
    assert text.count("deliveries_busy") >= 2, text  # each pick probes the busy index
    if not database_url.startswith("sqlite:///"):
        assert "Anti Join" not in text and text.count("SubPlan") >= 2, text
