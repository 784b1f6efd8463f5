"""Userpilot bulk jobs as plans (see `app/store/sql.py`), the same on both backends.

A job is recorded, with its deliveries moved into it, in one transaction before it is
submitted; at most one job is running or leased at a time across every replica (PostgreSQL:
under `LOCK_JOBS`), and a company in a job is in flight: no claim and no other job takes it
until the job ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from app.domain.models import BulkJob, Claim, ClaimedUpdate, JobStatus, job_token
from app.domain.rules import printable
from app.store import job_queries as jq
from app.store import queries as q
from app.store.claims import EXPAND_CHUNK, expand
from app.store.delivered import record_delivered_job
from app.store.sql import Plan, Row, Statement


def row_to_job(row: Row) -> BulkJob:
    """A row of `job_queries.JOB_COLUMNS`."""
    return BulkJob(
        id=row[0],
        parent_id=row[1],
        status=row[2],
        upstream_id=row[3],
        upstream_status=row[4],
        rows=int(row[5]),
        updates=int(row[6]),
        completed_rows=int(row[7]),
        attempts=int(row[8]),
        owner=row[9],
        next_attempt_at=row[10],
        created_at=row[11],
        updated_at=row[12],
        submitted_at=row[13],
        progress_at=row[14],
        finished_at=row[15],
        last_error=row[16],
        outcome=row[17],
        uncertain_at=row[18],
        abandoned_by=row[19],
        abandoned_at=row[20],
    )


def _job(job_id: str) -> Plan[BulkJob | None]:
    row = (yield Statement(jq.JOB_BY_ID, {"id": job_id})).one()
    return None if row is None else row_to_job(row)


def get_job(job_id: str) -> Plan[BulkJob | None]:
    return (yield from _job(job_id))


def unfinished() -> Plan[BulkJob | None]:
    """The running job, else the oldest waiting one."""
    row = (yield Statement(jq.UNFINISHED_JOB)).one()
    return None if row is None else row_to_job(row)


def list_jobs(status: str | None, before: str | None, limit: int) -> Plan[list[BulkJob]]:
    sql, params = q.filtered(jq.JOBS, status=status)
    if before is not None:
        sql, params = sql + " AND id < :before", {**params, "before": before}
    stmt = Statement(sql + " ORDER BY id DESC LIMIT :limit", {**params, "limit": limit})
    return [row_to_job(r) for r in (yield stmt).rows]


def take(owner: str, lease: float) -> Plan[BulkJob | None]:
    """The job this replica should drive now, leased to it; None when there is none for it.

    The running job if there is one; else the oldest waiting job that is due; never while
    another replica holds a live lease on any unfinished job.
    """
    yield Statement(jq.LOCK_JOBS)
    active = (yield Statement(jq.ACTIVE_JOBS)).rows
    chosen: BulkJob | None = None
    for row in active:
        job, leased, due = row_to_job(row[:-2]), bool(row[-2]), bool(row[-1])
        if leased and job.owner != owner:
            return None  # another replica drives a job: one at a time
        if chosen is None and (job.status == "running" or due or (leased and job.owner == owner)):
            chosen = job
    if chosen is None:
        return None
    yield Statement(jq.LEASE_JOB, {"id": chosen.id, "owner": owner, "lease": lease})
    return (yield from _job(chosen.id))


def waiting_companies(limit: int) -> Plan[int]:
    """Companies with queued updates plus updates of stored batches not yet expanded (each
    counted as one company), counted up to about `limit`."""
    queued = (yield Statement(jq.QUEUED_COMPANIES, {"limit": limit})).one()
    staged = (yield Statement(q.BATCHES_WAITING)).one()
    return int(queued[0] if queued else 0) + int((staged[0] if staged else 0) or 0)


def pack(
    *,
    job_id: str,
    owner: str,
    lease: float,
    max_rows: int,
    max_merge: int,
    settle: float,
    fresh: float,
) -> Plan[BulkJob | None]:
    """Record a job of the oldest waiting companies (at most `max_rows`), leased to `owner`.

    None when a job is unfinished already, or no company may ride one now.
    """
    yield Statement(jq.LOCK_JOBS)
    if (yield Statement(jq.ACTIVE_JOBS)).rows:
        return None
    yield Statement(jq.LOCK_PACK)
    params = {"rows": max_rows, "settle": settle, "fresh": fresh}
    picked = (yield Statement(jq.PACK_PICK, params)).rows
    if not picked:
        return None
    companies = [r[0] for r in picked]
    assigned = yield Statement(
        jq.PACK_ASSIGN,
        {
            "job": job_id,
            "token": job_token(job_id),
            "companies": companies,
            "last_seq": max(int(r[1]) for r in picked),
            "max_merge": max_merge,
        },
    )
    yield Statement(
        jq.INSERT_JOB,
        {
            "id": job_id,
            "parent": None,
            "rows": len(companies),
            "updates": assigned.rowcount,
            "owner": owner,
            "leased": 1,
            "lease": lease,
            "uncertain_at": None,
        },
    )
    return (yield from _job(job_id))


def expand_for_job(max_rows: int) -> Plan[bool]:
    """Before packing, in a transaction of its own (claims wait on the packing lock, not on
    this): expand the next chunk of a stored batch unless `max_rows` companies are queued
    already. Answers whether there may be more to expand."""
    queued = (yield Statement(jq.QUEUED_COMPANIES, {"limit": max_rows})).one()
    if queued is not None and int(queued[0]) >= max_rows:
        return False
    return (yield from expand(before_seq=None))


EXPANSIONS_PER_JOB = 10_000 // EXPAND_CHUNK + 1  # at most a job's rows, a chunk at a time


def companies(job_id: str) -> Plan[list[tuple[str, int]]]:
    """The job's companies, oldest first, each with how many of its updates the job holds."""
    found = (yield Statement(jq.JOB_COMPANIES, {"job": job_id})).rows
    return [(str(company_id), int(count)) for company_id, count in found]


