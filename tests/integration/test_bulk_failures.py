"""Bulk jobs Userpilot fails, refuses, throttles or answers with nonsense: split, sent again,
sent real-time, paused for, never leaking a secret (relay and simulator, both stores)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from app.simulator.process import SimulatorProcess
from tests.bulk_helpers import (
    companies,
    jobs,
    post_bulk,
    relay_on,
)
from tests.inprocess import eventually, run
from tests.relay import ADMIN_KEY, INGEST_KEY, UPSTREAM_KEY
from tests.webhook_helpers import captured_logs


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
        # Halves of any first job stay jobs (a half under RELAY_BULK_MIN_ROWS goes real-time):
        # how many rows the first job takes depends on how far the batch was expanded, and it
        # takes at least 39 (3/4 of the 51 waiting companies that start a pack).
        async with relay_on(
            database_url, sim, relay_rate_limit_per_minute=600, relay_bulk_min_rows=10
        ) as relay:
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
def test_a_job_too_large_for_userpilot_is_split(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=413, path="/v1/companies/bulk_identify", times=1)
    items = companies("big", 400)

    async def main() -> list[dict[str, Any]]:
        # Halves of any first job stay jobs (see the test above).
        async with relay_on(database_url, sim, relay_bulk_min_rows=10) as relay:
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
