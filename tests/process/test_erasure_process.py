"""Erasure in real relay processes: one killed with SIGKILL mid-erasure finishes it after a
restart; two replicas on one PostgreSQL database send each company to Userpilot's delete once,
paced across both."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests import pg
from tests.relay import ADMIN_KEY, RelayProcess, wait_until

pytestmark = pytest.mark.process

FAST = {
    "RELAY_ERASURE_REQUEST_INTERVAL_SECONDS": "0.2",
    "RELAY_ERASURE_POLL_SECONDS": "0.1",
    "RELAY_LEASE_SECONDS": "3.5",
    "RELAY_UPSTREAM_TIMEOUT_SECONDS": "1",
    "RELAY_UPSTREAM_BULK": "off",
}


def erase(relay: RelayProcess, ids: list[str]) -> str:
    r = relay.request(
        "POST", "/erasures", key=ADMIN_KEY, json={"company_ids": ids, "reason": "gdpr"}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def status_of(relay: RelayProcess, erasure_id: str) -> dict[str, Any]:
    r = relay.request("GET", f"/erasures/{erasure_id}", key=ADMIN_KEY)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_an_erasure_survives_kill_9_and_finishes_after_a_restart(
    relay_factory: Any, sim: SimulatorProcess
) -> None:
    sim.set_delete_pacing(0.05)
    relay: RelayProcess = relay_factory(**FAST)
    r = relay.post_company("killed-co", {"plan": "x"}, headers={"Prefer": "wait=10"})
    assert r.status_code == 200, r.text
    delivery_id = r.json()["id"]
    # Userpilot's delete fails until the relay is killed: the erasure is purged, not sent.
    sim.add_fault(action="status", status=503, path="/v1/companies", method="DELETE", times=10**6)
    erasure_id = erase(relay, ["killed-co", "other-killed-co"])
    wait_until(lambda: any(q["method"] == "DELETE" for q in sim.requests("/v1/companies")))
    assert status_of(relay, erasure_id)["status"] == "running"
    relay.kill()
    sim.clear_faults()
    relay.restart()
    done = wait_until(
        lambda: (s := status_of(relay, erasure_id))["status"] != "running" and s, timeout=30
    )
    assert done["status"] == "completed", done
    assert done["erased"] == 2
    (deletion,) = sim.deletions()
    assert sorted(deletion["company_ids"]) == ["killed-co", "other-killed-co"]
    assert relay.request("GET", f"/deliveries/{delivery_id}").status_code == 404
    r = relay.post_company("killed-co", {"plan": "again"})
    assert r.status_code == 409
    assert r.json()["error"] == "company_erased"


@pytest.fixture
def database() -> Iterator[str]:
    with pg.fresh_database() as name:
        yield name


@pytest.fixture
def database_url(database: str) -> str:
    """Both relays share this PostgreSQL database (overrides the two-store fixture)."""
    return pg.database_url(database)


def test_two_replicas_send_each_company_once_paced_across_both(
    relay_factory: Any, sim: SimulatorProcess, database: str
) -> None:
    sim.set_delete_pacing(0.1)
    relays: list[RelayProcess] = [relay_factory(**FAST) for _ in range(2)]
    ids = [f"replica-{i:05d}" for i in range(3000)]
    chunks = [ids[:1500], ids[1500:2500], ids[2500:]]
    erasures = [erase(r, c) for r, c in zip(itertools.cycle(relays), chunks, strict=False)]

    def all_done() -> bool:
        return all(status_of(relays[0], e)["status"] == "completed" for e in erasures)

    wait_until(all_done, timeout=60)
    deletions = sim.deletions()
    sent = [c for d in deletions for c in d["company_ids"]]
    assert sorted(sent) == ids  # every company once: one replica drove each erasure
    assert all(len(d["company_ids"]) <= 1000 for d in deletions)
    # Slots are 0.2 s apart across both replicas (the simulator takes one per 0.1 s): never
    # closer than Userpilot's limit, whatever the jitter of each send.
    times = sorted(d["accepted_at"] for d in deletions)
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(times)), times
    assert sim.stats()["delete_throttled"] == 0
    # The erasures keep digests and counts only: no id left in their tables.
    rows = pg.query(database, "SELECT count(*) FROM erasure_companies WHERE company_id IS NOT NULL")
    assert rows == [(0,)]
