"""Backfills where the process is the point: kill -9 mid-backfill and resume from the last
committed page; the `userpilot-relay backfill` command against a running relay."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.cli import main
from app.simulator.process import SimulatorProcess
from tests import pg
from tests.conftest import RelayFactory
from tests.integration.test_backfill import expected, hubspot_company
from tests.list_stubs import TOKEN, HubSpotStub
from tests.pg import SQLITE_ONLY
from tests.relay import ADMIN_KEY, RelayProcess, wait_until

# Every test here runs real processes: the slow tier.
pytestmark = pytest.mark.process


def env_for(stub: HubSpotStub, **extra: str) -> dict[str, str]:
    return {
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_API_BASE": stub.url,
        "HUBSPOT_COMPANY_ID_PREFIX": "hs-",
        "HUBSPOT_REQUESTS_PER_SECOND": "50",
        "RELAY_BULK_THRESHOLD": "50",
        "RELAY_BULK_POLL_SECONDS": "0.1",
        "RELAY_UPSTREAM_TIMEOUT_SECONDS": "1",
        "RELAY_LEASE_SECONDS": "4",
        **extra,
    }


def backfill(relay: RelayProcess, backfill_id: str) -> dict[str, Any]:
    r = relay.request("GET", f"/backfills/{backfill_id}", key=ADMIN_KEY)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def committed(database_url: str) -> tuple[int, str | None]:
    """The backfill's committed pages and cursor, read from the store itself."""
    sql = "SELECT pages, cursor FROM backfills"
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        rows = pg.query(urlsplit(database_url).path.lstrip("/"), sql)
    assert len(rows) == 1, rows
    return int(rows[0][0]), rows[0][1]  # type: ignore[call-overload]


def test_a_relay_killed_mid_backfill_resumes_from_the_last_committed_page(
    relay_factory: RelayFactory, database_url: str, sim: SimulatorProcess
) -> None:
    count = 3000
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(count)}
        stub.delay = 0.1
        relay = relay_factory(**env_for(stub))
        r = relay.request("POST", "/backfills", key=ADMIN_KEY, json={"source": "hubspot"})
        assert r.status_code == 202, r.text
        backfill_id = r.json()["id"]
        wait_until(lambda: backfill(relay, backfill_id)["pages"] >= 5, timeout=30)
        relay.kill()
        pages, cursor = committed(database_url)
        assert 5 <= pages < 30 and cursor is not None
        relay.restart()  # resumes it once the dead process's lease runs out
        done = wait_until(
            lambda: (b := backfill(relay, backfill_id))["status"] != "running" and b, timeout=60
        )
        assert done["status"] == "completed", done
        assert done["pages"] == 30 and done["companies"] == count and done["enqueued"] == count
        read = stub.pages_read(stub.COMPANIES, "after")
        expected_cursors = [None] + [f"cur{100 * k:06d}" for k in range(1, 30)]
        assert set(read) == set(expected_cursors)
        # No committed page was read again: only the one in flight at the kill may have been.
        for number, page_cursor in enumerate(expected_cursors, start=1):
            times = read.count(page_cursor)
            assert times == 1 or (number == pages + 1 and times == 2), (number, times, pages)
        assert "backfill resumed from its committed cursor" in relay.logs()
        wait_until(lambda: len(sim.companies()) == count, timeout=60)
    stored = sim.companies()
    for i in range(count):
        assert stored[f"hs-{1000 + i}"] == expected(i), i
    assert TOKEN not in relay.logs()


@SQLITE_ONLY
def test_the_backfill_command_shows_progress_and_the_final_counts(
    relay_factory: RelayFactory,
    sim: SimulatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(250)}
        relay = relay_factory(**env_for(stub))
        monkeypatch.setenv("RELAY_URL", relay.url)
        monkeypatch.setenv("RELAY_ADMIN_KEY", ADMIN_KEY)
        assert main(["backfill", "hubspot"]) == 0
        out = capsys.readouterr().out
        for line in ("status", "completed", "pages", "enqueued", "250"):
            assert line in out, out
        assert "3 pages" in out and "ETA" in out  # the progress bar's last state

        assert main(["backfill", "hubspot", "--no-wait"]) == 0
        started = capsys.readouterr().out
        assert "started" in started and "bf_" in started
        idle = lambda: newest(relay)["status"] != "running"  # noqa: E731
        wait_until(idle, timeout=30)
        # One per source: a second while the first runs is refused, saying which runs.
        stub.delay = 0.5
        assert main(["backfill", "hubspot", "--no-wait", "--json"]) == 0
        capsys.readouterr()
        assert main(["backfill", "hubspot", "--no-wait"]) == 1
        assert "runs already" in capsys.readouterr().err
        stub.delay = 0
        wait_until(idle, timeout=30)

        stub.token = "another-token"  # the relay's token is now refused
        assert main(["backfill", "hubspot"]) == 1
        err = capsys.readouterr().err
        assert "failed" in err and "HUBSPOT_ACCESS_TOKEN" in err and TOKEN not in err
        assert main(["backfill", "salesforce", "--no-wait"]) == 2


def newest(relay: RelayProcess) -> dict[str, Any]:
    items: list[dict[str, Any]] = relay.request("GET", "/backfills", key=ADMIN_KEY).json()["items"]
    return items[0]
