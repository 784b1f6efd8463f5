"""Bulk jobs: drain a large backlog through Userpilot's asynchronous bulk endpoint.

Beside the real-time calls, one loop per replica (`BulkDriver`) drives at most one job at a time
across every replica (the store leases it). When more companies wait than real-time pacing drains
in about a minute (`Settings.bulk_threshold`), it packs the oldest into a job (a row per company,
its pending updates merged), records it, submits it, then polls it every RELAY_BULK_POLL_SECONDS
until Userpilot says `completed` or `failed`. A company in a job is in flight: nothing else
carries it until the job ends.

Userpilot reports no per-row errors, so a failed job is bisected: its rows go out again as two
jobs of half the size, and a part under RELAY_BULK_MIN_ROWS as real-time calls, where a bad row
is dead-lettered with Userpilot's own error. 409 (another job holds the environment's one slot)
waits; 413 splits; 429, 5xx and network errors back off; a key refused for bulk (401/403) or an
endpoint without it sends the rows real-time and switches bulk off in this process for a while,
loudly. A job with no progress for RELAY_BULK_STUCK_SECONDS is reported; its rows stay in flight.

Submitting marks the job uncertain first (`uncertain_at`): when no answer is recorded (none, a
5xx, a crash), an upload may be pending at Userpilot, so its rows never go out real-time while it
may still run (`BulkJob.in_doubt`); Userpilot's job list settles it (`bulk_answers.py`), or an
accepted submission does (Userpilot runs one job at a time). A `completed` with rows missing is
polled again before it is believed. Uploads and polls take send slots, so they and the real-time
calls together never pass the rate limit; every answer tells the circuit breaker whether
Userpilot is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from typing import Literal

from app.config import Settings
from app.delivery.breaker import Breaker
from app.delivery.bulk_answers import ACCEPTED_WITHOUT_ID, OddAnswers, resolve_doubt
from app.delivery.merge import MAX_JOB_BYTES, JobMerge, JobRow, bulk_body, read_chunks
from app.delivery.pacing import Pacer
from app.delivery.refuse import without_unsendable
from app.delivery.retry import backoff_delay, classify_upload
from app.domain.errors import StoreUnavailable
from app.domain.models import BulkJob, JobStatus
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
from app.store.store import Store
from app.userpilot.client import (
    RUNNING,
    UpstreamResult,
    UserpilotClient,
    completed_rows,
    job_status,
)

log = logging.getLogger("userpilot_relay.bulk")

ALL_REALTIME = 10**9  # min_rows that sends every row of a job to real-time calls
LOST_AFTER = 3  # 404s in a row before a job counts as lost (it may not be listed at once)
MAX_CONFLICT_WAIT = 60.0
BULK_OFF_SECONDS = 900.0  # after Userpilot refused bulk for the key: real-time only this long
SLOTS_AHEAD = 3  # slots a job's call may find reserved ahead of it (sizes its lease)
MARK_UPDATES = 1_000  # a completed job's updates marked delivered per transaction, about
_REMEMBERED = 1000  # per-job counters kept at most (jobs that ended elsewhere drop out)


def job_context(job: BulkJob) -> dict[str, object]:
    return {
        "job_id": job.id,
        "upstream_job_id": job.upstream_id,
        "rows": job.rows,
        "updates": job.updates,
        "attempt": job.attempts,
    }


_IDLE_CHECK = 1.0  # how often an idle replica looks whether a backlog calls for a job
_MAX_EMPTY_WAIT = 60.0


class BulkDriver:
    """The bulk loop of one dispatcher (shares its pacer, breaker and owner name): packs jobs,
    submits and polls them, and settles what each answer does to them."""

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
        # three times the send slots its calls may wait for (`_slot` waits up to a
        # third of the lease; the feeder keeps a slot or two reserved ahead of it).
        self.lease = max(
            settings.relay_lease_seconds,
            3 * settings.relay_bulk_poll_seconds,
            3 * SLOTS_AHEAD * pacer.interval,
        )
        self.client = client
        self.pacer = pacer
        self.rows_per_second: float | None = None  # as the last completed job went
        self._bulk_off_reason: str | None = None
        self._bulk_off_until = 0.0
        self._conflicts: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        self._auth_logged: set[str] = set()
        self.odd = OddAnswers()  # premature `completed`s and undocumented statuses

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
        return self.settings.relay_upstream_bulk == "auto" and self.bulk_off_reason is None

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
            return await self.poll(job)
        if self.breaker.open:
            # Userpilot looks down: leave the job to whichever replica sees it back first.
            await self.store.jobs.release(job, owner=self.owner)
            self._current = None
            return _IDLE_CHECK
        if job.uncertain_at is not None:
            # An upload of it went unanswered: Userpilot's job list says whether it started a
            # job (adopted) or not; only then may its rows go anywhere, bulk on or off.
            resolved = await self.resolve_doubt(job)
            if resolved == "submit":  # still in doubt: only an accepted submission ends it
                return await self.submit(job)
            if resolved != "certain":
                return resolved
            job = dataclasses.replace(job, uncertain_at=None)
        if not self._bulk_on():
            reason = self.bulk_off_reason or "RELAY_UPSTREAM_BULK is off"
            await self.split(job, "split", reason, None, ALL_REALTIME)
            return 0.0
        return await self.submit(job)

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
        bulk = self.rows_per_second or 3 * realtime
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

    async def resolve_doubt(self, job: BulkJob) -> float | Literal["certain", "submit"]:
        """Userpilot's job list on the job's unanswered upload (see `bulk_answers.py`)."""
        return await resolve_doubt(self, job)

    @property
    def bulk_off_reason(self) -> str | None:
        """Why this process packs no jobs now (Userpilot refused bulk for the key), or None."""
        return self._bulk_off_reason if time.time() < self._bulk_off_until else None

    def _count(self, counters: dict[str, int], job: BulkJob) -> int:
        if len(counters) > _REMEMBERED:
            counters.clear()
        counters[job.id] = counters.get(job.id, 0) + 1
        return counters[job.id]

    async def _observe(self, result: UpstreamResult) -> None:
        """Tell the breaker; an answer from a Userpilot that was down brings retries forward."""
        if self.breaker.record(result, probe=False):
            await self.store.claims.retry_now()

    async def _slot(self) -> float:
        """Wait for a send slot; answers how long it is still away when that is too long to
        wait holding the job's lease (a 429 pause): then nothing is sent now."""
        if self.pacer.paused():  # a 429: no slot before it ends
            return min(self.lease / 3, 1.0)
        slot = await self.store.pacing.reserve_send_slot(self.pacer.interval)
        wait = slot - time.time()
        if wait > self.lease / 3:
            # Unused: give it back (when none was reserved after it) rather than waste it.
            await self.store.pacing.release_send_slot(slot, self.pacer.interval)
            return wait
        await asyncio.sleep(max(0.0, wait))
        if self.pacer.paused():
            return 0.5  # a 429 came after the slot was reserved
        await asyncio.sleep(max(0.0, self.pacer.next_send() - time.time()))
        return 0.0

    async def _rows(self, job: BulkJob, *, refuse: bool) -> list[JobRow]:
        """The job's rows, read and merged a chunk of companies at a time (yielding to the
        event loop between chunks); with `refuse`, less the updates that cannot be sent
        (dead-lettered first)."""
        merged = JobMerge()
        for chunk in read_chunks(await self.store.jobs.companies(job.id)):
            claims = await self.store.jobs.rows(job.id, chunk)
            if refuse:
                claims = [
                    await without_unsendable(self.store, claim, job_context(job), strict=True)
                    for claim in claims
                ]
            merged.add(claims)
            await asyncio.sleep(0)
        return merged.rows

    # submitting ------------------------------------------------------------------------------
    async def submit(self, job: BulkJob) -> float:
        """Upload a waiting job; answers how long to wait before the next turn."""
        poll = self.settings.relay_bulk_poll_seconds
        context = job_context(job)
        rows = await self._rows(job, refuse=True)
        if not rows:
            await self.store.jobs.completed(job, owner=self.owner, sent_versions={})
            return 0.0
        body = bulk_body(rows)
        del rows  # only the body is held while the upload runs
        if len(body) > MAX_JOB_BYTES:
            await self.split(job, "split", f"{len(body)} bytes: over Userpilot's 50 MB", None)
            return 0.0
        if (later := await self._slot()) > 0:
            return later
        if not await self.store.jobs.uploading(job, owner=self.owner, lease=self.lease):
            log.info("another replica took the bulk job over", extra=context)
            return 0.0
        # A large upload may take longer than a real-time call; it ends inside the job's lease.
        within = max(self.settings.relay_upstream_timeout_seconds, self.lease / 2)
        result = await self.client.bulk_identify_companies(body, within=within)
        await self._observe(result)
        doubt = job.in_doubt(time.time())  # an earlier upload of it may still run
        context |= {"upstream_status": result.status, "x_request_id": result.request_id}
        outcome, upstream_id = classify_upload(result)
        BULK_SUBMISSIONS.labels(result=outcome).inc()
        error = result.error or f"HTTP {result.status}"
        if outcome == "accepted":
            assert upstream_id is not None
            self._conflicts.pop(job.id, None)
            state = job_status(result.body or {})
            if await self.store.jobs.submitted(
                job,
                owner=self.owner,
                upstream_id=upstream_id,
                upstream_status=state if state in RUNNING else "queued",
                lease=self.lease,
                http_status=result.status or 202,
                request_id=result.request_id,
                within=within,
            ):
                BULK_JOB_ROWS.labels(state="total").set(job.rows)
                BULK_JOB_ROWS.labels(state="completed").set(0)
                log.info(
                    "Userpilot accepted a bulk job",
                    extra=context | {"upstream_job_id": upstream_id},
                )
            else:
                log.warning("accepted, but the job was taken over meanwhile", extra=context)
            return poll
        if outcome == "conflict":
            # Another job holds the environment's one slot: wait longer each time.
            n = self._count(self._conflicts, job)
            delay = min(poll * 2 ** (n - 1), max(poll, MAX_CONFLICT_WAIT))
            log.info("another bulk job holds Userpilot's slot; waiting", extra=context)
            return await self._defer(job, f"409: {error}", delay, counted=False)
        if outcome == "throttled":
            UPSTREAM_THROTTLED.inc()
            asked = result.retry_after if result.retry_after is not None else self._backoff(job)
            until = self.pacer.pause(asked, "429 on a bulk upload")
            await self.store.pacing.pause_sending(until, reason=self.pacer.pause_reason)
            delay = self.pacer.capped(asked)
            return await self._defer(job, error, delay)
        if outcome == "error":  # no answer, a 5xx, or a 2xx without a job id: maybe accepted
            reason = ACCEPTED_WITHOUT_ID if result.ok else error
            return await self._defer(job, reason, uncertain=True)
        if outcome == "key_refused":
            UPSTREAM_AUTH_FAILURES.inc()
        if doubt and (outcome in ("key_refused", "unavailable") or job.rows == 1):
            return await self._defer(job, error)  # an earlier upload may still run: wait
        if outcome == "key_refused":
            await self._without_bulk(job, f"Userpilot refused the key for bulk jobs: {error}")
        elif outcome == "unavailable":
            await self._without_bulk(job, f"the endpoint has no bulk API: {error}")
        elif outcome == "too_large":
            await self.split(job, "split", error, 413, keep_in_bulk=doubt)
        else:  # some row is bad: bisect
            await self.split(job, "failed", error, result.status, keep_in_bulk=doubt)
        return 0.0

    def _backoff(self, job: BulkJob) -> float:
        settings = self.settings
        return backoff_delay(
            job.attempts + 1,
            base=max(settings.relay_retry_base_seconds, settings.relay_bulk_poll_seconds),
            cap=settings.relay_retry_max_seconds,
        )

    async def _defer(
        self,
        job: BulkJob,
        error: str,
        delay: float | None = None,
        *,
        counted: bool = True,
        uncertain: bool = False,
    ) -> float:
        """Submit it again later; `uncertain`: this upload may be pending at Userpilot (else
        the job keeps the doubt it had before the upload)."""
        wait = self._backoff(job) if delay is None else delay
        await self.store.jobs.deferred(
            job,
            owner=self.owner,
            delay=wait,
            error=error,
            counted=counted,
            uncertain=uncertain,
        )
        log.warning(
            "a bulk job was not accepted; submitting it again later",
            extra=job_context(job) | {"error": error, "retry_in_s": round(wait, 2)},
        )
        return self.settings.relay_bulk_poll_seconds

    async def _without_bulk(self, job: BulkJob, reason: str) -> None:
        """Userpilot takes no bulk job from this key: the rows go out real-time (where a bad
        key dead-letters them, as for any call), and this process packs no jobs for a while."""
        self._bulk_off_reason = reason
        self._bulk_off_until = time.time() + BULK_OFF_SECONDS
        log.error(
            f"bulk jobs are off for {BULK_OFF_SECONDS / 60:g} minutes: " + reason,
            extra=job_context(job),
        )
        await self.split(job, "rejected", reason, None, ALL_REALTIME)

    async def split(
        self,
        job: BulkJob,
        status: JobStatus,
        error: str,
        http_status: int | None,
        min_rows: int | None = None,
        *,
        keep_in_bulk: bool = False,
    ) -> None:
        """End the job `status`; its rows go to two smaller jobs or real-time calls."""
        children = await self.store.jobs.split(
            job,
            owner=self.owner,
            status=status,
            error=error,
            upstream_status="failed" if status == "failed" and job.upstream_id else None,
            min_rows=self.settings.relay_bulk_min_rows if min_rows is None else min_rows,
            http_status=http_status,
            keep_in_bulk=keep_in_bulk,
        )
        if children is None:
            return
        BULK_JOBS.labels(outcome=status).inc()
        BULK_ROWS.labels(outcome="resent").inc(job.rows)
        if job.submitted_at is not None:
            BULK_JOB_DURATION.observe(max(0.0, time.time() - job.submitted_at))
        log.warning(
            f"bulk job {status}: its rows go out again in smaller parts",
            extra=job_context(job) | {"error": error, "children": children},
        )

    # polling ---------------------------------------------------------------------------------
    async def poll(self, job: BulkJob) -> float:
        """Ask Userpilot how the running job stands; answers how long to wait."""
        poll = self.settings.relay_bulk_poll_seconds
        assert job.upstream_id is not None
        if (later := await self._slot()) > 0:
            return min(later, poll)
        result = await self.client.background_job(job.upstream_id)
        await self._observe(result)
        body = result.body or {}
        status = job_status(body) if result.ok else None
        done = completed_rows(body, job.rows) if status is not None else None
        if result.status != 404:
            self._lost.pop(job.id, None)
        if status == "completed" and done is not None and done < job.rows:
            if (note := self.odd.premature(job, done)) is None:
                # Userpilot says completed with rows missing: maybe not finished at all.
                await self.store.jobs.polled(
                    job,
                    owner=self.owner,
                    upstream_status="completed",
                    completed_rows=done,
                    error=f"Userpilot says completed with {done} of {job.rows} rows done; "
                    "polling again",
                    lease=self.lease,
                )
                return poll
            await self._complete(job, done, shortfall=note)
            return 0.0
        if status == "completed":
            self.odd.forget(job)
            await self._complete(job, done)
            return 0.0
        if status == "failed":
            await self.split(job, "failed", "Userpilot reported the job failed", None)
            return 0.0
        if result.status == 404 and self._count(self._lost, job) >= LOST_AFTER:
            # Userpilot does not know the job: nothing proves it ran. Submit it again later
            # (identify is an upsert); a 409 answers while it runs after all.
            self._lost.pop(job.id, None)
            log.warning("Userpilot lost a bulk job; submitting it again", extra=job_context(job))
            error = "404: Userpilot does not know the job"
            await self._defer(job, error, self._backoff(job), counted=False, uncertain=True)
            return 0.0
        if result.status == 429:
            UPSTREAM_THROTTLED.inc()
            pause = result.retry_after if result.retry_after is not None else poll
            until = self.pacer.pause(pause, "429 on a bulk job poll")
            await self.store.pacing.pause_sending(until, reason=self.pacer.pause_reason)
        elif result.status in (401, 403):
            UPSTREAM_AUTH_FAILURES.inc()
            if job.id not in self._auth_logged:
                if len(self._auth_logged) > _REMEMBERED:
                    self._auth_logged.clear()
                self._auth_logged.add(job.id)
                log.error(
                    "Userpilot refused the API key when asked about a bulk job",
                    extra=job_context(job) | {"error": result.error},
                )
        state = None if status is None else status if status in RUNNING else f"unknown: {status}"
        if status is not None and status not in RUNNING:
            self.odd.unknown(job, status)
        await self.store.jobs.polled(
            job,
            owner=self.owner,
            upstream_status=state,
            completed_rows=done,
            error=None if state else (result.error or "the answer holds no job status"),
            lease=self.lease,
        )
        if state:
            BULK_JOB_ROWS.labels(state="total").set(job.rows)
            BULK_JOB_ROWS.labels(state="completed").set(done or 0)
        return poll

    async def _complete(self, job: BulkJob, done: int | None, *, shortfall: str = "") -> None:
        """Mark the job delivered a chunk of companies at a time (each chunk one short
        transaction with the versions it sent: ingest never waits behind the whole job); the
        last chunk commits with the job's end, so no reader sees every update delivered while
        the job still runs."""
        delivered = updates = 0
        companies = await self.store.jobs.companies(job.id)
        last: dict[str, dict[str, int]] = {}
        for chunk in read_chunks(companies, MARK_UPDATES):
            if last and not await self.store.jobs.delivered_part(
                job,
                owner=self.owner,
                companies=list(last),
                sent_versions=last,
                completed_rows=done,
            ):
                return  # another replica drives the job now
            merged = JobMerge()
            merged.add(await self.store.jobs.rows(job.id, chunk))
            rows = merged.rows
            last = {row.company_id: dict(row.sent_versions) for row in rows}
            delivered += len(rows)
            updates += sum(row.updates for row in rows)
            await asyncio.sleep(0)
        if not await self.store.jobs.completed(
            job, owner=self.owner, sent_versions=last, completed_rows=done
        ):
            return
        if shortfall:
            await self.store.jobs.shortfall(job, shortfall)
        BULK_JOBS.labels(outcome="completed").inc()
        BULK_ROWS.labels(outcome="delivered").inc(delivered)
        DELIVERIES.labels(outcome="delivered").inc(updates)
        UPDATES_MERGED.inc(max(0, updates - delivered))
        if done is not None and done < job.rows:
            log.warning(
                "Userpilot completed a bulk job with fewer rows done than sent",
                extra=job_context(job) | {"completed_rows": done},
            )
        if job.submitted_at is not None:
            took = max(0.001, time.time() - job.submitted_at)
            BULK_JOB_DURATION.observe(took)
            if job.rows >= self.settings.relay_bulk_min_rows:  # small jobs are all overhead
                self.rows_per_second = job.rows / took
        log.info("bulk job completed", extra=job_context(job))
