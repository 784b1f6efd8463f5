"""SQLite's one writer thread: ingest writes group-committed ahead of background work.

Ingest writes (a caller waits on each) that have piled up are committed in a single
transaction: with many requests in flight, one fsync acknowledges all of them. Other writes (a
claim, an outcome, a bulk job's chunk: milliseconds each during a drain) run one per
transaction, taking turns with the ingest groups, so an insert waits for at most one of them,
never for a group of them, and neither kind can starve the other. If one request's work
raises, its group is rolled back and every request runs again alone, so one request's error
never undoes another's work. Before each transaction the thread checks that the database file
is still the one opened: writes through the open handle to a removed or replaced file would
vanish at restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from app.domain.errors import StoreUnavailable

log = logging.getLogger("userpilot_relay.store")

Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", bool]
Queued = tuple[Job, bool]  # the job, and whether it is an ingest write
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
MAX_GROUP = 512


class Writer:
    """Runs write jobs on one connection in one thread; `submit` answers the job's result."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.path = path
        self._conn = conn
        self._jobs: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        stat = os.stat(path)
        self._identity = (stat.st_dev, stat.st_ino)  # the file opened
        self._failing = False
        self._stopping = False
        self._durable = True  # the connection opens with synchronous = FULL
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(
        self,
        job: Callable[[sqlite3.Connection], Any],
        *,
        durable: bool = True,
        ingest: bool = False,
    ) -> Any:
        """Run `job` in a committed transaction; without `durable` the commit may answer
        before it reaches the disk (`PRAGMA synchronous = NORMAL`: in WAL mode a crash of the
        process loses nothing, a power cut may lose it), unless its group holds a durable
        job. Every durable commit makes what was committed before it durable too. An
        `ingest` job is grouped with the other ingest jobs waiting (module docstring)."""
        if self._stopping:  # submit and stop both run on the event loop: no race
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put(((job, future, durable), ingest))
        return await future

    async def stop(self) -> None:
        """Finish the jobs already submitted, then close the connection; a job submitted
        from now on is refused at once (`StoreUnavailable`), never left waiting."""
        self._stopping = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        ingest: list[Job] = []
        other: collections.deque[Job] = collections.deque()
        stop = False
        while True:
            if not ingest and not other:
                if stop:
                    break
                first = self._jobs.get()
                if first is None:
                    break
                (ingest if first[1] else other).append(first[0])
            while not stop:  # everything submitted meanwhile (bounded by the callers)
                try:
                    queued = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    stop = True  # the jobs already taken still run
                else:
                    (ingest if queued[1] else other).append(queued[0])
            if ingest:
                group, ingest = ingest[:MAX_GROUP], ingest[MAX_GROUP:]
                self._loop.call_soon_threadsafe(_settle, self._commit_checked(group))
            if other:
                group = [other.popleft()]
                self._loop.call_soon_threadsafe(_settle, self._commit_checked(group))
        self._conn.close()

    def _commit_checked(self, group: list[Job]) -> list[Outcome]:
        """Commit the group unless the file is gone or replaced; say so once per outage."""
        problem = self._file_problem()
        if problem is None:
            outcomes = self._commit_group(group)
            failed = next((e for _, _, e in outcomes if isinstance(e, StoreUnavailable)), None)
            problem = str(failed) if failed is not None else None
        else:
            failure = StoreUnavailable(problem)
            outcomes = [(future, None, failure) for _, future, _ in group]
        if problem is not None and not self._failing:
            log.error(
                "SQLite writes are failing: updates are refused (503) and readiness fails "
                "until writes succeed",
                extra={"store": "sqlite", "path": self.path, "error": problem[:300]},
            )
        elif problem is None and self._failing:
            log.info("SQLite writes succeed again", extra={"store": "sqlite", "path": self.path})
        self._failing = problem is not None
        return outcomes

    def _sync(self, durable: bool) -> None:
        """FULL: the commit waits for the disk; NORMAL: it does not (WAL mode keeps it safe
        from a crash of the process, not from a power cut). Set only when it changes."""
        if durable != self._durable:
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _file_problem(self) -> str | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return f"the database file {self.path} was removed: restore it, then restart"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"the database file {self.path} was replaced: restart the relay to use it"
        return None

    def _commit_group(self, group: list[Job]) -> list[Outcome]:
        conn = self._conn
        try:
            self._sync(any(durable for _, _, durable in group))
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = [fn(conn) for fn, _, _ in group]
            except Exception as exc:
                conn.execute("ROLLBACK")
                if len(group) == 1:  # alone already: the error is its own, not run again
                    return [(group[0][1], None, _own(exc))]
            else:
                conn.execute("COMMIT")
                return [
                    (future, result, None)
                    for (_, future, _), result in zip(group, results, strict=True)
                ]
            outcomes: list[Outcome] = []
            for fn, future, _ in group:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK")
                    outcomes.append((future, None, _own(exc)))
                else:
                    conn.execute("COMMIT")
                    outcomes.append((future, result, None))
            return outcomes
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(f"SQLite write failed: {exc}")
            return [(future, None, failure) for _, future, _ in group]


def _own(exc: Exception) -> Exception:
    """What a job that raised answers: its error, or `StoreUnavailable` when the file or the
    disk failed (not the request)."""
    return StoreUnavailable(f"SQLite write failed: {exc}") if unavailable(exc) else exc


def unavailable(exc: BaseException) -> bool:
    """A failure of the file or the disk (I/O, full, read-only, locked), not of one request."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.DataError
    )


def _settle(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
