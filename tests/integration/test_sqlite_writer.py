"""SQLite's writer thread: ingest writes go ahead of background work that waits with them,
background work still takes its turn, and one job's error never undoes another's work."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.domain.errors import StoreUnavailable
from app.store.sqlite.writer import Writer


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (name TEXT PRIMARY KEY)")
    return conn


def _insert(name: str, ran: list[str], hold: threading.Event | None = None) -> Callable[..., Any]:
    def job(conn: sqlite3.Connection) -> str:
        if hold is not None:
            assert hold.wait(10)
        ran.append(name)
        conn.execute("INSERT INTO t (name) VALUES (?)", (name,))
        return name

    return job


def _names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM t")}


async def _started(tasks: list[asyncio.Task[Any]]) -> None:
    for _ in range(3):  # each task reaches its `put` before the held job is let go
        await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)


def test_ingest_writes_go_before_background_work_that_waits_with_them(tmp_path: Path) -> None:
    """A claim or a bulk job's chunk takes milliseconds during a drain: an insert queued
    behind three of them commits after the running one, not after all three."""
    path = tmp_path / "w.db"

    async def scenario() -> list[str]:
        writer = Writer(_connect(path), str(path))
        ran: list[str] = []
        hold = threading.Event()
        running = asyncio.create_task(writer.submit(_insert("bg-running", ran, hold)))
        await asyncio.sleep(0.05)  # the writer is inside the held job
        tasks = [
            asyncio.create_task(writer.submit(_insert("bg-1", ran))),
            asyncio.create_task(writer.submit(_insert("bg-2", ran))),
            asyncio.create_task(writer.submit(_insert("ingest-1", ran), ingest=True)),
            asyncio.create_task(writer.submit(_insert("ingest-2", ran), ingest=True)),
        ]
        await _started(tasks)
        hold.set()
        await asyncio.gather(running, *tasks)
        await writer.stop()
        return ran

    ran = asyncio.run(scenario())
    assert ran[0] == "bg-running"
    assert set(ran[1:3]) == {"ingest-1", "ingest-2"}, ran  # both, in one group, next
    assert ran[3:] == ["bg-1", "bg-2"]  # background work in its own order
    assert _names(path) == set(ran)


def test_background_work_takes_its_turn_while_ingest_keeps_coming(tmp_path: Path) -> None:
    """Ingest groups and background jobs alternate: inserts that keep arriving while a group
    commits never starve the dispatcher's claims."""
    path = tmp_path / "w.db"
    in_group, more_submitted = threading.Event(), threading.Event()

    def first_of_group(conn: sqlite3.Connection) -> str:
        in_group.set()
        assert more_submitted.wait(10)
        ran.append("ingest-1")
        conn.execute("INSERT INTO t (name) VALUES ('ingest-1')")
        return "ingest-1"

    ran: list[str] = []

    async def scenario() -> None:
        writer = Writer(_connect(path), str(path))
        hold = threading.Event()
        tasks = [asyncio.create_task(writer.submit(_insert("ingest-0", ran, hold), ingest=True))]
        await asyncio.sleep(0.05)
        queued = [
            asyncio.create_task(writer.submit(_insert("bg", ran))),
            asyncio.create_task(writer.submit(first_of_group, ingest=True)),
            asyncio.create_task(writer.submit(_insert("ingest-2", ran), ingest=True)),
        ]
        await _started(queued)
        hold.set()
        assert await asyncio.to_thread(in_group.wait, 10)
        later = [  # they arrive while the group of ingest-1 and ingest-2 runs
            asyncio.create_task(writer.submit(_insert(f"ingest-{i}", ran), ingest=True))
            for i in (3, 4)
        ]
        await _started(later)
        more_submitted.set()
        await asyncio.gather(*tasks, *queued, *later)
        await writer.stop()

    asyncio.run(scenario())
    assert ran == ["ingest-0", "ingest-1", "ingest-2", "bg", "ingest-3", "ingest-4"]


