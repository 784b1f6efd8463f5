"""Bulk jobs: drain a large backlog through Userpilot's asynchronous bulk endpoint.

Beside the real-time calls, one loop per replica drives at most one job at a time across every
replica (the store leases it). When more companies wait than real-time pacing drains in about a
minute (`Settings.bulk_threshold`), it packs the oldest into a job (a row per company, its
pending updates merged), records it, submits it on a send slot (a bulk upload counts against the
rate limit), then polls it every RELAY_BULK_POLL_SECONDS until Userpilot says `completed` or
`failed`. A company in a job is in flight: nothing else carries it until the job ends.

Userpilot reports no per-row errors, so a failed job is bisected: its rows go out again as two
jobs of half the size, and a part under RELAY_BULK_MIN_ROWS as real-time calls, where a bad row
is dead-lettered with Userpilot's own error. 409 (another job holds the environment's one slot)
waits; 413 splits; 429, 5xx and network errors back off; 401/403 dead-letter the rows, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from app.config import Settings
from app.delivery.breaker import Breaker
from app.delivery.merge import MAX_JOB_BYTES, bulk_body, merge_claim
from app.delivery.pacing import Pacer
from app.delivery.refuse import without_unsendable
from app.delivery.retry import backoff_delay, classify_upload
from app.domain.errors import StoreUnavailable
from app.domain.models import BulkJob, Claim
from app.metrics import (
    BULK_JOB_DURATION,
    BULK_JOB_ROWS,
    BULK_JOB_STUCK,
    BULK_JOBS,
    BULK_ROWS,
    BULK_SUBMISSIONS,
    DELIVERIES,
    UPDATES_MERGED,
    UPSTREAM_AUTH_FAILURES,
    UPSTREAM_THROTTLED,
)
from app.store.base import Store
from app.userpilot.client import (
    RUNNING,
    UpstreamResult,
    UserpilotClient,
    completed_rows,
    job_status,
)

log = logging.getLogger("userpilot_relay.bulk")

_IDLE_CHECK = 1.0  # how often an idle replica looks whether a backlog calls for a job
_NEVER = 10**9  # min_rows that sends every row of a job to real-time calls


def _job_context(job: BulkJob) -> dict[str, object]:
    return {
        "job_id": job.id,
        "upstream_job_id": job.upstream_id,
        "rows": job.rows,
        "updates": job.updates,
        "attempt": job.attempts,
    }


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
        self.client = client
        self.settings = settings
        self.pacer = pacer
        self.breaker = breaker
        self.owner = owner
        # The job's lease, renewed at every poll: never shorter than three polls.
        self.lease = max(settings.relay_lease_seconds, 3 * settings.relay_bulk_poll_seconds)
        self._current: BulkJob | None = None
        self._stuck_reported: set[str] = set()
        self._bulk_rows_per_second: float | None = None  # as the last completed job went
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
                    await asyncio.shield(self.store.release_job(job, owner=self.owner))

    async def _step(self) -> float:
        """One turn: answers how long to wait before the next."""
        settings = self.settings
        job = await self.store.take_job(owner=self.owner, lease_seconds=self.lease)
        self._current = job
        if job is None:
            BULK_JOB_ROWS.labels(state="total").set(0)
            BULK_JOB_ROWS.labels(state="completed").set(0)
            BULK_JOB_STUCK.set(0)
            if settings.relay_upstream_bulk == "off" or self.breaker.open:
                return _IDLE_CHECK
            threshold = settings.bulk_threshold
            if await self.store.waiting_companies(threshold + 1) <= threshold:
                return _IDLE_CHECK
            job = await self.store.pack_job(
                owner=self.owner,
                lease_seconds=self.lease,
                max_rows=await self._job_size(),
                max_merge=settings.relay_max_merge,
                settle_seconds=settings.relay_merge_window_seconds,
                fresh_seconds=settings.relay_bulk_fresh_seconds,
            )
            if job is None:  # every waiting company is fresh, in flight or backing off
                return settings.relay_bulk_poll_seconds
            self._current = job
            log.info("packed a bulk job", extra=_job_context(job))
        if job.status == "waiting":
            if settings.relay_upstream_bulk == "off":
                await self._split(job, "split", "RELAY_UPSTREAM_BULK is off", None, _NEVER)
                return 0.0
            if self.breaker.open:
                return _IDLE_CHECK  # Userpilot looks down: the job waits for it to come back
            return await self._submit(job)
        return await self._poll(job)

    async def _job_size(self) -> int:
        """Rows for the next job: the share of the backlog Userpilot's bulk side finishes in
        the time real-time calls take for the rest (about 3/4 at Userpilot's figures, 1,800
        rows against 600 calls a minute; measured on the last job once there is one), so both
        paths end together; within RELAY_BULK_MIN_ROWS and RELAY_BULK_MAX_ROWS."""
        settings = self.settings
        largest = settings.relay_bulk_max_rows
        waiting = await self.store.waiting_companies(2 * largest)
        realtime = settings.relay_rate_limit_per_minute / 60
        bulk = self._bulk_rows_per_second or 3 * realtime
        rows = math.ceil(waiting * bulk / (bulk + realtime))
        return max(1, min(largest, max(settings.relay_bulk_min_rows, rows)))

    # submitting ------------------------------------------------------------------------------
    async def _rows(self, job: BulkJob) -> list[Claim]:
        """The job's companies, less the updates that cannot be sent (dead-lettered)."""
        sendable = []
        for claim in await self.store.job_rows(job.id):
            claim = await without_unsendable(self.store, claim, _job_context(job))
            if claim.updates:
                sendable.append(claim)
        return sendable

    async def _submit(self, job: BulkJob) -> float:
        poll = self.settings.relay_bulk_poll_seconds
        context = _job_context(job)
        claims = await self._rows(job)
        if not claims:
            await self.store.job_completed(job, owner=self.owner, sent_versions={})
            return 0.0
        body = bulk_body(claims)
        if len(body) > MAX_JOB_BYTES:
            await self._split(job, "split", f"{len(body)} bytes: over Userpilot's 50 MB", None)
            return 0.0
        slot = await self.store.reserve_send_slot(self.pacer.interval)
        await asyncio.sleep(max(0.0, slot - time.time()))
        if self.pacer.paused():
            return 0.0  # a 429 came after the slot was reserved: the next one starts after it
        await asyncio.sleep(max(0.0, self.pacer.next_send() - time.time()))
        # A large upload may take longer than a real-time call; it ends inside the job's lease.
        upload = max(self.settings.relay_upstream_timeout_seconds, self.lease / 2)
        result = await self.client.bulk_identify_companies(body, within=upload)
        context |= {"upstream_status": result.status, "x_request_id": result.request_id}
        outcome, upstream_id = classify_upload(result)
        BULK_SUBMISSIONS.labels(result="refused" if outcome == "key_refused" else outcome).inc()
        error = result.error or f"HTTP {result.status}"
        if outcome == "accepted":
            assert upstream_id is not None
            state = job_status(result.body or {})
            accepted = await self.store.job_submitted(
                job,
                owner=self.owner,
                upstream_id=upstream_id,
                upstream_status=state if state in RUNNING else "queued",
                lease=self.lease,
                http_status=result.status or 202,
                request_id=result.request_id,
            )
            if accepted:
                BULK_JOB_ROWS.labels(state="total").set(job.rows)
                BULK_JOB_ROWS.labels(state="completed").set(0)
                log.info(
                    "Userpilot accepted a bulk job",
                    extra=context | {"upstream_job_id": upstream_id},
                )
            return poll
        if outcome == "conflict":
            error = f"409: {result.error or 'another bulk job is running'}"
            await self.store.job_deferred(
                job, owner=self.owner, delay=poll, error=error, counted=False
            )
            log.info("another bulk job holds Userpilot's slot; waiting", extra=context)
            return poll
        if outcome == "too_large":
            await self._split(job, "split", error, 413)
        elif outcome == "key_refused":
            await self._reject(job, result, context)
        elif outcome == "refused":  # some row is bad: bisect
            await self._split(job, "failed", error, result.status)
        elif outcome == "throttled":
            UPSTREAM_THROTTLED.inc()
            delay = result.retry_after if result.retry_after is not None else self._backoff(job)
            await self.store.pause_sending(self.pacer.pause(delay))
            return await self._defer(job, error, context, delay)
        else:
            if result.ok:
                error = "accepted without a usable job_id"
            return await self._defer(job, error, context)
        return 0.0

    def _backoff(self, job: BulkJob) -> float:
        return backoff_delay(
            job.attempts + 1,
            base=max(self.settings.relay_retry_base_seconds, self.settings.relay_bulk_poll_seconds),
            cap=self.settings.relay_retry_max_seconds,
        )

    async def _defer(
        self, job: BulkJob, error: str, context: dict[str, object], delay: float | None = None
    ) -> float:
        wait = self._backoff(job) if delay is None else delay
        await self.store.job_deferred(job, owner=self.owner, delay=wait, error=error, counted=True)
        log.warning(
            "submitting a bulk job failed; retrying",
            extra=context | {"error": error, "retry_in_s": round(wait, 2)},
        )
        return self.settings.relay_bulk_poll_seconds

    async def _reject(
        self, job: BulkJob, result: UpstreamResult, context: dict[str, object]
    ) -> None:
        error = result.error or f"HTTP {result.status}"
        if await self.store.job_rejected(job, owner=self.owner, status=result.status, error=error):
            UPSTREAM_AUTH_FAILURES.inc()
            BULK_JOBS.labels(outcome="rejected").inc()
            BULK_ROWS.labels(outcome="dead").inc(job.rows)
            DELIVERIES.labels(outcome="dead").inc(job.updates)
            log.error(
                "Userpilot refused the API key for a bulk job: its updates are dead-lettered, "
                "and every delivery will fail until USERPILOT_API_KEY is fixed",
                extra=context | {"error": error},
            )

    async def _split(
        self,
        job: BulkJob,
        status: str,
        error: str,
        http_status: int | None,
        min_rows: int | None = None,
    ) -> None:
        assert status in ("failed", "split")
        children = await self.store.job_split(
            job,
            owner=self.owner,
            status="failed" if status == "failed" else "split",
            error=error,
            upstream_status="failed" if status == "failed" and job.upstream_id else None,
            min_rows=self.settings.relay_bulk_min_rows if min_rows is None else min_rows,
            http_status=http_status,
        )
        if children is None:
            return
        BULK_JOBS.labels(outcome=status).inc()
        BULK_ROWS.labels(outcome="resent").inc(job.rows)
        if job.submitted_at is not None:
            BULK_JOB_DURATION.observe(max(0.0, time.time() - job.submitted_at))
        log.warning(
            f"bulk job {status}: its rows go out again in smaller parts",
            extra=_job_context(job) | {"error": error, "children": children},
        )

    # polling ---------------------------------------------------------------------------------
    async def _poll(self, job: BulkJob) -> float:
        poll = self.settings.relay_bulk_poll_seconds
        assert job.upstream_id is not None
        result = await self.client.background_job(job.upstream_id)
        body = result.body or {}
        status = job_status(body) if result.ok else None
        if status == "completed":
            await self._complete(job)
            return 0.0
        if status == "failed":
            await self._split(job, "failed", "Userpilot reported the job failed", None)
            return 0.0
        if result.status == 404:
            # Userpilot does not know the job: nothing proves it was accepted. Send it again
            # (identify is an upsert).
            await self.store.job_deferred(
                job,
                owner=self.owner,
                delay=0.0,
                error="Userpilot does not know the job; submitting it again",
                counted=False,
            )
            log.warning("Userpilot lost a bulk job; submitting it again", extra=_job_context(job))
            return 0.0
        running = status is not None
        state = None
        if status is not None:
            state = status if status in RUNNING else f"unknown: {status}"
        done = completed_rows(body, job.rows) if running else None
        await self.store.job_polled(
            job,
            owner=self.owner,
            upstream_status=state,
            completed_rows=done,
            error=None if running else (result.error or "the answer holds no job status"),
            lease=self.lease,
        )
        if running:
            BULK_JOB_ROWS.labels(state="total").set(job.rows)
            BULK_JOB_ROWS.labels(state="completed").set(done or 0)
        self._check_stuck(job)
        return poll

    def _check_stuck(self, job: BulkJob) -> None:
        since = job.progress_at or job.submitted_at or job.created_at
        stuck = time.time() - since > self.settings.relay_bulk_stuck_seconds
        BULK_JOB_STUCK.set(1 if stuck else 0)
        if stuck and job.id not in self._stuck_reported:
            self._stuck_reported.add(job.id)
            log.error(
                "a bulk job has made no progress for RELAY_BULK_STUCK_SECONDS: its companies "
                "stay in flight (nothing is lost; newer updates wait behind it) until Userpilot "
                "ends it; see docs/runbooks.md#userpilotrelaybulkjobstuck",
                extra=_job_context(job) | {"no_progress_s": round(time.time() - since)},
            )

    async def _complete(self, job: BulkJob) -> None:
        claims = await self.store.job_rows(job.id)
        sent = {claim.company_id: merge_claim(claim)[1] for claim in claims}
        if not await self.store.job_completed(job, owner=self.owner, sent_versions=sent):
            return
        BULK_JOBS.labels(outcome="completed").inc()
        BULK_ROWS.labels(outcome="delivered").inc(len(claims))
        updates = sum(len(c.updates) for c in claims)
        DELIVERIES.labels(outcome="delivered").inc(updates)
        UPDATES_MERGED.inc(max(0, updates - len(claims)))
        if job.submitted_at is not None:
            took = max(0.001, time.time() - job.submitted_at)
            BULK_JOB_DURATION.observe(took)
            if job.rows >= self.settings.relay_bulk_min_rows:  # small jobs are all overhead
                self._bulk_rows_per_second = job.rows / took
        self._stuck_reported.discard(job.id)
        log.info("bulk job completed", extra=_job_context(job))
