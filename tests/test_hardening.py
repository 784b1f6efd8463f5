"""Each attack of the adversarial review, tried again over the real app with a real store.

In-process (`httpx.ASGITransport` over `create_app`), on both stores, with the bundled
Userpilot simulator where delivery matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from app.config import ConfigError, Settings, load_settings
from app.domain.models import NewUpdate
from app.domain.rules import REFUSED
from app.logs import configure_logging
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.relay import ADMIN_KEY, INGEST_KEY, UPSTREAM_KEY

OTHER_KEY = "other-ingest-key-55aa"
TWO_CALLERS = f"svc:ingest:{INGEST_KEY},other:ingest:{OTHER_KEY},ops:admin:{ADMIN_KEY}"


# --- 1. control characters never reach a store; a bad stored row never stalls the queue --------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"company_id": "pg-nul\u0000y"}, "company_id"),
        ({"company_id": "tab\there"}, "company_id"),
        ({"company_id": "ok", "metadata": {"k\u0000": 1}}, "metadata.k\u0000"),
        ({"company_id": "ok", "metadata": {"line\nbreak": 1}}, "metadata.line\nbreak"),
    ],
)
def test_control_characters_in_ids_and_names_are_refused(
    database_url: str, body: dict[str, Any], field: str
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            single = await relay.post("/companies", json=body)
            assert single.status_code == 422, single.text
            assert [e["field"] for e in single.json()["errors"]] == [field]
            bulk = await relay.post(
                "/companies/bulk", json={"companies": [{"company_id": "pg-ok"}, body]}
            )
            assert bulk.status_code == 422, bulk.text
            assert [e["field"] for e in bulk.json()["errors"]] == [f"companies[1].{field}"]
            stats = await relay.store.deliveries.stats()
            assert stats.queued == 0  # nothing stored, from either request

    run(main())


def test_control_characters_in_values_are_stored_and_delivered_faithfully(
    database_url: str, sim: SimulatorProcess
) -> None:
    value = "nul\u0000 tab\t bell\u0007 end"

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            r = await relay.post("/companies", json={"company_id": "c1", "metadata": {"v": value}})
            assert r.status_code == 202, r.text
            delivered = await relay.wait_for(r.json()["id"], "delivered")
            assert delivered["metadata"] == {"v": value}

    run(main())
    assert (sim.company("c1") or {}).get("v") == value


@pytest.mark.parametrize(
    "path",
    [
        "/deliveries/a%00b",
        "/deliveries/x.%C2%B2",  # '²' passes str.isdigit(), not int()
        "/deliveries/x.%D9%A3",  # Arabic-Indic three: int() takes it, a stored id never has it
        "/batches/a%00b",
    ],
)
def test_hostile_ids_in_paths_are_404(database_url: str, path: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            r = await relay.get(path, key=ADMIN_KEY)
            assert r.status_code == 404, r.text
            assert r.json()["error"] == "not_found"
            # The admin routes that write take the same ids.
            replay = await relay.post(
                path.replace("/batches/", "/deliveries/") + "/replay", key=ADMIN_KEY
            )
            assert replay.status_code == 404, replay.text

    run(main())


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("company_id=a%00b", "company_id"),
        ("cursor=9999999999999999999", "cursor"),  # past 64 bits: was an OverflowError
        ("cursor=%C2%B2", "cursor"),
    ],
)
def test_hostile_query_parameters_are_422(database_url: str, query: str, field: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            r = await relay.get(f"/deliveries?{query}", key=ADMIN_KEY)
            assert r.status_code == 422, r.text
            assert f"query.{field}" in [e["field"] for e in r.json()["errors"]]
            if field == "company_id":
                for method, path in (("POST", "/deliveries/replay"), ("DELETE", "/deliveries")):
                    extra = "&status=dead" if method == "DELETE" else ""
                    w = await relay.request(method, f"{path}?{query}{extra}", key=ADMIN_KEY)
                    assert w.status_code == 422, w.text

    run(main())


def test_a_stored_batch_row_the_store_cannot_hold_is_dead_lettered_and_the_queue_moves_on(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Rows stored before the door refused them (an upgrade): they must not stall claiming."""

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            stored = await relay.store.deliveries.enqueue(
                [
                    NewUpdate(company_id="pg-ok", metadata={"a": 1}),
                    NewUpdate(company_id="pg-nul\u0000y", metadata={"a": 2}),
                    NewUpdate(company_id="pg-key", metadata={"bad\u0000key": 3}),
                ],
                source="bulk",
                caller="svc",
                batch=True,
            )
            batch = stored.batch_id
            await relay.wait_for(f"{batch}.0", "delivered")
            bad = await relay.wait_for(f"{batch}.1", "dead")
            assert bad["last_error"].startswith(REFUSED)
            assert "control characters" in bad["last_error"]
            refused_key = await relay.wait_for(f"{batch}.2", "dead")
            assert refused_key["last_error"].startswith(REFUSED)
            # Later work is still delivered.
            later = await relay.post("/companies", json={"company_id": "after", "metadata": {}})
            await relay.wait_for(later.json()["id"], "delivered")
            # A refused row stays dead: replaying it would send something else.
            replay = await relay.post(f"/deliveries/{batch}.1/replay", key=ADMIN_KEY)
            assert replay.status_code == 409, replay.text
            replayed = await relay.post("/deliveries/replay", key=ADMIN_KEY)
            assert replayed.json() == {"replayed": 0}

    run(main())
    assert set(sim.companies()) == {"pg-ok", "after"}


