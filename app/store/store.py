"""`Store`: one engine plus the store's feature parts, and `open_store`, which picks the engine.

`open_store` is the one place that knows both backends; nothing else knows which one runs.
"""

from __future__ import annotations

from app.store.backfills import BackfillStore
from app.store.catalogue import PropertyCatalogue
from app.store.claims import Claims
from app.store.console import ConsoleReads
from app.store.deliveries import Deliveries
from app.store.engine import Engine, Pacing
from app.store.erasures import Erasures
from app.store.jobs import Jobs
from app.store.signals import Signals
from app.store.webhooks import Webhooks


class Store:
    """Durable queue of company updates plus the small shared state around it.

    Each feature is a part over the same engine: `deliveries` (ingest, reads, dead letters,
    retention), `claims` (real-time leases and outcomes), `jobs` (bulk jobs), `webhooks`
    (customer links, parked events), `backfills`, `catalogue` (the properties sent),
    `erasures` (forgetting companies, suppressions) and `console` (the operator console's
    reads); `pacing` is the engine's send slots.

    `signals` is set after commits: new work for the dispatcher (also when another replica
    commits some), settled deliveries for requests that wait on them.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.signals = Signals()
        engine.on_remote_work = self.signals.work_arrived
        self.pacing: Pacing = engine
        self.deliveries = Deliveries(engine, self.signals)
        self.claims = Claims(engine, self.signals)
        self.jobs = Jobs(engine, self.signals)
        self.webhooks = Webhooks(engine, self.signals)
        self.backfills = BackfillStore(engine, self.signals)
        self.catalogue = PropertyCatalogue(engine, self.signals)
        self.console = ConsoleReads(engine, self.signals)
        self.erasures = Erasures(engine, self.signals)

    @property
    def applied_migrations(self) -> list[int]:
        """The migrations the last `open()` applied."""
        return self.engine.applied_migrations

    async def open(self) -> None:
        """Connect and apply pending migrations (safe when several replicas start at once)."""
        await self.engine.open()

    async def close(self) -> None:
        """Finish pending writes and release connections."""
        await self.engine.close()

    async def ping(self) -> bool:
        """True when the store answers a read and commits a write now (readiness)."""
        return await self.engine.ping()


def open_store(database_url: str) -> Store:
    """The store for a database URL, on its engine (not yet opened)."""
    if database_url.startswith("sqlite:///"):
        from app.store.sqlite.engine import SQLiteEngine

        return Store(SQLiteEngine(database_url.removeprefix("sqlite:///")))
    from app.store.postgres.engine import PostgresEngine

    return Store(PostgresEngine(database_url))
