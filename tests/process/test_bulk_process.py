"""Bulk jobs across process deaths and replicas: real relay processes, the simulator's jobs.

A job is recorded before it is submitted, so a relay killed with SIGKILL at any point resumes
polling the jobs it knows (or submits again what it cannot prove was accepted); with
PostgreSQL one job runs across every replica, and a dead owner's job is taken over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.simulator.process import SimulatorProcess
from tests import pg
from tests.relay import ADMIN_KEY, INGEST_KEY, RelayProcess, wait_until

# Every test here runs real processes: the slow tier.
pytestmark = pytest.mark.process

BULK_ENV = {
    "RELAY_BULK_THRESHOLD": "50",
    "RELAY_BULK_POLL_SECONDS": "0.2",
    "RELAY_UPSTREAM_TIMEOUT_SECONDS": "2",
    "RELAY_LEASE_SECONDS": "4",
    "RELAY_MERGE_WINDOW_SECONDS": "0",
}


def post_bulk(relay: RelayProcess, prefix: str, count: int) -> str:
    items = [{"company_id": f"{prefix}-{i}", "metadata": {"n": i}} for i in range(count)]
    r = httpx.post(
        f"{relay.url}/companies/bulk",
        json={"companies": items},
        headers={"Authorization": f"Bearer {INGEST_KEY}"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    batch_id: str = r.json()["batch_id"]
    return batch_id


def admin_get(relay: RelayProcess, path: str, **params: Any) -> Any:
    r = httpx.get(
        f"{relay.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def batch_delivered(relay: RelayProcess, batch_id: str, count: int, timeout: float = 60) -> None:
    def done() -> bool:
        return bool(admin_get(relay, f"/batches/{batch_id}")["counts"]["delivered"] == count)

    wait_until(done, timeout=timeout, interval=0.2)


def submitted_once(
    sim: SimulatorProcess, relay: RelayProcess, foreign: int = 0
) -> list[dict[str, Any]]:
    """The relay's jobs, each accepted by Userpilot exactly once (none submitted again);
    `foreign`: jobs another tool ran."""
    listed: list[dict[str, Any]] = admin_get(relay, "/jobs")["items"]
    assert all(j["status"] == "completed" for j in listed), listed
    assert sim.stats()["jobs_created"] == len(listed) + foreign, listed
    assert sim.stats()["bulk_rows_received"] == sum(j["rows"] for j in listed), listed
    return listed


def all_values_arrived(sim: SimulatorProcess, prefix: str, count: int) -> None:
    stored = sim.companies()
    assert all(stored.get(f"{prefix}-{i}") == {"n": i} for i in range(count))


def test_kill_9_during_a_running_job_resumes_it_and_loses_nothing(
    relay_factory: Any, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=3000)  # about 10 s for the job
    relay = relay_factory(**BULK_ENV)
    batch_id = post_bulk(relay, "k9", 500)

    def running() -> dict[str, Any] | None:
        items = admin_get(relay, "/jobs", status="running")["items"]
        return items[0] if items and items[0]["completed_rows"] > 0 else None

    job = wait_until(running, timeout=20, interval=0.1)
    relay.kill()
    relay.restart()
    batch_delivered(relay, batch_id, 500)
    resumed = admin_get(relay, f"/jobs/{job['id']}")
    assert resumed["status"] == "completed", resumed
    # The same Userpilot job, polled on after the restart: not submitted again.
    assert resumed["upstream_job_id"] == job["upstream_job_id"]
    submitted_once(sim, relay)
    all_values_arrived(sim, "k9", 500)


def test_kill_9_while_a_job_waits_for_the_slot_submits_it_after_the_restart(
    relay_factory: Any, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=0)  # another tool's job holds the slot until released
    key = sim.config()["api_keys"][0]
    users = {"users": [{"user_id": "u1", "metadata": {}}]}
    r = httpx.post(
        f"{sim.url}/v1/users/bulk_identify", json=users, headers={"Authorization": f"Token {key}"}
    )
    assert r.status_code == 202, r.text
    relay = relay_factory(**BULK_ENV)
    batch_id = post_bulk(relay, "kw", 300)
    wait_until(lambda: sim.stats()["jobs_conflicted"] > 0, timeout=20)
    relay.kill()
    relay.restart()
    sim.configure(bulk_rows_per_minute=600_000)  # the other job ends; ours may run
    batch_delivered(relay, batch_id, 300)
    first = admin_get(relay, "/jobs")["items"][-1]
    # Refused with 409 before the kill, submitted again after it, accepted once.
    assert first["status"] == "completed" and first["attempts"] >= 1, first
    submitted_once(sim, relay, foreign=1)
    all_values_arrived(sim, "kw", 300)


@pytest.fixture
def shared_database() -> Iterator[str]:
    with pg.fresh_database() as name:
        yield pg.database_url(name)


def test_two_postgres_replicas_run_one_job_and_resume_a_dead_owners(
    sim: SimulatorProcess, shared_database: str, tmp_path: Any
) -> None:
    from tests.relay import RELAY_KEYS, UPSTREAM_KEY

    sim.configure(bulk_rows_per_minute=3000)
    env = {
        "USERPILOT_API_KEY": UPSTREAM_KEY,
        "USERPILOT_ENDPOINT": sim.url,
        "RELAY_API_KEYS": RELAY_KEYS,
        "RELAY_DATABASE_URL": shared_database,
        "RELAY_RETRY_BASE_SECONDS": "0.2",
        "RELAY_RETRY_MAX_SECONDS": "2",
        **BULK_ENV,
    }
    replicas = [RelayProcess(env, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        batch_id = post_bulk(replicas[0], "rp", 600)

        def running() -> dict[str, Any] | None:
            items = admin_get(replicas[0], "/jobs", status="running")["items"]
            return items[0] if items and items[0]["owner"] else None

        job = wait_until(running, timeout=20, interval=0.1)
        owner_pid = int(job["owner"].split(":")[1])
        (owner,) = [r for r in replicas if r.process is not None and r.process.pid == owner_pid]
        (other,) = [r for r in replicas if r is not owner]
        time.sleep(1)  # both replicas poll and look for work meanwhile
        owner.kill()
        batch_delivered(other, batch_id, 600)
        resumed = admin_get(other, f"/jobs/{job['id']}")
        assert resumed["status"] == "completed", resumed
        # Taken over by the live replica; never a second job beside it (no 409).
        submitted_once(sim, other)
        assert sim.stats()["jobs_conflicted"] == 0
        all_values_arrived(sim, "rp", 600)
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.process
@pg.SQLITE_ONLY
def test_the_jobs_abandon_command_ends_a_job_that_reports_an_undocumented_status(
    relay_factory: Any, sim: SimulatorProcess
) -> None:
    from tests.process.test_cli import cli

    # Five times Userpilot's rate on both sides: the abandoned rows' real-time calls take 3 s.
    sim.configure(bulk_rows_per_minute=0, rate_limit_per_minute=3_000)
    sim.add_job_fault(action="report", status="cancelled")
    relay = relay_factory(**BULK_ENV, RELAY_RATE_LIMIT_PER_MINUTE="3000")
    batch_id = post_bulk(relay, "ab", 200)

    def unknown() -> dict[str, Any] | None:
        items = admin_get(relay, "/jobs", status="running")["items"]
        return items[0] if items and items[0]["upstream_status"] == "unknown: cancelled" else None

    job = wait_until(unknown, timeout=20, interval=0.1)
    env = {"RELAY_URL": relay.url, "RELAY_ADMIN_KEY": ADMIN_KEY}
    done = cli("jobs", "abandon", job["id"], **env)
    assert done.returncode == 0, done.stderr
    assert f"abandoned {job['id']}" in done.stdout and "by ops" in done.stdout, done.stdout
    again = cli("jobs", "abandon", job["id"], **env)
    assert again.returncode == 1 and "409" in again.stderr, again
    assert ADMIN_KEY not in again.stderr + done.stdout
    assert admin_get(relay, f"/jobs/{job['id']}")["status"] == "abandoned"
    sim.configure(bulk_rows_per_minute=600_000)  # the abandoned job ends at Userpilot too
    batch_delivered(relay, batch_id, 200)
    all_values_arrived(sim, "ab", 200)
