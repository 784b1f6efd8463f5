"""Erasure across replicas: two relays on one PostgreSQL database send each company to
Userpilot's delete once, paced across both."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests import pg
from tests.process.test_erasure_process import FAST, erase, status_of
from tests.relay import RelayProcess, wait_until

pytestmark = pytest.mark.process


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
