"""The shared store: PostgreSQL, for several relay replicas behind one queue.

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
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.domain.errors import IdempotencyConflict, NotDead, StoreUnavailable
from app.domain.models import (
    STATUSES,
    Batch,
    Claim,
    ClaimedUpdate,
    Delivery,
    EnqueueResult,
    Idempotency,
    NewUpdate,
    QueueStats,
    Status,
)
from app.domain.rules import REFUSED, parse_ascii_int
from app.lifecycle import cancel_and_wait
from app.store.base import Store, listing_query
from app.store.migrations import POSTGRES_MIGRATIONS
from app.store.sqlite import (
    DELIVERY_COLUMNS,
    batch_ids,
    expansion_item,
    new_ids,
    row_to_delivery,
)

log = logging.getLogger("userpilot_relay.store")

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]

# The database clock, in unix seconds: the transaction's start, or the very moment.
NOW = "extract(epoch FROM now())::float8"
CLOCK = "extract(epoch FROM clock_timestamp())::float8"

# Advisory lock keys: one bigint for migrations; (namespace, hash) pairs for the rest.
MIGRATION_LOCK = 0x55505F52454C4159  # "UP_RELAY"
COMPANY_LOCKS = 0x52454C41  # "RELA"
IDEMPOTENCY_LOCKS = 0x49444D50  # "IDMP"

_SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")
# Connection errors, and states where PostgreSQL cannot take writes (failover in progress).
_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
)
_UNAVAILABLE_OR_SLOW: tuple[type[Exception], ...] = (TimeoutError, *_UNAVAILABLE)
_CANDIDATES = 64
_CLAIM_TRIES = 3
_EXPANSIONS_PER_CLAIM = 4
_EXPAND_CHUNK = 2000
SEQ_BLOCK = 65536  # the identity's increment (see POSTGRES_MIGRATIONS): a batch's room
_PRUNE_BATCH = 5000

_BLOCKED = f"""
    SELECT 1 FROM deliveries b WHERE b.company_id = {{company}} AND (
        b.status = 'delivering'
        OR (b.status = 'queued' AND b.attempts > 0 AND b.next_attempt_at > {NOW}))
"""
_EXPIRE_LEASES = f"""
    UPDATE deliveries SET status = 'queued', lease_owner = NULL, lease_until = NULL
    WHERE seq IN (
        SELECT seq FROM deliveries WHERE status = 'delivering' AND lease_until < {NOW}
        FOR UPDATE SKIP LOCKED)
"""
# The oldest ready update's company that is free, locked for this transaction. The candidate
# list is materialised in order so the lock is tried company by company, oldest first. Cheap
# first (a partial index): is anything ready at all? During an outage nothing is, and the
# search would walk the whole backlog.
_PICK = f"""
    WITH any_ready AS MATERIALIZED (
        SELECT 1 FROM deliveries WHERE status = 'queued' AND next_attempt_at <= {NOW} LIMIT 1
    ),
    ready AS MATERIALIZED (
        SELECT r.company_id, min(r.seq) AS first_seq FROM (
            SELECT d.company_id, d.seq FROM deliveries d
            WHERE EXISTS (SELECT 1 FROM any_ready) {{lane}}
              AND d.status = 'queued' AND d.next_attempt_at <= {NOW}
              AND d.enqueued_at <= {NOW} - %(settle)s
              AND d.company_id <> ALL(%(skip)s::text[])
              AND NOT EXISTS ({_BLOCKED.format(company="d.company_id")})
            ORDER BY d.seq LIMIT %(scan)s
        ) r
        GROUP BY r.company_id ORDER BY first_seq
    )
    SELECT company_id, first_seq FROM ready
    WHERE pg_try_advisory_xact_lock(%(ns)s::int, hashtext(company_id))
    LIMIT 1
