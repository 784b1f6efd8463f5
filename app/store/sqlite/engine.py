"""The engine on one SQLite file in WAL mode, synchronous=FULL, for one relay process.

Writes go through the writer thread (`writer.py`, group commit); reads use their own
connections (WAL lets them run beside the writer). The features' plans run on the sync driver;
times are this host's clock, read once per transaction. One process owns the file (an
exclusive lock), so its send slots live in memory.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import orjson

from app.domain.errors import StoreUnavailable
from app.store.engine import Engine, PlanFactory, health, probe
from app.store.migrations import migrations
from app.store.sql import Dialect, Params, Result, Statement, drive
from app.store.sqlite.writer import Writer

log = logging.getLogger("userpilot_relay.store")
T = TypeVar("T")

MIN_SQLITE = (3, 35, 0)  # RETURNING and AS MATERIALIZED, which the shared SQL uses
SQLITE = Dialect(
    name="sqlite",
    now=":now",
    tokens={
        "lock_idempotency": "",  # one writer: nothing to lock
        "lock_company": "1",
        "lock_claims": "",
        "lock_jobs": "",
        "lock_pack": "",
        "analyze_deliveries": "",
        "fence": "",  # SQLite runs a correlated subquery per row as it is
        "overriding": "",
        "stamp_pairs": "(SELECT substr(value, 1, instr(value, char(31)) - 1) AS company_id, "
        "substr(value, instr(value, char(31)) + 1) AS key FROM json_each(:pairs)) AS pairs",
        # The counter AUTOINCREMENT keeps: a batch takes `count` numbers at once.
        "reserve_seqs": "UPDATE sqlite_sequence SET seq = seq + :count "
        "WHERE name = 'deliveries' RETURNING seq - :count + 1",
    },
)


def _bind(params: Params, now: float) -> dict[str, Any]:
    """Parameters for sqlite3: the plan's clock added, lists as the JSON `json_each` reads."""
    bound = {k: orjson.dumps(v).decode() if isinstance(v, list) else v for k, v in params.items()}
    bound["now"] = now
    return bound


def _runner(conn: sqlite3.Connection) -> Any:
    """A statement executor on `conn` for one plan, with one clock reading for all of it."""
    now = time.time()

    def execute(statement: Statement) -> Result:
        sql = SQLITE.render(statement.sql)
        if not sql.strip():
            return Result([], 0)
        if statement.many:
            assert isinstance(statement.params, Sequence)
            cur = conn.executemany(sql, [_bind(p, now) for p in statement.params])
            return Result([], cur.rowcount)
        assert isinstance(statement.params, Mapping)
        cur = conn.execute(sql, _bind(statement.params, now))
        rows = cur.fetchall()
        return Result(rows, cur.rowcount)

    return execute


# Pages kept in memory per connection (SQLite's default is 2 MB): with a deep queue every insert
# touches a page of each index at a random place, and misses cost more than the insert.
CACHE_KIB = 16 * 1024


