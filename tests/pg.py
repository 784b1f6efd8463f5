"""PostgreSQL for the tests: a fresh database per test, and a TCP proxy that can cut it off.

The server is the one this machine and CI run (`RELAY_TEST_POSTGRES_URL`, default
`postgresql://postgres@127.0.0.1:5432/postgres`). Without one the PostgreSQL tests skip and say
so; with `RELAY_TEST_REQUIRE_POSTGRES=1` (as `.ci/run` sets it) they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

# For a test that starts relay processes (`relay_factory`) but whose behaviour is the same on
# both stores: it runs on SQLite only instead of once per backend.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@functools.cache
def unavailable_reason() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"PostgreSQL at {_where(ADMIN_URL)} is unreachable ({first})"
    return None


def require_postgres() -> None:
    """Skip the calling test without PostgreSQL, or fail when CI requires it."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("RELAY_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}, and RELAY_TEST_REQUIRE_POSTGRES=1 makes it mandatory")
    pytest.skip(
        f"{reason}: the PostgreSQL variants of the tests are skipped "
        "(start PostgreSQL on 127.0.0.1:5432 or set RELAY_TEST_POSTGRES_URL to run them)"
    )


def database_url(name: str, *, port: int | None = None) -> str:
    """The URL of database `name` on the test server (through another port when given)."""
    parts = urlsplit(ADMIN_URL)
    netloc = parts.netloc
    if port is not None:
        userinfo = netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, ""))


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """Create `relay_test_<random>`, yield its name, drop it (and its connections) after."""
    require_postgres()
    name = f"relay_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def query(name: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    """Run one statement on database `name` and answer its rows (empty without any)."""
    with psycopg.connect(database_url(name), autocommit=True) as conn:
        cur = conn.execute(statement.encode(), args or None)
        return list(cur.fetchall()) if cur.description else []


def terminate_connections(name: str, application_name: str = "userpilot-relay") -> int:
    """Kill every server process serving the relay on database `name`; answer how many."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            (name, application_name),
        ).fetchall()
    return len(rows)


class CuttableProxy:
    """A TCP proxy to PostgreSQL on its own port; `cut()` refuses and severs, `restore()` heals.

    It stands in for a network partition or a server restart without touching the shared
    server other tests use.
    """

    def __init__(self) -> None:
        server = urlsplit(ADMIN_URL)
        self.target = (server.hostname or "127.0.0.1", server.port or 5432)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.restore()

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        await self._cut()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._links.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._server is None or writer not in self._links:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._links.add(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._links.difference_update((writer, up_writer))
