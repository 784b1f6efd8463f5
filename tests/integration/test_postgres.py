"""What only the PostgreSQL store must guarantee: several replicas on one database.

Store-level tests run several `Store`s on `PostgresEngine` side by side in one event loop, as
several replicas would; route-level ones run the app in process (two apps for two replicas); the
relay losing its database mid-traffic runs a real process over HTTP. The shared server is never
stopped: a connection loss is a TCP proxy being cut, or the relay's sessions terminated.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app.delivery.merge import merge_claim
from app.domain.models import Idempotency, NewUpdate
from app.simulator.process import SimulatorProcess
from app.store.migrations import migrations
from app.store.postgres.connection import conninfo_from_url
from app.store.postgres.engine import PostgresEngine
from app.store.store import Store
from tests import pg
from tests.inprocess import InProcessRelay
from tests.inprocess import run as run_async
from tests.relay import ADMIN_KEY, INGEST_KEY, ROOT, RelayProcess, wait_until

T = TypeVar("T")
IDENTIFY = "/v1/companies/identify"


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database's name."""
    with pg.fresh_database() as name:
        yield name


@pytest.fixture
def database_url(database: str) -> str:
    """Every relay of these tests runs on PostgreSQL (overrides the two-store fixture)."""
    return pg.database_url(database)


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return asyncio.run(fn(*args))  # type: ignore[arg-type]


async def opened(url: str, count: int = 1) -> list[Store]:
    stores = [Store(PostgresEngine(url)) for _ in range(count)]
    await asyncio.gather(*(s.open() for s in stores))
    return stores


async def close_all(stores: list[Store]) -> None:
    await asyncio.gather(*(s.close() for s in stores))


# -- URLs, migrations --------------------------------------------------------------------------
def test_every_postgres_url_spelling_is_accepted() -> None:
    for scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        info = conninfo_from_url(f"{scheme}://relay:s3cret@db.internal:6432/queue?sslmode=require")
        assert "host=db.internal" in info
        assert "port=6432" in info
        assert "dbname=queue" in info
        assert "sslmode=require" in info
    with pytest.raises(ValueError, match="postgresql://"):
        conninfo_from_url("mysql://db/queue")


def test_migrations_are_safe_when_replicas_start_together(database_url: str) -> None:
    async def scenario() -> tuple[list[list[int]], list[int]]:
        stores = await opened(database_url, 6)
        applied = [s.applied_migrations for s in stores]
        await close_all(stores)
        again = await opened(database_url)
        await close_all(again)
        return applied, again[0].applied_migrations

    applied, second_start = run(scenario)
    latest = [m.version for m in migrations("postgres")]
    assert sorted(applied, key=len)[-1] == latest  # one replica applied everything ...
    assert sum(len(a) for a in applied) == len(latest)  # ... and nobody applied anything twice
    assert second_start == []
    name = database_url.rsplit("/", 1)[1]
    assert pg.query(name, "SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in latest
    ]
    assert pg.query(name, "SELECT count(*) FROM pacing") == [(1,)]


