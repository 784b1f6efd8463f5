"""Paging that never ends (issue 20, finding 7): a provider that keeps answering new cursors
fails the backfill once the records read pass its own count by a margin, or after
RELAY_BACKFILL_MAX_PAGES pages, saying why and counted by reason; on both stores."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import ConfigError, Settings, load_settings
from app.simulator.process import SimulatorProcess
from app.sources.backfill.runner import PAST_TOTAL
from tests.inprocess import InProcessRelay, run
from tests.integration.test_backfill import finished, hubspot_company, hubspot_on, start
from tests.list_stubs import HubSpotStub
from tests.relay import INGEST_KEY, UPSTREAM_KEY

ERRORS = "userpilot_relay_backfill_errors_total"


async def _endless(relay: InProcessRelay, reason: str) -> tuple[dict[str, Any], float]:
    before = await relay.metric(ERRORS, source="hubspot", reason=reason)
    result = await finished(relay, await start(relay, "hubspot"))
    after = await relay.metric(ERRORS, source="hubspot", reason=reason)
    return result, after - before


def test_paging_past_the_providers_own_total_fails_the_backfill(
    database_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(100)}
        stub.endless = True  # `total` says 100; the cursors never stop

        async def main() -> tuple[dict[str, Any], float]:
            async with hubspot_on(database_url, sim, stub) as relay:
                return await _endless(relay, "past_total")

        result, counted = run(main(), limit=90)
    assert result["status"] == "failed", result
    assert result["total"] == 100
    assert "provider counted 100" in result["last_error"], result
    assert "endless" in result["last_error"]
    assert counted == 1
    # Stopped at the first page that would pass the total by the margin; not stored.
    pages = (100 + PAST_TOTAL) // 100
    assert result["pages"] == pages and result["companies"] == pages * 100, result
    listed = [r for r in stub.requests if r["path"] == stub.COMPANIES]
    assert len(listed) == pages + 1


def test_paging_past_the_page_limit_fails_the_backfill(
    database_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(100)}
        stub.endless = True

        async def main() -> tuple[dict[str, Any], float]:
            async with hubspot_on(database_url, sim, stub, relay_backfill_max_pages=3) as relay:
                return await _endless(relay, "page_limit")

        result, counted = run(main(), limit=90)
    assert result["status"] == "failed", result
    assert "RELAY_BACKFILL_MAX_PAGES" in result["last_error"], result
    assert result["pages"] == 3 and result["companies"] == 300, result
    assert counted == 1
    assert len([r for r in stub.requests if r["path"] == stub.COMPANIES]) == 3


def test_a_backfill_that_ends_within_the_limits_completes(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(300)}

        async def main() -> dict[str, Any]:
            async with hubspot_on(sqlite_url, sim, stub, relay_backfill_max_pages=3) as relay:
                return await finished(relay, await start(relay, "hubspot"))

        result = run(main())
    assert result["status"] == "completed" and result["pages"] == 3, result
    assert result["enqueued"] == 300


@pytest.mark.parametrize("value", ["0", "-1", "many", "10000001"])
def test_a_bad_page_limit_refuses_to_start_naming_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir("/")  # no .env here
    monkeypatch.setenv("USERPILOT_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("RELAY_API_KEYS", f"svc:ingest:{INGEST_KEY}")
    monkeypatch.setenv("RELAY_BACKFILL_MAX_PAGES", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "RELAY_BACKFILL_MAX_PAGES" in str(refused.value)
