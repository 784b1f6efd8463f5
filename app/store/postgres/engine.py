"""The shared engine: PostgreSQL, for several relay replicas behind one queue.

Every request is one short transaction on a pooled connection, so PostgreSQL's own group
commit does what the SQLite writer thread does by hand. What the replicas must agree on
lives in the database:

- claims: the company that has waited longest and is free is picked under a transaction-level
  advisory lock on the company (`pg_try_advisory_xact_lock`), so two replicas never lease the
  same company; its rows are then locked (`FOR UPDATE`) and leased. A lease that expires (the
  replica died) puts the rows back in line (`FOR UPDATE SKIP LOCKED`, so replicas never queue
  behind each other for it).
- pacing: one row holds the next free send slot and the 429 pause; each reservation moves it
  on by one interval, so the slots are spaced across every replica together.
- idempotency keys are taken under an advisory lock on (caller, key); webhook event keys and
  source property times are upserts, atomic under concurrency.
- bulk requests: one row each, holding one block of sequence numbers (the identity counts in
  steps of 65,536), so the batch keeps its place in the arrival order; the dispatcher expands
  it into deliveries a chunk at a time, under the batch row's lock.

A plain single update, the common case, is one INSERT committed on its own: one round trip,
and safe to retry because the delivery id is generated here (`ON CONFLICT (id) DO NOTHING`).

Times are unix seconds from the database clock (`now()` / `clock_timestamp()`), so replicas
whose clocks disagree still agree on leases, backoffs and slots. A lost connection raises
`StoreUnavailable` (the routes answer 503); work that never reached COMMIT is retried once on
a fresh connection first, so a pool of connections severed while idle costs no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.domain.errors import StoreUnavailable
from app.lifecycle import cancel_and_wait
from app.store.engine import Engine, PlanFactory, health
from app.store.migrations import migrations
from app.store.postgres.connection import (
    UNAVAILABLE,
    UNAVAILABLE_OR_SLOW,
    ClockOffset,
    conninfo_from_url,
    describe,
    first_line,
)
from app.store.postgres.listen import NOTIFY, WorkChannel
from app.store.sql import Dialect, Result, Statement, drive_async

log = logging.getLogger("userpilot_relay.store")

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]

# Advisory lock keys: one bigint for migrations; (namespace, hash) pairs for the rest.
MIGRATION_LOCK = 0x55505F52454C4159  # "UP_RELAY"
COMPANY_LOCKS = 0x52454C41  # "RELA"
IDEMPOTENCY_LOCKS = 0x49444D50  # "IDMP"
JOB_LOCKS = 0x4A4F4253  # "JOBS": (JOB_LOCKS, 0) who drives a job, (JOB_LOCKS, 1) packing
SEQ_BLOCK = 65536  # the identity's increment (migration 1): the room one batch has

POSTGRES = Dialect(
    name="postgres",
    # The database clock, in unix seconds: replicas with skewed clocks agree.
    now="extract(epoch FROM now())::float8",
    tokens={
        "lock_idempotency": (
            f"SELECT pg_advisory_xact_lock({IDEMPOTENCY_LOCKS}, hashtext(:lock_key))"
        ),
        "lock_company": f"pg_try_advisory_xact_lock({COMPANY_LOCKS}, hashtext(company_id))",
        "lock_claims": f"SELECT pg_advisory_xact_lock_shared({JOB_LOCKS}, 1)",
        "lock_jobs": f"SELECT pg_advisory_xact_lock({JOB_LOCKS}, 0)",
        "lock_pack": f"SELECT pg_advisory_xact_lock({JOB_LOCKS}, 1)",
        "analyze_deliveries": "ANALYZE deliveries",
        # Keeps a correlated subquery a subquery (PostgreSQL does not turn one with an OFFSET
        # into a join): see claims._BUSY.
        "fence": "OFFSET 0",
        "overriding": "OVERRIDING SYSTEM VALUE",
        "stamp_pairs": "(SELECT split_part(p, chr(31), 1) AS company_id, "
        "split_part(p, chr(31), 2) AS key FROM unnest(CAST(:pairs AS text[])) AS p) AS pairs",
        "reserve_seqs": "SELECT nextval(pg_get_serial_sequence('deliveries', 'seq'))",
    },
    max_batch=SEQ_BLOCK,
)
# The clock is read once the pacing row is locked (SET and RETURNING run after any wait).
_CLOCK = "extract(epoch FROM clock_timestamp())::float8"
_RESERVE_SLOT = f"""
    UPDATE pacing SET next_slot = GREATEST(next_slot, paused_until, {_CLOCK}) + %(interval)s
    WHERE id = 1
    RETURNING next_slot - %(interval)s, {_CLOCK}
