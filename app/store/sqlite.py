"""The embedded store: one SQLite file, one relay process.

Writes go through one writer thread that commits whatever has piled up in a single
transaction (group commit): with many requests in flight, one fsync acknowledges all of them.
If one request's work raises, the group is rolled back and every request runs again alone, so
one request's error never undoes another's work.
Reads use their own connections (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

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
from app.domain.rules import REFUSED, parse_ascii_int, printable, update_problem
from app.store.base import Store, listing_query
from app.store.migrations import SQLITE_MIGRATIONS

log = logging.getLogger("userpilot_relay.store")

T = TypeVar("T")
_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_MAX_GROUP = 512

DELIVERY_COLUMNS = (
    "id, seq, company_id, metadata, status, attempts, source, caller, batch_id, created_at, "
    "updated_at, next_attempt_at, delivered_at, last_status, last_error, last_request_id"
)


def new_ids(count: int) -> list[str]:
    """`count` random 128-bit hex ids, drawn in one system call."""
    raw = os.urandom(16 * count).hex()
    return [raw[i : i + 32] for i in range(0, 32 * count, 32)]


def row_to_delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        seq=row[1],
        company_id=row[2],
        metadata=orjson.loads(row[3]),
        status=row[4],
        attempts=row[5],
        source=row[6],
        caller=row[7],
        batch_id=row[8],
        created_at=row[9],
        updated_at=row[10],
        next_attempt_at=row[11] if row[4] == "queued" else None,
        delivered_at=row[12],
        last_status=row[13],
        last_error=row[14],
        last_request_id=row[15],
    )


class SQLiteStore(Store):
    """`Store` on one SQLite file in WAL mode, synchronous=FULL."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._slot_lock = asyncio.Lock()
        self._lock_file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._write_failing = False

    # lifecycle -----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        parent = Path(self.path).parent
        parent.mkdir(parents=True, exist_ok=True)
        ran_here_before = _exists(f"{self.path}.lock")
        self._lock_file = _lock_exclusively(f"{self.path}.lock")
        existed = _exists(self.path)
        conn = self._connect()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"SQLite at {self.path} refused WAL mode ({mode})")
        self._migrate(conn)
        if not existed:
            log.warning(
                "created a new, empty database: if one was expected here, the relay is not "
                "using it (check RELAY_DATABASE_URL and the volume)"
                + (" -- a relay used this path before" if ran_here_before else ""),
                extra={"store": "sqlite", "path": self.path},
            )
        stat = os.stat(self.path)
        self._identity = (stat.st_dev, stat.st_ino)
        # A previous process may have died mid-delivery: what it held goes back in line.
        conn.execute(
            "UPDATE deliveries SET status = 'queued', lease_owner = NULL, lease_until = NULL "
            "WHERE status = 'delivering'"
        )
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._writer.start()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, script in SQLITE_MIGRATIONS:
                if version in done:
                    continue
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def ping(self) -> bool:
        """Ready only while the store can both read and write (readiness fails with writes)."""
        if self._writer is None or not self._writer.is_alive():
            return False
        try:
            await self._read(lambda c: c.execute("SELECT 1").fetchone())
            await self._write(
                lambda c: c.execute(
                    "INSERT INTO store_health (id, checked_at) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    (time.time(),),
                )
            )
        except (sqlite3.Error, StoreUnavailable):
            return False
        return True

    # plumbing ------------------------------------------------------------------------------
    def _write_loop(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                break
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                group.append(job)
            outcomes = self._commit_checked(conn, group)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_settle, outcomes)
        conn.close()

    def _commit_checked(
        self, conn: sqlite3.Connection, group: list[_Job]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Commit the group unless the file is gone or replaced; say so once per outage."""
        problem = self._file_problem()
        if problem is None:
            outcomes = self._commit_group(conn, group)
            failed = next((e for _, _, e in outcomes if isinstance(e, StoreUnavailable)), None)
            problem = str(failed) if failed is not None else None
        else:
            failure = StoreUnavailable(problem)
            outcomes = [(future, None, failure) for _, future in group]
        if problem is not None and not self._write_failing:
            log.error(
                "SQLite writes are failing: updates are refused (503) and readiness fails "
                "until writes succeed",
                extra={"store": "sqlite", "path": self.path, "error": problem[:300]},
            )
        elif problem is None and self._write_failing:
            log.info("SQLite writes succeed again", extra={"store": "sqlite", "path": self.path})
        self._write_failing = problem is not None
        return outcomes

    def _file_problem(self) -> str | None:
        """Why writing to the open database would lose data: its file was removed or replaced.

        Writes through the open handle would land in a deleted file and vanish at restart.
        """
        try:
            stat = os.stat(self.path)
        except OSError:
            return f"the database file {self.path} was removed: restore it, then restart"
        if self._identity is not None and (stat.st_dev, stat.st_ino) != self._identity:
            return f"the database file {self.path} was replaced: restart the relay to use it"
        return None

    @staticmethod
    def _commit_group(
        conn: sqlite3.Connection, group: list[_Job]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Run the group in one transaction. If a job raises, roll all back and run each job
        in a transaction of its own, so one request's error never undoes another's work."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = [fn(conn) for fn, _ in group]
            except Exception:
                conn.execute("ROLLBACK")
            else:
                conn.execute("COMMIT")
                return [
                    (future, result, None)
                    for (_, future), result in zip(group, results, strict=True)
                ]
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for fn, future in group:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK")
                    if _unavailable(exc):  # the file, the disk: not the request
                        exc = StoreUnavailable(f"SQLite write failed: {exc}")
                    outcomes.append((future, None, exc))
                else:
                    conn.execute("COMMIT")
                    outcomes.append((future, result, None))
            return outcomes
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(f"SQLite write failed: {exc}")
            return [(future, None, failure) for _, future in group]

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return await future

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from None

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
        # Serialise outside the writer thread: it is the one thing that cannot run in parallel.
        if batch:
            if any(u.event_key or u.property_times for u in updates):
                raise ValueError("a batch carries plain updates only")
            batch_id = new_ids(1)[0]
            payload = orjson.dumps([[u.company_id, u.metadata] for u in updates])
            count = len(updates)
            return await self._write(
                lambda conn: _enqueue_batch(
                    conn, payload, count, batch_id, source, caller, idempotency
                )
            )
        ids = new_ids(len(updates))
        encoded = [orjson.dumps(u.metadata) for u in updates]
        return await self._write(
            lambda conn: _enqueue(conn, updates, encoded, ids, source, caller, idempotency)
        )

    # reads ---------------------------------------------------------------------------------
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        def read(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            return row_to_delivery(row) if row else _staged_delivery(c, delivery_id)

        return await self._read(read)

    async def get_deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        ids = list(delivery_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id IN ({marks})", ids
            ).fetchall()
        )
        return [row_to_delivery(r) for r in rows]

    async def get_batch(self, batch_id: str) -> Batch | None:
        def read(c: sqlite3.Connection) -> Batch | None:
            row = c.execute(
                "SELECT id, caller, total, created_at, seq_from, expanded FROM batches "
                "WHERE id = ?",
                (batch_id,),
            ).fetchone()
            if row is None:
                return None
            _, caller, total, created_at, seq_from, expanded = row
            counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
            for status, n in c.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE seq BETWEEN ? AND ? GROUP BY status",
                (seq_from, seq_from + total - 1),
            ):
                counts[status] = n
            counts["queued"] += total - expanded  # stored, not yet expanded into deliveries
            return Batch(
                id=batch_id, caller=caller, total=total, created_at=created_at, counts=counts
            )

        return await self._read(read)

    async def list_deliveries(
        self,
        *,
        status: Status | None,
        company_id: str | None,
        after_seq: int,
        limit: int,
    ) -> list[Delivery]:
        sql, args = listing_query(
            DELIVERY_COLUMNS,
            status=status,
            company_id=company_id,
            after_seq=after_seq,
            limit=limit,
            mark="?",
        )
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [row_to_delivery(r) for r in rows]

    async def stats(self) -> QueueStats:
        def read(c: sqlite3.Connection) -> QueueStats:
            counts = dict.fromkeys(STATUSES, 0)
            for status in ("queued", "delivering", "dead"):
                counts[status] = c.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE status = ?", (status,)
                ).fetchone()[0]
            oldest = c.execute(
                "SELECT MIN(enqueued_at) FROM deliveries WHERE status IN ('queued', 'delivering')"
            ).fetchone()[0]
            waiting, first_batch = c.execute(
                "SELECT SUM(total - expanded), MIN(created_at) FROM batches WHERE expanded < total"
            ).fetchone()
            counts["queued"] += waiting or 0
            if first_batch is not None:
                oldest = first_batch if oldest is None else min(oldest, first_batch)
            return QueueStats(
                queued=counts["queued"],
                delivering=counts["delivering"],
                dead=counts["dead"],
                oldest_queued_at=oldest,
            )

        return await self._read(read)

    # dead letters --------------------------------------------------------------------------
    async def replay(self, delivery_id: str) -> Delivery | None:
        def write(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                return None
            if row[4] != "dead":
                raise NotDead(row[4])
            if (row[14] or "").startswith(REFUSED):
                raise NotDead("refused by the relay (it cannot be sent as stored): purge it")
            now = time.time()
            c.execute(
                "UPDATE deliveries SET status = 'queued', next_attempt_at = ?, enqueued_at = ?, "
                "updated_at = ?, attempts = 0 WHERE id = ?",
                (now, now, now, delivery_id),
            )
            return row_to_delivery(
                c.execute(
                    f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
                ).fetchone()
            )

        return await self._write(write)

    async def replay_dead(self, *, company_id: str | None = None) -> int:
        now = time.time()
        sql = (
            "UPDATE deliveries SET status = 'queued', next_attempt_at = ?, enqueued_at = ?, "
            "updated_at = ?, attempts = 0 WHERE status = 'dead' "
            "AND (last_error IS NULL OR substr(last_error, 1, ?) <> ?)"
        )
        args: tuple[Any, ...] = (now, now, now, len(REFUSED), REFUSED)
        if company_id is not None:
            sql += " AND company_id = ?"
            args += (company_id,)
        return await self._write(lambda c: c.execute(sql, args).rowcount)

    async def purge_dead(
        self, *, delivery_id: str | None = None, company_id: str | None = None
    ) -> int:
        sql, args = "DELETE FROM deliveries WHERE status = 'dead'", []
        if delivery_id is not None:
            sql += " AND id = ?"
            args.append(delivery_id)
        if company_id is not None:
            sql += " AND company_id = ?"
            args.append(company_id)
        return await self._write(lambda c: c.execute(sql, args).rowcount)

    async def prune(self, *, delivered_before: float) -> int:
        now = time.time()

        def write(c: sqlite3.Connection) -> int:
            n = c.execute(
                "DELETE FROM deliveries WHERE status = 'delivered' AND delivered_at < ?",
                (delivered_before,),
            ).rowcount
            c.execute(
                "DELETE FROM batches WHERE created_at < ? AND expanded = total AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq BETWEEN batches.seq_from "
                "AND batches.seq_from + batches.total - 1)",
                (delivered_before,),
            )
            c.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))
            c.execute("DELETE FROM webhook_events WHERE received_at < ?", (delivered_before,))
            return n

        pruned = await self._write(write)
        # Property versions in short batches: the writer never stops for one long delete.
        while (
            await self._write(
                lambda c: c.execute(PRUNE_VERSIONS, {"before": delivered_before}).rowcount
            )
            >= _PRUNE_BATCH
        ):
            pass
        return pruned

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
        return await self._write(
            lambda c: _claim(c, owner, lease_seconds, max_merge, settle_seconds, single_first)
        )

    async def mark_delivered(
        self,
        claim: Claim,
        *,
        status: int,
        request_id: str | None,
        sent_versions: Mapping[str, int],
    ) -> None:
        def write(c: sqlite3.Connection) -> None:
            now = time.time()
            c.executemany(
                "UPDATE deliveries SET status = 'delivered', delivered_at = ?, updated_at = ?, "
                "last_status = ?, last_error = NULL, last_request_id = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ? AND lease_owner = ?",
                [(now, now, status, request_id, i, claim.owner) for i in claim.ids],
            )
            c.executemany(
                "INSERT INTO property_versions (company_id, key, seq, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (company_id, key) DO UPDATE SET "
                "seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
                [(claim.company_id, k, v, now) for k, v in sent_versions.items()],
            )

        await self._write(write)

    async def mark_retry(
        self, claim: Claim, *, status: int | None, error: str, delay: float
    ) -> None:
        def write(c: sqlite3.Connection) -> None:
            now = time.time()
            c.executemany(
                "UPDATE deliveries SET status = 'queued', next_attempt_at = ?, updated_at = ?, "
                "last_status = ?, last_error = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND lease_owner = ?",
                [(now + delay, now, status, error, i, claim.owner) for i in claim.ids],
            )

        await self._write(write)

    async def mark_dead(
        self, claim: Claim, *, status: int | None, error: str, request_id: str | None
    ) -> None:
        def write(c: sqlite3.Connection) -> None:
            now = time.time()
            c.executemany(
                "UPDATE deliveries SET status = 'dead', updated_at = ?, last_status = ?, "
                "last_error = ?, last_request_id = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND lease_owner = ?",
                [(now, status, error, request_id, i, claim.owner) for i in claim.ids],
            )

        await self._write(write)

    async def release(self, claim: Claim) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE deliveries SET status = 'queued', attempts = MAX(attempts - 1, 0), "
                "lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                [(i, claim.owner) for i in claim.ids],
            )

        await self._write(write)

    # pacing: one process owns the file, so the slots live in memory ---------------------------
    async def reserve_send_slot(self, interval: float) -> float:
        async with self._slot_lock:
            slot = max(time.time(), self._next_slot, self._paused_until)
            self._next_slot = slot + interval
            return slot

    async def pause_sending(self, until: float) -> None:
        async with self._slot_lock:
            self._paused_until = max(self._paused_until, until)

    # webhook state --------------------------------------------------------------------------
    async def link_customers(self, links: Sequence[tuple[str, str]]) -> None:
        now = time.time()
        await self._write(
            lambda c: c.executemany(
                "INSERT INTO customer_links (customer_id, company_id, updated_at) "
                "VALUES (?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET "
                "company_id = excluded.company_id, updated_at = excluded.updated_at",
                [(cus, company, now) for cus, company in links],
            )
        )

    async def company_for_customer(self, customer_id: str) -> str | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT company_id FROM customer_links WHERE customer_id = ?", (customer_id,)
            ).fetchone()
        )
        return str(row[0]) if row else None

    async def park_event(self, *, source: str, key: str, payload: bytes, reason: str) -> None:
        now = time.time()
        await self._write(
            lambda c: c.execute(
                "INSERT INTO parked_events (source, key, payload, reason, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, key) DO UPDATE SET "
                "reason = excluded.reason, updated_at = excluded.updated_at, "
                "attempts = parked_events.attempts + 1",
                (source, key, payload, reason, now, now),
            )
        )

    async def parked_events(self, *, source: str, limit: int) -> list[tuple[str, bytes]]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT key, payload FROM parked_events WHERE source = ? "
                "ORDER BY updated_at, created_at LIMIT ?",
                (source, limit),
            ).fetchall()
        )
        return [(str(k), bytes(p)) for k, p in rows]

    async def unpark_event(self, *, source: str, key: str) -> None:
        await self._write(
            lambda c: c.execute(
                "DELETE FROM parked_events WHERE source = ? AND key = ?", (source, key)
            )
        )

    async def count_parked(self) -> int:
        row = await self._read(lambda c: c.execute("SELECT COUNT(*) FROM parked_events").fetchone())
        return int(row[0])


def _unavailable(exc: BaseException) -> bool:
    """A failure of the file or the disk (I/O, full, read-only, locked), not of one request."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.DataError
    )


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _lock_exclusively(path: str) -> IO[bytes]:
    """Hold an exclusive lock for the life of the process: one relay per SQLite file."""
    handle = open(path, "ab")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreUnavailable(
            f"another relay process already uses the SQLite file {path.removesuffix('.lock')}: "
            "run one process per file (no --workers), or use PostgreSQL for several replicas"
        ) from None
    return handle


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _idempotent_result(conn: sqlite3.Connection, idem: Idempotency, now: float) -> Any:
    """The first request's stored result for this key, or None; a conflict raises."""
    row = conn.execute(
        "SELECT fingerprint, result FROM idempotency_keys "
        "WHERE caller = ? AND key = ? AND expires_at > ?",
        (idem.caller, idem.key, now),
    ).fetchone()
    if row is None:
        return None
    if row[0] != idem.fingerprint:
        raise IdempotencyConflict(idem.key)
    return orjson.loads(row[1])


