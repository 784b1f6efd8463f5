"""Bulk jobs: a backlog drained through Userpilot's bulk endpoint beside real-time calls.

Relay and simulator over real HTTP, on both stores. The simulator runs jobs at a configurable
speed, can fail or stall them, refuse a company, and keeps each company's write history, so the
tests check what Userpilot ended up with and in which order it arrived.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import ADMIN_KEY, INGEST_KEY, UPSTREAM_KEY
from tests.webhook_helpers import captured_logs

FAST_BULK = {
    "relay_bulk_threshold": 50,
    "relay_bulk_poll_seconds": 0.1,
    "relay_merge_window_seconds": 0.0,
}


def relay_on(database_url: str, sim: SimulatorProcess, **extra: Any) -> InProcessRelay:
    return InProcessRelay(database_url, endpoint=sim.url, **{**FAST_BULK, **extra})


def companies(prefix: str, count: int, **metadata: Any) -> list[dict[str, Any]]:
    return [{"company_id": f"{prefix}-{i}", "metadata": {"n": i, **metadata}} for i in range(count)]


async def post_bulk(relay: InProcessRelay, items: list[dict[str, Any]]) -> str:
    r = await relay.post("/companies/bulk", json={"companies": items})
    assert r.status_code == 202, r.text
    batch_id: str = r.json()["batch_id"]
    return batch_id


async def jobs(relay: InProcessRelay, **params: Any) -> list[dict[str, Any]]:
    r = await relay.get("/jobs", key=ADMIN_KEY, params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def running_job(relay: InProcessRelay) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        found = await jobs(relay, status="running")
        return found[0] if found else None

    job: dict[str, Any] = await eventually(running, within=20)
    return job


def upstream_calls(sim: SimulatorProcess) -> tuple[int, int]:
    """(real-time identify calls, company rows in bulk jobs) Userpilot received."""
    stats = sim.stats()
    return int(stats["identify_calls"]), int(stats["bulk_rows_received"])


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
def test_a_failed_job_is_bisected_and_a_bad_row_dead_lettered_with_userpilots_error(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(invalid_company_ids=["bis-137"])
    items = companies("bis", 400)

    async def main() -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        async with relay_on(database_url, sim, relay_rate_limit_per_minute=1200) as relay:
            batch_id = await post_bulk(relay, items)
            done = await relay.batch_done(batch_id, within=60)
            bad = (await relay.get(f"/deliveries/{batch_id}.137", key=ADMIN_KEY)).json()
            return batch_id, await jobs(relay), {**done, "bad": bad}

    _, listed, done = run(main(), limit=90)
    assert done["counts"]["delivered"] == 399 and done["counts"]["dead"] == 1, done
    bad = done["bad"]
    assert bad["status"] == "dead" and bad["via"] == "realtime", bad
    assert bad["last_upstream_status"] == 400
    assert "INVALID_COMPANY" in bad["last_error"] and "bis-137" in bad["last_error"]
    failed = [j for j in listed if j["status"] == "failed"]
    completed = [j for j in listed if j["status"] == "completed"]
    assert failed and completed, listed
    # Halved until the part holding the bad row is under RELAY_BULK_MIN_ROWS (100).
    assert all(j["parent_id"] in {f["id"] for f in failed} for j in listed if j["parent_id"])
    assert "real-time" in failed[0]["outcome"] or any("real-time" in f["outcome"] for f in failed)
    stored = sim.companies()
    assert "bis-137" not in stored
    assert all(stored[f"bis-{i}"] == {"n": i} for i in range(400) if i != 137)


@pytest.mark.process
def test_a_transient_job_failure_costs_one_extra_round_not_a_realtime_drain(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.add_job_fault(action="fail", after_rows=10)
    items = companies("tr", 600)

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim, relay_rate_limit_per_minute=600) as relay:
            batch_id = await post_bulk(relay, items)
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 600, done
            return await jobs(relay)

    listed = run(main(), limit=90)
    (failed,) = [j for j in listed if j["status"] == "failed"]
    children = [j for j in listed if j["parent_id"] == failed["id"]]
    # The failed job's rows went out again as two jobs of half the size, not one by one.
    assert [c["status"] for c in children] == ["completed", "completed"], listed
    assert sum(c["rows"] for c in children) == failed["rows"]
    assert "2 smaller job(s)" in failed["outcome"] and "real-time" not in failed["outcome"]
    assert all(sim.company(f"tr-{i}") == {"n": i} for i in range(600))


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


def sim_key(sim: SimulatorProcess) -> str:
    keys: list[str] = sim.config()["api_keys"]
    return keys[0]


@pytest.mark.process
def test_a_job_too_large_for_userpilot_is_split(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=413, path="/v1/companies/bulk_identify", times=1)
    items = companies("big", 400)

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim) as relay:
            batch_id = await post_bulk(relay, items)
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 400, done
            return await jobs(relay)

    listed = run(main(), limit=90)
    split = [j for j in listed if j["status"] == "split"]
    assert len(split) == 1, listed
    children = [j for j in listed if j["parent_id"] == split[0]["id"]]
    assert len(children) == 2 and all(c["status"] == "completed" for c in children), listed
    assert sum(c["rows"] for c in children) == split[0]["rows"]
    assert all(sim.company(f"big-{i}") == {"n": i} for i in range(400))


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


@pytest.mark.process
def test_a_stuck_job_is_reported_and_its_rows_stay_in_flight(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.add_job_fault(action="stall", after_rows=5)

    async def main() -> tuple[dict[str, Any], float, dict[str, Any]]:
        async with relay_on(database_url, sim, relay_bulk_stuck_seconds=1) as relay:
            batch_id = await post_bulk(relay, companies("stk", 200))
            job = await running_job(relay)

            async def stuck() -> dict[str, Any] | None:
                found = (await relay.get(f"/jobs/{job['id']}", key=ADMIN_KEY)).json()
                return found if found["stuck"] else None

            found = await eventually(stuck, within=20)

            async def gauge() -> float:
                return await relay.metric("userpilot_relay_bulk_job_stuck")

            await eventually(gauge, within=10)
            counts = (await relay.get(f"/batches/{batch_id}", key=ADMIN_KEY)).json()["counts"]
            return found, await relay.metric("userpilot_relay_bulk_job_stuck"), counts

    found, gauge, counts = run(main(), limit=60)
    assert found["status"] == "running" and found["completed_rows"] == 5
    assert gauge == 1
    # Nothing is re-sent behind the stuck job's back: its rows stay in flight.
    assert counts["delivering"] >= found["rows"], (counts, found)
    assert sim.stats()["bulk_rows_applied"] == 5


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
@pytest.mark.parametrize("refusal", [401, 404])
def test_a_key_refused_for_bulk_sends_the_rows_realtime_and_switches_bulk_off(
    database_url: str, sim: SimulatorProcess, refusal: int
) -> None:
    # The key works for real-time calls; Userpilot refuses bulk jobs for it (401), or the
    # endpoint has no bulk API (404).
    sim.add_fault(action="status", status=refusal, path="/v1/companies/bulk_identify", times=1)

    async def main() -> tuple[list[dict[str, Any]], float]:
        async with relay_on(database_url, sim, relay_rate_limit_per_minute=6000) as relay:
            before = await relay.metric("userpilot_relay_upstream_auth_failures_total")
            first = await post_bulk(relay, companies("key", 200))
            done = await relay.batch_done(first, within=30)
            assert done["counts"]["delivered"] == 200, done
            # Bulk is off in this process now: a second backlog goes out real-time only.
            second = await post_bulk(relay, companies("again", 200))
            done = await relay.batch_done(second, within=30)
            assert done["counts"]["delivered"] == 200, done
            after = await relay.metric("userpilot_relay_upstream_auth_failures_total")
            return await jobs(relay), after - before

    listed, auth_failures = run(main(), limit=90)
    (job,) = listed
    assert job["status"] == "rejected" and "real-time" in job["outcome"], job
    assert auth_failures == (1 if refusal == 401 else 0)
    assert sim.stats()["jobs_created"] == 0
    assert all(sim.company(f"key-{i}") == {"n": i} for i in range(200))


@pytest.mark.process
def test_a_throttled_upload_waits_and_is_sent_again(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.add_fault(
        action="status", status=429, retry_after=1, path="/v1/companies/bulk_identify", times=1
    )

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim) as relay:
            batch_id = await post_bulk(relay, companies("thr", 300))
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 300, done
            return await jobs(relay)

    listed = run(main(), limit=90)
    first = listed[-1]
    assert first["status"] == "completed" and first["attempts"] == 2, first
    assert all(sim.company(f"thr-{i}") == {"n": i} for i in range(300))


@pytest.mark.process
def test_an_upload_whose_fate_is_unknown_keeps_its_rows_in_bulk(
    database_url: str, sim: SimulatorProcess
) -> None:
    # A 2xx without a job id may have started a job nobody can poll; then Userpilot refuses
    # bulk for the key. The rows must not go out real-time (an unseen job could land their
    # older values later): the job is submitted again until one upload is accepted.
    bulk = "/v1/companies/bulk_identify"
    sim.add_faults(
        [
            {"action": "status", "status": 202, "body": {"ok": True}, "path": bulk},
            {"action": "status", "status": 401, "path": bulk},
        ]
    )

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim, relay_retry_base_seconds=0.1) as relay:
            batch_id = await post_bulk(relay, companies("unk", 300))
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 300, done
            return await jobs(relay)

    listed = run(main(), limit=90)
    first = listed[-1]
    assert first["status"] == "completed" and first["attempts"] == 3, first
    assert all(j["status"] == "completed" for j in listed), listed
    assert all(sim.company(f"unk-{i}") == {"n": i} for i in range(300))


@pytest.mark.process
def test_a_job_userpilot_forgets_is_submitted_again(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=60)  # running long enough to be polled
    sim.add_fault(action="status", status=404, path="/v1/background_jobs/", times=3)

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim) as relay:
            batch_id = await post_bulk(relay, companies("lost", 200))

            async def forgotten() -> bool:
                found = await jobs(relay)
                return bool(found) and "404" in (found[-1]["last_error"] or "")

            # Three 404s in a row: back to waiting, to be submitted again.
            await eventually(forgotten, within=20)
            sim.configure(bulk_rows_per_minute=600_000)
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 200, done
            return await jobs(relay)

    listed = run(main(), limit=90)
    first = listed[-1]
    assert first["status"] == "completed" and first["attempts"] >= 2, first
    # Submitted again (the first upload still ran at Userpilot: 409 until it ended).
    assert sim.stats()["jobs_created"] == 1 + len(listed)
    assert all(sim.company(f"lost-{i}") == {"n": i} for i in range(200))


@pytest.mark.process
def test_a_job_never_accepted_is_reported_stuck(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=503, path="/v1/companies/bulk_identify", times=10_000)

    async def main() -> dict[str, Any]:
        async with relay_on(database_url, sim, relay_bulk_stuck_seconds=1) as relay:
            await post_bulk(relay, companies("never", 200))

            async def stuck() -> dict[str, Any] | None:
                found = await jobs(relay)
                return found[0] if found and found[0]["stuck"] else None

            job: dict[str, Any] = await eventually(stuck, within=20)

            async def gauge() -> bool:
                return await relay.metric("userpilot_relay_bulk_job_stuck") == 1

            await eventually(gauge, within=10)
            # It stays raised between two submissions (the alert needs it for minutes).
            for _ in range(10):
                assert await gauge()
                await asyncio.sleep(0.3)
            return job

    job = run(main(), limit=60)
    assert job["status"] == "waiting" and job["upstream_job_id"] is None, job
    assert "503" in (job["last_error"] or "") or "SERVICE_UNAVAILABLE" in (job["last_error"] or "")


@pytest.mark.process
def test_a_job_userpilot_keeps_forgetting_backs_off_and_is_reported_stuck(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=0)  # the first upload never ends upstream
    sim.add_fault(action="status", status=404, path="/v1/background_jobs/", times=100_000)

    async def main() -> tuple[dict[str, Any], int]:
        async with relay_on(database_url, sim, relay_bulk_stuck_seconds=2) as relay:
            await post_bulk(relay, companies("forgot", 200))

            async def stuck() -> dict[str, Any] | None:
                found = await jobs(relay)
                return found[0] if found and found[0]["stuck"] else None

            job: dict[str, Any] = await eventually(stuck, within=20)
            uploads = len(sim.requests(path="/v1/companies/bulk_identify"))
            return job, uploads

    job, uploads = run(main(), limit=60)
    # Submitted again only after a backoff (each time a 409: the first still runs), never in a
    # tight loop; and its rows stay in bulk, in doubt.
    assert uploads <= 6, uploads
    assert job["uncertain_since"] is not None, job


@pytest.mark.process
def test_hostile_answers_from_userpilot_stall_nothing(
    database_url: str, sim: SimulatorProcess
) -> None:
    # Upload answers whose job id cannot be stored or polled (NUL, a path step, too long), then
    # polls answering a control-character status, a lone surrogate, numbers past 64 bits and
    # 4,300 digits: none stores anything odd, none stalls the job, every value arrives.
    bulk, jobs_path = "/v1/companies/bulk_identify", "/v1/background_jobs/"
    sim.configure(bulk_rows_per_minute=3000)
    huge = "9" * 4301
    sim.add_faults(
        [
            {"action": "status", "status": 202, "body": {"job_id": "job\u0000x"}, "path": bulk},
            {"action": "status", "status": 202, "body": {"job_id": ".."}, "path": bulk},
            {"action": "status", "status": 202, "body": {"job_id": "j" * 300}, "path": bulk},
            {
                "action": "status",
                "status": 200,
                "path": jobs_path,
                "body": {"status": "processing\u0000\u202e", "completed_rows": 2**70},
            },
            {
                "action": "status",
                "status": 200,
                "path": jobs_path,
                "body": '{"status": "\\ud800", "completed_rows": 1}',
            },
            {
                "action": "status",
                "status": 200,
                "path": jobs_path,
                "body": '{"status": "processing", "completed_rows": ' + huge + "}",
            },
        ]
    )

    async def main() -> list[dict[str, Any]]:
        async with relay_on(database_url, sim, relay_retry_base_seconds=0.1) as relay:
            batch_id = await post_bulk(relay, companies("hostile", 200))
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 200, done

            # A job's rows are marked delivered a chunk at a time, then the job completed.
            async def ended() -> list[dict[str, Any]] | None:
                listed = await jobs(relay)
                return listed if all(j["status"] != "running" for j in listed) else None

            ended_jobs: list[dict[str, Any]] = await eventually(ended, within=10)
            return ended_jobs

    listed = run(main(), limit=90)
    assert all(j["status"] == "completed" for j in listed), listed
    for job in listed:
        assert job["upstream_job_id"].startswith("job:companies:"), job
        assert 0 <= job["completed_rows"] <= job["rows"], job
        assert "\x00" not in str(job) and "\ud800" not in str(job)
    assert sim.faults() == []  # every hostile answer was given
    assert all(sim.company(f"hostile-{i}") == {"n": i} for i in range(200))


@pytest.mark.process
def test_no_secret_reaches_bulk_logs_jobs_status_or_metrics(
    database_url: str, sim: SimulatorProcess
) -> None:
    # A refused upload, a conflict and a completed job: every bulk log line, GET /jobs,
    # GET /status and /metrics, read for the Userpilot key and the relay keys.
    bulk = "/v1/companies/bulk_identify"
    sim.add_faults(
        [
            {"action": "status", "status": 409, "path": bulk},
            {"action": "status", "status": 503, "path": bulk},
        ]
    )

    async def main() -> str:
        async with relay_on(database_url, sim, relay_retry_base_seconds=0.1) as relay:
            with captured_logs() as lines:
                batch_id = await post_bulk(relay, companies("secret", 200))
                await relay.batch_done(batch_id, within=60)
            texts = [
                (await relay.get("/jobs", key=ADMIN_KEY)).text,
                (await relay.get("/status", key=ADMIN_KEY)).text,
                (await relay.get("/metrics", key=None)).text,
            ]
            return "\n".join(lines + texts)

    seen = run(main(), limit=90)
    assert "accepted a bulk job" in seen and "409" in seen
    for secret in (UPSTREAM_KEY, ADMIN_KEY, INGEST_KEY):
        assert secret not in seen


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


@pytest.mark.process
def test_a_long_retry_after_on_a_job_poll_pauses_delivery_briefly_and_says_so(
    database_url: str, sim: SimulatorProcess
) -> None:
    # One 429 with Retry-After: 3600 on a job poll: the pause is capped (2 s here, 5 minutes by
    # default), logged with its length, shown in GET /status and exported; delivery goes on.
    sim.configure(bulk_rows_per_minute=600)  # the job runs long enough to be polled
    sim.add_fault(action="retry_after", retry_after=3600, path="/v1/background_jobs/", times=1)

    async def main() -> tuple[dict[str, Any], float, list[str], dict[str, Any]]:
        async with relay_on(database_url, sim, relay_max_upstream_pause_seconds=2) as relay:
            with captured_logs() as lines:
                await post_bulk(relay, companies("pz", 200))

                async def paused() -> dict[str, Any] | None:
                    body: dict[str, Any] = (await relay.get("/status", key=ADMIN_KEY)).json()
                    return body if body["paused_until"] else None

                status = await eventually(paused, within=20, interval=0.02)
                gauge = await relay.metric("userpilot_relay_upstream_paused_until_seconds")
                after = await relay.post_company("pz-after", {"x": 1})
                delivered = await relay.wait_for(after.json()["id"], "delivered", within=15)
            return status, gauge, list(lines), delivered

    status, gauge, lines, delivered = run(main(), limit=60)
    assert sim.faults() == []
    assert status["paused_until"] - time.time() <= 2.5, status
    assert "job poll" in status["pause_reason"] and "3600" in status["pause_reason"], status
    assert gauge == pytest.approx(status["paused_until"], abs=1), (gauge, status)
    warned = [orjson.loads(line) for line in lines if "upstream calls paused for 2 s" in line]
    assert warned and warned[0]["level"] == "warning", warned
    assert "Retry-After said 3600 s" in warned[0]["msg"], warned
    assert delivered["via"] == "realtime"


def test_the_status_command_shows_a_pause_escaped() -> None:
    from rich.console import Console

    from app.cli.status import table

    report = {
        "relay": "http://relay",
        "version": "1",
        "store": "ok",
        "queue": {"queued": 0, "delivering": 0, "dead": 0, "oldest_queued_age_seconds": None},
        "last_upstream": None,
        "last_upstream_window": 200,
        "rate_limit_per_minute": 600,
        "delivery_concurrency": 16,
        "upstream_bulk": "auto",
        "bulk_job": None,
        "paused_until": 4_102_444_800.0,
        "pause_reason": "429 on a bulk job poll: 300 s [red]x[/red]\x1b[2J",
    }
    out = Console(width=200, record=True, force_terminal=False)
    out.print(table(report))
    text = out.export_text()
    assert "paused" in text and "until 2100-01-01 00:00:00Z" in text, text
    assert "429 on a bulk job poll: 300 s [red]x[/red]" in text and "\x1b" not in text, text


@pytest.mark.process
def test_a_premature_completed_is_not_trusted_and_a_newer_value_still_wins(
    database_url: str, sim: SimulatorProcess
) -> None:
    # Userpilot answers `completed` with 0 rows done while the job has not run yet: the job's
    # rows must stay in flight, so a newer real-time update goes out after the job's values.
    sim.configure(bulk_rows_per_minute=0)
    sim.add_job_fault(action="report", status="completed", after_rows=0, seconds=0.6)

    async def main() -> tuple[str, dict[str, Any], dict[str, Any]]:
        async with relay_on(database_url, sim, relay_bulk_fresh_seconds=0) as relay:
            batch_id = await post_bulk(relay, companies("pre", 200))
            job = await running_job(relay)

            def told_completed() -> bool:
                return any(r["status"] == 200 for r in sim.requests(path="/v1/background_jobs/"))

            await eventually(told_completed, within=20)
            # The false `completed` is over (0.6 s): Userpilot now says `processing`.
            await asyncio.sleep(1.0)
            seen = (await relay.get(f"/jobs/{job['id']}", key=ADMIN_KEY)).json()
            assert seen["status"] == "running", seen
            company = ""
            for i in range(200):
                d = (await relay.get(f"/deliveries/{batch_id}.{i}", key=ADMIN_KEY)).json()
                if d["job_id"] == job["id"]:
                    company = d["company_id"]
                    break
            newer = await relay.post_company(company, {"v": 2})
            await asyncio.sleep(0.3)
            queued = (await relay.get(f"/deliveries/{newer.json()['id']}", key=ADMIN_KEY)).json()
            assert queued["status"] == "queued", queued
            sim.configure(bulk_rows_per_minute=600_000)
            await relay.wait_for(newer.json()["id"], "delivered", within=30)
            await relay.batch_done(batch_id, within=30)
            done = (await relay.get(f"/jobs/{job['id']}", key=ADMIN_KEY)).json()
            return company, seen, done

    company, _, done = run(main(), limit=90)
    assert done["status"] == "completed" and done["completed_rows"] == done["rows"], done
    history = sim.history(company)
    assert history is not None
    assert [h["via"] for h in history] == ["bulk", "identify"], history
    assert sim.company(company) == {"n": int(company.split("-")[1]), "v": 2}


@pytest.mark.process
def test_a_completed_short_is_polled_again_then_accepted_with_its_shortfall_recorded(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=0)
    sim.add_job_fault(action="report", status="completed", after_rows=0)  # for ever

    async def main() -> dict[str, Any]:
        async with relay_on(database_url, sim) as relay:
            batch_id = await post_bulk(relay, companies("short", 200))
            await relay.batch_done(batch_id, within=30)
            (job,) = await jobs(relay)
            return job

    job = run(main(), limit=60)
    polls = [
        r
        for r in sim.requests(path="/v1/background_jobs/")
        if r["path"].endswith(job["upstream_job_id"].replace(":", "%3A")) or r["status"] == 200
    ]
    assert job["status"] == "completed" and job["completed_rows"] == 0, job
    assert "only 0 of" in job["outcome"] and "taken as completed" in job["outcome"], job
    assert "only 0 of" in (job["last_error"] or ""), job
    # Asked again (ten answers) before it was believed.
    assert len(polls) >= 10, len(polls)


@pytest.mark.process
def test_an_undocumented_job_status_is_reported_stuck_and_an_operator_can_abandon_the_job(
    database_url: str, sim: SimulatorProcess
) -> None:
    # Userpilot answers `cancelled` (not a documented status) for ever: logged once, reported
    # stuck, and POST /jobs/{id}/abandon ends it; its rows go out again real-time, a newer
    # update of one of its companies still wins.
    sim.configure(bulk_rows_per_minute=0)
    sim.add_job_fault(action="report", status="cancelled")

    async def main() -> dict[str, Any]:
        async with relay_on(
            database_url, sim, relay_bulk_stuck_seconds=1, relay_bulk_fresh_seconds=0
        ) as relay:
            with captured_logs() as lines:
                batch_id = await post_bulk(relay, companies("cx", 200))
                job = await running_job(relay)
                path = f"/jobs/{job['id']}"

                async def stuck() -> dict[str, Any] | None:
                    found: dict[str, Any] = (await relay.get(path, key=ADMIN_KEY)).json()
                    return found if found["stuck"] else None

                found = await eventually(stuck, within=20)
                status = (await relay.get("/status", key=ADMIN_KEY)).json()

                async def raised() -> float:
                    return await relay.metric("userpilot_relay_bulk_job_stuck")

                gauge = await eventually(raised, within=10)
                polls = len(sim.requests(path="/v1/background_jobs/"))
            company = ""
            for i in range(200):
                d = (await relay.get(f"/deliveries/{batch_id}.{i}", key=ADMIN_KEY)).json()
                if d["job_id"] == job["id"]:
                    company = d["company_id"]
                    break
            newer = (await relay.post_company(company, {"v": 2})).json()["id"]
            answers = [
                await relay.post(f"{path}/abandon", key=INGEST_KEY),
                await relay.post("/jobs/job_0000000000000_000000000000/abandon", key=ADMIN_KEY),
                await relay.post(f"{path}/abandon", key=ADMIN_KEY),
                await relay.post(f"{path}/abandon", key=ADMIN_KEY),
            ]
            # The abandoned job still holds Userpilot's slot until it ends there (the risk
            # docs/runbooks.md names); let it end so that the rest of the backlog may use bulk.
            sim.configure(bulk_rows_per_minute=600_000)
            done = await relay.batch_done(batch_id, within=60)
            await relay.wait_for(newer, "delivered", within=20)
            row = (
                await relay.get(f"/deliveries/{batch_id}.{company.split('-')[1]}", key=ADMIN_KEY)
            ).json()
            return {
                "found": found,
                "status": status,
                "gauge": gauge,
                "polls": polls,
                "lines": list(lines),
                "company": company,
                "answers": [(a.status_code, a.json()) for a in answers],
                "done": done,
                "row": row,
                "after": (await relay.get(path, key=ADMIN_KEY)).json(),
            }

    seen = run(main(), limit=90)
    assert seen["found"]["status"] == "running", seen["found"]
    assert seen["found"]["upstream_status"] == "unknown: cancelled", seen["found"]
    assert seen["status"]["bulk_job"]["stuck"] is True and seen["gauge"] == 1
    undocumented = [line for line in seen["lines"] if "undocumented status" in line]
    assert len(undocumented) == 1 and seen["polls"] >= 3, (undocumented, seen["polls"])
    codes = [code for code, _ in seen["answers"]]
    assert codes == [403, 404, 200, 409], seen["answers"]
    abandoned = seen["answers"][2][1]
    assert abandoned["status"] == "abandoned" and abandoned["abandoned_by"] == "ops", abandoned
    assert abandoned["abandoned_at"] is not None and "real-time" in abandoned["outcome"]
    assert seen["answers"][3][1]["error"] == "conflict", seen["answers"][3]
    assert seen["after"]["status"] == "abandoned" and seen["after"]["owner"] is None
    assert seen["done"]["counts"]["delivered"] == 200, seen["done"]
    assert seen["row"]["via"] == "realtime" and seen["row"]["status"] == "delivered", seen["row"]
    company = seen["company"]
    assert sim.company(company) == {"n": int(company.split("-")[1]), "v": 2}


@pytest.mark.process
def test_an_upload_whose_answer_was_lost_is_found_in_userpilots_job_list_and_adopted(
    database_url: str, sim: SimulatorProcess
) -> None:
    # The upload starts a job but its answer never arrives; then bulk is switched off (the
    # runbook's advice). The relay asks Userpilot's job list, adopts the orphan and polls it:
    # no second upload, no real-time call under it, and a newer update lands after it.
    sim.configure(bulk_rows_per_minute=0)
    sim.add_fault(action="lose_answer", path="/v1/companies/bulk_identify", times=1)

    async def first() -> tuple[str, dict[str, Any]]:
        async with relay_on(database_url, sim, relay_retry_base_seconds=0.1) as relay:
            batch_id = await post_bulk(relay, companies("orph", 200))

            async def in_doubt() -> dict[str, Any] | None:
                found = await jobs(relay)
                return found[0] if found and found[0]["uncertain_since"] else None

            job: dict[str, Any] = await eventually(in_doubt, within=20)
            return batch_id, job

    batch_id, job = run(first(), limit=60)
    (orphan,) = sim.jobs()

    async def second() -> tuple[dict[str, Any], str]:
        async with relay_on(database_url, sim, relay_upstream_bulk="off") as relay:
            adopted = await running_job(relay)
            company = ""
            for i in range(200):
                d = (await relay.get(f"/deliveries/{batch_id}.{i}", key=ADMIN_KEY)).json()
                if d["job_id"] == job["id"]:
                    company = d["company_id"]
                    break
            newer = (await relay.post_company(company, {"v": 2})).json()["id"]
            sim.configure(bulk_rows_per_minute=600_000)
            await relay.wait_for(newer, "delivered", within=30)
            await relay.batch_done(batch_id, within=60)
            return {
                **adopted,
                "end": (await relay.get(f"/jobs/{job['id']}", key=ADMIN_KEY)).json(),
            }, company

    adopted, company = run(second(), limit=90)
    assert adopted["id"] == job["id"] and adopted["upstream_job_id"] == orphan["job_id"], adopted
    assert adopted["end"]["status"] == "completed", adopted["end"]
    assert sim.stats()["jobs_created"] == 1
    history = sim.history(company)
    assert history is not None and [h["via"] for h in history] == ["bulk", "identify"], history
    assert sim.company(company) == {"n": int(company.split("-")[1]), "v": 2}


@pytest.mark.process
def test_an_upload_that_never_arrived_goes_real_time_once_userpilot_lists_no_job(
    database_url: str, sim: SimulatorProcess
) -> None:
    # The connection drops before Userpilot reads the upload: its job list shows nothing, so
    # with bulk off the rows go out real-time now, not after a ten-minute window.
    sim.add_fault(action="drop", path="/v1/companies/bulk_identify", times=1)

    async def first() -> str:
        async with relay_on(
            database_url, sim, relay_retry_base_seconds=30, relay_retry_max_seconds=60
        ) as relay:
            batch_id = await post_bulk(relay, companies("never", 200))

            async def in_doubt() -> bool:
                found = await jobs(relay)
                return bool(found and found[0]["uncertain_since"])

            await eventually(in_doubt, within=20)
            return batch_id

    batch_id = run(first(), limit=60)

    async def second() -> list[dict[str, Any]]:
        async with relay_on(
            database_url, sim, relay_upstream_bulk="off", relay_rate_limit_per_minute=6000
        ) as relay:
            await relay.store.claims.retry_now()  # the job's next attempt is due now
            done = await relay.batch_done(batch_id, within=60)
            assert done["counts"]["delivered"] == 200, done
            return await jobs(relay)

    listed = run(second(), limit=90)
    assert sim.stats()["jobs_created"] == 0
    assert len(sim.requests(path="/v1/background_jobs")) >= 1
    (job,) = listed
    assert job["status"] == "split" and "real-time" in job["outcome"], job
    assert all(sim.company(f"never-{i}") == {"n": i} for i in range(200))
