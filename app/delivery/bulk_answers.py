"""Userpilot's answers about a bulk job that cannot be taken at their word.

A job in doubt (an upload of it went unanswered, so a job may run at Userpilot): its job list
(`GET /v1/background_jobs`) settles it, not a timer: a companies job of the same row count
submitted since the upload left (and not one the relay knows) is that upload, adopted and
polled; none listed and none running ends the doubt (the rows may go anywhere, bulk on or off);
another job running means asking again later. A `completed` with fewer rows done than sent is
polled again (up to SHORT_COMPLETED_POLLS answers or SHORT_COMPLETED_SECONDS) before it is
believed, its shortfall recorded; an undocumented status is logged once per job.
"""

from __future__ import annotations

import logging
import time
from typing import Literal, Protocol

from app.config import Settings
from app.domain.models import BulkJob
from app.store.store import Store
from app.userpilot.client import (
    RUNNING,
    UpstreamResult,
    UserpilotClient,
    job_started,
    job_status,
    listed_jobs,
)


class Calls(Protocol):
    """What the job list's questions need of `bulk.BulkDriver`."""

    store: Store
    client: UserpilotClient
    settings: Settings
    owner: str
    lease: float

    async def _slot(self) -> float: ...

    async def _observe(self, result: UpstreamResult) -> None: ...

    async def _defer(
        self,
        job: BulkJob,
        error: str,
        delay: float | None = None,
        *,
        counted: bool = True,
        uncertain: bool = False,
    ) -> float: ...


log = logging.getLogger("userpilot_relay.bulk")

# A 2xx upload answer with no job id to poll: Userpilot said it took the upload, so its job list
# showing nothing proves nothing; the job stays in doubt until a later upload is accepted.
ACCEPTED_WITHOUT_ID = "accepted without a usable job_id"
# How far Userpilot's clock may lag ours when matching a listed job to an unanswered upload.
CLOCK_SKEW = 5.0
SHORT_COMPLETED_POLLS = 10
SHORT_COMPLETED_SECONDS = 300.0
_REMEMBERED = 1000  # jobs remembered at most (jobs that ended elsewhere drop out)


class OddAnswers:
    """Per process: how long each job has said `completed` short, and which jobs' undocumented
    statuses were logged."""

    def __init__(self) -> None:
        self._short: dict[str, tuple[int, float]] = {}  # job id: (answers, since)
        self._unknown_logged: set[str] = set()

    def premature(self, job: BulkJob, done: int) -> str | None:
        """Count a `completed` with `done` of `job.rows`: None while it is to be polled again,
        else the shortfall to record on the completed job."""
        if job.id not in self._short and len(self._short) > _REMEMBERED:
            self._short.clear()
        polls, since = self._short.get(job.id, (0, time.time()))
        polls, took = polls + 1, time.time() - since
        self._short[job.id] = (polls, since)
        if polls < SHORT_COMPLETED_POLLS and took < SHORT_COMPLETED_SECONDS:
            return None
        self.forget(job)
        return (
            f"Userpilot reported only {done} of {job.rows} rows done, and still did after "
            f"{polls} answers over {took:.0f} s: taken as completed"
        )

    def forget(self, job: BulkJob) -> None:
        self._short.pop(job.id, None)

    def unknown(self, job: BulkJob, status: str) -> None:
        """An undocumented status: logged once per job (the job stays running)."""
        if job.id in self._unknown_logged:
            return
        if len(self._unknown_logged) > _REMEMBERED:
            self._unknown_logged.clear()
        self._unknown_logged.add(job.id)
        log.error(
            "Userpilot reported an undocumented status for a bulk job: it stays running and "
            "its companies in flight; after RELAY_BULK_STUCK_SECONDS without progress it is "
            "reported stuck, and POST /jobs/{id}/abandon ends it",
            extra={"job_id": job.id, "upstream_job_id": job.upstream_id, "status": status},
        )


async def resolve_doubt(calls: Calls, job: BulkJob) -> float | Literal["certain", "submit"]:
    """Ask Userpilot whether the job's unanswered upload started a job: a companies job of
    the same row count submitted since the upload left (and not one the relay knows) is
    that upload: adopted and polled. `certain` when Userpilot shows no such job and none
    running (the rows may go anywhere now); `submit` when the lost upload was answered 2xx
    without a job id (nothing listed proves nothing: submit it again, in doubt); else how
    long to wait before asking again."""
    assert job.uncertain_at is not None
    poll = calls.settings.relay_bulk_poll_seconds
    if (later := await calls._slot()) > 0:
        return min(later, poll)
    result = await calls.client.background_jobs()
    await calls._observe(result)
    listed = listed_jobs(result.body or {}) if result.ok else None
    if listed is None:
        error = result.error or f"HTTP {result.status}: no job list"
        return await calls._defer(job, f"cannot list Userpilot's jobs: {error}", counted=False)
    ids = [str(j["job_id"]) for j in listed if isinstance(j.get("job_id"), str)]
    known = await calls.store.jobs.known_upstream_ids(ids)
    since = job.uncertain_at - CLOCK_SKEW
    if job.submitted_at is not None:  # accepted once, then lost: not that job again
        since = max(since, job.submitted_at)
    orphan: dict[str, object] | None = None
    running = False
    for upstream in listed:
        state = job_status(upstream)
        upstream_id = upstream.get("job_id")
        kind = upstream.get("type")
        started = job_started(upstream)
        if (
            orphan is None
            and isinstance(upstream_id, str)
            and upstream_id not in known
            and kind in (None, "companies_bulk_identify")
            and upstream.get("total_rows") == job.rows
            and started is not None
            and started >= since
        ):
            orphan = upstream
        elif state in RUNNING:
            running = True
    context = {"job_id": job.id, "rows": job.rows, "attempt": job.attempts}
    if orphan is not None:
        upstream_id = str(orphan["job_id"])
        state = job_status(orphan) or "queued"
        if await calls.store.jobs.submitted(
            job,
            owner=calls.owner,
            upstream_id=upstream_id,
            upstream_status=state,
            lease=calls.lease,
            http_status=202,
            request_id=None,
            within=calls.lease,
        ):
            log.warning(
                "an upload whose answer was lost started a job at Userpilot: adopted",
                extra=context | {"upstream_job_id": upstream_id, "upstream_status": state},
            )
        return 0.0
    if running:
        # Another job runs: it may be this upload's under another count or clock; ask later.
        error = "in doubt: Userpilot runs a job that may hold these rows; asking again"
        return await calls._defer(job, error, counted=False)
    if (job.last_error or "").startswith(ACCEPTED_WITHOUT_ID):
        return "submit"
    if not await calls.store.jobs.certain(job, owner=calls.owner):
        return 0.0
    log.info("Userpilot shows no job from the unanswered upload: not in doubt", extra=context)
    return "certain"