def _remember(conn: sqlite3.Connection, idem: Idempotency, result: bytes, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys "
        "(caller, key, fingerprint, result, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        (idem.caller, idem.key, idem.fingerprint, result, now, now + idem.ttl_seconds),
    )


def batch_ids(batch_id: str, count: int) -> list[str | None]:
    """The delivery ids a batch's updates get when they are expanded."""
    return [f"{batch_id}.{i}" for i in range(count)]


def _enqueue(
    conn: sqlite3.Connection,
    updates: Sequence[NewUpdate],
    encoded: list[bytes],
    ids: list[str],
    source: str,
    caller: str | None,
    idem: Idempotency | None,
) -> EnqueueResult:
    now = time.time()
    if idem is not None:
        first = _idempotent_result(conn, idem, now)
        if first is not None:
            return EnqueueResult(ids=first["ids"], replayed=True)

    stored_ids: list[str | None] = list(ids)
    rows = []
    for index, update in enumerate(updates):
        body = encoded[index]
        if update.event_key is not None:
            fresh = conn.execute(
                "INSERT OR IGNORE INTO webhook_events (source, event_key, received_at) "
                "VALUES (?, ?, ?)",
                (source, update.event_key, now),
            ).rowcount
            if not fresh:
                stored_ids[index] = None
                continue
        if update.property_times:
            kept = _newest_only(conn, update, now)
            if not kept and update.skip_if_empty:
                stored_ids[index] = None
                continue
            if len(kept) != len(update.metadata):
                body = orjson.dumps(kept)
        rows.append((ids[index], update.company_id, body, source, caller, now, now, now, now))
    conn.executemany(
        "INSERT INTO deliveries (id, company_id, metadata, status, source, caller, "
        "created_at, updated_at, next_attempt_at, enqueued_at) "
        "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
        rows,
    )
    if idem is not None:
        _remember(conn, idem, orjson.dumps({"ids": stored_ids}), now)
    return EnqueueResult(ids=stored_ids)