def test_migrate_command_on_both_stores(database_url: str, tmp_path: Path) -> None:
    def migrate(url: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DATABASE_URL": url}
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "migrate"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # Three at once on an empty database (three pods running the release step together).
    processes = [migrate(database_url) for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    latest = migrations("postgres")[-1].version
    assert sorted(out for out, _ in outputs) == [
        f"PostgreSQL schema at version {latest}\n",
        f"PostgreSQL schema at version {latest}\n",
        f"PostgreSQL schema migrated to version {latest} "
        f"(applied {', '.join(str(m.version) for m in migrations('postgres'))})\n",
    ]

    sqlite_url = f"sqlite:///{tmp_path / 'relay.db'}"
    sqlite = migrate(sqlite_url)
    out, err = sqlite.communicate(timeout=60)
    assert sqlite.returncode == 0, err
    assert out.startswith("SQLite schema"), out
    assert (tmp_path / "relay.db").exists()

    bad = migrate("postgresql://nobody@127.0.0.1:1/none")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/none" in err


# -- claims and leases ---------------------------------------------------------------------------
def test_replicas_never_hold_the_same_company_at_once(database_url: str) -> None:
    """Three stores claim as fast as they can while single updates and a bulk request keep
    arriving: a company is never held twice at once, every update leaves exactly once, and
    what Userpilot ends with per company is the value of the update that arrived last."""
    companies = [f"c{i}" for i in range(12)]

    async def scenario() -> tuple[int, list[int], list[int], dict[str, Any], dict[str, Any]]:
        stores = await opened(database_url, 3)
        held: set[str] = set()
        overlaps = 0
        sent: list[str] = []
        newest: dict[str, tuple[int, Any]] = {}
        upstream: dict[str, dict[str, Any]] = {c: {} for c in companies}
        producing = True

        async def produce() -> None:
            nonlocal producing
            for n in range(300):
                c = companies[n % len(companies)]
                await stores[n % 3].deliveries.enqueue(
                    [NewUpdate(company_id=c, metadata={"n": n})], source="api", caller="t"
                )
                if n == 100:
                    bulk = [
                        NewUpdate(company_id=c, metadata={"n": f"b{i}"})
                        for i, c in enumerate(companies * 90)
                    ]
                    await stores[1].deliveries.enqueue(bulk, source="bulk", caller="t", batch=True)
                if n % 20 == 0:
                    await asyncio.sleep(0.01)
            producing = False

        async def consume(store: Store, owner: str) -> None:
            nonlocal overlaps
            while True:
                claim = await store.claims.claim(owner=owner, lease_seconds=30, max_merge=200)
                if claim is None:
                    if not producing and (await store.deliveries.stats()).queued == 0:
                        return
                    await asyncio.sleep(0.005)
                    continue
                if claim.company_id in held:
                    overlaps += 1
                held.add(claim.company_id)
                seqs = [u.seq for u in claim.updates]
                assert seqs == sorted(seqs)
                metadata, versions = merge_claim(claim)
                await asyncio.sleep(0.002)  # the upstream call
                upstream[claim.company_id].update(metadata)
                for u in claim.updates:
                    if u.seq > newest.get(claim.company_id, (-1, None))[0]:
                        newest[claim.company_id] = (u.seq, u.metadata["n"])
                sent.extend(claim.ids)
                held.discard(claim.company_id)
                await store.claims.mark_delivered(
                    claim, status=202, request_id=None, sent_versions=versions
                )

        workers = [consume(s, f"replica-{i}:w{w}") for i, s in enumerate(stores) for w in range(3)]
        await asyncio.gather(produce(), *workers)
        stats = await stores[0].deliveries.stats()
        await close_all(stores)
        expected = {c: {"n": value} for c, (_, value) in newest.items()}
        counts = [len(sent), len(set(sent))]
        return overlaps, counts, [stats.queued, stats.delivering], upstream, expected

    overlaps, counts, left, upstream, expected = run(scenario)
    assert overlaps == 0
    assert counts == [300 + 12 * 90] * 2  # every update once, none twice
    assert left == [0, 0]
    assert upstream == expected


def test_an_expired_lease_goes_to_another_replica(database_url: str) -> None:
    async def scenario() -> None:
        a, b = await opened(database_url, 2)
        stored = await a.deliveries.enqueue(
            [NewUpdate("acme", {"plan": "pro"})], source="api", caller="t"
        )
        ids = [i for i in stored.ids if i is not None]
        first = await a.claims.claim(owner="a", lease_seconds=1.0, max_merge=10)
        assert first is not None and first.ids == ids
        # While the lease runs, the company is busy for every replica.
        assert await b.claims.claim(owner="b", lease_seconds=30, max_merge=10) is None
        await asyncio.sleep(1.2)  # replica a "died" holding it
        second = await b.claims.claim(owner="b", lease_seconds=30, max_merge=10)
        assert second is not None
        assert second.ids == ids
        assert second.updates[0].attempts == 2
        # The late holder's outcome no longer counts: the lease is b's now.
        await a.claims.mark_dead(first, status=400, error="late", request_id=None)
        delivery = await b.deliveries.get(ids[0])
        assert delivery is not None and delivery.status == "delivering"
        await b.claims.mark_delivered(
            second, status=202, request_id="r1", sent_versions={"plan": 1}
        )
        delivery = await a.deliveries.get(ids[0])
        assert delivery is not None and delivery.status == "delivered"
        assert delivery.last_request_id == "r1"
        await close_all([a, b])

    run(scenario)


def test_backoff_and_merge_window_hold_the_company_for_every_replica(database_url: str) -> None:
    async def scenario() -> None:
        a, b = await opened(database_url, 2)
        await a.deliveries.enqueue([NewUpdate("acme", {"v": 1})], source="api", caller="t")
        # Not settled yet: nobody takes it inside the merge window.
        assert (
            await b.claims.claim(owner="b", lease_seconds=30, max_merge=10, settle_seconds=5)
            is None
        )
        claim = await a.claims.claim(owner="a", lease_seconds=30, max_merge=10)
        assert claim is not None
        await a.claims.mark_retry(claim, status=503, error="down", delay=0.6)
        await b.deliveries.enqueue([NewUpdate("acme", {"v": 2})], source="api", caller="t")
        assert await b.claims.claim(owner="b", lease_seconds=30, max_merge=10) is None
        await asyncio.sleep(0.7)
        retried = await b.claims.claim(owner="b", lease_seconds=30, max_merge=10)
        assert retried is not None
        assert [u.metadata for u in retried.updates] == [{"v": 1}, {"v": 2}]
        assert [u.attempts for u in retried.updates] == [2, 1]
        await b.claims.release(retried)
        again = await a.claims.claim(owner="a", lease_seconds=30, max_merge=10)
        assert again is not None and [u.attempts for u in again.updates] == [2, 1]
        await close_all([a, b])

    run(scenario)


def test_retention_prunes_delivered_and_keeps_dead_until_purged(database_url: str) -> None:
    async def scenario() -> None:
        (store,) = await opened(database_url)
        for company in ("done", "bad"):
            await store.deliveries.enqueue([NewUpdate(company, {"a": 1})], source="api", caller="t")
        bulk = [NewUpdate(f"b{i}", {"i": i}) for i in range(3)]
        batch = await store.deliveries.enqueue(bulk, source="bulk", caller="t", batch=True)
        while (
            claim := await store.claims.claim(owner="o", lease_seconds=30, max_merge=10)
        ) is not None:
            if claim.company_id == "bad":
                await store.claims.mark_dead(claim, status=400, error="no", request_id=None)
            else:
                await store.claims.mark_delivered(
                    claim, status=202, request_id=None, sent_versions={}
                )
        assert (
            await store.deliveries.prune(delivered_before=time.time() - 3600) == 0
        )  # all too recent
        assert await store.deliveries.prune(delivered_before=time.time() + 1) == 4
        assert batch.batch_id is not None and await store.deliveries.batch(batch.batch_id) is None
        dead = await store.deliveries.listing(status="dead", company_id=None, after_seq=0, limit=10)
        assert [d.company_id for d in dead] == ["bad"]  # dead letters outlive retention
        assert await store.deliveries.purge_dead(company_id="bad") == 1
        assert (
            await store.deliveries.listing(status=None, company_id=None, after_seq=0, limit=10)
            == []
        )
        await close_all([store])

    run(scenario)


# -- pacing --------------------------------------------------------------------------------------
def test_send_slots_are_spaced_across_replicas(database_url: str) -> None:
    interval = 0.05

    async def scenario() -> tuple[list[float], float, float]:
        stores = await opened(database_url, 3)

        async def reserve(store: Store) -> list[float]:
            # In the database's clock: the slot as this replica's clock reads it, plus the
            # offset it was converted with (each replica estimates its own offset).
            slots = []
            for _ in range(25):
                local = await store.pacing.reserve_send_slot(interval)
                slots.append(local + store.engine._clock.offset)  # type: ignore[attr-defined]
            return slots

        slots = sorted(s for batch in await asyncio.gather(*map(reserve, stores)) for s in batch)
        # A 429 seen by one replica holds the others' next slots too.
        paused_at = time.time()
        await stores[0].pacing.pause_sending(paused_at + 1.0)
        after_pause = await stores[2].pacing.reserve_send_slot(interval)
        await close_all(stores)
        return slots, paused_at, after_pause

    slots, paused_at, after_pause = run(scenario)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 75
    assert min(gaps) >= interval - 1e-6, min(gaps)  # spaced whoever reserved them
    assert slots[-1] - slots[0] >= 74 * interval - 0.01
    assert after_pause >= paused_at + 0.99


# -- shared webhook and idempotency state ----------------------------------------------------------
def test_idempotency_and_event_keys_hold_across_replicas(database_url: str) -> None:
    async def scenario() -> None:
        stores = await opened(database_url, 4)
        idem = Idempotency(caller="svc", key="k-1", fingerprint="f1", ttl_seconds=60)
        update = [NewUpdate("acme", {"plan": "pro"})]
        results = await asyncio.gather(
            *(
                s.deliveries.enqueue(update, source="api", caller="svc", idempotency=idem)
                for s in stores
            )
        )
        assert sum(not r.replayed for r in results) == 1
        assert len({tuple(r.ids) for r in results}) == 1

        event = [NewUpdate("acme", {"seats": 3}, event_key="evt_1")]
        events = await asyncio.gather(
            *(s.deliveries.enqueue(event, source="stripe", caller=None) for s in stores)
        )
        assert sorted(r.stored for r in events) == [0, 0, 0, 1]

        # Out-of-order events on two replicas: the older one never overwrites the newer.
        newer = NewUpdate(
            "acme", {"plan": "ent"}, property_times={"plan": 20.0}, skip_if_empty=True
        )
        older = NewUpdate(
            "acme", {"plan": "free"}, property_times={"plan": 10.0}, skip_if_empty=True
        )
        await stores[0].deliveries.enqueue([newer], source="hubspot", caller=None)
        late = await stores[1].deliveries.enqueue([older], source="hubspot", caller=None)
        assert late.ids == [None]

        await stores[2].webhooks.link_customers([("cus_1", "acme")])
        assert await stores[3].webhooks.company_for_customer("cus_1") == "acme"
        queued = await stores[3].deliveries.stats()
        assert queued.queued == 3  # the keyed update, the event, the newer property
        await close_all(stores)

    run(scenario)


# -- several relays, connection loss (real processes over HTTP) ------------------------------
@pytest.fixture
def proxy() -> Iterator[pg.CuttableProxy]:
    p = pg.CuttableProxy()
    yield p
    p.close()


def test_losing_postgres_answers_503_then_resumes_with_nothing_lost(
    relay_factory: Any, sim: SimulatorProcess, database: str, proxy: pg.CuttableProxy
) -> None:
    relay: RelayProcess = relay_factory(
        RELAY_DATABASE_URL=pg.database_url(database, port=proxy.port),
        RELAY_LEASE_SECONDS="3",
        RELAY_UPSTREAM_TIMEOUT_SECONDS="1",
        RELAY_RATE_LIMIT_PER_MINUTE="1200",
    )
    sim.configure(latency=0.1)
    acknowledged: dict[str, tuple[str, int]] = {}
    answers: list[tuple[float, float, int]] = []  # (request sent, answer received, status)
    stop = threading.Event()

    def ingest() -> None:
        n = 0
        with httpx.Client(base_url=relay.url, timeout=15) as client:
            while not stop.is_set():
                company = f"c{n % 10}"
                started = time.monotonic()
                r = client.post(
                    "/companies",
                    json={"company_id": company, "metadata": {f"k{n}": n}},
                    headers={"Authorization": f"Bearer {INGEST_KEY}"},
                )
                answers.append((started, time.monotonic(), r.status_code))
                if r.status_code == 202:
                    acknowledged[r.json()["id"]] = (company, n)
                n += 1
                time.sleep(0.01)

    def count(status: int, since: float) -> int:
        return sum(1 for t, _, s in answers if s == status and t > since)

    worker = threading.Thread(target=ingest)
    worker.start()
    try:
        wait_until(lambda: len(acknowledged) >= 50)
        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: count(503, cut_at) >= 3, timeout=30)
        ready = httpx.get(f"{relay.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["store"] == "unreachable"
        assert httpx.get(f"{relay.url}/healthz", timeout=10).status_code == 200
        restored_at = time.monotonic()
        proxy.restore()
        wait_until(lambda: httpx.get(f"{relay.url}/readyz", timeout=10).status_code == 200)
        wait_until(lambda: count(202, restored_at) >= 20, timeout=30)
    finally:
        stop.set()
        worker.join(30)
    # While the database was out, every request was refused: a 503, never a 202.
    assert {s for sent, done, s in answers if cut_at < sent and done < restored_at} == {503}
    assert {s for _, _, s in answers} == {202, 503}
    # Nothing acknowledged is lost: everything reaches Userpilot once the database is back.
    for delivery_id in acknowledged:
        relay.wait_for(delivery_id, "delivered", timeout=60)
    companies = sim.companies()
    for company, n in acknowledged.values():
        assert companies[company][f"k{n}"] == n


def test_connections_severed_while_idle_cost_no_request(
    database_url: str, sim: SimulatorProcess, database: str
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            assert (await relay.post_company("acme", {"plan": "pro"})).status_code == 202
            assert pg.terminate_connections(database) >= 1
            # The pool's connections are all dead; the request is retried on a fresh one.
            r = await relay.post_company("acme", {"seats": 5}, headers={"Prefer": "wait=10"})
            assert r.status_code == 200, r.text
            assert (await relay.get("/readyz", key=None)).status_code == 200

    run_async(main())
    assert sim.company("acme") == {"plan": "pro", "seats": 5}


def test_prefer_wait_and_idempotency_across_replicas(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Two replicas on one database, side by side in this process (each its own app, store,
    dispatcher and pool): what one stores, the other answers for."""

    async def main() -> None:
        # `waiter` never delivers (its merge window outlasts the test): `deliverer` does.
        async with (
            InProcessRelay(database_url, endpoint=sim.url) as deliverer,
            InProcessRelay(database_url, endpoint=sim.url, relay_merge_window_seconds=60) as waiter,
        ):
            r = await waiter.post_company("acme", {"plan": "pro"}, headers={"Prefer": "wait=15"})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "delivered"
            assert sim.company("acme") == {"plan": "pro"}

            key = {"Idempotency-Key": "order-42"}
            first = await deliverer.post_company("acme", {"seats": 5}, headers=key)
            second = await waiter.post_company("acme", {"seats": 5}, headers=key)
            assert first.status_code == second.status_code == 202
            assert first.json()["id"] == second.json()["id"]
            other = await waiter.post_company("acme", {"seats": 6}, headers=key)
            assert other.status_code == 422
            await deliverer.wait_for(first.json()["id"], "delivered")
            listed = (await waiter.get("/deliveries", key=ADMIN_KEY)).json()["items"]
            assert len(listed) == 2

    run_async(main())
    assert sim.company("acme") == {"plan": "pro", "seats": 5}
