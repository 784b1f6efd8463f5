"""Bulk jobs: drain a large backlog through Userpilot's asynchronous bulk endpoint.

Beside the real-time calls, one loop per replica drives at most one job at a time across every
replica (the store leases it). When more companies wait than real-time pacing drains in about a
minute (`Settings.bulk_threshold`), it packs the oldest into a job (a row per company, its
pending updates merged), records it, submits it, then polls it every RELAY_BULK_POLL_SECONDS
until Userpilot says `completed` or `failed` (`bulk_calls.py`). A company in a job is in flight:
nothing else carries it until the job ends.

Userpilot reports no per-row errors, so a failed job is bisected: its rows go out again as two
jobs of half the size, and a part under RELAY_BULK_MIN_ROWS as real-time calls, where a bad row
is dead-lettered with Userpilot's own error. 409 (another job holds the environment's one slot)
waits; 413 splits; 429, 5xx and network errors back off; a key refused for bulk (401/403) or an
endpoint without it sends the rows real-time and switches bulk off in this process for a while,
loudly. None of those sends rows real-time while an unanswered upload of them may still run at
Userpilot (see `bulk_calls.py`). A job with no progress for RELAY_BULK_STUCK_SECONDS is
reported; its rows stay in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time

from app.config import Settings
from app.delivery.breaker import Breaker
from app.delivery.bulk_calls import ALL_REALTIME, SLOTS_AHEAD, JobCalls, job_context
from app.delivery.pacing import Pacer
from app.domain.errors import StoreUnavailable
from app.domain.models import BulkJob
from app.metrics import BULK_JOB_ROWS, BULK_JOB_STUCK
from app.store.store import Store
from app.userpilot.client import UserpilotClient

log = logging.getLogger("userpilot_relay.bulk")

_IDLE_CHECK = 1.0  # how often an idle replica looks whether a backlog calls for a job
_MAX_EMPTY_WAIT = 60.0


class BulkDriver:
    """The bulk loop of one dispatcher: shares its pacer, breaker and owner name."""

    def __init__(
        self,
        *,
        store: Store,
        client: UserpilotClient,
        settings: Settings,
        pacer: Pacer,
        breaker: Breaker,
        owner: str,
    ) -> None:
        self.store = store
        self.settings = settings
        self.breaker = breaker
        self.owner = owner
        # The job's lease, renewed at every poll: never shorter than three polls, nor than
        # three times the send slots its calls may wait for (`JobCalls._slot` waits up to a
        # third of the lease; the feeder keeps a slot or two reserved ahead of it).
        self.lease = max(
            settings.relay_lease_seconds,
            3 * settings.relay_bulk_poll_seconds,
            3 * SLOTS_AHEAD * pacer.interval,
        )
        self.calls = JobCalls(
            store=store,
            client=client,
            settings=settings,
            pacer=pacer,
            breaker=breaker,
            owner=owner,
            lease=self.lease,
        )
        self._current: BulkJob | None = None
        self._stuck_reported: set[str] = set()
        self._empty_packs = 0
        self._store_down = False

    async def run(self) -> None:
        try:
            while True:
                try:
                    wait = await self._step()
                    if self._store_down:
                        self._store_down = False
                        log.info("the store is back; bulk jobs resumed")
                except StoreUnavailable as exc:
                    if not self._store_down:
                        log.warning(
                            "the store is unreachable; bulk jobs paused",
                            extra={"error": str(exc)[:300]},
                        )
                    self._store_down = True
                    wait = 1.0
                except Exception:
                    log.exception("driving a bulk job failed; trying again")
                    wait = self.settings.relay_bulk_poll_seconds
                await asyncio.sleep(wait)
        finally:
            job, self._current = self._current, None
            if job is not None:  # another replica may take it over at once
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.jobs.release(job, owner=self.owner))

    def _bulk_on(self) -> bool:
        return self.settings.relay_upstream_bulk == "auto" and self.calls.bulk_off_reason is None

    async def _step(self) -> float:
        """One turn: answers how long to wait before the next."""
        job = await self.store.jobs.take(owner=self.owner, lease_seconds=self.lease)
        self._current = job
        if job is None:
            unfinished = await self.store.jobs.unfinished()
            if unfinished is not None:  # another replica drives it, or it is not due yet
                self._check_stuck(unfinished)
                return _IDLE_CHECK
            BULK_JOB_ROWS.labels(state="total").set(0)
            BULK_JOB_ROWS.labels(state="completed").set(0)
            BULK_JOB_STUCK.set(0)
            job = await self._pack()
            if job is None:
                return self._idle_wait()
        self._check_stuck(job)
        if job.status == "running":
            return await self.calls.poll(job)
        if self.breaker.open:
            # Userpilot looks down: leave the job to whichever replica sees it back first.
            await self.store.jobs.release(job, owner=self.owner)
            self._current = None
            return _IDLE_CHECK
        if job.uncertain_at is not None:
            # An upload of it went unanswered: Userpilot's job list says whether it started a
            # job (adopted) or not; only then may its rows go anywhere, bulk on or off.
            resolved = await self.calls.resolve_doubt(job)
            if resolved == "submit":  # still in doubt: only an accepted submission ends it
                return await self.calls.submit(job)
            if resolved != "certain":
                return resolved
            job = dataclasses.replace(job, uncertain_at=None)
        if not self._bulk_on():
            reason = self.calls.bulk_off_reason or "RELAY_UPSTREAM_BULK is off"
            await self.calls.split(job, "split", reason, None, ALL_REALTIME)
            return 0.0
        return await self.calls.submit(job)

    def _idle_wait(self) -> float:
        """Nothing to drive: look again soon, less often after packs that found nothing."""
        if not self._empty_packs:
            return _IDLE_CHECK
        poll = self.settings.relay_bulk_poll_seconds
        return float(min(_MAX_EMPTY_WAIT, poll * 2 ** min(self._empty_packs - 1, 8)))

    async def _pack(self) -> BulkJob | None:
        """A new job when the backlog calls for one (None otherwise)."""
        settings = self.settings
        if not self._bulk_on() or self.breaker.open:
            return None
        threshold = settings.bulk_threshold
        if await self.store.jobs.waiting_companies(threshold + 1) <= threshold:
            self._empty_packs = 0
            return None
        job = await self.store.jobs.pack(
            owner=self.owner,
            lease_seconds=self.lease,
            max_rows=await self._job_size(),
            max_merge=settings.relay_max_merge,
            settle_seconds=settings.relay_merge_window_seconds,
            fresh_seconds=settings.relay_bulk_fresh_seconds,
        )
        if job is None:  # every waiting company is fresh, in flight or backing off
            self._empty_packs += 1
            return None
        self._empty_packs = 0
        self._current = job
        log.info("packed a bulk job", extra=job_context(job))
        return job

    async def _job_size(self) -> int:
        """Rows for the next job: the share of the backlog Userpilot's bulk side finishes in
        the time real-time calls take for the rest (about 3/4 at Userpilot's figures, 1,800
        rows against 600 calls a minute; measured on the last job once there is one), so both
        paths end together; within RELAY_BULK_MIN_ROWS and RELAY_BULK_MAX_ROWS."""
        settings = self.settings
        largest = settings.relay_bulk_max_rows
        waiting = await self.store.jobs.waiting_companies(2 * largest)
        realtime = settings.relay_rate_limit_per_minute / 60
        bulk = self.calls.rows_per_second or 3 * realtime
        rows = math.ceil(waiting * bulk / (bulk + realtime))
        return max(1, min(largest, max(settings.relay_bulk_min_rows, rows)))

    def _check_stuck(self, job: BulkJob) -> None:
        after = self.settings.relay_bulk_stuck_seconds
        stuck = job.stuck(after=after, now=time.time())
        BULK_JOB_STUCK.set(1 if stuck else 0)
        if not stuck:
            self._stuck_reported.discard(job.id)
        elif job.id not in self._stuck_reported:
            self._stuck_reported.add(job.id)
            log.error(
                "a bulk job has made no progress for RELAY_BULK_STUCK_SECONDS: its companies "
                "stay in flight (nothing is lost; newer updates wait behind it) until Userpilot "
                "takes it and ends it; see docs/runbooks.md#userpilotrelaybulkjobstuck",
                extra=job_context(job)
                | {
                    "status": job.status,
                    "last_error": job.last_error,
                    "upstream": job.upstream_status,
                },
            )
