"""The backfill runner of one replica: starts backfills, drives them a page at a time, resumes
them, and runs the periodic reconciliation.

Every replica runs one loop. It takes any running backfill nobody drives (one this replica
started, or one whose lease ran out because its replica died or stopped) and drives it from
its committed cursor: read a page, commit it (updates, source times, cursor and counts in one
transaction), read the next. The lease is renewed with every page and while waiting out a
provider's `Retry-After`. With RELAY_RECONCILE_INTERVAL_SECONDS, the loop also starts a
reconciliation of every configured source that long after the last backfill of that source
started: the same pages, storing only the properties whose value differs from what the relay
last delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from dataclasses import replace

from app.config import Settings
from app.domain.errors import BackfillConflict, NotConfigured, StoreUnavailable
from app.ingest import commit_page
from app.lifecycle import cancel_and_wait
from app.metrics import (
    BACKFILL_COMPANIES,
    BACKFILL_ERRORS,
    BACKFILL_PAGES,
    BACKFILL_RUNNING,
)
from app.sources.backfill.client import ListClient, ProviderError
from app.sources.backfill.hubspot import HubSpotLister
from app.sources.backfill.pages import Lister, decode_cursor
from app.sources.backfill.stripe import StripeLister
from app.sources.mapping import load_mapping
from app.store.backfills import Backfill, BackfillRunning, LostBackfill, Mode, Page, PageOutcome
from app.store.store import Store

log = logging.getLogger("userpilot_relay.backfill")

SOURCES = ("hubspot", "stripe")
_IDLE = 2.0  # how often an idle replica looks for a backfill to resume, or a reconciliation due
_STORE_RETRY = 2.0
_STORE_TRIES = 30
# Records a backfill may read past the provider's count (companies added meanwhile) at least;
# past a tenth more (or this) its paging is taken as endless.
PAST_TOTAL = 1000


def missing_setting(settings: Settings, source: str) -> str | None:
    """Why `source` cannot be backfilled with these settings (None: it can)."""
    if source == "hubspot" and settings.hubspot_access_token is None:
        return (
            "HUBSPOT_ACCESS_TOKEN is not set: a HubSpot backfill needs a private app token "
            "with the crm.objects.companies.read scope"
        )
    if source == "stripe" and settings.stripe_api_key is None:
        return "STRIPE_API_KEY is not set: a Stripe backfill needs a key that can read customers"
    if source not in SOURCES:
        return f"unknown source {source!r}: hubspot or stripe"
    return None


class BackfillRunner:
    """Starts, drives, resumes and schedules the backfills of one replica."""

    def __init__(self, *, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.lease = settings.relay_lease_seconds
        self._hubspot_rules = load_mapping("hubspot", settings.hubspot_mapping_file).section(
            "company"
        )
        self._stripe_mapping = load_mapping("stripe", settings.stripe_mapping_file)
        self._quality = settings.quality_rules()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._started_at = time.time()

    # lifecycle ---------------------------------------------------------------------------------
    def start_loop(self) -> None:
        """Resume what runs (a backfill this or a dead replica left) and wait for more."""
        self._task = asyncio.create_task(self._loop(), name="relay-backfills")

    async def stop(self) -> None:
        """Stop driving; the leases are given up so a restart (or a replica) resumes at once."""
        tasks = [*self._driving.values(), *([self._task] if self._task else [])]
        await cancel_and_wait(tasks)
        for backfill_id in list(self._driving):
            with contextlib.suppress(Exception):
                await self.store.backfills.release(backfill_id, owner=self.owner)
        self._driving.clear()

    async def start(self, source: str, mode: Mode = "full") -> Backfill:
        """Record a new running backfill (`NotConfigured`, `BackfillConflict`); it is driven at
        once by this replica's loop."""
        problem = missing_setting(self.settings, source)
        if problem is not None:
            raise NotConfigured(problem)
        try:
            backfill = await self.store.backfills.start(
                source=source, mode=mode, owner=self.owner, lease=self.lease
            )
        except BackfillRunning as exc:
            raise BackfillConflict(source, exc.backfill_id) from None
        log.info(
            "backfill started",
            extra={"backfill_id": backfill.id, "source": source, "mode": mode},
        )
        self._wake.set()
        return backfill

    # the loop ------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                while await self._take_one():
                    pass
                await self._reconcile_if_due()
            except StoreUnavailable:
                pass  # the store is down: look again later
            except Exception:
                log.exception("looking for backfills to drive failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IDLE):
                    await self._wake.wait()

    async def _take_one(self) -> bool:
        busy = [backfill_id for backfill_id, task in self._driving.items() if not task.done()]
        self._driving = {b: t for b, t in self._driving.items() if not t.done()}
        backfill = await self.store.backfills.take(owner=self.owner, lease=self.lease, busy=busy)
        if backfill is None:
            return False
        if backfill.owner != self.owner or backfill.id in self._driving:
            return False
        self._driving[backfill.id] = asyncio.create_task(
            self._drive(backfill), name=f"relay-backfill-{backfill.source}"
        )
        return True

    async def _reconcile_if_due(self) -> None:
        interval = self.settings.relay_reconcile_interval_seconds
        if interval is None:
            return
        for source in SOURCES:
            if missing_setting(self.settings, source) is not None:
                continue
            latest = await self.store.backfills.latest_start(source)
            since = latest if latest is not None else self._started_at
            if time.time() - since < interval:
                continue
            with contextlib.suppress(BackfillConflict):
                await self.start(source, "reconcile")

    # one backfill --------------------------------------------------------------------------------
    def _lister(self, backfill: Backfill, client: ListClient) -> Lister:
        settings = self.settings
        if backfill.source == "hubspot":
            return HubSpotLister(
                client=client,
                rules=self._hubspot_rules,
                prefix=settings.hubspot_company_id_prefix,
                quality=self._quality,
                first_types=self.store.catalogue.first_types(),
                backfill_id=backfill.id,
            )
        return StripeLister(
            client=client,
            mapping=self._stripe_mapping,
            metadata_key=settings.stripe_company_id_metadata_key,
            missing=settings.stripe_missing_company,
            quality=self._quality,
            first_types=self.store.catalogue.first_types(),
            store=self.store,
            backfill_id=backfill.id,
        )

    def _client(self, backfill: Backfill) -> ListClient:
        settings = self.settings
        hubspot = backfill.source == "hubspot"
        secret = settings.hubspot_access_token if hubspot else settings.stripe_api_key
        assert secret is not None
        renewed = time.monotonic()

        async def sleep(seconds: float) -> None:
            """Wait, renewing the lease meanwhile (`LostBackfill` once it is another's)."""
            nonlocal renewed
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(left, self.lease / 3))
                if time.monotonic() - renewed > self.lease / 3:
                    renewed = time.monotonic()
                    if not await self.store.backfills.renew(
                        backfill.id, owner=self.owner, lease=self.lease
                    ):
                        raise LostBackfill(backfill.id)

        return ListClient(
            source=backfill.source,
            base_url=settings.hubspot_api_base if hubspot else settings.stripe_api_base,
            token=secret.get_secret_value(),
            requests_per_second=(
                settings.hubspot_requests_per_second
                if hubspot
                else settings.stripe_requests_per_second
            ),
            sleep=sleep,
        )

    async def _drive(self, backfill: Backfill) -> None:
        source = backfill.source
        problem = missing_setting(self.settings, source)
        if problem is not None:
            await self.store.backfills.fail(backfill.id, owner=self.owner, error=problem)
            return
        BACKFILL_RUNNING.labels(source=source).set(1)
        lister = self._lister(backfill, self._client(backfill))
        try:
            await self._pages(backfill, lister)
        except LostBackfill:
            log.warning(
                "another replica drives the backfill now; this one stopped",
                extra={"backfill_id": backfill.id, "source": source},
            )
        except Exception as exc:
            log.exception(
                "a backfill failed unexpectedly",
                extra={"backfill_id": backfill.id, "source": source},
            )
            with contextlib.suppress(Exception):
                await self._fail(backfill, f"the relay failed reading it: {type(exc).__name__}")
        finally:
            BACKFILL_RUNNING.labels(source=source).set(0)
            with contextlib.suppress(Exception):
                await lister.aclose()

    async def _pages(self, backfill: Backfill, lister: Lister) -> None:
        total = backfill.total
        if backfill.pages == 0 and total is None:
            total = await lister.total()
            if total is not None:
                await self.store.backfills.set_total(backfill.id, owner=self.owner, total=total)
        most = self.settings.relay_backfill_max_pages
        read_most = None if total is None else total + max(total // 10, PAST_TOTAL)
        cursor, number, read = backfill.cursor, backfill.pages + 1, backfill.companies
        if backfill.pages:
            log.info(
                "backfill resumed from its committed cursor",
                extra={"backfill_id": backfill.id, "source": backfill.source, "page": number},
            )
        seen = {cursor}
        while True:
            if number > most:
                BACKFILL_ERRORS.labels(source=backfill.source, reason="page_limit").inc()
                await self._fail(
                    backfill,
                    f"the provider still answered a next page after {most:,} pages "
                    "(RELAY_BACKFILL_MAX_PAGES): its paging looks endless, so the backfill "
                    "stopped",
                )
                return
            try:
                page = await lister.page(decode_cursor(cursor))
            except ProviderError as exc:
                BACKFILL_ERRORS.labels(source=backfill.source, reason=exc.reason).inc()
                await self._fail(backfill, exc.message)
                return
            if page.cursor is not None and page.cursor in seen:
                BACKFILL_ERRORS.labels(source=backfill.source, reason="cursor_repeats").inc()
                await self._fail(
                    backfill,
                    f"the provider answered page {number} with a cursor it gave before: "
                    "its paging repeats, so the backfill stopped rather than loop",
                )
                return
            if read_most is not None and read + page.read > read_most:
                BACKFILL_ERRORS.labels(source=backfill.source, reason="past_total").inc()
                await self._fail(
                    backfill,
                    f"page {number} would make {read + page.read:,} records read where the "
                    f"provider counted {total:,}: its paging looks endless, so the backfill "
                    "stopped",
                )
                return
            read += page.read
            page = replace(page, number=number)
            outcome = await self._commit(backfill, page)
            self._counted(backfill, page, outcome)
            if page.cursor is None:
                log.info("backfill completed", extra={"backfill_id": backfill.id, "pages": number})
                return
            seen.add(page.cursor)
            cursor, number = page.cursor, number + 1

    async def _commit(self, backfill: Backfill, page: Page) -> PageOutcome:
        for attempt in range(_STORE_TRIES):
            try:
                return await commit_page(
                    self.store,
                    backfill.id,
                    owner=self.owner,
                    page=page,
                    lease=self.lease,
                    source=backfill.source,
                )
            except StoreUnavailable:
                BACKFILL_ERRORS.labels(source=backfill.source, reason="store").inc()
                if attempt == _STORE_TRIES - 1:
                    raise
                await asyncio.sleep(_STORE_RETRY)
        raise AssertionError("unreachable")

    def _counted(self, backfill: Backfill, page: Page, outcome: PageOutcome) -> None:
        source = backfill.source
        BACKFILL_PAGES.labels(source=source).inc()
        for name, count in (
            ("enqueued", outcome.enqueued),
            ("skipped", outcome.skipped),
            ("unchanged", outcome.unchanged),
        ):
            if count:
                BACKFILL_COMPANIES.labels(source=source, outcome=name).inc(count)
        if page.errors:
            BACKFILL_ERRORS.labels(source=source, reason="invalid_record").inc(page.errors)
        log.info(
            "backfill page committed",
            extra={
                "backfill_id": backfill.id,
                "source": source,
                "mode": backfill.mode,
                "page": page.number,
                "read": page.read,
                "enqueued": outcome.enqueued,
                "skipped": outcome.skipped,
                "unchanged": outcome.unchanged,
                "errors": page.errors,
                "batch_id": outcome.batch_id,
            },
        )

    async def _fail(self, backfill: Backfill, error: str) -> None:
        log.error(
            "backfill failed",
            extra={"backfill_id": backfill.id, "source": backfill.source, "error": error},
        )
        await self.store.backfills.fail(backfill.id, owner=self.owner, error=error)
