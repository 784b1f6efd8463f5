"""The engine seam: the few things that differ per backend, under every store feature.

An engine opens (connects and migrates), closes, answers a readiness ping, runs plans
(`app/store/sql.py`) as writes or reads, paces sends across whatever shares the store, and
tells other replicas about new work. `sqlite/` and `postgres/` implement it; the features
(`deliveries.py`, `claims.py`, `jobs.py`...) are written once over it.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from typing import TypeVar

from app.store.sql import Dialect, Plan, Statement

T = TypeVar("T")
PlanFactory = Callable[[], Plan[T]]

HEALTH_WRITE = """
    INSERT INTO store_health (id, checked_at) VALUES (1, {now})
    ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at
"""


def probe() -> Plan[None]:
    """A read that reaches the database."""
    yield Statement("SELECT 1")


def health() -> Plan[None]:
    """A write that commits: readiness fails while writes fail."""
    yield Statement(HEALTH_WRITE)


class Pacing(abc.ABC):
    """Upstream send slots shared by everything on the store, and the 429 pause."""

    @abc.abstractmethod
    async def reserve_send_slot(self, interval: float) -> float:
        """Reserve the next upstream send slot; answer the unix time it starts at.

        Slots are `interval` seconds apart across everything that shares this store, and none
        starts before a pause set by `pause_sending`.
        """

    async def release_send_slot(self, slot: float, interval: float) -> None:
        """Give back a slot reserved and not used (nothing was ready to send), when no later
        one was reserved since: an idle relay keeps its next slot free, so an update stored
        then goes at once. By default the slot is only lost."""
        return None

    @abc.abstractmethod
    async def pause_sending(self, until: float, *, reason: str | None = None) -> None:
        """Hold every send slot until `until` (unix time): Userpilot said 429 (`reason`)."""

    @abc.abstractmethod
    async def send_pause(self) -> tuple[float, str | None]:
        """Until when sends are held (unix time; past or 0: not paused), and why."""

    async def paused_until(self) -> float | None:
        """The unix time a pause set by `pause_sending` ends, while one is in force (on
        SQLite: this process's; on PostgreSQL: every replica's)."""
        until, _ = await self.send_pause()
        return until if until > time.time() else None


class Engine(Pacing):
    """One backend: how plans run, plus what truly differs (opening, health, pacing, wake-ups)."""

    dialect: Dialect
    leases_durable = True  # a database restarting under its relay must not forget a call

    def __init__(self) -> None:
        self.applied_migrations: list[int] = []  # by the last `open()`
        self.on_remote_work: Callable[[], None] = _nothing  # another replica committed work

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations (safe when several replicas start at once)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release connections."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers a read and commits a write now (readiness)."""

    @abc.abstractmethod
    async def write(
        self,
        plan: PlanFactory[T],
        *,
        atomic: bool = True,
        durable: bool = True,
        ingest: bool = False,
    ) -> T:
        """Run the plan in one committed transaction (the factory may run again if the backend
        retries). Without `atomic`, it is one statement safe to repeat, maybe run without a
        transaction. Without `durable`, the commit may answer before it is on disk (a lease,
        lost in a power cut, only leaves its updates queued). An `ingest` write has a caller
        waiting on it: a backend with one writer serves it before background work."""

    @abc.abstractmethod
    async def read(self, plan: PlanFactory[T], *, snapshot: bool = False) -> T:
        """Run a plan that only reads; with `snapshot`, in one transaction where the backend
        has them for reads (PostgreSQL: counts taken apart may still differ a little)."""

    async def after_purge(self) -> None:
        """Company data was deleted: leave no readable copy of it behind where the backend can
        (SQLite: checkpoint and truncate the WAL; PostgreSQL: VACUUM's job, docs/security.md)."""
        return None

    def announce_work(self) -> None:
        """Work was committed: tell the other replicas (nothing to tell with one process)."""
        return None


def _nothing() -> None:
    return None
