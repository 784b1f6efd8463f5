"""The console's store reads (`app/store/console.py`) on both engines: the delivery search, its
count, the delivery rate per minute, and the pause in force (`paused_until`)."""

from __future__ import annotations

import time

from app.domain.models import NewUpdate
from app.store.console import MINUTES, DeliveryFilter
from tests.integration.test_store_shared import claim_args, opened, run


def test_search_filters_newest_first_and_pages(database_url: str) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            for i in range(5):
                await store.deliveries.enqueue(
                    [NewUpdate(company_id="a", metadata={"i": i})], source="api", caller="svc"
                )
            await store.deliveries.enqueue(
                [NewUpdate(company_id="b", metadata={"i": 9})], source="hubspot", caller=None
            )
            everything = await store.console.search(DeliveryFilter(), before=None, limit=100)
            assert [d.company_id for d in everything] == ["b", "a", "a", "a", "a", "a"]
            seqs = [d.seq for d in everything]
            assert seqs == sorted(seqs, reverse=True)

            only_a = DeliveryFilter(company_id="a", caller="svc", source="api", status="queued")
            page = await store.console.search(only_a, before=None, limit=2)
            assert [d.metadata["i"] for d in page] == [4, 3]
            rest = await store.console.search(only_a, before=page[-1].seq, limit=10)
            assert [d.metadata["i"] for d in rest] == [2, 1, 0]
            assert await store.console.count(only_a) == 5

            hubspot = DeliveryFilter(source="hubspot")
            assert [
                d.company_id for d in await store.console.search(hubspot, before=None, limit=9)
            ] == ["b"]
            assert await store.console.count(DeliveryFilter(status="dead")) == 0
            assert await store.console.count(DeliveryFilter(caller="nobody")) == 0
            now = time.time()
            assert await store.console.count(DeliveryFilter(since=now - 300, until=now + 300)) == 6
            assert await store.console.count(DeliveryFilter(since=now + 300)) == 0
            assert await store.console.count(DeliveryFilter(until=now - 300)) == 0
        finally:
            await store.close()

    run(main)


def test_rate_counts_delivered_updates_per_minute_of_the_last_hour(database_url: str) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            empty = await store.console.rate()
            assert len(empty.per_minute) == MINUTES and empty.total == 0
            for company in ("r1", "r2", "r3"):
                await store.deliveries.enqueue(
                    [NewUpdate(company_id=company, metadata={"x": 1})], source="api", caller="t"
                )
                claim = await store.claims.claim(**claim_args())
                assert claim is not None
                await store.claims.mark_delivered(
                    claim, status=202, request_id=None, sent_versions={}
                )
            rate = await store.console.rate()
            assert rate.total == 3
            assert rate.per_minute[-1] + rate.per_minute[-2] == 3  # this minute (or the last)
            assert rate.start % 60 == 0 and time.time() - 3600 <= rate.start <= time.time()
            later = await store.console.rate(now=time.time() + 2 * 3600)
            assert later.total == 0  # older than an hour
        finally:
            await store.close()

    run(main)


def test_paused_until_reports_a_pause_in_force(database_url: str) -> None:
    async def main() -> None:
        store = await opened(database_url)
        try:
            assert await store.pacing.paused_until() is None
            until = time.time() + 30
            await store.pacing.pause_sending(until)
            paused = await store.pacing.paused_until()
            assert paused is not None and abs(paused - until) < 1.0
        finally:
            await store.close()

    run(main)