# --- 6. readiness fails while writes fail; a vanished database file is noticed ------------------


def test_sqlite_file_removed_refuses_writes_and_readiness(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "data" / "relay.db"

    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{path}") as relay:
            assert (await relay.get("/readyz", key=None)).status_code == 200
            ok = await relay.post("/companies", json={"company_id": "before"})
            assert ok.status_code == 202
            path.unlink()
            refused = await relay.post("/companies", json={"company_id": "after"})
            assert refused.status_code == 503, refused.text
            ready = await _ready_within(relay, 503)
            assert ready.json() == {"status": "unavailable", "store": "unreachable"}
            scrape = (await relay.get("/metrics", key=None)).text
            assert "userpilot_relay_store_up 0.0" in scrape
            for _ in range(3):  # reads on every reader thread: none recreates the file
                await relay.get("/deliveries/x", key=ADMIN_KEY)
                await relay.get("/readyz", key=None)
            assert not path.exists()

    run(main())
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    failing = [e for e in lines if "writes are failing" in e["msg"]]
    assert len(failing) == 1  # once per outage, not once per request
    assert failing[0]["level"] == "error" and "removed" in failing[0]["error"]

    # Starting again where the file was: a new, empty database, and the log says so.
    async def again() -> None:
        async with InProcessRelay(f"sqlite:///{path}") as relay:
            assert (await relay.get("/readyz", key=None)).status_code == 200

    run(again())
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    created = [e for e in lines if "created a new, empty database" in e["msg"]]
    assert created and created[0]["level"] == "warning"
    assert created[0]["path"] == str(path)


async def _ready_within(relay: InProcessRelay, status: int, within: float = 5.0) -> httpx.Response:
    """/readyz once it answers `status` (a probe's answer is reused for a second)."""
    deadline = time.monotonic() + within
    while True:
        ready = await relay.get("/readyz", key=None)
        if ready.status_code == status or time.monotonic() > deadline:
            assert ready.status_code == status, ready.text
            return ready
        await asyncio.sleep(0.1)


def test_readiness_probes_are_shared_not_one_write_each(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{tmp_path / 'r.db'}") as relay:
            pings = 0
            real = relay.store.ping

            async def counted() -> bool:
                nonlocal pings
                pings += 1
                return await real()

            relay.store.ping = counted  # type: ignore[method-assign]
            answers = await asyncio.gather(*(relay.get("/readyz", key=None) for _ in range(50)))
            assert {a.status_code for a in answers} == {200}
            assert pings == 1

    run(main())


def test_sqlite_file_replaced_refuses_writes(tmp_path: Any) -> None:
    path = tmp_path / "relay.db"

    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{path}") as relay:
            assert (await relay.post("/companies", json={"company_id": "a"})).status_code == 202
            path.rename(tmp_path / "moved.db")
            path.write_bytes(b"")  # another file under the same name
            r = await relay.post("/companies", json={"company_id": "b"})
            assert r.status_code == 503
            await _ready_within(relay, 503)

    run(main())


def test_postgres_readiness_fails_while_writes_fail(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: a server that answers reads but refuses writes")
    import psycopg

    name = database_url.rsplit("/", 1)[1]

    def read_only(on: bool) -> None:
        from tests import pg

        with psycopg.connect(pg.ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                + ("on" if on else "off")
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )

    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            assert (await relay.get("/readyz", key=None)).status_code == 200
            read_only(True)
            try:
                deadline = time.monotonic() + 15
                while (await relay.get("/readyz", key=None)).status_code != 503:
                    assert time.monotonic() < deadline, "readiness stayed 200 with writes refused"
                    await asyncio.sleep(0.2)
                r = await relay.post("/companies", json={"company_id": "ro"})
                assert r.status_code == 503, r.text
            finally:
                read_only(False)

    run(main())


# --- 7. fair scheduling and bounded bulk parsing --------------------------------------------


def test_a_single_update_never_waits_behind_another_callers_import(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with InProcessRelay(
            database_url,
            endpoint=sim.url,
            relay_api_keys=TWO_CALLERS,
            relay_rate_limit_per_minute=600,
        ) as relay:
            bulk = {"companies": [{"company_id": f"imp-{i}"} for i in range(3000)]}
            assert (await relay.post("/companies/bulk", json=bulk)).status_code == 202
            await asyncio.sleep(0.5)  # the import is draining
            started = time.monotonic()
            r = await relay.post(
                "/companies",
                key=OTHER_KEY,
                json={"company_id": "urgent", "metadata": {"x": 1}},
                headers={"Prefer": "wait=10"},
            )
            assert r.status_code == 200, r.text
            waited = time.monotonic() - started
            assert r.json()["status"] == "delivered"
            assert waited < 5, waited

    run(main())
    calls = [r["body"]["company_id"] for r in sim.requests("/v1/companies/identify")]
    # At 10 calls a second the import takes five minutes; the single update went within the
    # next few slots, not after the thousands stored before it.
    assert "urgent" in calls
    assert calls.index("urgent") <= 12, calls.index("urgent")


def test_bulk_bodies_are_parsed_a_few_at_a_time(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(
            database_url, relay_bulk_concurrency=1, relay_bulk_queue_seconds=0.2
        ) as relay:
            body = {"companies": [{"company_id": "q"}]}
            assert (await relay.post("/companies/bulk", json=body)).status_code == 202
            admission = relay.app.state.bulk_admission
            # Another caller's bulk is being parsed: the turn is taken, this one waits, then
            # gives up with a 503 and stores nothing.
            async with admission.turn():
                busy = await relay.post("/companies/bulk", json=body)
            assert busy.status_code == 503
            assert busy.json()["error"] == "busy"
            assert busy.headers["retry-after"] == "5"
            # Bodies held in memory are bounded too: past them, a 503 before reading the body.
            async with contextlib.AsyncExitStack() as held:
                for _ in range(3):  # one parsing + two waiting, with a concurrency of 1
                    await held.enter_async_context(admission.holding())
                started = time.monotonic()
                full = await relay.post("/companies/bulk", json=body)
                assert full.status_code == 503 and full.json()["error"] == "busy"
                assert time.monotonic() - started < 0.2  # refused at once, not after waiting
            assert (await relay.post("/companies/bulk", json=body)).status_code == 202
            assert (await relay.store.deliveries.stats()).queued == 2

    run(main())


def test_a_bad_stored_update_is_refused_alone_and_its_company_siblings_are_delivered(
    database_url: str, sim: SimulatorProcess
) -> None:
    """An update stored before the door refused it must not take its company's others down."""

    async def main() -> None:
        async with InProcessRelay(
            database_url, endpoint=sim.url, relay_merge_window_seconds=0.5
        ) as relay:
            bad = await relay.store.deliveries.enqueue(
                [NewUpdate(company_id="sib", metadata={"tab\tkey": 1})], source="api", caller="svc"
            )
            good = await relay.post(
                "/companies", json={"company_id": "sib", "metadata": {"plan": "pro"}}
            )
            await relay.wait_for(good.json()["id"], "delivered")
            dead = await relay.wait_for(str(bad.ids[0]), "dead")
            assert dead["last_error"].startswith(REFUSED)
            assert dead["metadata"] == {"tab\tkey": 1}  # kept as stored, for the operator

    run(main())
    assert sim.company("sib") == {"plan": "pro"}


# --- 12. bodies that stall or trickle; 5. megabyte headers ------------------------------------


async def _trickle(first: bytes, pause: float) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(pause)
    yield b"}"


def test_a_stalled_body_is_408_and_stores_nothing(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(
            f"sqlite:///{tmp_path / 'r.db'}", relay_body_idle_timeout_seconds=0.3
        ) as relay:
            r = await relay.post(
                "/companies",
                content=_trickle(b'{"company_id": "slow"', 2.0),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 408, r.text
            assert r.json()["error"] == "request_timeout"
            assert (await relay.store.deliveries.stats()).queued == 0

    run(main())


def test_a_trickled_body_is_408_after_the_total_timeout(tmp_path: Any) -> None:
    async def drip() -> AsyncIterator[bytes]:
        for part in (b'{"company_id":', b' "drip"', b', "metadata": {}', b"}"):
            yield part
            await asyncio.sleep(0.2)  # never idle for long, but slow overall

    async def main() -> None:
        async with InProcessRelay(
            f"sqlite:///{tmp_path / 'r.db'}",
            relay_body_idle_timeout_seconds=5,
            relay_body_timeout_seconds=0.5,
        ) as relay:
            r = await relay.post(
                "/companies", content=drip(), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 408, r.text

    run(main())


def test_megabyte_headers_are_refused_cheaply(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{tmp_path / 'r.db'}") as relay:
            huge = "t=1," + ",".join(["v1=00"] * 200_000)
            r = await relay.post(
                "/companies", json={"company_id": "h"}, headers={"X-Padding": huge}
            )
            assert r.status_code == 431
            assert r.json()["error"] == "request_header_fields_too_large"
            assert (await relay.store.deliveries.stats()).queued == 0
            # The probes are refused the same way, and still answer normal requests.
            assert (await relay.get("/healthz", key=None)).status_code == 200

    run(main())


def test_unicode_digits_in_content_length_are_not_a_500(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{tmp_path / 'r.db'}") as relay:
            body = b'{"company_id": "cl"}'
            r = await relay.post(
                "/companies",
                content=body,
                # Byte 0xB2 reads as '²' (latin-1): str.isdigit() says yes, int() says no.
                headers={"Content-Type": "application/json", "Content-Length": b"\xb2"},
            )
            assert r.status_code in (202, 400, 422), r.text

    run(main())


# --- 13. scoped reads; property versions are pruned without breaking order ----------------------


def test_an_ingest_key_reads_only_what_it_stored(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url, relay_api_keys=TWO_CALLERS) as relay:
            mine = (await relay.post("/companies", json={"company_id": "s1"})).json()["id"]
            batch = (
                await relay.post("/companies/bulk", json={"companies": [{"company_id": "s2"}]})
            ).json()["batch_id"]
            for path in (f"/deliveries/{mine}", f"/batches/{batch}", f"/deliveries/{batch}.0"):
                assert (await relay.get(path)).status_code == 200, path
                other = await relay.get(path, key=OTHER_KEY)
                assert other.status_code == 404, path
                assert "s1" not in other.text and "s2" not in other.text
                assert (await relay.get(path, key=ADMIN_KEY)).status_code == 200, path

    run(main())


def test_property_versions_are_pruned_but_kept_while_an_older_update_waits(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def versions(relay: InProcessRelay) -> set[tuple[str, str]]:
        store = relay.store
        claim_free = getattr(store.engine, "path", None)
        if claim_free is not None:  # SQLite
            import sqlite3

            with sqlite3.connect(claim_free) as conn:
                return {
                    (c, k) for c, k in conn.execute("SELECT company_id, key FROM property_versions")
                }
        import psycopg

        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT company_id, key FROM property_versions").fetchall()
            return {(str(c), str(k)) for c, k in rows}

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            sim.add_fault(action="status", status=400, times=1)
            old = (
                await relay.post("/companies", json={"company_id": "kept", "metadata": {"p": 1}})
            ).json()["id"]
            await relay.wait_for(old, "dead")
            newer = (
                await relay.post("/companies", json={"company_id": "kept", "metadata": {"p": 2}})
            ).json()["id"]
            await relay.wait_for(newer, "delivered")
            done = (
                await relay.post("/companies", json={"company_id": "gone", "metadata": {"q": 1}})
            ).json()["id"]
            await relay.wait_for(done, "delivered")
            assert await versions(relay) == {("kept", "p"), ("gone", "q")}
            await relay.store.deliveries.prune(delivered_before=time.time() + 60)
            # "kept" still has a dead, older update: its version must stay so a replay of it
            # never overwrites p=2.
            assert await versions(relay) == {("kept", "p")}
            replay = await relay.post(f"/deliveries/{old}/replay", key=ADMIN_KEY)
            assert replay.status_code == 200
            await relay.wait_for(old, "delivered")

    run(main())
    assert sim.company("kept") == {"p": 2}


# --- 8, 9. start-up errors never carry a secret ---------------------------------------------------


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir("/")  # no .env here
    monkeypatch.setenv("USERPILOT_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("RELAY_API_KEYS", f"svc:ingest:{INGEST_KEY}")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    return str(refused.value)


def test_a_bad_percent_escape_in_the_database_url_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refusal(
        monkeypatch, RELAY_DATABASE_URL="postgresql://relay:PGPASS%ZZsecret@db/relay"
    )
    assert message.startswith("RELAY_DATABASE_URL:")
    assert "secret" not in message and "PGPASS" not in message
    assert "\n" not in message


@pytest.mark.parametrize("variable", ["USERPILOT_ENDPOINT", "RELAY_PUBLIC_URL", "STRIPE_API_BASE"])
def test_credentials_in_urls_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    message = _refusal(monkeypatch, **{variable: "http://user:hunter2pass@example.test"})
    assert message.startswith(f"{variable}:")
    assert "credentials" in message
    assert "hunter2pass" not in message


def test_httpx_never_logs_request_urls(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging("DEBUG")
    try:
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        with (
            caplog.at_level(logging.DEBUG),
            httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client,
        ):
            client.get("http://127.0.0.1:9/v1/secret-path?token=abc")
        assert not [r for r in caplog.records if r.name.startswith("httpx")]
    finally:
        configure_logging("INFO")


def test_the_fair_lane_keeps_order_per_company(database_url: str, sim: SimulatorProcess) -> None:
    """A single update that jumps the queue carries the older batch value of its company with
    it (merged, newer wins): the older value never lands after the newer one."""

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            companies = [{"company_id": f"b{i}", "metadata": {"v": "old"}} for i in range(2500)]
            companies[2400] = {"company_id": "same", "metadata": {"v": "old", "kept": 1}}
            assert (
                await relay.post("/companies/bulk", json={"companies": companies})
            ).status_code == 202
            r = await relay.post(
                "/companies",
                json={"company_id": "same", "metadata": {"v": "new"}},
                headers={"Prefer": "wait=10"},
            )
            assert r.status_code == 200, r.text

    run(main())
    calls = [r["body"] for r in sim.requests("/v1/companies/identify")]
    same = [c["metadata"] for c in calls if c["company_id"] == "same"]
    assert same == [{"v": "new", "kept": 1}], same  # one call, merged in arrival order
    assert sim.company("same") == {"v": "new", "kept": 1}
