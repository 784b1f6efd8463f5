"""What the bulk job tests share: a relay with fast bulk settings over a simulator, bodies,
and the job listing (tests/integration/test_bulk*.py, test_erasure.py)."""

from __future__ import annotations

from typing import Any

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, eventually
from tests.relay import ADMIN_KEY

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


async def stuck_job(relay: InProcessRelay) -> dict[str, Any]:
    """The newest job, once it is reported stuck."""

    async def stuck() -> dict[str, Any] | None:
        found = await jobs(relay)
        return found[0] if found and found[0]["stuck"] else None

    job: dict[str, Any] = await eventually(stuck, within=20)
    return job


def upstream_calls(sim: SimulatorProcess) -> tuple[int, int]:
    """(real-time identify calls, company rows in bulk jobs) Userpilot received."""
    stats = sim.stats()
    return int(stats["identify_calls"]), int(stats["bulk_rows_received"])


def sim_key(sim: SimulatorProcess) -> str:
    keys: list[str] = sim.config()["api_keys"]
    return keys[0]