def _enqueue_batch(
    conn: sqlite3.Connection,
    payload: bytes,
    count: int,
    batch_id: str,
    source: str,
    caller: str | None,
    idem: Idempotency | None,
) -> EnqueueResult:
    """Store a whole batch as one row, reserving its updates' places in the arrival order.

    The updates become deliveries later, a chunk at a time, as the dispatcher needs them
    (`_expand`): ingest costs one insert whatever the batch size, and the reserved sequence
    numbers keep every update's place relative to updates that arrive meanwhile.
    """
    now = time.time()
    if idem is not None:
        first = _idempotent_result(conn, idem, now)
        if first is not None:
            return EnqueueResult(
                ids=batch_ids(first["batch_id"], first["count"]),
                batch_id=first["batch_id"],
                replayed=True,
            )
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'").fetchone()
    base = row[0] if row else 0
    if row:
        conn.execute(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'deliveries'", (base + count,)
        )
    else:
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('deliveries', ?)", (base + count,)
        )
    conn.execute(
        "INSERT INTO batches (id, caller, total, created_at, seq_from, expanded, source, payload) "
        "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
        (batch_id, caller, count, now, base + 1, source, payload),
    )
    if idem is not None:
        _remember(conn, idem, orjson.dumps({"batch_id": batch_id, "count": count}), now)
    return EnqueueResult(ids=batch_ids(batch_id, count), batch_id=batch_id)


