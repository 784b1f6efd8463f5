"""The store layer written once: the same schema, signals and batch reading on both backends.

Store-level tests: a store opened in this event loop, on SQLite and on PostgreSQL (the
`database_url` fixture), driven through the `Store` interface the routes and dispatcher use.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import psycopg
import pytest

from app.domain.errors import NothingStored, StoreUnavailable
from app.domain.models import NewUpdate
from app.domain.rules import REFUSED
from app.simulator.process import SimulatorProcess
from app.store.migrations import migrations
from app.store.postgres.engine import POSTGRES
from app.store.rows import PAYLOAD_CHUNK, batch_items, encode_batch
from app.store.sqlite.engine import SQLITE
from app.store.store import Store, open_store
from tests import pg
from tests.inprocess import InProcessRelay
from tests.inprocess import run as run_app
from tests.relay import ADMIN_KEY

T = TypeVar("T")


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return asyncio.run(asyncio.wait_for(fn(*args), timeout=60))


async def opened(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


def claim_args(owner: str = "test") -> dict[str, Any]:
    return {"owner": owner, "lease_seconds": 30, "max_merge": 100}


async def execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run SQL on the store's database behind its back (as an old relay version would have)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            conn.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
        cur = await aconn.execute(sql, params)  # type: ignore[arg-type]
        return await cur.fetchall() if cur.description else []


# signals -------------------------------------------------------------------------------------
def test_commits_signal_new_work_and_settled_deliveries(database_url: str) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            store.signals.work.clear()
            result = await store.deliveries.enqueue(
                [NewUpdate(company_id="acme", metadata={"plan": "pro"})], source="api", caller="t"
            )
            assert store.signals.work.is_set()  # set by the commit itself: nobody poked
            (delivery_id,) = result.ids
            assert delivery_id is not None
            claim = await store.claims.claim(**claim_args())
            assert claim is not None and claim.ids == [delivery_id]
            with store.signals.watching(delivery_id) as settled:
                assert not settled.is_set()
                await store.claims.mark_delivered(
                    claim, status=202, request_id="r", sent_versions={}
                )
                assert settled.is_set()
        finally:
            await store.close()

    run(main)


def test_postgres_wakes_every_replica_through_listen_notify() -> None:
    """A replica's dispatcher wakes for work another replica stored, without its poll."""

    async def main(url: str) -> None:
        accepting, other = await opened(url), await opened(url)
        try:
            channel = other.engine._channel  # type: ignore[attr-defined]
            await asyncio.wait_for(channel.listening.wait(), timeout=10)
            await asyncio.sleep(0.2)  # the listener's own start-up wake-up has passed
            other.signals.work.clear()
            await accepting.deliveries.enqueue(
                [NewUpdate(company_id="acme", metadata={"n": 1})], source="api", caller="t"
            )
            await asyncio.wait_for(other.signals.work.wait(), timeout=5)

            # A dead letter replayed on one replica wakes the other one too.
            claim = await other.claims.claim(**claim_args())
            assert claim is not None
            await other.claims.mark_dead(claim, status=400, error="bad", request_id=None)
            other.signals.work.clear()
            assert await accepting.deliveries.replay(claim.ids[0]) is not None
            await asyncio.wait_for(other.signals.work.wait(), timeout=5)
        finally:
            await accepting.close()
            await other.close()

    with pg.fresh_database() as name:
        run(main, pg.database_url(name))


def test_only_a_failed_enqueue_says_nothing_was_stored(database_url: str) -> None:
    """The 503 of a route says "nothing was stored" only when storing itself failed: a read
    that fails after the commit (the `Prefer: wait` poll) must not invite a duplicate."""

    async def main() -> None:
        store = await opened(database_url)
        await store.close()
        with pytest.raises(NothingStored):
            await store.deliveries.enqueue(
                [NewUpdate(company_id="a", metadata={})], source="api", caller="t"
            )
        with pytest.raises(StoreUnavailable) as read_failure:
            await store.deliveries.get("x")
        assert not isinstance(read_failure.value, NothingStored)

    run(main)


