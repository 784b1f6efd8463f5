"""What was acknowledged is never lost: kill -9 with a backlog, restart, all delivered.
SIGTERM stops cleanly and hands back what was in flight. Those are about the process, so they
start real ones, on both stores; the arrival order of a bulk import runs in process."""

from __future__ import annotations

import signal
import threading
from typing import Any

import httpx

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.relay import INGEST_KEY, RelayProcess, wait_until

IDENTIFY = "/v1/companies/identify"


def test_kill_9_with_a_backlog_loses_nothing(relay_factory: Any, sim: SimulatorProcess) -> None:
    # A slow, throttled upstream keeps a backlog; ingest runs from several threads while the
    # process is killed, so some requests are mid-flight at the kill.
    # A short lease: on PostgreSQL what the killed process held waits for its lease to expire
    # (other replicas may hold live ones), and the call must end inside it.
    relay = relay_factory(
        RELAY_RATE_LIMIT_PER_MINUTE="1200",
        RELAY_UPSTREAM_TIMEOUT_SECONDS="2",
        RELAY_LEASE_SECONDS="4",
    )
    sim.configure(latency=0.2)
    acknowledged: list[tuple[str, str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def ingest(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=relay.url, timeout=10) as client:
            while not stop.is_set() and n < 400:
                company = f"w{worker}-c{n % 25}"
                try:
                    r = client.post(
                        "/companies",
                        json={"company_id": company, "metadata": {f"k{n}": n}},
                        headers={"Authorization": f"Bearer {INGEST_KEY}"},
                    )
                except httpx.TransportError:
                    return  # the process died under us: this one was never acknowledged
                if r.status_code == 202:
                    with lock:
                        acknowledged.append((r.json()["id"], company, n))
                n += 1

    threads = [threading.Thread(target=ingest, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acknowledged) >= 300, timeout=30)
    relay.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(sim.requests(path=IDENTIFY)) < len(acknowledged)  # there was a backlog

    sim.configure(latency=0)
    relay.restart()
    for delivery_id, _, _ in acknowledged:
        relay.wait_for(delivery_id, "delivered", timeout=60)
    # Every acknowledged property is in Userpilot with its value.
    companies = sim.companies()
    for _, company, n in acknowledged:
        assert companies[company][f"k{n}"] == n
    assert sim.stats()["max_concurrent_per_company"] == 1


def test_sigterm_exits_cleanly_and_releases_in_flight(
    relay_factory: Any, sim: SimulatorProcess
) -> None:
    relay: RelayProcess = relay_factory(RELAY_SHUTDOWN_GRACE_SECONDS="0.5")
    sim.add_fault(action="delay", delay=5)
    delivery = relay.post_company("acme", {"plan": "pro"}).json()["id"]
    wait_until(lambda: len(sim.requests(path=IDENTIFY)) == 1)
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete, so -15 is clean too.
    assert relay.stop() in (0, -signal.SIGTERM)
    assert '"relay stopped"' in relay.logs()
    assert "Application shutdown complete" in relay.logs()
    relay.restart()
    relay.wait_for(delivery, "delivered", timeout=30)
    assert sim.company("acme") == {"plan": "pro"}


def test_kill_9_right_after_a_bulk_ack(relay_factory: Any, sim: SimulatorProcess) -> None:
    sim.configure(rate_limit_per_minute=1_000_000)
    relay = relay_factory(RELAY_RATE_LIMIT_PER_MINUTE="60000")
    body = {
        "companies": [{"company_id": f"k{i % 150}", "metadata": {f"p{i}": i}} for i in range(600)]
    }
    batch = relay.request("POST", "/companies/bulk", json=body).json()["batch_id"]
    relay.kill()
    relay.restart()
    wait_until(lambda: relay.request("GET", f"/batches/{batch}").json()["done"], timeout=60)
    assert relay.request("GET", f"/batches/{batch}").json()["counts"]["delivered"] == 600
    companies = sim.companies()
    for i in range(600):
        assert companies[f"k{i % 150}"][f"p{i}"] == i


def test_bulk_keeps_its_place_in_arrival_order(database_url: str, sim: SimulatorProcess) -> None:
    # A bulk import with stale values, then a live update: the live one must win, however
    # the bulk's updates are staged inside the store.
    sim.configure(rate_limit_per_minute=1_000_000)
    body = {
        "companies": [{"company_id": f"o{i}", "metadata": {"plan": "free"}} for i in range(1500)]
    }

    async def main() -> None:
        async with InProcessRelay(
            database_url, endpoint=sim.url, relay_rate_limit_per_minute=60_000
        ) as relay:
            batch = (await relay.post("/companies/bulk", json=body)).json()["batch_id"]
            live = (await relay.post_company("o1400", {"plan": "enterprise"})).json()["id"]
            await relay.wait_for(live, "delivered", within=60)
            await relay.wait_for(f"{batch}.1400", "delivered", within=30)

    run(main())
    assert sim.company("o1400") == {"plan": "enterprise"}
    calls = [c["body"] for c in sim.requests(path=IDENTIFY) if c["company_id"] == "o1400"]
    assert calls[-1]["metadata"] == {"plan": "enterprise"}
