"""Bulk jobs whose fate is in doubt (an upload unanswered, a job forgotten, stuck, completed
short or with an undocumented status): resolved by asking Userpilot, reported, and ended by
an operator when nothing else can (relay and simulator, both stores)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests.bulk_helpers import (
    companies,
    jobs,
    post_bulk,
    relay_on,
    running_job,
    stuck_job,
)
from tests.inprocess import eventually, run
from tests.relay import ADMIN_KEY, INGEST_KEY
from tests.webhook_helpers import captured_logs


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
            job = await stuck_job(relay)

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
            job = await stuck_job(relay)
            uploads = len(sim.requests(path="/v1/companies/bulk_identify"))
            return job, uploads

    job, uploads = run(main(), limit=60)
    # Submitted again only after a backoff (each time a 409: the first still runs), never in a
    # tight loop; and its rows stay in bulk, in doubt.
    assert uploads <= 6, uploads
    assert job["uncertain_since"] is not None, job


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
    # Five times Userpilot's rate on both sides: the abandoned rows' real-time calls take 3 s.
    sim.configure(bulk_rows_per_minute=0, rate_limit_per_minute=3_000)
    sim.add_job_fault(action="report", status="cancelled")

    async def main() -> dict[str, Any]:
        async with relay_on(
            database_url,
            sim,
            relay_bulk_stuck_seconds=1,
            relay_bulk_fresh_seconds=0,
            relay_rate_limit_per_minute=3_000,
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