class SQLiteEngine(Engine):
    """The store's engine on one SQLite file."""

    dialect = SQLITE
    leases_durable = False  # the file and the relay restart together (see Engine)

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._writer: Writer | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._pause_reason: str | None = None
        self._slot_lock = asyncio.Lock()
        self._lock_file: IO[bytes] | None = None

    # lifecycle -----------------------------------------------------------------------------
    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        """A connection to the file; only the one `open()` makes may create it: a reader that
        connects after the file was removed must fail, not leave a new, empty database there
        (a restart would then use it without saying so)."""
        target = f"file:{quote(os.path.abspath(self.path))}?mode={'rwc' if create else 'rw'}"
        conn = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # a deleted row's bytes are overwritten
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return conn

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreUnavailable(
                f"SQLite {sqlite3.sqlite_version} is too old: the relay needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (RETURNING, MATERIALIZED); use a "
                "Python built with a newer SQLite (the official image has one)"
            )
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        ran_here_before = _exists(f"{self.path}.lock")
        self._lock_file = _lock_exclusively(f"{self.path}.lock")
        existed = _exists(self.path)
        conn = self._connect(create=True)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"SQLite at {self.path} refused WAL mode ({mode})")
        self.applied_migrations = _migrate(conn)
        if not existed:
            log.warning(
                "created a new, empty database: if one was expected here, the relay is not "
                "using it (check RELAY_DATABASE_URL and the volume)"
                + (" -- a relay used this path before" if ran_here_before else ""),
                extra={"store": "sqlite", "path": self.path},
            )
        # A previous process may have died mid-delivery: what it held goes back in line. Rows
        # in a bulk job stay in it (the job may be running upstream): this process takes the
        # job over at once, and resumes polling it.
        conn.execute(
            "UPDATE deliveries SET status = 'queued', lease_owner = NULL, lease_until = NULL "
            "WHERE status = 'delivering' AND job_id IS NULL"
        )
        conn.execute(
            "UPDATE bulk_jobs SET owner = NULL, lease_until = NULL "
            "WHERE status IN ('waiting', 'running')"
        )
        conn.execute(
            "UPDATE erasures SET owner = NULL, lease_until = NULL WHERE status = 'running'"
        )
        self._writer = Writer(conn, self.path)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        self._readers.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def ping(self) -> bool:
        """Ready only while the store can both read and write (readiness fails with writes)."""
        if self._writer is None or not self._writer.alive():
            return False
        try:
            await self.read(probe)
            await self.write(health)
        except (sqlite3.Error, StoreUnavailable):
            return False
        return True

    # running plans -------------------------------------------------------------------------
    async def write(
        self,
        plan: PlanFactory[T],
        *,
        atomic: bool = True,
        durable: bool = True,
        ingest: bool = False,
    ) -> T:
        if self._writer is None:
            raise StoreUnavailable("the store is closed")
        result: T = await self._writer.submit(
            lambda conn: drive(plan(), _runner(conn)), durable=durable, ingest=ingest
        )
        return result

    async def after_purge(self) -> None:
        """Copy the WAL into the file and truncate it (on a connection of its own: a checkpoint
        cannot run inside the writer's transactions), so no deleted page stays readable there.
        A reader holding an old snapshot may keep it busy: tried again for a few seconds."""
        if self._writer is None:
            raise StoreUnavailable("the store is closed")

        def checkpoint() -> bool:
            conn = self._connect()
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                return int(busy) == 0
            finally:
                conn.close()

        loop = asyncio.get_running_loop()
        for _ in range(50):
            if await loop.run_in_executor(None, checkpoint):
                return
            await asyncio.sleep(0.1)
        log.warning("the WAL could not be truncated after a purge: readers kept it busy")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def read(self, plan: PlanFactory[T], *, snapshot: bool = False) -> T:
        if self._writer is None:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._readers, lambda: drive(plan(), _runner(self._reader()))
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from None

    # pacing: one process owns the file, so the slots live in memory ---------------------------
    async def reserve_send_slot(self, interval: float) -> float:
        async with self._slot_lock:
            slot = max(time.time(), self._next_slot, self._paused_until)
            self._next_slot = slot + interval
            return slot

    async def release_send_slot(self, slot: float, interval: float) -> None:
        async with self._slot_lock:
            if self._next_slot == slot + interval:  # nothing reserved after it
                self._next_slot = slot

    async def pause_sending(self, until: float, *, reason: str | None = None) -> None:
        async with self._slot_lock:
            if until > self._paused_until:
                self._paused_until, self._pause_reason = until, reason

    async def send_pause(self) -> tuple[float, str | None]:
        return self._paused_until, self._pause_reason


def _migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations in one transaction; answer the versions applied."""
    applied: list[int] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for migration in migrations("sqlite"):
            if migration.version in done:
                continue
            for statement in migration.statements():
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, time.time()),
            )
            applied.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


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