def test_one_failing_ingest_write_does_not_undo_the_others_in_its_group(tmp_path: Path) -> None:
    path = tmp_path / "w.db"

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (name) VALUES ('half-done')")
        raise ValueError("this request's own error")

    async def scenario() -> list[Any]:
        writer = Writer(_connect(path), str(path))
        ran: list[str] = []
        hold = threading.Event()
        running = asyncio.create_task(writer.submit(_insert("bg", ran, hold)))
        await asyncio.sleep(0.05)
        tasks = [
            asyncio.create_task(writer.submit(_insert("a", ran), ingest=True)),
            asyncio.create_task(writer.submit(failing, ingest=True)),
            asyncio.create_task(writer.submit(_insert("b", ran), ingest=True)),
        ]
        await _started(tasks)
        hold.set()
        results = await asyncio.gather(running, *tasks, return_exceptions=True)
        await writer.stop()
        return results

    results = asyncio.run(scenario())
    assert results[0] == "bg" and results[1] == "a" and results[3] == "b"
    assert isinstance(results[2], ValueError)
    assert _names(path) == {"bg", "a", "b"}  # the failing job's own insert is rolled back


def test_stop_finishes_every_job_already_submitted(tmp_path: Path) -> None:
    path = tmp_path / "w.db"

    async def scenario() -> None:
        writer = Writer(_connect(path), str(path))
        ran: list[str] = []
        hold = threading.Event()
        tasks = [asyncio.create_task(writer.submit(_insert("held", ran, hold)))]
        await asyncio.sleep(0.05)
        tasks += [
            asyncio.create_task(writer.submit(_insert(f"j{i}", ran), ingest=i % 2 == 0))
            for i in range(6)
        ]
        await _started(tasks)
        stopping = asyncio.create_task(writer.stop())
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(*tasks)
        await stopping

    asyncio.run(scenario())
    assert _names(path) == {"held"} | {f"j{i}" for i in range(6)}


@pytest.mark.parametrize("ingest", [True, False])
def test_a_write_to_a_removed_file_is_refused_whichever_kind(tmp_path: Path, ingest: bool) -> None:
    path = tmp_path / "w.db"

    async def scenario() -> BaseException | None:
        writer = Writer(_connect(path), str(path))
        path.unlink()
        try:
            await writer.submit(_insert("lost", []), ingest=ingest)
        except Exception as exc:
            return exc
        finally:
            await writer.stop()
        return None

    error = asyncio.run(scenario())
    assert error is not None and "removed" in str(error)


def test_a_failing_job_alone_in_its_transaction_runs_once(tmp_path: Path) -> None:
    """Background work runs one job per transaction: a job that raises is not run a second
    time to tell its error from a group's."""
    path = tmp_path / "w.db"
    runs: list[int] = []

    def failing(conn: sqlite3.Connection) -> None:
        runs.append(1)
        conn.execute("INSERT INTO t (name) VALUES ('half-done')")
        raise ValueError("its own error")

    async def scenario() -> BaseException | None:
        writer = Writer(_connect(path), str(path))
        try:
            await writer.submit(failing)
        except ValueError as exc:
            return exc
        finally:
            await writer.stop()
        return None

    assert isinstance(asyncio.run(scenario()), ValueError)
    assert runs == [1]
    assert _names(path) == set()


def test_a_write_submitted_once_stop_began_is_refused_not_left_waiting(tmp_path: Path) -> None:
    path = tmp_path / "w.db"

    async def scenario() -> BaseException | None:
        writer = Writer(_connect(path), str(path))
        hold = threading.Event()
        held = asyncio.create_task(writer.submit(_insert("held", [], hold)))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(writer.stop())
        await asyncio.sleep(0)  # stop has begun: the sentinel is queued
        try:
            await asyncio.wait_for(writer.submit(_insert("late", []), ingest=True), 5)
        except Exception as exc:
            return exc
        finally:
            hold.set()
            await held
            await stopping
        return None

    error = asyncio.run(scenario())
    assert isinstance(error, StoreUnavailable), error
    assert _names(path) == {"held"}
