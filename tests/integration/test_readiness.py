"""Readiness fails while writes fail, and a vanished or replaced SQLite file is noticed; probes
are shared, not one write each. In process over the real app, with a real store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.inprocess import InProcessRelay, run
from tests.relay import ADMIN_KEY


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
