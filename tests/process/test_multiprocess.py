"""Three relay processes on one PostgreSQL database, one killed with SIGKILL mid-backlog.

Load is spread across the three; Userpilot (the simulator) is slow enough that calls are in
flight at the kill. Every acknowledged update must still arrive with its value, and across
the three together Userpilot never sees more than the configured rate nor two concurrent calls
for one company.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.simulator.process import SimulatorProcess
from tests import pg
from tests.relay import INGEST_KEY, RelayProcess, wait_until

# Every test here runs real processes: the slow tier.
pytestmark = pytest.mark.process

RATE_PER_MINUTE = 600
LEASE_SECONDS = 3
COMPANIES = 120
IDENTIFY = "/v1/companies/identify"


@pytest.fixture
def database() -> Iterator[str]:
    with pg.fresh_database() as name:
        yield name


@pytest.fixture
def database_url(database: str) -> str:
    """All three relays share this PostgreSQL database (overrides the two-store fixture)."""
    return pg.database_url(database)


def leases_held_by(database: str, relay: RelayProcess) -> list[str]:
    """Ids of the updates the relay's dispatcher holds now (its lease owner carries its pid)."""
    assert relay.process is not None
    rows = pg.query(
        database,
        "SELECT id FROM deliveries WHERE status = 'delivering' "
        "AND split_part(lease_owner, ':', 2) = %s",
        str(relay.process.pid),
    )
    return [str(r[0]) for r in rows]


def most_in_any_window(sim: SimulatorProcess, seconds: float) -> int:
    """The most identify calls the simulator received within any `seconds`."""
    times = sorted(float(r["time"]) for r in sim.requests(path=IDENTIFY))
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_three_replicas_one_killed_mid_backlog(
    relay_factory: Any, sim: SimulatorProcess, database: str
) -> None:
    sim.configure(rate_limit_per_minute=RATE_PER_MINUTE, latency=0.3)
    env = {
        "RELAY_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
        "RELAY_LEASE_SECONDS": str(LEASE_SECONDS),
        "RELAY_UPSTREAM_TIMEOUT_SECONDS": "1",
    }
    relays: list[RelayProcess] = [relay_factory(**env) for _ in range(3)]
    victim = relays[1]
    acknowledged: dict[str, tuple[str, str, int]] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def ingest(worker: int) -> None:
        # Round-robin over the three relays; a relay that is gone is skipped, not retried:
        # an update it never acknowledged was never promised.
        targets = itertools.cycle(relays)
        with httpx.Client(timeout=10) as client:
            for n in itertools.count():
                if stop.is_set():
                    return
                relay = next(targets)
                company = f"w{worker}-c{n % (COMPANIES // 3)}"
                try:
                    r = client.post(
                        f"{relay.url}/companies",
                        json={"company_id": company, "metadata": {"last": n, f"k{n}": worker}},
                        headers={"Authorization": f"Bearer {INGEST_KEY}"},
                    )
                except httpx.TransportError:
                    continue
                with lock:
                    if r.status_code == 202:
                        acknowledged[r.json()["id"]] = (company, f"k{n}", worker)
                    else:
                        unexpected.append(f"{r.status_code} {r.text}")
                time.sleep(0.003)

    workers = [threading.Thread(target=ingest, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    try:
        # Mid-backlog, the moment the victim holds leases on calls in flight: SIGKILL.
        wait_until(lambda: len(acknowledged) >= 600, timeout=30)
        wait_until(lambda: leases_held_by(database, victim), timeout=20, interval=0.01)
        victim.kill()
        orphaned = leases_held_by(database, victim)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert unexpected == []
    assert orphaned  # it died holding work, which only a lease expiry can free

    survivors = [relays[0], relays[2]]
    ids = list(acknowledged)
    wait_until(
        lambda: (
            not pg.query(
                database,
                "SELECT 1 FROM deliveries WHERE id = ANY(%s) AND status <> 'delivered' LIMIT 1",
                ids,
            )
        ),
        timeout=60,
        interval=0.2,
    )

    # The survivors read the same store: they report what the victim left as delivered, again.
    for index, delivery_id in enumerate(orphaned):
        assert survivors[index % 2].delivery(delivery_id)["attempts"] >= 2
    for index, delivery_id in enumerate(ids[:: max(1, len(ids) // 30)]):
        assert survivors[index % 2].delivery(delivery_id)["status"] == "delivered"
    companies = sim.companies()
    for company, key, worker in acknowledged.values():
        assert companies[company][key] == worker
    stats = sim.stats()
    assert stats["max_concurrent_per_company"] == 1, stats
    assert stats["throttled"] == 0, stats
    # Paced together, not per replica (that would be three times the rate): Userpilot's
    # per-minute budget holds, and so does every shorter stretch, give or take one call of
    # timer jitter (a busy event loop sends a little late) at each edge of the window.
    assert stats["max_in_any_60s_window"] <= RATE_PER_MINUTE, stats
    assert most_in_any_window(sim, 10.0) <= RATE_PER_MINUTE / 6 + 2, stats
    assert stats["max_in_any_1s_window"] <= RATE_PER_MINUTE / 60 + 2, stats
    # The backlog was real: far fewer calls than updates (merged per company), and spread.
    assert stats["identify_calls"] < len(acknowledged) / 2, stats
    for relay in survivors:
        assert relay.metric("userpilot_relay_deliveries_total", outcome="delivered") > 0