"""
_PICK_COMPANY = _PICK.format(lane="")
# Fairness: the oldest ready single update (not from a batch), on its own partial index.
_PICK_SINGLE = _PICK.format(lane="AND d.batch_id IS NULL")
_MAX_EXPANSIONS = 16
_PRUNE_VERSIONS = """
    DELETE FROM property_versions WHERE ctid IN (
      SELECT v.ctid FROM property_versions v WHERE v.updated_at < %(before)s
        AND v.seq <= COALESCE(
          (SELECT min(seq_from + expanded) FROM batches WHERE expanded < total),
          9223372036854775807)
        AND NOT EXISTS (
          SELECT 1 FROM deliveries d WHERE d.company_id = v.company_id
            AND d.status IN ('queued', 'delivering', 'dead') AND d.seq < v.seq)
      LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
"""
# Under the company lock, with a fresh snapshot: still free and ready? Then lease its updates.
_LEASE = f"""
    WITH picked AS (
        SELECT seq FROM deliveries
        WHERE company_id = %(company)s AND status = 'queued'
          AND NOT EXISTS ({_BLOCKED.format(company="%(company)s")})
          AND EXISTS (
            SELECT 1 FROM deliveries r WHERE r.company_id = %(company)s
              AND r.status = 'queued' AND r.next_attempt_at <= {NOW}
              AND r.enqueued_at <= {NOW} - %(settle)s)
        ORDER BY seq LIMIT %(max_merge)s
        FOR UPDATE
    )
    UPDATE deliveries d SET status = 'delivering', attempts = d.attempts + 1,
        lease_owner = %(owner)s, lease_until = {NOW} + %(lease)s, updated_at = {NOW}
    FROM picked WHERE d.seq = picked.seq
    RETURNING d.id, d.seq, d.metadata, d.attempts
"""
# The clock is read once the row is locked (SET and RETURNING run after any wait for it).
_RESERVE_SLOT = f"""
    UPDATE pacing SET next_slot = GREATEST(next_slot, paused_until, {CLOCK}) + %(interval)s
    WHERE id = 1
    RETURNING next_slot - %(interval)s, {CLOCK}
"""
_INSERT_ONE = f"""
    INSERT INTO deliveries (id, company_id, metadata, status, source, caller,
        created_at, updated_at, next_attempt_at, enqueued_at)
    VALUES (%s, %s, %s, 'queued', %s, %s, {NOW}, {NOW}, {NOW}, {NOW})
    ON CONFLICT (id) DO NOTHING
"""
_INSERT_DELIVERIES = f"""
    INSERT INTO deliveries (id, company_id, metadata, status, source, caller,
        created_at, updated_at, next_attempt_at, enqueued_at)
    SELECT u.id, u.company_id, u.metadata, 'queued', %(source)s, %(caller)s,
        n.t, n.t, n.t, n.t
    FROM unnest(%(ids)s::text[], %(companies)s::text[], %(bodies)s::bytea[])
        WITH ORDINALITY AS u(id, company_id, metadata, i),
        (SELECT {NOW} AS t) n
    ORDER BY u.i
"""


class ClockOffset:
    """How far the database clock is ahead of this host's, estimated NTP-style.

    Each slot reservation is a sample: the database's clock against the midpoint of the
    round trip. The sample with the shortest round trip among the recent ones is the most
    accurate (a busy event loop only ever lengthens a round trip), so its offset is used.
    Replicas with skewed clocks still space their sends by the database's slots.
    """

    def __init__(self, keep: int = 32) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=keep)
        self.offset = 0.0

    def sample(self, *, sent: float, received: float, remote: float) -> None:
        self._samples.append((received - sent, remote - (sent + received) / 2))
        self.offset = min(self._samples)[1]

    def local(self, remote: float) -> float:
        return remote - self.offset

    def remote(self, local: float) -> float:
        return local + self.offset


def conninfo_from_url(database_url: str) -> str:
    """libpq connection string for a relay database URL, with the relay's defaults added."""
    url = database_url.strip()
    if not url.startswith(_SCHEMES):
        raise ValueError("a PostgreSQL URL starts with postgresql:// (or postgres://)")
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    params: dict[str, Any] = conninfo_to_dict(url)
    params.setdefault("connect_timeout", "5")
    params.setdefault("application_name", "userpilot-relay")
    # Notice a dead server or network within seconds, not at the kernel's default two hours.
    params.setdefault("keepalives", "1")
    params.setdefault("keepalives_idle", "10")
    params.setdefault("keepalives_interval", "5")
    params.setdefault("keepalives_count", "3")
    return make_conninfo(**params)


def describe(conninfo: str) -> str:
    """Where the database is, for messages: host, port and name, never the password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


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
        for version, script in POSTGRES_MIGRATIONS:
            if version in done:
                continue
            await conn.execute(script.encode())
            await conn.execute(
                f"INSERT INTO schema_migrations (version, applied_at) VALUES (%s, {NOW})",
                (version,),
            )
            applied.append(version)
    return applied


class PostgresStore(Store):
    """`Store` on PostgreSQL through a pool of async connections (psycopg 3)."""

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
        self.applied_migrations: list[int] = []
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._healthy = True
        self._checking: asyncio.Task[None] | None = None
        self._clock = ClockOffset()

    # lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.where}: {_first_line(exc)}"
            ) from None
        try:
            self.applied_migrations = await migrate(conn)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"migrating PostgreSQL at {self.where} failed: {_first_line(exc)}"
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
                f"cannot open connections to PostgreSQL at {self.where}: {_first_line(exc)}"
            ) from None
        self._pool = pool

    async def close(self) -> None:
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
                    await conn.execute(
                        f"INSERT INTO store_health (id, checked_at) VALUES (1, {NOW}) "
                        "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
                    )
        except _UNAVAILABLE_OR_SLOW:
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
            except _UNAVAILABLE as exc:
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
        detail = _first_line(failure) if failure else "unknown error"
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
        with contextlib.suppress(*_UNAVAILABLE_OR_SLOW):
            async with asyncio.timeout(self.acquire_timeout):
                await asyncio.shield(checking)

    # ingest --------------------------------------------------------------------------------
    async def enqueue(
        self,
        updates: Sequence[NewUpdate],
        *,
        source: str,
        caller: str | None,
        batch: bool = False,
        idempotency: Idempotency | None = None,
    ) -> EnqueueResult:
        if batch:
            if any(u.event_key or u.property_times for u in updates):
                raise ValueError("a batch carries plain updates only")
            if len(updates) > SEQ_BLOCK:
                raise ValueError(f"a batch holds at most {SEQ_BLOCK} updates")
            batch_id = new_ids(1)[0]
            payload = orjson.dumps([[u.company_id, u.metadata] for u in updates])
            count = len(updates)

            async def store_batch(conn: Conn) -> EnqueueResult:
                return await _enqueue_batch(
                    conn, payload, count, batch_id, source, caller, idempotency
                )

            return await self._run(store_batch)
        ids = new_ids(len(updates))
        encoded = [orjson.dumps(u.metadata) for u in updates]
        if len(updates) == 1 and idempotency is None and _plain(updates[0]):
            # The common case in one statement, committed on its own: one round trip. The id
            # is ours, so a retry after a lost answer cannot store it twice.
            row = (ids[0], updates[0].company_id, encoded[0], source, caller)

            async def insert_one(conn: Conn) -> EnqueueResult:
                await conn.execute(_INSERT_ONE, row)
                return EnqueueResult(ids=[ids[0]])

            return await self._run(insert_one, transaction=False)

        async def work(conn: Conn) -> EnqueueResult:
            return await _enqueue(conn, updates, encoded, ids, source, caller, idempotency)

        return await self._run(work)

    # reads ---------------------------------------------------------------------------------
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        async def read(conn: Conn) -> TupleRow | None:
            cur = await conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = %s", (delivery_id,)
            )
            return await cur.fetchone()

        row = await self._run(read, transaction=False)
        if row is not None:
            return row_to_delivery(row)
        return await self._staged_delivery(delivery_id)

    async def _staged_delivery(self, delivery_id: str) -> Delivery | None:
        """A batch's update not expanded yet (`{batch_id}.{i}`), as the queued delivery it is."""
        batch_id, dot, index_text = delivery_id.rpartition(".")
        index = parse_ascii_int(index_text, maximum=2**31 - 1) if dot else None
        if index is None:
            return None

        async def read(conn: Conn) -> TupleRow | None:
            cur = await conn.execute(
                "SELECT caller, created_at, seq_from, source, payload FROM batches "
                "WHERE id = %s AND expanded <= %s AND %s < total AND payload IS NOT NULL",
                (batch_id, index, index),
            )
            return await cur.fetchone()

        row = await self._run(read, transaction=False)
        if row is None:
            return None
        caller, created_at, seq_from, source, payload = row
        company_id, metadata = orjson.loads(payload)[index]
        return Delivery(
            id=delivery_id,
            seq=seq_from + index,
            company_id=company_id,
            metadata=metadata,
            status="queued",
            attempts=0,
            source=source,
            caller=caller,
            batch_id=batch_id,
            created_at=created_at,
            updated_at=created_at,
            next_attempt_at=created_at,
            delivered_at=None,
            last_status=None,
            last_error=None,
            last_request_id=None,
        )

    async def get_deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        ids = list(delivery_ids)
        if not ids:
            return []

        async def read(conn: Conn) -> list[TupleRow]:
            cur = await conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ANY(%s)", (ids,)
            )
            return await cur.fetchall()

        return [row_to_delivery(r) for r in await self._run(read, transaction=False)]

    async def get_batch(self, batch_id: str) -> Batch | None:
        async def read(conn: Conn) -> Batch | None:
            cur = await conn.execute(
                "SELECT caller, total, created_at, seq_from, expanded FROM batches WHERE id = %s",
                (batch_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            caller, total, created_at, seq_from, expanded = row
            counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
            cur = await conn.execute(
                "SELECT status, count(*) FROM deliveries WHERE seq BETWEEN %s AND %s "
                "GROUP BY status",
                (seq_from, seq_from + total - 1),
            )
            for status, n in await cur.fetchall():
                counts[status] = int(n)
            counts["queued"] += total - expanded  # stored, not yet expanded into deliveries
            return Batch(
                id=batch_id, caller=caller, total=total, created_at=created_at, counts=counts
            )

        return await self._run(read)

    async def list_deliveries(
        self,
        *,
        status: Status | None,
        company_id: str | None,
        after_seq: int,
        limit: int,
    ) -> list[Delivery]:
        query, args = listing_query(
            DELIVERY_COLUMNS,
            status=status,
            company_id=company_id,
            after_seq=after_seq,
            limit=limit,
            mark="%s",
        )

        async def read(conn: Conn) -> list[TupleRow]:
            cur = await conn.execute(query, args)
            return await cur.fetchall()

        return [row_to_delivery(r) for r in await self._run(read, transaction=False)]

    async def stats(self) -> QueueStats:
        async def read(conn: Conn) -> QueueStats:
            counts = dict.fromkeys(STATUSES, 0)
            cur = await conn.execute(
                "SELECT status, count(*) FROM deliveries "
                "WHERE status IN ('queued', 'delivering', 'dead') GROUP BY status"
            )
            for status, n in await cur.fetchall():
                counts[status] = int(n)
            cur = await conn.execute(
                "SELECT min(enqueued_at) FROM deliveries WHERE status IN ('queued', 'delivering')"
            )
            row = await cur.fetchone()
            oldest = row[0] if row else None
            cur = await conn.execute(
                "SELECT sum(total - expanded), min(created_at) FROM batches WHERE expanded < total"
            )
            waiting = await cur.fetchone()
            if waiting is not None and waiting[0] is not None:
                counts["queued"] += int(waiting[0])
                oldest = waiting[1] if oldest is None else min(oldest, waiting[1])
            return QueueStats(
                queued=counts["queued"],
                delivering=counts["delivering"],
                dead=counts["dead"],
                oldest_queued_at=oldest,
            )

        return await self._run(read)

    # dead letters --------------------------------------------------------------------------
    async def replay(self, delivery_id: str) -> Delivery | None:
        async def write(conn: Conn) -> Delivery | None:
            cur = await conn.execute(
                "SELECT status, last_error FROM deliveries WHERE id = %s FOR UPDATE",
                (delivery_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            if row[0] != "dead":
                raise NotDead(row[0])
            if (row[1] or "").startswith(REFUSED):
                raise NotDead("refused by the relay (it cannot be sent as stored): purge it")
            cur = await conn.execute(
                f"UPDATE deliveries SET status = 'queued', next_attempt_at = {NOW}, "
                f"enqueued_at = {NOW}, updated_at = {NOW}, attempts = 0 WHERE id = %s "
                f"RETURNING {DELIVERY_COLUMNS}",
                (delivery_id,),
            )
            updated = await cur.fetchone()
            assert updated is not None
            return row_to_delivery(updated)

        return await self._run(write)

    async def replay_dead(self, *, company_id: str | None = None) -> int:
        query = (
            f"UPDATE deliveries SET status = 'queued', next_attempt_at = {NOW}, "
            f"enqueued_at = {NOW}, updated_at = {NOW}, attempts = 0 WHERE status = 'dead' "
            "AND (last_error IS NULL OR left(last_error, %s) <> %s)"
        )
        args: tuple[Any, ...] = (len(REFUSED), REFUSED)
        if company_id is not None:
            query += " AND company_id = %s"
            args += (company_id,)

        async def write(conn: Conn) -> int:
            cur = await conn.execute(query, args)
            return cur.rowcount

        return await self._run(write)

    async def purge_dead(
        self, *, delivery_id: str | None = None, company_id: str | None = None
    ) -> int:
        query, args = "DELETE FROM deliveries WHERE status = 'dead'", []
        if delivery_id is not None:
            query += " AND id = %s"
            args.append(delivery_id)
        if company_id is not None:
            query += " AND company_id = %s"
            args.append(company_id)

        async def write(conn: Conn) -> int:
            cur = await conn.execute(query, args)
            return cur.rowcount

        return await self._run(write)

    async def prune(self, *, delivered_before: float) -> int:
        """Delete in batches of short transactions, so pruning never holds up the queue."""

        async def delete_batch(conn: Conn) -> int:
            cur = await conn.execute(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries "
                "WHERE status = 'delivered' AND delivered_at < %s LIMIT %s "
                "FOR UPDATE SKIP LOCKED)",
                (delivered_before, _PRUNE_BATCH),
            )
            return cur.rowcount

        async def tidy(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM batches WHERE created_at < %s AND expanded = total AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq BETWEEN batches.seq_from "
                "AND batches.seq_from + batches.total - 1)",
                (delivered_before,),
            )
            await conn.execute(f"DELETE FROM idempotency_keys WHERE expires_at < {NOW}")
            await conn.execute(
                "DELETE FROM webhook_events WHERE received_at < %s", (delivered_before,)
            )

        total = 0
        while True:
            n = await self._run(delete_batch)
            total += n
            if n < _PRUNE_BATCH:
                break
        await self._run(tidy)

        async def versions_batch(conn: Conn) -> int:
            cur = await conn.execute(
                _PRUNE_VERSIONS, {"before": delivered_before, "limit": _PRUNE_BATCH}
            )
            return cur.rowcount

        # Property versions in short transactions of their own, like the deliveries.
        while await self._run(versions_batch) >= _PRUNE_BATCH:
            pass
        return total

    # dispatcher ----------------------------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        lease_seconds: float,
        max_merge: int,
        settle_seconds: float = 0.0,
        single_first: bool = False,
    ) -> Claim | None:
        params = {
            "settle": settle_seconds,
            "scan": _CANDIDATES,
            "ns": COMPANY_LOCKS,
            "max_merge": max_merge,
            "owner": owner,
            "lease": lease_seconds,
        }

        async def work(conn: Conn) -> Claim | None:
            await conn.execute(_EXPIRE_LEASES)
            skip: list[str] = []
            expansions = 0
            single = single_first
            while len(skip) < _CLAIM_TRIES:
                cur = await conn.execute(
                    _PICK_SINGLE if single else _PICK_COMPANY, {**params, "skip": skip}
                )
                picked = await cur.fetchone()
                if single and picked is None:
                    single = False  # no single update waits: the oldest of any kind
                    continue
                # Fairness: a single update goes first, after every stored batch update that
                # arrived before it is expanded, so its company's claim merges them in order.
                if single and expansions < _MAX_EXPANSIONS:
                    if await _expand(conn, before_seq=int(picked[1]) if picked else None):
                        expansions += 1
                        continue
                elif single:
                    single = False
                    continue
                # A stored batch whose next update arrived earlier goes first: expand it and
                # look again.
                elif expansions < _EXPANSIONS_PER_CLAIM and await _expand(
                    conn, before_seq=int(picked[1]) if picked else None
                ):
                    expansions += 1
                    continue
                if picked is None:
                    return None
                company_id: str = picked[0]
                cur = await conn.execute(_LEASE, {**params, "company": company_id})
                rows = sorted(await cur.fetchall(), key=lambda r: int(r[1]))
                if not rows:
                    # Another replica took it between our look and our lock: try the next.
                    skip.append(company_id)
                    continue
                cur = await conn.execute(
                    "SELECT key, seq FROM property_versions WHERE company_id = %s",
                    (company_id,),
                )
                versions = {str(k): int(v) for k, v in await cur.fetchall()}
                return Claim(
                    company_id=company_id,
                    updates=[
                        ClaimedUpdate(
                            id=r[0], seq=int(r[1]), metadata=orjson.loads(r[2]), attempts=r[3]
                        )
                        for r in rows
                    ],
                    versions=versions,
                    owner=owner,
                )
            return None

        return await self._run(work)

    async def mark_delivered(
        self,
        claim: Claim,
        *,
        status: int,
        request_id: str | None,
        sent_versions: Mapping[str, int],
    ) -> None:
        keys = sorted(sent_versions)  # one lock order, whoever else writes these rows

        async def write(conn: Conn) -> None:
            await conn.execute(
                f"UPDATE deliveries SET status = 'delivered', delivered_at = {NOW}, "
                f"updated_at = {NOW}, last_status = %s, last_error = NULL, "
                "last_request_id = %s, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ANY(%s) AND lease_owner = %s",
                (status, request_id, claim.ids, claim.owner),
            )
            if keys:
                await conn.execute(
                    "INSERT INTO property_versions (company_id, key, seq, updated_at) "
                    f"SELECT %s, u.key, u.seq, {NOW} "
                    "FROM unnest(%s::text[], %s::bigint[]) AS u(key, seq) "
                    "ON CONFLICT (company_id, key) DO UPDATE "
                    "SET seq = GREATEST(property_versions.seq, excluded.seq), "
                    "updated_at = excluded.updated_at",
                    (claim.company_id, keys, [sent_versions[k] for k in keys]),
                )

        await self._run(write)

    async def mark_retry(
        self, claim: Claim, *, status: int | None, error: str, delay: float
    ) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                f"UPDATE deliveries SET status = 'queued', next_attempt_at = {NOW} + %s, "
                f"updated_at = {NOW}, last_status = %s, last_error = %s, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ANY(%s) AND lease_owner = %s",
                (delay, status, error, claim.ids, claim.owner),
            )

        await self._run(write)

    async def mark_dead(
        self, claim: Claim, *, status: int | None, error: str, request_id: str | None
    ) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                f"UPDATE deliveries SET status = 'dead', updated_at = {NOW}, last_status = %s, "
                "last_error = %s, last_request_id = %s, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ANY(%s) AND lease_owner = %s",
                (status, error, request_id, claim.ids, claim.owner),
            )

        await self._run(write)

    async def release(self, claim: Claim) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "UPDATE deliveries SET status = 'queued', attempts = GREATEST(attempts - 1, 0), "
                "lease_owner = NULL, lease_until = NULL WHERE id = ANY(%s) AND lease_owner = %s",
                (claim.ids, claim.owner),
            )

        await self._run(write)

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

    async def pause_sending(self, until: float) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "UPDATE pacing SET paused_until = GREATEST(paused_until, %s) WHERE id = 1",
                (self._clock.remote(until),),
            )

        await self._run(write, transaction=False)

    # webhook state --------------------------------------------------------------------------
    async def link_customers(self, links: Sequence[tuple[str, str]]) -> None:
        latest = dict(links)  # one row per customer: the last link given wins
        if not latest:
            return
        customers = sorted(latest)

        async def write(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO customer_links (customer_id, company_id, updated_at) "
                f"SELECT u.customer, u.company, {NOW} "
                "FROM unnest(%s::text[], %s::text[]) AS u(customer, company) "
                "ON CONFLICT (customer_id) DO UPDATE SET "
                "company_id = excluded.company_id, updated_at = excluded.updated_at",
                (customers, [latest[c] for c in customers]),
            )

        await self._run(write)

    async def company_for_customer(self, customer_id: str) -> str | None:
        async def read(conn: Conn) -> TupleRow | None:
            cur = await conn.execute(
                "SELECT company_id FROM customer_links WHERE customer_id = %s", (customer_id,)
            )
            return await cur.fetchone()

        row = await self._run(read, transaction=False)
        return str(row[0]) if row else None

    async def park_event(self, *, source: str, key: str, payload: bytes, reason: str) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO parked_events (source, key, payload, reason, created_at, updated_at) "
                f"VALUES (%s, %s, %s, %s, {NOW}, {NOW}) ON CONFLICT (source, key) DO UPDATE SET "
                "reason = excluded.reason, updated_at = excluded.updated_at, "
                "attempts = parked_events.attempts + 1",
                (source, key, payload, reason),
            )

        await self._run(write)

    async def parked_events(self, *, source: str, limit: int) -> list[tuple[str, bytes]]:
        async def read(conn: Conn) -> list[TupleRow]:
            cur = await conn.execute(
                "SELECT key, payload FROM parked_events WHERE source = %s "
                "ORDER BY updated_at, created_at LIMIT %s",
                (source, limit),
            )
            return await cur.fetchall()

        return [(str(k), bytes(p)) for k, p in await self._run(read, transaction=False)]

    async def unpark_event(self, *, source: str, key: str) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM parked_events WHERE source = %s AND key = %s", (source, key)
            )

        await self._run(write)

    async def count_parked(self) -> int:
        async def read(conn: Conn) -> int:
            cur = await conn.execute("SELECT count(*) FROM parked_events")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._run(read, transaction=False)