"""

# Back to the slot given out, if no replica reserved one after it (within the clock's rounding).
_RELEASE_SLOT = """
    UPDATE pacing SET next_slot = %(slot)s
    WHERE id = 1 AND abs(next_slot - (%(slot)s + %(interval)s)) < 0.001
"""


def _executor(conn: Conn) -> Callable[[Statement], Awaitable[Result]]:
    async def execute(statement: Statement) -> Result:
        sql = POSTGRES.render(statement.sql)
        if statement.many:
            assert isinstance(statement.params, Sequence)
            async with conn.cursor() as cur:
                await cur.executemany(sql, statement.params)
                return Result([], cur.rowcount)
        assert isinstance(statement.params, Mapping)
        cur = await conn.execute(sql, statement.params)
        rows = await cur.fetchall() if cur.description is not None else []
        return Result(rows, cur.rowcount)

    return execute


async def migrate(conn: Conn) -> list[int]:
    """Apply pending migrations in one transaction under an advisory lock; answer them.

    Replicas starting together queue on the lock: the first applies, the others find
    nothing left to do. DDL is transactional, so a failed migration leaves no trace.
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(r[0]) for r in await cur.fetchall()}
        for migration in migrations("postgres"):
            if migration.version in done:
                continue
            await conn.execute(migration.script.encode())
            await conn.execute(
                f"INSERT INTO schema_migrations (version, applied_at) VALUES (%s, {POSTGRES.now})",
                (migration.version,),
            )
            applied.append(migration.version)
    return applied