_EXPAND_CHUNK = 2000
_MAX_EXPANSIONS = 16  # chunks expanded at most per claim to put a single update first

# A property version matters only while an older update of the company may still be sent: a
# queued, delivering or dead one with a lower sequence number, or a stored batch's update not
# yet expanded (those all have sequence numbers at or above the oldest pending one).
_PRUNE_BATCH = 5000
PRUNE_VERSIONS = f"""
    DELETE FROM property_versions WHERE (company_id, key) IN (
      SELECT v.company_id, v.key FROM property_versions v WHERE v.updated_at < :before
        AND v.seq <= COALESCE(
          (SELECT MIN(seq_from + expanded) FROM batches WHERE expanded < total),
          9223372036854775807)
        AND NOT EXISTS (
          SELECT 1 FROM deliveries d WHERE d.company_id = v.company_id
            AND d.status IN ('queued', 'delivering', 'dead') AND d.seq < v.seq)
      LIMIT {_PRUNE_BATCH})
"""


def _staged_delivery(conn: sqlite3.Connection, delivery_id: str) -> Delivery | None:
    """A batch's update not expanded yet (`{batch_id}.{i}`), as the queued delivery it is."""
    batch_id, dot, index_text = delivery_id.rpartition(".")
    index = parse_ascii_int(index_text) if dot else None
    if index is None:
        return None
    row = conn.execute(
        "SELECT caller, total, created_at, seq_from, expanded, source, payload FROM batches "
        "WHERE id = ?",
        (batch_id,),
    ).fetchone()
    if row is None or not row[4] <= index < row[1] or row[6] is None:
        return None
    caller, _, created_at, seq_from, _, source, payload = row
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