def test_recent_answers_come_newest_first_without_the_relays_refusals(
    database_url: str,
) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            for i in range(4):
                await store.deliveries.enqueue(
                    [NewUpdate(company_id=f"c{i}", metadata={})], source="api", caller="t"
                )
            outcomes = [(202, None), (500, "boom"), (None, REFUSED + "control character")]
            for status, error in outcomes:
                claim = await store.claims.claim(**claim_args())
                assert claim is not None
                if status == 202:
                    await store.claims.mark_delivered(
                        claim, status=202, request_id="r", sent_versions={}
                    )
                elif status == 500:
                    await store.claims.mark_retry(claim, status=500, error="boom", delay=60)
                else:
                    await store.claims.mark_dead(
                        claim, status=None, error=str(error), request_id=None
                    )
            answers = await store.deliveries.recent_answers(
                10
            )  # c3 is queued, never sent: no answer
            assert [(a.company_id, a.status, a.error) for a in answers] == [
                ("c1", 500, "boom"),
                ("c0", 202, None),
            ]
            assert [a.company_id for a in await store.deliveries.recent_answers(1)] == ["c1"]
        finally:
            await store.close()

    run(main)


# schema --------------------------------------------------------------------------------------
def _sqlite_schema(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        columns = {t: sorted(r[1] for r in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
        indexes = sorted(
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        )
        return {"columns": columns, "indexes": indexes}
    finally:
        conn.close()


async def _postgres_schema(url: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, column_name"
        )
        columns: dict[str, list[str]] = {}
        for table, column in await cur.fetchall():
            columns.setdefault(table, []).append(column)
        cur = await conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key' ORDER BY indexname"
        )
        indexes = [r[0] for r in await cur.fetchall()]
        return {"columns": columns, "indexes": indexes}


def test_both_backends_migrate_to_the_same_tables_columns_and_indexes(tmp_path: Any) -> None:
    async def main(path: str, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        for store_url in (f"sqlite:///{path}", url):
            store = await opened(store_url)
            await store.close()
        return _sqlite_schema(path), await _postgres_schema(url)

    with pg.fresh_database() as name:
        sqlite_schema, postgres_schema = run(main, str(tmp_path / "r.db"), pg.database_url(name))
    # PostgreSQL alone keeps the shared send-slot row (SQLite's slots live in the process).
    postgres_schema["columns"].pop("pacing")
    assert sqlite_schema == postgres_schema


def test_the_status_rule_holds_on_both_backends(database_url: str) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            await store.deliveries.enqueue(
                [NewUpdate(company_id="acme", metadata={})], source="api", caller="t"
            )
        finally:
            await store.close()
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
            await execute(database_url, "UPDATE deliveries SET status = 'lost'")

    run(main)


def test_every_migration_is_numbered_in_order_on_both_backends() -> None:
    for backend in ("sqlite", "postgres"):
        found = migrations(backend)  # type: ignore[arg-type]
        assert [m.version for m in found] == list(range(1, len(found) + 1))
        assert all(m.statements() for m in found)


# batches -------------------------------------------------------------------------------------
def test_a_batch_stored_before_chunks_still_expands_in_order(database_url: str) -> None:
    """Batches stored by an earlier version (one JSON array) are still read and delivered."""

    async def main() -> None:
        store = await opened(database_url)
        try:
            updates = [NewUpdate(company_id=f"c{i}", metadata={"i": i}) for i in range(5)]
            result = await store.deliveries.enqueue(updates, source="bulk", caller="t", batch=True)
            old_payload = orjson.dumps([[u.company_id, u.metadata] for u in updates])
            await execute(
                database_url,
                "UPDATE batches SET payload = %s, payload_format = 'array' WHERE id = %s",
                (old_payload, result.batch_id),
            )
            staged = await store.deliveries.get(f"{result.batch_id}.3")
            assert staged is not None
            assert (staged.company_id, staged.metadata, staged.status) == ("c3", {"i": 3}, "queued")
            claimed = []
            while (claim := await store.claims.claim(**claim_args())) is not None:
                claimed.append((claim.company_id, claim.updates[0].metadata))
                await store.claims.mark_delivered(
                    claim, status=202, request_id=None, sent_versions={}
                )
            assert claimed == [(f"c{i}", {"i": i}) for i in range(5)]
        finally:
            await store.close()

    run(main)


def test_a_staged_update_is_read_from_its_chunk_across_chunk_boundaries(
    database_url: str,
) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            count = 2 * PAYLOAD_CHUNK + 500
            updates = [
                NewUpdate(company_id=f"c{i}", metadata={"note": f"line\nbreak {i}"})
                for i in range(count)
            ]
            result = await store.deliveries.enqueue(updates, source="bulk", caller="t", batch=True)
            (payload,) = (
                await execute(
                    database_url, "SELECT payload FROM batches WHERE id = %s", (result.batch_id,)
                )
            )[0]
            assert bytes(payload).count(b"\n") == 2  # one line per chunk: newlines escaped
            for i in (0, PAYLOAD_CHUNK - 1, PAYLOAD_CHUNK, 2 * PAYLOAD_CHUNK, count - 1):
                staged = await store.deliveries.get(f"{result.batch_id}.{i}")
                assert staged is not None
                assert (staged.company_id, staged.metadata) == (
                    f"c{i}",
                    {"note": f"line\nbreak {i}"},
                )
            assert await store.deliveries.get(f"{result.batch_id}.{count}") is None
        finally:
            await store.close()

    run(main)


def test_any_slice_of_a_stored_batch_reads_the_same_as_the_updates() -> None:
    updates = [
        NewUpdate(company_id=f"c{i}", metadata={"i": i}) for i in range(2 * PAYLOAD_CHUNK + 7)
    ]
    payload = encode_batch(updates)
    expected = [[u.company_id, u.metadata] for u in updates]
    for start, stop in [
        (0, 1),
        (0, PAYLOAD_CHUNK),
        (PAYLOAD_CHUNK - 3, PAYLOAD_CHUNK + 3),
        (PAYLOAD_CHUNK, 3 * PAYLOAD_CHUNK),
        (2 * PAYLOAD_CHUNK + 6, 2 * PAYLOAD_CHUNK + 7),
        (5, 2 * PAYLOAD_CHUNK + 7),
    ]:
        assert batch_items(payload, "chunks", start, stop) == expected[start:stop], (start, stop)
    assert batch_items(orjson.dumps(expected), "array", 3, 9) == expected[3:9]
    # Still one JSON array: a relay of the previous version (mid-rollout, or after a rollback)
    # reads it whole.
    assert orjson.loads(payload) == expected
    with pytest.raises(ValueError, match="unknown batch payload format"):
        batch_items(payload, "lines", 0, 1)


# the dialects --------------------------------------------------------------------------------
def test_one_statement_renders_for_each_engine() -> None:
    sql = (
        "UPDATE t SET n = GREATEST(n, :n), at = {now} "
        "WHERE id = ANY(:ids) AND id <> ALL(:skip) FOR UPDATE SKIP LOCKED"
    )
    assert SQLITE.render(sql) == (
        "UPDATE t SET n = MAX(n, :n), at = :now WHERE id IN (SELECT value FROM json_each(:ids)) "
        "AND id NOT IN (SELECT value FROM json_each(:skip))"
    )
    assert POSTGRES.render(sql) == (
        "UPDATE t SET n = GREATEST(n, %(n)s), at = extract(epoch FROM now())::float8 "
        "WHERE id = ANY(%(ids)s) AND id <> ALL(%(skip)s) FOR UPDATE SKIP LOCKED"
    )


# input that looks like the shared SQL's own syntax ---------------------------------------------
SQL_LOOKALIKES = [
    ":now",
    "{now}",
    "%(id)s",
    "100%",
    "= ANY(:ids)",
    "'; DROP TABLE deliveries; --",
    "FOR UPDATE SKIP LOCKED",
    "GREATEST(",
    "a\\nb",
    '["x",{}]',
]


def test_values_that_look_like_sql_syntax_are_stored_and_sent_as_given(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Ids, property names and values are parameters, never SQL text: what looks like a
    placeholder, a dialect token or a payload line break is stored and delivered unchanged."""

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            singles = []
            for i, text in enumerate(SQL_LOOKALIKES):
                r = await relay.post_company(f"single {text}", {text: text, f"n{i}": i})
                assert r.status_code == 202, r.text
                singles.append(r.json()["id"])
            bulk = {
                "companies": [
                    {"company_id": f"bulk {text}", "metadata": {text: text}}
                    for text in SQL_LOOKALIKES
                ]
            }
            batch = (await relay.post("/companies/bulk", json=bulk)).json()["batch_id"]
            listed = await relay.get(
                "/deliveries", params={"company_id": "single :now"}, key=ADMIN_KEY
            )
            assert [d["company_id"] for d in listed.json()["items"]] == ["single :now"], listed.text
            for delivery_id in singles:
                await relay.wait_for(delivery_id, "delivered", within=30)
            await relay.batch_done(batch)

    run_app(main())
    for i, text in enumerate(SQL_LOOKALIKES):
        assert sim.company(f"single {text}") == {text: text, f"n{i}": i}
        assert sim.company(f"bulk {text}") == {text: text}


def test_a_reader_never_recreates_a_removed_sqlite_file(tmp_path: Any) -> None:
    """Reads after the file was removed fail (readiness says so) and leave no new, empty
    database behind, which a restart would use without the warning a new database gets."""

    async def main() -> None:
        path = tmp_path / "relay.db"
        store = await opened(f"sqlite:///{path}")
        try:
            path.unlink()  # before any reader thread has connected
            with pytest.raises(StoreUnavailable):
                await store.deliveries.get("x")
            assert not await store.ping()
            assert not path.exists()
        finally:
            await store.close()

    run(main)


# the property catalogue ----------------------------------------------------------------------
def _names(prefix: str, count: int, per_update: int = 100) -> list[dict[str, Any]]:
    """`count` distinct property names, `per_update` to an update's metadata."""
    names = [f"{prefix}{i:04d}" for i in range(count)]
    return [{n: 1 for n in names[i : i + per_update]} for i in range(0, count, per_update)]


async def _walk(store: Store, *, limit: int, conflicts: bool = False) -> list[list[str]]:
    """Every page of the catalogue, following `next` from the start."""
    pages: list[list[str]] = []
    after = None
    while True:
        page = await store.catalogue.page(after=after, limit=limit, conflicts=conflicts)
        pages.append([p.name for p in page.properties])
        if page.next is None:
            return pages
        assert page.next == pages[-1][-1]
        after = page.next


def test_one_caller_cannot_take_every_name_of_the_catalogue(database_url: str) -> None:
    """With room for 2,500 names and 2,000 a caller, a caller sending 3,000 names leaves room
    for another's; the names it sent past its quota are reported, and a store opened later (a
    restart, another replica) holds it to the same quota from the table."""
    refused: list[tuple[str, int]] = []
    later_refused: list[tuple[str, int]] = []

    async def main() -> tuple[dict[str | None, int], set[str]]:
        store = await opened(database_url)
        try:
            store.catalogue.limit_callers(
                2_000, on_refused=lambda c, n: refused.append((c, n)), max_names=2_500
            )
            store.catalogue.record(_names("a", 3_000), source="bulk", caller="alpha")
            store.catalogue.record(_names("b", 400), source="api", caller="beta")
            # a name another caller added keeps its owner; a known name takes a new type
            store.catalogue.record([{"a0001": "x", "b0001": "x"}], source="api", caller="beta")
            owners: dict[str | None, int] = {}
            for prop in await store.catalogue.properties():
                owners[prop.added_by] = owners.get(prop.added_by, 0) + 1
        finally:
            await store.close()
        store = await opened(database_url)
        try:
            store.catalogue.limit_callers(
                2_000, on_refused=lambda c, n: later_refused.append((c, n))
            )
            await store.catalogue.flush()  # learns the names and their callers from the table
            store.catalogue.record([{"a9999": 1, "c0001": 1}], source="api", caller="alpha")
            store.catalogue.record([{"c0002": 1}], source="api", caller="gamma")
            names = {p.name for p in await store.catalogue.properties()}
        finally:
            await store.close()
        return owners, names

    owners, names = run(main)
    assert owners == {"alpha": 2_000, "beta": 400}
    assert refused == [("alpha", 1_000)]
    assert later_refused == [("alpha", 2)]
    assert "c0002" in names and not {"a9999", "c0001"} & names


def test_paging_walks_every_name_exactly_once(database_url: str) -> None:
    async def main() -> tuple[list[list[str]], list[list[str]], list[list[str]], list[str]]:
        store = await opened(database_url)
        try:
            store.catalogue.record(_names("p", 30, per_update=10), source="api", caller="svc")
            # every third name seen with a second type: 10 conflicts
            store.catalogue.record(
                [{f"p{i:04d}": "text" for i in range(0, 30, 3)}], source="api", caller="svc"
            )
            pages = await _walk(store, limit=7)
            conflicts = await _walk(store, limit=3, conflicts=True)
            assert await store.catalogue.forget("p0007")
            after_forget = await _walk(store, limit=7)
            page = await store.catalogue.page(after="p0027", limit=7, conflicts=False)
            assert page.conflicts == 10
            return pages, conflicts, after_forget, [p.name for p in page.properties]
        finally:
            await store.close()

    pages, conflicts, after_forget, tail = run(main)
    every = [f"p{i:04d}" for i in range(30)]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [name for page in pages for name in page] == every
    assert [name for page in conflicts for name in page] == every[::3]
    assert [len(p) for p in conflicts] == [3, 3, 3, 1]
    assert [name for page in after_forget for name in page] == [n for n in every if n != "p0007"]
    assert tail == ["p0028", "p0029"]