def rows(job_id: str, companies: Sequence[str]) -> Plan[list[Claim]]:
    """The job's deliveries of `companies` (a chunk of `companies()`), a `Claim` per company in
    arrival order, with the property versions that guard against older values."""
    found = (yield Statement(jq.JOB_ROWS, {"job": job_id, "companies": list(companies)})).rows
    by_company: dict[str, list[ClaimedUpdate]] = {}
    for company_id, delivery_id, seq, metadata, attempts in found:
        by_company.setdefault(company_id, []).append(
            ClaimedUpdate(
                id=delivery_id, seq=int(seq), metadata=orjson.loads(metadata), attempts=attempts
            )
        )
    versions: dict[str, dict[str, int]] = {}
    if by_company:
        stmt = Statement(jq.VERSIONS_OF, {"companies": list(by_company)})
        for company_id, key, seq in (yield stmt).rows:
            versions.setdefault(company_id, {})[key] = int(seq)
    token = job_token(job_id)
    return [  # rows come in seq order
        Claim(company_id=c, updates=updates, versions=versions.get(c, {}), owner=token)
        for c, updates in by_company.items()
    ]


def _text(value: str | None, limit: int = 500) -> str | None:
    """Userpilot's words, safe for any column (no control characters, bounded)."""
    return None if value is None else printable(value, limit)


def _owned(job: BulkJob, owner: str, expected: JobStatus) -> dict[str, Any]:
    return {"id": job.id, "owner": owner, "expected": expected}


def uploading(job: BulkJob, owner: str, lease: float) -> Plan[bool]:
    """About to upload: renew the lease, mark the job uncertain; False when not ours."""
    params = {**_owned(job, owner, "waiting"), "lease": lease}
    return (yield Statement(jq.JOB_UPLOADING, params)).rowcount > 0


def submitted(
    job: BulkJob,
    owner: str,
    upstream_id: str,
    upstream_status: str,
    lease: float,
    http_status: int,
    request_id: str | None,
    within: float,
) -> Plan[bool]:
    """Userpilot accepted it; so no upload older than this one (`within`: the upload's time
    limit) still runs there, and the waiting jobs unanswered before it are certain again."""
    params = {
        **_owned(job, owner, "waiting"),
        "http_status": http_status,
        "request_id": _text(request_id, 200),
        "upstream_id": upstream_id,
        "upstream_status": _text(upstream_status, 60),
        "lease": lease,
    }
    if not (yield Statement(jq.JOB_SUBMITTED, params)).rowcount:
        return False
    yield Statement(jq.JOBS_CERTAIN, {"within": within})
    return True


def polled(
    job: BulkJob,
    owner: str,
    *,
    upstream_status: str | None,
    completed_rows: int | None,
    error: str | None,
    lease: float,
) -> Plan[bool]:
    """Record a poll (renewing the lease); False when this replica no longer holds the job."""
    base = {**_owned(job, owner, "running"), "lease": lease, "error": _text(error)}
    if upstream_status is None:
        return (yield Statement(jq.JOB_POLL_FAILED, base)).rowcount > 0
    params = {
        **base,
        "upstream_status": _text(upstream_status, 60),
        "completed_rows": completed_rows if completed_rows is not None else job.completed_rows,
    }
    return (yield Statement(jq.JOB_POLLED, params)).rowcount > 0


