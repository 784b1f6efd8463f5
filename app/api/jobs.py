"""`GET /jobs`, `GET /jobs/{job_id}` and `POST /jobs/{job_id}/abandon` (admin): the Userpilot bulk
jobs the relay ran or runs, and the way out of one that never ends."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.companies import AUTH_ERRORS, _error
from app.api.deps import AdminCaller, SettingsDep, StoreDep
from app.domain.models import BulkJob, JobStatus
from app.errors import RelayError
from app.metrics import BULK_JOBS

log = logging.getLogger("userpilot_relay.jobs")

router = APIRouter(tags=["operations"])

_JOB_ID = r"^job_[0-9]{13}_[0-9a-f]{12}$"


class JobOut(BaseModel):
    """One bulk job: a row per company, its pending updates merged."""

    id: str = Field(description="The relay's job id.")
    status: JobStatus = Field(
        description=(
            "`waiting`: recorded, not yet accepted by Userpilot (new, or retrying after a 409 "
            "or an outage); `running`: accepted; `completed`: its rows are delivered; "
            "`failed`: Userpilot failed it or refused the upload, its rows went out again as "
            "smaller jobs or real-time calls (`outcome` says which); `split`: too large, or bulk "
            "was switched off: its rows went to smaller jobs or real-time calls; `rejected`: "
            "Userpilot refused bulk jobs for the key (401/403) or the endpoint has no bulk API: "
            "its rows went out as real-time calls, and that replica packs no jobs for 15 minutes; "
            "`abandoned`: an operator ended it (`abandoned_by`, `abandoned_at`): its rows went "
            "out again as real-time calls (Userpilot may still run it)."
        )
    )
    upstream_job_id: str | None = Field(description="Userpilot's job id, once accepted.")
    upstream_status: str | None = Field(
        description="Userpilot's last reported status (queued, validating, processing, ...)."
    )
    rows: int = Field(description="Companies in the job, one row each.")
    updates: int = Field(description="Stored updates merged into those rows.")
    completed_rows: int = Field(description="Rows Userpilot reports done.")
    attempts: int = Field(description="Submissions so far.")
    owner: str | None = Field(
        description="The replica driving it now (host:pid:tag), while it holds the job's lease."
    )
    parent_id: str | None = Field(description="The failed or split job these rows came from.")
    created_at: float = Field(description="Unix time the job was recorded.")
    submitted_at: float | None = Field(description="Unix time Userpilot accepted it.")
    progress_at: float | None = Field(description="Unix time of its last progress.")
    finished_at: float | None
    next_attempt_at: float | None = Field(description="While waiting: the next submission.")
    stuck: bool = Field(
        description=(
            "Unfinished with no progress (accepted, a new status, more rows done) for "
            "RELAY_BULK_STUCK_SECONDS: running, or never accepted (alerted on)."
        )
    )
    uncertain_since: float | None = Field(
        description=(
            "Unix time an upload of it left whose answer is not recorded: it may still run at "
            "Userpilot, so the job's rows stay in bulk jobs until Userpilot's job list settles it "
            "(a job from that upload is adopted; none listed and none running ends the doubt) "
            "or a submission is accepted."
        )
    )
    last_error: str | None = Field(description="The last submission's or poll's error.")
    outcome: str | None = Field(description="What became of its rows, once it ended.")
    abandoned_by: str | None = Field(
        default=None, description="The name of the relay key that abandoned it."
    )
    abandoned_at: float | None = Field(default=None, description="Unix time it was abandoned.")

    @classmethod
    def of(cls, job: BulkJob, stuck_seconds: float) -> JobOut:
        return cls(
            id=job.id,
            status=job.status,
            upstream_job_id=job.upstream_id,
            upstream_status=job.upstream_status,
            rows=job.rows,
            updates=job.updates,
            completed_rows=job.completed_rows,
            attempts=job.attempts,
            owner=job.owner,
            parent_id=job.parent_id,
            created_at=job.created_at,
            submitted_at=job.submitted_at,
            progress_at=job.progress_at,
            finished_at=job.finished_at,
            next_attempt_at=job.next_attempt_at if job.status == "waiting" else None,
            stuck=job.stuck(after=stuck_seconds, now=time.time()),
            uncertain_since=job.uncertain_at,
            last_error=job.last_error,
            outcome=job.outcome,
            abandoned_by=job.abandoned_by,
            abandoned_at=job.abandoned_at,
        )


class JobPage(BaseModel):
    """Jobs newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[JobOut]
    next_cursor: str | None


@router.get(
    "/jobs",
    response_model=JobPage,
    responses={**AUTH_ERRORS, 422: _error("Invalid query parameter.")},
)
async def list_jobs(
    _: AdminCaller,
    store: StoreDep,
    settings: SettingsDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=_JOB_ID, description="`next_cursor` of the last page.")
    ] = None,
) -> JobPage:
    """The bulk jobs, newest first, one page at a time (admin)."""
    jobs = await store.jobs.listing(status=status, before=cursor, limit=limit)
    stuck = settings.relay_bulk_stuck_seconds
    return JobPage(
        items=[JobOut.of(job, stuck) for job in jobs],
        next_cursor=jobs[-1].id if len(jobs) == limit else None,
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={**AUTH_ERRORS, 404: _error("No such job."), 422: _error("Invalid job id.")},
)
async def get_job(
    job_id: Annotated[str, Path(min_length=1, max_length=64, description="The relay's job id.")],
    _: AdminCaller,
    store: StoreDep,
    settings: SettingsDep,
) -> JobOut:
    """One bulk job: status, rows, completed rows, timestamps and outcome (admin)."""
    job = await store.jobs.get(job_id) if job_id.isascii() and job_id.isprintable() else None
    if job is None:
        raise RelayError(404, "not_found", "no job with this id")
    return JobOut.of(job, settings.relay_bulk_stuck_seconds)


@router.post(
    "/jobs/{job_id}/abandon",
    response_model=JobOut,
    responses={
        **AUTH_ERRORS,
        404: _error("No such job."),
        409: _error("The job has already finished."),
        422: _error("Invalid job id."),
    },
)
async def abandon_job(
    job_id: Annotated[str, Path(min_length=1, max_length=64, description="The relay's job id.")],
    caller: AdminCaller,
    store: StoreDep,
    settings: SettingsDep,
) -> JobOut:
    """End a waiting or running bulk job that will not end (admin): it is recorded `abandoned`
    with your key's name and the time, and its rows go out again as real-time calls (a newer
    update of a company still wins). Userpilot may still run the job later, landing its older
    values: use it for a job Userpilot reports in an undocumented state or that is stuck."""
    valid = job_id.isascii() and job_id.isprintable()
    job, ended = await store.jobs.abandon(job_id, by=caller.name) if valid else (None, False)
    if job is None:
        raise RelayError(404, "not_found", "no job with this id")
    if not ended:
        raise RelayError(409, "conflict", f"the job has already finished ({job.status})")
    BULK_JOBS.labels(outcome="abandoned").inc()
    log.warning(
        "a bulk job was abandoned by an operator: its rows go out again real-time",
        extra={"job_id": job.id, "upstream_job_id": job.upstream_id, "by": caller.name},
    )
    return JobOut.of(job, settings.relay_bulk_stuck_seconds)