class PostgresEngine(Engine):
    """The store's engine on PostgreSQL through a pool of async connections (psycopg 3)."""

    dialect = POSTGRES

    def __init__(
        self,
        database_url: str,
        *,
        min_connections: int = 2,
        max_connections: int = 20,
        acquire_timeout: float = 5.0,
        operation_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.conninfo = conninfo_from_url(database_url)
        self.where = describe(self.conninfo)
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.acquire_timeout = acquire_timeout
        self.operation_timeout = operation_timeout
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._healthy = True
        self._checking: asyncio.Task[None] | None = None
        self._clock = ClockOffset()
        self._channel = WorkChannel(
            self.conninfo, on_work=lambda: self.on_remote_work(), send=self._notify_replicas
        )

    # lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.where}: {first_line(exc)}"
            ) from None
        try:
            self.applied_migrations = await migrate(conn)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"migrating PostgreSQL at {self.where} failed: {first_line(exc)}"
            ) from None
        finally:
            await conn.close()
        if self.applied_migrations:
            log.info(
                "applied schema migrations",
                extra={"store": "postgresql", "versions": self.applied_migrations},
            )
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.conninfo,
            kwargs={"autocommit": True},
            min_size=self.min_connections,
            max_size=self.max_connections,
            open=False,
            name="relay-store",
            timeout=self.acquire_timeout,
            # Give up a reconnection attempt early: the next request starts a fresh one, so
            # the pool is back within a second or two of the database, however long it was out.
            reconnect_timeout=10.0,
            reconnect_failed=_reconnect_failed,
        )
        try:
            await pool.open(wait=True, timeout=self.acquire_timeout * 2)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot open connections to PostgreSQL at {self.where}: {first_line(exc)}"
            ) from None
        self._pool = pool
        self._channel.start()

    async def close(self) -> None:
        await self._channel.stop()
        if self._checking is not None:
            await cancel_and_wait([self._checking])
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        wait = 2.0 if self._healthy else 0.5  # answer the probe fast while the database is out
        try:
            async with asyncio.timeout(wait + 1.0):
                async with self._pool.connection(timeout=wait) as conn:
                    # A write, not just a read: readiness fails while writes fail.
                    await drive_async(health(), _executor(conn))
        except UNAVAILABLE_OR_SLOW:
            self._healthy = False
            self._start_pool_check()  # in the background: the probe answers now
            return False
        except psycopg.Error:  # answers, but cannot write (disk full, permissions...)
            return False
        self._healthy = True
        return True

    # plumbing ------------------------------------------------------------------------------
    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run `fn` on a pooled connection, in one transaction unless told otherwise.

        A connection error before COMMIT rolled everything back: retry once on a fresh
        connection. After that, or during COMMIT (the outcome is unknown), or when no
        connection comes, raise `StoreUnavailable`: the caller answers 503 and retries.
        Without a transaction `fn` must be safe to run twice: reads, or one statement whose
        repetition changes nothing (or, for a send slot, only wastes one).
        """
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the store is closed")
        failure: BaseException | None = None
        for attempt in range(2):
            committing = False
            # While the database is known to be out, fail fast instead of queueing for it.
            wait = self.acquire_timeout if self._healthy else min(1.0, self.acquire_timeout)
            try:
                async with asyncio.timeout(self.operation_timeout):
                    async with pool.connection(timeout=wait) as conn:
                        if not transaction:
                            result = await fn(conn)
                        else:
                            async with conn.transaction():
                                result = await fn(conn)
                                committing = True
            except PoolTimeout as exc:  # no connection came: another try would not either
                failure = exc
                self._healthy = False
                break
            except UNAVAILABLE as exc:
                failure = exc
                self._healthy = False
                if committing or attempt:
                    break
                await self._recheck_pool()
                continue
            except TimeoutError as exc:
                failure = exc
                self._healthy = False
                break
            self._healthy = True
            return result
        detail = first_line(failure) if failure else "unknown error"
        raise StoreUnavailable(f"PostgreSQL at {self.where} is unavailable: {detail}")

    def _start_pool_check(self) -> asyncio.Task[None] | None:
        """Test the idle connections, once for every caller that hit a broken one."""
        if self._pool is None:
            return None
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._pool.check(), name="relay-store-check")
        return self._checking

    async def _recheck_pool(self) -> None:
        checking = self._start_pool_check()
        if checking is None:
            return
        with contextlib.suppress(*UNAVAILABLE_OR_SLOW):
            async with asyncio.timeout(self.acquire_timeout):
                await asyncio.shield(checking)

    def announce_work(self) -> None:
        self._channel.announce()

    async def _notify_replicas(self) -> None:
        async def notify(conn: Conn) -> None:
            await conn.execute(NOTIFY)

        await self._run(notify, transaction=False)

    async def write(
        self,
        plan: PlanFactory[T],
        *,
        atomic: bool = True,
        durable: bool = True,
        ingest: bool = False,  # every write has a connection of its own: nothing to order
    ) -> T:
        async def run(conn: Conn) -> T:
            if not durable:  # this transaction's commit does not wait for the WAL flush
                await conn.execute("SET LOCAL synchronous_commit TO OFF")
            return await drive_async(plan(), _executor(conn))

        return await self._run(run, transaction=atomic or not durable)

    async def read(self, plan: PlanFactory[T], *, snapshot: bool = False) -> T:
        return await self._run(
            lambda conn: drive_async(plan(), _executor(conn)), transaction=snapshot
        )

    # pacing: one row that every replica moves on ----------------------------------------------
    async def reserve_send_slot(self, interval: float) -> float:
        async def write(conn: Conn) -> float:
            sent = time.time()
            cur = await conn.execute(_RESERVE_SLOT, {"interval": interval})
            row = await cur.fetchone()
            assert row is not None, "the pacing row is missing: run userpilot-relay migrate"
            self._clock.sample(sent=sent, received=time.time(), remote=float(row[1]))
            return self._clock.local(float(row[0]))

        # One statement in autocommit is its own transaction; a retry only wastes a slot.
        return await self._run(write, transaction=False)

    async def release_send_slot(self, slot: float, interval: float) -> None:
        remote = self._clock.remote(slot)

        async def write(conn: Conn) -> None:
            await conn.execute(_RELEASE_SLOT, {"slot": remote, "interval": interval})

        await self._run(write, transaction=False)

    async def pause_sending(self, until: float, *, reason: str | None = None) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "UPDATE pacing SET paused_until = %(until)s, pause_reason = %(reason)s "
                "WHERE id = 1 AND paused_until < %(until)s",
                {"until": self._clock.remote(until), "reason": reason},
            )

        await self._run(write, transaction=False)

    async def send_pause(self) -> tuple[float, str | None]:
        async def read(conn: Conn) -> tuple[float, str | None]:
            cur = await conn.execute("SELECT paused_until, pause_reason FROM pacing WHERE id = 1")
            row = await cur.fetchone()
            if row is None:
                return 0.0, None
            return self._clock.local(float(row[0])), row[1]

        return await self._run(read, transaction=False)


async def _reconnect_failed(pool: AsyncConnectionPool[Conn]) -> None:
    log.warning("PostgreSQL still unreachable; the next request tries again")