def _expand(conn: sqlite3.Connection, *, before_seq: int | None) -> bool:
    """Turn the next chunk of the oldest stored batch into deliveries.

    Only when that batch's next update arrived before `before_seq` (None: whatever it is), so
    updates keep their arrival order. Answers whether anything was expanded.
    """
    row = conn.execute(
        "SELECT id, seq_from, expanded, payload, caller, source, created_at FROM batches "
        "WHERE expanded < total ORDER BY seq_from LIMIT 1"
    ).fetchone()
    if row is None:
        return False
    batch_id, seq_from, expanded, payload, caller, source, created_at = row
    if before_seq is not None and seq_from + expanded >= before_seq:
        return False
    chunk = orjson.loads(payload)[expanded : expanded + _EXPAND_CHUNK]
    now = time.time()
    rows = []
    for i, item in enumerate(chunk):
        company_id, metadata, status, error = expansion_item(item)
        rows.append(
            (
                seq_from + expanded + i,
                f"{batch_id}.{expanded + i}",
                company_id,
                orjson.dumps(metadata),
                status,
                source,
                caller,
                batch_id,
                created_at,
                now,
                created_at,
                created_at,
                error,
            )
        )
    conn.executemany(
        "INSERT INTO deliveries (seq, id, company_id, metadata, status, source, caller, "
        "batch_id, created_at, updated_at, next_attempt_at, enqueued_at, last_error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    done = expanded + len(chunk)
    conn.execute(
        "UPDATE batches SET expanded = ?, payload = CASE WHEN ? >= total THEN NULL "
        "ELSE payload END WHERE id = ?",
        (done, done, batch_id),
    )
    return True


def expansion_item(item: Any) -> tuple[str, Any, str, str | None]:
    """(company_id, metadata, status, error) for one stored batch update.

    An update that cannot be sent as stored (a control character in an id, from before the
    relay refused them at the door) becomes a dead letter with the reason, so that it can
    never stall the queue for everyone.
    """
    company_id, metadata = item if isinstance(item, list) and len(item) == 2 else (item, None)
    problem = update_problem(company_id, metadata)
    if problem is None:
        return company_id, metadata, "queued", None
    kept = metadata if isinstance(metadata, dict) else {"value": metadata}
    return printable(company_id), kept, "dead", REFUSED + problem


def _newest_only(conn: sqlite3.Connection, update: NewUpdate, now: float) -> dict[str, Any]:
    """Drop the properties that a newer source event already set; record the rest's times."""
    assert update.property_times is not None
    kept: dict[str, Any] = {}
    for key, value in update.metadata.items():
        when = update.property_times.get(key)
        if when is None:
            kept[key] = value
            continue
        row = conn.execute(
            "SELECT event_time FROM source_property_times WHERE company_id = ? AND key = ?",
            (update.company_id, key),
        ).fetchone()
        if row is not None and row[0] > when:
            continue
        conn.execute(
            "INSERT INTO source_property_times (company_id, key, event_time) VALUES (?, ?, ?) "
            "ON CONFLICT (company_id, key) DO UPDATE SET event_time = excluded.event_time",
            (update.company_id, key, when),
        )
        kept[key] = value
    return kept


# The oldest ready update (of the lane) whose company is free: nothing of it being delivered
# and nothing of it waiting out a retry backoff.
_PICK_LANE = """
    SELECT d.company_id, d.seq FROM deliveries d
    WHERE d.status = 'queued' {lane} AND d.next_attempt_at <= :now
      AND d.enqueued_at <= :settled AND NOT EXISTS (
        SELECT 1 FROM deliveries b WHERE b.company_id = d.company_id AND (
          b.status = 'delivering'
          OR (b.status = 'queued' AND b.attempts > 0 AND b.next_attempt_at > :now)))
    ORDER BY d.seq LIMIT 1
"""
_PICK = _PICK_LANE.format(lane="")
_PICK_SINGLE = _PICK_LANE.format(lane="AND d.batch_id IS NULL")


def _pick_single(conn: sqlite3.Connection, now: float, settle: float) -> tuple[str, int] | None:
    """The company of the oldest ready single update (not from a batch) that is free."""
    # Cheap first: during an outage every single update waits out a backoff, and the search
    # below would walk them all.
    ready = conn.execute(
        "SELECT 1 FROM deliveries WHERE status = 'queued' AND next_attempt_at <= ? "
        "AND batch_id IS NULL LIMIT 1",
        (now,),
    ).fetchone()
    if ready is None:
        return None
    row = conn.execute(_PICK_SINGLE, {"now": now, "settled": now - settle}).fetchone()
    return (row[0], row[1]) if row else None


def _claim(
    conn: sqlite3.Connection,
    owner: str,
    lease: float,
    max_merge: int,
    settle: float,
    single_first: bool = False,
) -> Claim | None:
    now = time.time()
    # Leases outlive a crashed holder only until they expire.
    conn.execute(
        "UPDATE deliveries SET status = 'queued', lease_owner = NULL, lease_until = NULL "
        "WHERE status = 'delivering' AND lease_until < ?",
        (now,),
    )
    if single_first:
        # Fairness: a single update never waits behind a whole import. Every stored batch
        # update that arrived before it is expanded first, so that its company's claim merges
        # them in arrival order (the single update's newer values win).
        single = _pick_single(conn, now, settle)
        expansions = 0
        while single is not None and expansions < _MAX_EXPANSIONS:
            if not _expand(conn, before_seq=single[1]):
                return _lease(conn, single[0], owner, lease, max_merge, now)
            expansions += 1
            single = _pick_single(conn, now, settle)
    for _ in range(4):
        # Cheap first (a partial index): is anything ready at all? During an outage nothing
        # is, and the full search below would walk the whole backlog.
        ready = conn.execute(
            "SELECT 1 FROM deliveries WHERE status = 'queued' AND next_attempt_at <= ? LIMIT 1",
            (now,),
        ).fetchone()
        row = (
            None
            if ready is None
            else conn.execute(_PICK, {"now": now, "settled": now - settle}).fetchone()
        )
        # A stored batch whose next update arrived earlier goes first: expand it and look again.
        if not _expand(conn, before_seq=row[1] if row else None):
            break
    if row is None:
        return None
    return _lease(conn, row[0], owner, lease, max_merge, now)


def _lease(
    conn: sqlite3.Connection, company_id: str, owner: str, lease: float, max_merge: int, now: float
) -> Claim:
    """Lease the company's queued updates (in arrival order, at most `max_merge`)."""
    rows = conn.execute(
        "SELECT id, seq, metadata, attempts FROM deliveries "
        "WHERE company_id = ? AND status = 'queued' ORDER BY seq LIMIT ?",
        (company_id, max_merge),
    ).fetchall()
    conn.executemany(
        "UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, "
        "lease_owner = ?, lease_until = ?, updated_at = ? WHERE id = ?",
        [(owner, now + lease, now, r[0]) for r in rows],
    )
    versions = {
        k: v
        for k, v in conn.execute(
            "SELECT key, seq FROM property_versions WHERE company_id = ?", (company_id,)
        )
    }
    return Claim(
        company_id=company_id,
        updates=[
            ClaimedUpdate(id=r[0], seq=r[1], metadata=orjson.loads(r[2]), attempts=r[3] + 1)
            for r in rows
        ],
        versions=versions,
        owner=owner,
    )