def deferred(
    job: BulkJob, owner: str, *, delay: float, error: str, counted: bool, uncertain: bool
) -> Plan[bool]:
    params = {
        **_owned(job, owner, job.status),
        "delay": delay,
        "error": _text(error),
        "counted": 1 if counted else 0,
        "uncertain": 1 if uncertain else 0,
        "prior": job.uncertain_at,
    }
    return (yield Statement(jq.JOB_DEFERRED, params)).rowcount > 0


def _finish(
    job: BulkJob,
    owner: str,
    status: JobStatus,
    *,
    outcome: str,
    error: str | None = None,
    upstream_status: str | None = None,
    completed_rows: int | None = None,
) -> Plan[bool]:
    params = {
        "completed_rows": completed_rows,
        **_owned(job, owner, job.status),
        "status": status,
        "outcome": _text(outcome, 2000),
        "error": _text(error),
        "upstream_status": _text(upstream_status, 60),
    }
    return (yield Statement(jq.JOB_FINISHED, params)).rowcount > 0


def completed(
    job: BulkJob,
    owner: str,
    sent_versions: Mapping[str, Mapping[str, int]],
    completed_rows: int | None,
) -> Plan[bool]:
    """The job's deliveries delivered, with the property versions its rows sent."""
    outcome = f"delivered {job.rows} companies ({job.updates} updates)"
    finished = yield from _finish(
        job, owner, "completed", outcome=outcome, completed_rows=completed_rows
    )
    if not finished:
        return False
    yield Statement(jq.JOB_DELIVERED, {"job": job.id})
    versions = [  # one lock order, whoever else writes these rows
        {"company": company, "key": key, "seq": keys[key]}
        for company, keys in sorted(sent_versions.items())
        for key in sorted(keys)
    ]
    if versions:
        yield Statement(q.SENT_VERSION, versions, many=True)
    yield from record_delivered_job(job, sent_versions, completed_rows)  # for reconciliations
    return True


def split(
    job: BulkJob,
    owner: str,
    *,
    status: JobStatus,
    error: str,
    upstream_status: str | None,
    min_rows: int,
    child_ids: Sequence[str],
    http_status: int | None,
    keep_in_bulk: bool,
) -> Plan[list[str] | None]:
    """End the job as `failed` or `split`: its companies in two halves, each half of at least
    `min_rows` a new waiting job, a smaller one back to real-time calls (never packed again).

    With `keep_in_bulk` (an upload of the job may be pending at Userpilot unrecorded), every
    part becomes a job: a real-time call could land before that upload's older values.

    Answers the new jobs' ids (None when this replica no longer holds the job).
    """
    if keep_in_bulk:
        min_rows = 1
    child_ids = sorted(child_ids)  # the older half gets the lower id: it goes first
    companies = (yield Statement(jq.JOB_COMPANIES, {"job": job.id})).rows
    middle = len(companies) // 2
    halves = [h for h in (companies[:middle], companies[middle:]) if h]
    as_jobs = [
        (half, child_id)
        for half, child_id in zip(halves, child_ids, strict=False)
        if len(half) >= min_rows and len(companies) > 1
    ]
    children = [child_id for _, child_id in as_jobs]
    to_realtime = [half for half in halves if all(half is not h for h, _ in as_jobs)]
    realtime = sum(len(half) for half in to_realtime)
    parts = [f"{len(children)} smaller job(s): {', '.join(children)}"] if children else []
    if realtime:
        parts.append(f"{realtime} companies to real-time calls")
    outcome = f"{status}: rows sent again as " + (" and ".join(parts) or "nothing")
    finished = yield from _finish(
        job, owner, status, outcome=outcome, error=error, upstream_status=upstream_status
    )
    if not finished:
        return None  # another replica drives the job now
    for half, child_id in as_jobs:
        yield Statement(
            jq.INSERT_JOB,
            {
                "id": child_id,
                "parent": job.id,
                "rows": len(half),
                "updates": sum(int(c[1]) for c in half),
                "owner": None,
                "leased": 0,
                "lease": 0,
                "uncertain_at": job.uncertain_at if keep_in_bulk else None,
            },
        )
        moved = {"job": job.id, "child": child_id, "token": job_token(child_id)}
        yield Statement(jq.JOB_MOVE_ROWS, {**moved, "companies": [c[0] for c in half]})
    for half in to_realtime:
        params = {
            "job": job.id,
            "companies": [c[0] for c in half],
            "status": http_status,
            "error": _text(error),
        }
        yield Statement(jq.JOB_ROWS_TO_REALTIME, params)
    return children


def release(job: BulkJob, owner: str) -> Plan[None]:
    yield Statement(jq.RELEASE_JOB, {"id": job.id, "owner": owner})


def prune_jobs(before: float) -> Plan[int]:
    return (yield Statement(jq.PRUNE_JOBS, {"before": before})).rowcount
