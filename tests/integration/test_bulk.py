"""Bulk jobs: a backlog drained through Userpilot's bulk endpoint beside real-time calls.

Relay and simulator over real HTTP, on both stores. The simulator runs jobs at a configurable
speed, can fail or stall them, refuse a company, and keeps each company's write history, so the
tests check what Userpilot ended up with and in which order it arrived. Failures are in
test_bulk_failures.py, jobs whose fate is in doubt in test_bulk_doubt.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.simulator.process import SimulatorProcess
from tests.bulk_helpers import (
    companies,
    jobs,
    post_bulk,
    relay_on,
    running_job,
    sim_key,
    upstream_calls,
)
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import ADMIN_KEY


@pytest.mark.process
def test_a_backlog_drains_through_bulk_and_realtime_with_every_value_right(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(rate_limit_per_minute=1200, bulk_rows_per_minute=30_000)
    items = companies("acme", 1500, plan="pro", gone=None)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with relay_on(database_url, sim, relay_rate_limit_per_minute=1200) as relay:
            batch_id = await post_bulk(relay, items)
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 1500, done
            deliveries: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                page = (await relay.get("/deliveries", key=ADMIN_KEY, params=params)).json()
                deliveries += page["items"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            listed = await jobs(relay)
            one = (await relay.get(f"/jobs/{listed[-1]['id']}", key=ADMIN_KEY)).json()
            assert one == listed[-1]
            return deliveries, listed

    deliveries, listed = run(main(), limit=90)
    # Each delivery says which way it went; a bulk one names its job.
    assert all(j["status"] == "completed" for j in listed), listed
    assert all(j["rows"] == j["completed_rows"] > 0 for j in listed), listed
    assert all(j["upstream_job_id"].startswith("job:companies:") for j in listed), listed
    via_bulk = [d for d in deliveries if d["via"] == "bulk"]
    via_realtime = [d for d in deliveries if d["via"] == "realtime"]
    assert len(via_bulk) + len(via_realtime) == 1500
    assert len(via_bulk) == sum(j["rows"] for j in listed)
    assert {d["job_id"] for d in via_bulk} == {j["id"] for j in listed}
    assert all(d["job_id"] is None for d in via_realtime)
    realtime, rows = upstream_calls(sim)
    assert realtime > 0 and rows > 0, (realtime, rows)
    # Each company went out once: a bulk row or a real-time call.
    assert realtime + rows <= 1.1 * 1500, (realtime, rows)
    assert sim.stats()["throttled"] == 0
    stored = sim.companies()
    for item in items:
        assert stored[item["company_id"]] == {"n": item["metadata"]["n"], "plan": "pro"}


@pytest.mark.process
def test_a_newer_update_for_a_company_inside_a_running_job_goes_out_after_it(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=0)  # the job stays running until the test lets it go
    items = companies("ord", 200, v=1)

    async def main() -> tuple[str, dict[str, Any]]:
        async with relay_on(database_url, sim, relay_bulk_fresh_seconds=0) as relay:
            batch_id = await post_bulk(relay, items)
            job = await running_job(relay)
            # A company whose row is in the job: in flight.
            inside = None
            for i in range(200):
                d = (await relay.get(f"/deliveries/{batch_id}.{i}", key=ADMIN_KEY)).json()
                if d["via"] == "bulk" and d["status"] == "delivering":
                    inside = d
                    break
            assert inside is not None and inside["job_id"] == job["id"], inside
            company = inside["company_id"]
            newer = await relay.post_company(company, {"v": 2, "extra": "x"})
            assert newer.status_code == 202
            newer_id = newer.json()["id"]
            # It waits behind the job: queued, and Userpilot has not seen it.
            await asyncio.sleep(0.5)
            assert (await relay.get(f"/deliveries/{newer_id}", key=ADMIN_KEY)).json()[
                "status"
            ] == "queued"
            assert sim.history(company) is None
            sim.configure(bulk_rows_per_minute=600_000)
            delivered = await relay.wait_for(newer_id, "delivered", within=30)
            assert delivered["via"] == "realtime"
            await relay.batch_done(batch_id, within=30)
            return company, delivered

    company, _ = run(main(), limit=90)
    history = sim.history(company)
    assert history is not None
    # The job's older value first, the newer real-time update after it; the newer one wins.
    assert [h["via"] for h in history] == ["bulk", "identify"], history
    assert history[0]["metadata"]["v"] == 1 and history[1]["metadata"]["v"] == 2
    assert sim.company(company) == {"n": int(company.split("-")[1]), "v": 2, "extra": "x"}


@pytest.mark.process
def test_a_foreign_job_holding_the_slot_makes_the_job_wait_while_realtime_goes_on(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=600)  # the other tool's 30 users take about 3 s
    users = {"users": [{"user_id": f"u{i}", "metadata": {}} for i in range(30)]}
    r = httpx.post(
        f"{sim.url}/v1/users/bulk_identify",
        json=users,
        headers={"Authorization": f"Token {sim_key(sim)}"},
    )
    assert r.status_code == 202, r.text
    items = companies("fj", 300)

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim) as relay:
            batch_id = await post_bulk(relay, items)

            async def conflicted() -> bool:
                return int(sim.stats()["jobs_conflicted"]) > 0

            await eventually(conflicted, within=20)

            async def recorded() -> bool:
                waiting = await jobs(relay, status="waiting")
                return bool(waiting) and "409" in (waiting[0]["last_error"] or "")

            await eventually(recorded, within=10)
            # Real-time delivery goes on meanwhile for everything not in the job.
            other = await relay.post_company("fj-other", {"x": 1})
            await relay.wait_for(other.json()["id"], "delivered", within=10)
            sim.configure(bulk_rows_per_minute=600_000)
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 300
            return await jobs(relay)

    listed = run(main(), limit=90)
    assert all(j["status"] == "completed" for j in listed), listed
    assert listed[-1]["attempts"] >= 1  # the first job, submitted again after the 409
    assert all(sim.company(f"fj-{i}") == {"n": i} for i in range(300))


def test_waiting_callers_and_fresh_updates_keep_realtime_while_an_import_drains(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=0)  # the import's job runs as long as the test needs

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with relay_on(database_url, sim, relay_bulk_fresh_seconds=60) as relay:
            await post_bulk(relay, companies("imp", 300))
            await running_job(relay)
            waited = await relay.post_company("caller-1", {"a": 1}, headers={"Prefer": "wait=10"})
            assert waited.status_code == 200, waited.text
            fresh = await relay.post_company("fresh-1", {"b": 2})
            delivered = await relay.wait_for(fresh.json()["id"], "delivered", within=10)
            return waited.json(), delivered

    waited, fresh = run(main(), limit=60)
    assert waited["via"] == "realtime" and waited["job_id"] is None
    assert fresh["via"] == "realtime"


@pytest.mark.process
def test_with_bulk_off_a_backlog_goes_out_realtime_only(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> list[dict[str, Any]]:
        async with relay_on(
            database_url, sim, relay_upstream_bulk="off", relay_rate_limit_per_minute=6000
        ) as relay:
            batch_id = await post_bulk(relay, companies("off", 300))
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 300
            return await jobs(relay)

    assert run(main(), limit=90) == []
    assert upstream_calls(sim) == (300, 0)


def test_job_routes_are_admin_only_and_answer_404_for_unknown_ids(sqlite_url: str) -> None:
    async def main() -> list[int]:
        async with InProcessRelay(sqlite_url) as relay:
            return [
                (await relay.get("/jobs")).status_code,
                (await relay.get("/jobs", key=None)).status_code,
                (
                    await relay.get("/jobs/job_0000000000000_000000000000", key=ADMIN_KEY)
                ).status_code,
                (await relay.get("/jobs/%00", key=ADMIN_KEY)).status_code,
                (await relay.get("/jobs", key=ADMIN_KEY, params={"cursor": "x"})).status_code,
                (await relay.get("/jobs", key=ADMIN_KEY)).status_code,
            ]

    assert run(main()) == [403, 401, 404, 404, 422, 200]


@pytest.mark.process
def test_after_an_outage_the_backlog_goes_at_once_and_the_outage_costs_few_calls(
    database_url: str, sim: SimulatorProcess
) -> None:
    # Backoffs grow to a minute: without the breaker, a company whose next attempt lies a
    # minute ahead would wait for it after Userpilot is back.
    sim.add_fault(action="status", status=503, times=100_000, path="/v1/companies/identify")
    outage = 8.0

    async def main() -> tuple[int, float, list[str]]:
        async with relay_on(
            database_url, sim, relay_retry_base_seconds=1, relay_retry_max_seconds=60
        ) as relay:
            started = asyncio.get_running_loop().time()
            ids = [(await relay.post_company(f"out-{i}", {"n": i})).json()["id"] for i in range(30)]

            async def open_() -> bool:
                return await relay.metric("userpilot_relay_upstream_circuit_open") == 1

            await eventually(open_, within=10)
            await asyncio.sleep(max(0.0, outage - (asyncio.get_running_loop().time() - started)))
            calls_in_outage = upstream_calls(sim)[0]
            sim.clear_faults()
            back = asyncio.get_running_loop().time()
            for delivery_id in ids:
                await relay.wait_for(delivery_id, "delivered", within=20)
            drained = asyncio.get_running_loop().time() - back
            assert await relay.metric("userpilot_relay_upstream_circuit_open") == 0
            return calls_in_outage, drained, ids

    calls, drained, _ = run(main(), limit=60)
    slots = outage * 600 / 60
    # One probe a second once open: a small share of the send slots of the outage.
    assert calls <= 0.25 * slots, (calls, slots)
    # 30 companies at 10 a second: 3 s at full pace, plus the probe that finds Userpilot back.
    assert drained < 3 + 5, drained
    assert all(sim.company(f"out-{i}") == {"n": i} for i in range(30))


@pytest.mark.process
def test_a_job_over_many_updates_per_company_sends_the_newest_value_per_property(
    database_url: str, sim: SimulatorProcess
) -> None:
    """A job's rows are read and merged a chunk of companies at a time (more updates than one
    read holds here): each row still carries, per property, the newest value, `null` kept."""
    sim.configure(bulk_rows_per_minute=600_000)
    count, per_company = 80, 80  # 6,400 updates: more than one read of the job's rows

    def update(i: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {"i": i, f"p{i % 7}": i}
        if i % 10 == 3:
            metadata["gone"] = "x"
        if i == per_company - 2:
            metadata["gone"] = None  # a removal, newer than every "x"
        return metadata

    # Interleaved as they would arrive: every company's update i, then every company's i + 1.
    items = [
        {"company_id": f"many-{c}", "metadata": update(i)}
        for i in range(per_company)
        for c in range(count)
    ]

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim) as relay:
            batches = [
                await post_bulk(relay, items[n : n + 10_000]) for n in range(0, len(items), 10_000)
            ]
            for batch_id in batches:
                done = await relay.batch_done(batch_id, within=60)
                assert done["counts"]["delivered"] == done["total"], done
            return await jobs(relay, status="completed")

    completed = run(main(), limit=120)
    # The positive signal: jobs merged many updates per company, one holding more than a read.
    assert completed, completed
    assert max(j["updates"] for j in completed) > 5_000, completed
    assert all(j["updates"] > j["rows"] for j in completed), completed
    newest = {f"p{k}": max(i for i in range(per_company) if i % 7 == k) for k in range(7)}
    bulk_rows = 0
    for c in range(count):
        company = f"many-{c}"
        history = sim.history(company)
        assert history is not None, company
        # Never an older value after a newer one, and each value sent the newest of its
        # property among the updates that write covered.
        seen = [h["metadata"]["i"] for h in history]
        assert seen == sorted(set(seen)), (company, history)
        for h in history:
            upto = h["metadata"]["i"]
            for key, value in h["metadata"].items():
                if key.startswith("p"):
                    assert value == max(i for i in range(upto + 1) if i % 7 == int(key[1:])), (
                        company,
                        h,
                    )
            if "gone" in h["metadata"]:
                expected = None if upto >= per_company - 2 else "x"
                assert h["metadata"]["gone"] == expected, (company, h)
        bulk_rows += sum(1 for h in history if h["via"] == "bulk")
        assert sim.company(company) == {"i": per_company - 1, **newest}, company
    assert bulk_rows >= count // 2, bulk_rows


@pytest.mark.process  # waits on real pacing: 60 calls a minute
def test_at_a_low_rate_limit_a_job_gets_its_send_slot_and_realtime_throughput_holds(
    database_url: str, sim: SimulatorProcess
) -> None:
    # 60 calls a minute, a 5 s lease, a poll a second: two pacing intervals (2.04 s) are more
    # than a third of that lease. The job must still get a slot, and real-time calls theirs.
    # Fifteen single updates keep real-time work queued for the whole window (a fresh single
    # update is never packed): once the first job is measured fast, the next one may take
    # every row of the batch, and then only they are left for real-time calls.
    async def main() -> tuple[dict[str, Any], list[float]]:
        async with relay_on(
            database_url,
            sim,
            relay_rate_limit_per_minute=60,
            relay_lease_seconds=5,
            relay_upstream_timeout_seconds=2,
            relay_bulk_poll_seconds=1,
        ) as relay:
            await post_bulk(relay, companies("slow", 200))
            for i in range(15):
                assert (await relay.post_company(f"live-{i}", {"n": i})).status_code == 202

            async def completed() -> dict[str, Any] | None:
                found = await jobs(relay, status="completed")
                return found[0] if found else None

            job: dict[str, Any] = await eventually(completed, within=20)
            await asyncio.sleep(max(0.0, 12 - (job["finished_at"] - job["created_at"])))
            times = [r["time"] for r in sim.requests(path="/v1/companies/identify")]
            return job, times

    job, times = run(main(), limit=60)
    assert job["rows"] > 50 and job["attempts"] == 1, job
    # Real-time calls in the 12 s after the first: about one a second, less the job's upload
    # and poll (11 slots at most).
    first = times[0]
    in_window = [t for t in times if t - first < 12]
    assert len(in_window) >= 8, (len(in_window), job)
    assert sim.stats()["throttled"] == 0