async def _idempotent_result(conn: Conn, idem: Idempotency) -> Any:
    """The first request's stored result for this key, or None; a conflict raises.

    Two replicas given the same key at once: the second waits here for the first to commit.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(%s::int, hashtext(%s))",
        (IDEMPOTENCY_LOCKS, f"{idem.caller}\x1f{idem.key}"),
    )
    cur = await conn.execute(
        "SELECT fingerprint, result FROM idempotency_keys "
        f"WHERE caller = %s AND key = %s AND expires_at > {NOW}",
        (idem.caller, idem.key),
    )
    found = await cur.fetchone()
    if found is None:
        return None
    if found[0] != idem.fingerprint:
        raise IdempotencyConflict(idem.key)
    return orjson.loads(found[1])


async def _remember(conn: Conn, idem: Idempotency, result: bytes) -> None:
    await conn.execute(
        "INSERT INTO idempotency_keys (caller, key, fingerprint, result, created_at, expires_at) "
        f"VALUES (%s, %s, %s, %s, {NOW}, {NOW} + %s) "
        "ON CONFLICT (caller, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
        "result = excluded.result, created_at = excluded.created_at, "
        "expires_at = excluded.expires_at",
        (idem.caller, idem.key, idem.fingerprint, result, idem.ttl_seconds),
    )


async def _enqueue(
    conn: Conn,
    updates: Sequence[NewUpdate],
    encoded: list[bytes],
    ids: list[str],
    source: str,
    caller: str | None,
    idem: Idempotency | None,
) -> EnqueueResult:
    if idem is not None:
        first = await _idempotent_result(conn, idem)
        if first is not None:
            return EnqueueResult(ids=first["ids"], replayed=True)

    stored_ids: list[str | None] = list(ids)
    row_ids: list[str] = []
    companies: list[str] = []
    bodies: list[bytes] = []
    for index, update in enumerate(updates):
        body = encoded[index]
        if update.event_key is not None:
            cur = await conn.execute(
                "INSERT INTO webhook_events (source, event_key, received_at) "
                f"VALUES (%s, %s, {NOW}) ON CONFLICT DO NOTHING RETURNING 1",
                (source, update.event_key),
            )
            if await cur.fetchone() is None:
                stored_ids[index] = None
                continue
        if update.property_times:
            kept = await _newest_only(conn, update)
            if not kept and update.skip_if_empty:
                stored_ids[index] = None
                continue
            if len(kept) != len(update.metadata):
                body = orjson.dumps(kept)
        row_ids.append(ids[index])
        companies.append(update.company_id)
        bodies.append(body)
    if row_ids:
        await conn.execute(
            _INSERT_DELIVERIES,
            {
                "source": source,
                "caller": caller,
                "ids": row_ids,
                "companies": companies,
                "bodies": bodies,
            },
        )
    if idem is not None:
        await _remember(conn, idem, orjson.dumps({"ids": stored_ids}))
    return EnqueueResult(ids=stored_ids)


async def _enqueue_batch(
    conn: Conn,
    payload: bytes,
    count: int,
    batch_id: str,
    source: str,
    caller: str | None,
    idem: Idempotency | None,
) -> EnqueueResult:
    """Store a whole batch as one row in one block of sequence numbers.

    Its updates become deliveries later, a chunk at a time, as the dispatcher needs them
    (`_expand`): ingest costs one insert whatever the batch size, and update i's place in
    the arrival order is `seq_from + i`, before anything that arrives after it.
    """
    if idem is not None:
        first = await _idempotent_result(conn, idem)
        if first is not None:
            return EnqueueResult(
                ids=batch_ids(first["batch_id"], first["count"]),
                batch_id=first["batch_id"],
                replayed=True,
            )
    await conn.execute(
        "INSERT INTO batches (id, caller, source, total, seq_from, payload, created_at) "
        "VALUES (%s, %s, %s, %s, "
        f"nextval(pg_get_serial_sequence('deliveries', 'seq')), %s, {NOW})",
        (batch_id, caller, source, count, payload),
    )
    if idem is not None:
        await _remember(conn, idem, orjson.dumps({"batch_id": batch_id, "count": count}))
    return EnqueueResult(ids=batch_ids(batch_id, count), batch_id=batch_id)


async def _expand(conn: Conn, *, before_seq: int | None) -> bool:
    """Turn the next chunk of the oldest stored batch into deliveries.

    Only when that batch's next update arrived before `before_seq` (None: whatever it is),
    so updates keep their arrival order. The batch row is locked: two replicas never expand
    the same chunk. Answers whether anything was expanded.
    """
    cur = await conn.execute(
        "SELECT seq_from + expanded FROM batches WHERE expanded < total ORDER BY seq_from LIMIT 1"
    )
    pending = await cur.fetchone()
    if pending is None or (before_seq is not None and int(pending[0]) >= before_seq):
        return False
    cur = await conn.execute(
        "SELECT id, seq_from, expanded, payload, caller, source, created_at "
        "FROM batches WHERE expanded < total ORDER BY seq_from LIMIT 1 FOR UPDATE"
    )
    row = await cur.fetchone()
    if row is None:
        return False  # another replica expanded the last of it meanwhile
    batch_id, seq_from, expanded, payload, caller, source, created_at = row
    if before_seq is not None and seq_from + expanded >= before_seq:
        return False
    chunk = [
        expansion_item(item) for item in orjson.loads(payload)[expanded : expanded + _EXPAND_CHUNK]
    ]
    await conn.execute(
        "INSERT INTO deliveries (seq, id, company_id, metadata, status, source, caller, "
        "batch_id, created_at, updated_at, next_attempt_at, enqueued_at, last_error) "
        "OVERRIDING SYSTEM VALUE "
        f"SELECT u.seq, u.id, u.company_id, u.metadata, u.status, %(source)s, %(caller)s, "
        f"%(batch)s, %(created)s, {NOW}, %(created)s, %(created)s, u.error "
        "FROM unnest(%(seqs)s::bigint[], %(ids)s::text[], %(companies)s::text[], "
        "%(bodies)s::bytea[], %(statuses)s::text[], %(errors)s::text[]) "
        "AS u(seq, id, company_id, metadata, status, error)",
        {
            "source": source,
            "caller": caller,
            "batch": batch_id,
            "created": created_at,
            "seqs": [seq_from + expanded + i for i in range(len(chunk))],
            "ids": [f"{batch_id}.{expanded + i}" for i in range(len(chunk))],
            "companies": [company for company, _, _, _ in chunk],
            "bodies": [orjson.dumps(metadata) for _, metadata, _, _ in chunk],
            "statuses": [status for _, _, status, _ in chunk],
            "errors": [error for _, _, _, error in chunk],
        },
    )
    done = expanded + len(chunk)
    await conn.execute(
        "UPDATE batches SET expanded = %s, payload = CASE WHEN %s >= total THEN NULL "
        "ELSE payload END WHERE id = %s",
        (done, done, batch_id),
    )
    return True


async def _newest_only(conn: Conn, update: NewUpdate) -> dict[str, Any]:
    """Drop the properties that a newer source event already set; record the rest's times.

    One upsert per property that only moves the time forward: atomic when two replicas
    map events for the same company at once.
    """
    assert update.property_times is not None
    kept: dict[str, Any] = {}
    for key, value in update.metadata.items():
        when = update.property_times.get(key)
        if when is None:
            kept[key] = value
            continue
        cur = await conn.execute(
            "INSERT INTO source_property_times (company_id, key, event_time) "
            "VALUES (%s, %s, %s) ON CONFLICT (company_id, key) DO UPDATE "
            "SET event_time = excluded.event_time "
            "WHERE source_property_times.event_time <= excluded.event_time RETURNING 1",
            (update.company_id, key, when),
        )
        if await cur.fetchone() is not None:
            kept[key] = value
    return kept


def _plain(update: NewUpdate) -> bool:
    """Nothing to check against other stored state: no event key, no source times."""
    return update.event_key is None and not update.property_times


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


async def _reconnect_failed(pool: AsyncConnectionPool[Any]) -> None:
    log.warning("PostgreSQL still unreachable; the next request tries again")
