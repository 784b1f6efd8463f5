"""Erasure in a real relay process, on both stores: one killed with SIGKILL mid-erasure
finishes it after a restart (two replicas: test_erasure_replicas.py)."""

from __future__ import annotations

from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
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
