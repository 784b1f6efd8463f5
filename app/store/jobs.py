"""Userpilot bulk jobs: packing the backlog into a job, driving it (lease, upload, polls,
outcome), and the ways out of doubt (Userpilot's job list) or of a job that never ends (an
operator's abandon).

A job is recorded, with its deliveries moved into it, before it is submitted: a chunk of about
`PACK_CHUNK` updates per short transaction (a completed job is marked delivered the same way,
`delivered_part`). At most one job is running or leased at a time across every replica
(PostgreSQL: under `LOCK_JOBS`), and a company in a job is in flight: no claim and no other job
takes it until the job ends. A job's deliveries are `delivering` under the lease owner
`job:<id>` with no `lease_until` (so `claims.EXPIRE_LEASES` never hands them back): the job
row's own lease, renewed at every poll, says which replica drives it, and any replica takes
over a job whose lease ran out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from app.domain.models import BulkJob, Claim, ClaimedUpdate, JobStatus, job_token
from app.domain.rules import printable
from app.store import delivered
from app.store.claims import (
    BATCHES_WAITING,
    CANCEL_ERASED_QUEUED,
    EXPAND_CHUNK,
    erased_of,
    expand,
)
from app.store.part import StorePart
from app.store.rows import new_job_id
from app.store.sql import Plan, Row, Statement, filtered

JOB_COLUMNS = (
    "id, parent_id, status, upstream_id, upstream_status, total_rows, updates, completed_rows, "
    "attempts, owner, next_attempt_at, created_at, updated_at, submitted_at, progress_at, "
    "finished_at, last_error, outcome, uncertain_at, abandoned_by, abandoned_at"
)

# PostgreSQL: one replica at a time decides which job runs (`LOCK_JOBS`); packing also holds the
# claims' lock exclusively (see `claims.LOCK_CLAIMS`).
LOCK_JOBS = "{lock_jobs}"
LOCK_PACK = "{lock_pack}"

JOB_BY_ID = f"SELECT {JOB_COLUMNS} FROM bulk_jobs WHERE id = :id"
# Newest first (ids sort by creation); `list_jobs` adds the filters and the cursor.
JOBS = f"SELECT {JOB_COLUMNS} FROM bulk_jobs WHERE 1 = 1"
# The jobs not finished, running first, then oldest first; with whether their lease is live and
# whether they are due.
ACTIVE_JOBS = f"""
    SELECT {JOB_COLUMNS}, lease_until IS NOT NULL AND lease_until > {{now}},
        next_attempt_at <= {{now}}
    FROM bulk_jobs WHERE status IN ('waiting', 'running')
    ORDER BY CASE WHEN status = 'running' THEN 0 ELSE 1 END, id
"""
LEASE_JOB = """
    UPDATE bulk_jobs SET owner = :owner, lease_until = {now} + :lease, updated_at = {now}
    WHERE id = :id
"""
RELEASE_JOB = """
    UPDATE bulk_jobs SET owner = NULL, lease_until = NULL, updated_at = {now}
    WHERE id = :id AND owner = :owner
"""

# packing ----------------------------------------------------------------------------------
# How many companies wait (counted up to :limit), and how many updates wait unexpanded.
QUEUED_COMPANIES = """
    SELECT count(*) FROM (
        SELECT DISTINCT company_id FROM deliveries WHERE status = 'queued' LIMIT :limit) w
"""
# The companies a job may take, oldest first: every queued update ready, settled, allowed on a
# bulk job and not fresh (a single update younger than :fresh keeps its real-time latency),
# and nothing of the company in flight.
PACK_PICK = """
    WITH waiting AS (
        SELECT company_id, min(seq) AS first_seq, max(seq) AS last_seq, count(*) AS queued
        FROM deliveries
        WHERE status = 'queued'
        GROUP BY company_id
        HAVING max(CASE WHEN realtime_only = 1 OR next_attempt_at > {now}
            OR enqueued_at > {now} - :settle
            OR (batch_id IS NULL AND enqueued_at > {now} - :fresh) THEN 1 ELSE 0 END) = 0
    )
    SELECT w.company_id, w.last_seq, w.queued FROM waiting w
    WHERE NOT EXISTS (
        SELECT 1 FROM deliveries b WHERE b.company_id = w.company_id AND b.status = 'delivering')
    ORDER BY w.first_seq LIMIT :rows
"""
# Each company's oldest :max_merge queued updates join the job: those the pick saw (an update
# stored since, `Prefer: wait`'s or a fresh one, is not packed behind its back).
PACK_ASSIGN = """
    UPDATE deliveries SET status = 'delivering', job_id = :job, via = 'bulk',
        attempts = attempts + 1, lease_owner = :token, lease_until = NULL, updated_at = {now}
    WHERE seq IN (
        SELECT seq FROM (
            SELECT seq, row_number() OVER (PARTITION BY company_id ORDER BY seq) AS n
            FROM deliveries WHERE status = 'queued' AND company_id = ANY(:companies)
                AND seq <= :last_seq AND realtime_only = 0) ranked
        WHERE n <= :max_merge)
"""
# The pick is read outside the packing transactions, which take its companies a chunk at a
# time (`pack_chunk`): each chunk leaves out the companies that went in flight or into a
# backoff since (`COALESCE`: through the companies' index, whatever the status statistics say).
BUSY_OF = """
    SELECT DISTINCT company_id FROM deliveries
    WHERE company_id = ANY(:companies) AND (COALESCE(status, '') = 'delivering'
        OR (COALESCE(status, '') = 'queued' AND attempts > 0 AND next_attempt_at > {now}))
"""
JOB_COMPANIES_IN = """
    SELECT count(DISTINCT company_id) FROM deliveries
    WHERE company_id = ANY(:companies) AND COALESCE(job_id, '') = :job
        AND COALESCE(status, '') = 'delivering'
"""
# A later chunk joins only a job still being packed by this replica (not taken, not abandoned).
JOB_PACKING = """
    SELECT 1 FROM bulk_jobs WHERE id = :id AND owner = :owner AND status = 'waiting'
        AND submitted_at IS NULL AND uncertain_at IS NULL FOR UPDATE
"""
JOB_GREW = """
    UPDATE bulk_jobs SET total_rows = total_rows + :rows, updates = updates + :updates,
        lease_until = {now} + :lease, updated_at = {now}
    WHERE id = :id AND owner = :owner AND status = 'waiting'
"""
# After a pack or a completion moved many rows between statuses (PostgreSQL: the planner's
# statistics would otherwise think no row, or every row, is in flight until autovacuum runs).
ANALYZE_DELIVERIES = "{analyze_deliveries}"
INSERT_JOB = """
    INSERT INTO bulk_jobs (id, parent_id, status, total_rows, updates, owner, lease_until,
        next_attempt_at, created_at, updated_at, uncertain_at)
    VALUES (:id, :parent, 'waiting', :rows, :updates, :owner,
        CASE WHEN :leased = 1 THEN {now} + :lease END, {now}, {now}, {now}, :uncertain_at)
"""

# a job's rows ------------------------------------------------------------------------------
# Read a chunk of the job's companies at a time (`rows`): never the whole backlog at once.
# Through the companies' index: `COALESCE` keeps the planner off the job's and the status's
# (either would visit every row of the job, or in flight, for every chunk).
JOB_ROWS = """
    SELECT company_id, id, seq, metadata, attempts FROM deliveries
    WHERE company_id = ANY(:companies) AND COALESCE(job_id, '') = :job
        AND COALESCE(status, '') = 'delivering'
    ORDER BY seq
"""
# A company erased since the job was packed: its rows leave the job (never uploaded; the
# erasure's purge, waiting while they are in flight, forgets the rest), and the job shrinks.
JOB_ERASED_COUNTS = """
    SELECT count(DISTINCT company_id), count(*) FROM deliveries
    WHERE company_id = ANY(:companies) AND COALESCE(job_id, '') = :job
        AND COALESCE(status, '') = 'delivering'
"""
JOB_DROP_ERASED = """
    DELETE FROM deliveries
    WHERE company_id = ANY(:companies) AND COALESCE(job_id, '') = :job
        AND COALESCE(status, '') = 'delivering'
"""
JOB_SHRANK = """
    UPDATE bulk_jobs SET total_rows = GREATEST(total_rows - :rows, 0),
        updates = GREATEST(updates - :updates, 0), updated_at = {now}
    WHERE id = :id
"""
JOB_COMPANIES = """
    SELECT company_id, count(*) FROM deliveries WHERE job_id = :job AND status = 'delivering'
    GROUP BY company_id ORDER BY min(seq)
"""

# outcomes: only the job's lease holder may record --------------------------------------------
_OWNED = " WHERE id = :id AND owner = :owner AND status = :expected"
# Just before an upload: the lease renewed (or the upload skipped: another replica took the
# job), and the job marked uncertain until Userpilot's answer is recorded.
JOB_UPLOADING = (
    """
    UPDATE bulk_jobs SET uncertain_at = {now}, lease_until = {now} + :lease, updated_at = {now}"""
    + _OWNED
)
JOB_SUBMITTED = (
    """
    UPDATE bulk_jobs SET status = 'running', uncertain_at = NULL, upstream_id = :upstream_id,
        upstream_status = :upstream_status, accepted_status = :http_status,
        request_id = :request_id, attempts = attempts + 1, submitted_at = {now},
        progress_at = COALESCE(progress_at, {now}), lease_until = {now} + :lease,
        updated_at = {now}, last_error = NULL"""
    + _OWNED
)
# Progress is a new status or more rows done; no news only renews the lease.
JOB_POLLED = (
    """
    UPDATE bulk_jobs SET
        progress_at = CASE WHEN :completed_rows > completed_rows
            OR COALESCE(upstream_status, '') <> :upstream_status THEN {now}
            ELSE progress_at END,
        completed_rows = GREATEST(completed_rows, :completed_rows),
        upstream_status = :upstream_status, last_error = :error,
        lease_until = {now} + :lease, updated_at = {now}"""
    + _OWNED
)
JOB_POLL_FAILED = (
    """
    UPDATE bulk_jobs SET last_error = :error, lease_until = {now} + :lease, updated_at = {now}"""
    + _OWNED
)
# Not accepted (409, an outage, a lost job): submitted again, by any replica, after :delay.
JOB_DEFERRED = (
    """
    UPDATE bulk_jobs SET status = 'waiting', upstream_id = NULL, upstream_status = NULL,
        completed_rows = 0, next_attempt_at = {now} + :delay, last_error = :error,
        uncertain_at = CASE WHEN :uncertain = 1 THEN COALESCE(uncertain_at, {now})
            ELSE :prior END,
        attempts = attempts + :counted, owner = NULL, lease_until = NULL, updated_at = {now}"""
    + _OWNED
)
JOB_FINISHED = (
    """
    UPDATE bulk_jobs SET status = :status, finished_at = {now}, updated_at = {now},
        completed_rows = COALESCE(:completed_rows, completed_rows),
        upstream_status = COALESCE(:upstream_status, upstream_status),
        last_error = :error, outcome = :outcome, owner = NULL, lease_until = NULL"""
    + _OWNED
)
# The job's deliveries delivered, with the upload's answer as the last they had from Userpilot.
JOB_DELIVERED = """
    UPDATE deliveries SET status = 'delivered', delivered_at = {now}, updated_at = {now},
        last_status = (SELECT accepted_status FROM bulk_jobs WHERE id = :job),
        last_request_id = (SELECT request_id FROM bulk_jobs WHERE id = :job),
        last_error = NULL, lease_owner = NULL, lease_until = NULL
    WHERE job_id = :job AND status = 'delivering'
"""
# A completed job is marked delivered a chunk of its companies at a time (`delivered_part`),
# each chunk with the versions and digests it sent, while the job is still the holder's.
JOB_HELD = f"SELECT 1 FROM bulk_jobs{_OWNED} FOR UPDATE"
JOB_PART_DELIVERED = """
    UPDATE deliveries SET status = 'delivered', delivered_at = {now}, updated_at = {now},
        last_status = (SELECT accepted_status FROM bulk_jobs WHERE id = :job),
        last_request_id = (SELECT request_id FROM bulk_jobs WHERE id = :job),
        last_error = NULL, lease_owner = NULL, lease_until = NULL
    WHERE company_id = ANY(:companies) AND COALESCE(job_id, '') = :job
        AND COALESCE(status, '') = 'delivering'
"""
# A part of a failed job goes to a smaller job ...
JOB_MOVE_ROWS = """
    UPDATE deliveries SET job_id = :child, lease_owner = :token, updated_at = {now}
    WHERE job_id = :job AND status = 'delivering' AND company_id = ANY(:companies)
"""
# ... or to real-time calls, never packed again.
JOB_ROWS_TO_REALTIME = """
    UPDATE deliveries SET status = 'queued', job_id = NULL, via = NULL, realtime_only = 1,
        lease_owner = NULL, lease_until = NULL, next_attempt_at = {now}, updated_at = {now},
        last_status = :status, last_error = :error
    WHERE job_id = :job AND status = 'delivering' AND company_id = ANY(:companies)
"""
# An operator ends an unfinished job, whoever drives it; its rows go to real-time calls.
JOB_ABANDONED = """
    UPDATE bulk_jobs SET status = 'abandoned', abandoned_by = :by, abandoned_at = {now},
        finished_at = {now}, updated_at = {now}, outcome = :outcome, owner = NULL,
        lease_until = NULL
    WHERE id = :id AND status IN ('waiting', 'running')
"""
JOB_ALL_ROWS_TO_REALTIME = """
    UPDATE deliveries SET status = 'queued', job_id = NULL, via = NULL, realtime_only = 1,
        lease_owner = NULL, lease_until = NULL, next_attempt_at = {now}, updated_at = {now},
        last_error = :error
    WHERE job_id = :job AND status = 'delivering'
"""
# Userpilot's job list shows no job from the unanswered upload: the job is certain again.
JOB_CERTAIN = (
    """
    UPDATE bulk_jobs SET uncertain_at = NULL, updated_at = {now}"""
    + _OWNED
)
JOB_SHORTFALL = """
    UPDATE bulk_jobs SET outcome = outcome || '; ' || :note, last_error = :note, updated_at = {now}
    WHERE id = :id AND status = 'completed'
"""
KNOWN_UPSTREAM_IDS = "SELECT upstream_id FROM bulk_jobs WHERE upstream_id = ANY(:ids)"

# Userpilot accepted a job: no earlier upload still runs there (one job at a time), so the
# waiting jobs whose uploads went unanswered before it are certain again.
JOBS_CERTAIN = """
    UPDATE bulk_jobs SET uncertain_at = NULL
    WHERE status = 'waiting' AND uncertain_at < {now} - :within
"""
UNFINISHED_JOB = f"""
    SELECT {JOB_COLUMNS} FROM bulk_jobs WHERE status IN ('waiting', 'running')
    ORDER BY CASE WHEN status = 'running' THEN 0 ELSE 1 END, id LIMIT 1
"""
PRUNE_JOBS = """
    DELETE FROM bulk_jobs WHERE finished_at < :before AND NOT EXISTS (
        SELECT 1 FROM deliveries d WHERE d.job_id = bulk_jobs.id AND d.status = 'delivering')
"""


def row_to_job(row: Row) -> BulkJob:
    """A row of `JOB_COLUMNS`."""
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
    row = (yield Statement(JOB_BY_ID, {"id": job_id})).one()
    return None if row is None else row_to_job(row)


def get_job(job_id: str) -> Plan[BulkJob | None]:
    return (yield from _job(job_id))


def unfinished() -> Plan[BulkJob | None]:
    """The running job, else the oldest waiting one."""
    row = (yield Statement(UNFINISHED_JOB)).one()
    return None if row is None else row_to_job(row)


def list_jobs(status: str | None, before: str | None, limit: int) -> Plan[list[BulkJob]]:
    sql, params = filtered(JOBS, status=status)
    if before is not None:
        sql, params = sql + " AND id < :before", {**params, "before": before}
    stmt = Statement(sql + " ORDER BY id DESC LIMIT :limit", {**params, "limit": limit})
    return [row_to_job(r) for r in (yield stmt).rows]


def take(owner: str, lease: float) -> Plan[BulkJob | None]:
    """The job this replica should drive now, leased to it; None when there is none for it.

    The running job if there is one; else the oldest waiting job that is due; never while
    another replica holds a live lease on any unfinished job.
    """
    yield Statement(LOCK_JOBS)
    active = (yield Statement(ACTIVE_JOBS)).rows
    chosen: BulkJob | None = None
    for row in active:
        job, leased, due = row_to_job(row[:-2]), bool(row[-2]), bool(row[-1])
        if leased and job.owner != owner:
            return None  # another replica drives a job: one at a time
        if chosen is None and (job.status == "running" or due or (leased and job.owner == owner)):
            chosen = job
    if chosen is None:
        return None
    yield Statement(LEASE_JOB, {"id": chosen.id, "owner": owner, "lease": lease})
    return (yield from _job(chosen.id))


def waiting_companies(limit: int) -> Plan[int]:
    """Companies with queued updates plus updates of stored batches not yet expanded (each
    counted as one company), counted up to about `limit`."""
    queued = (yield Statement(QUEUED_COMPANIES, {"limit": limit})).one()
    staged = (yield Statement(BATCHES_WAITING)).one()
    return int(queued[0] if queued else 0) + int((staged[0] if staged else 0) or 0)


PACK_CHUNK = 1_000  # queued updates put into a job per transaction (each one short)


def pick(*, max_rows: int, settle: float, fresh: float) -> Plan[list[tuple[str, int, int]]]:
    """The companies a job may take now, oldest first (at most `max_rows`), each with its
    newest queued update's seq and how many are queued; nothing while a job is unfinished.
    Only read: the packing transactions check each chunk again (`pack_chunk`)."""
    if (yield Statement(ACTIVE_JOBS)).rows:
        return []
    params = {"rows": max_rows, "settle": settle, "fresh": fresh}
    picked = (yield Statement(PACK_PICK, params)).rows
    return [(str(c), int(last), int(queued)) for c, last, queued in picked]


def pack_chunks(
    picked: Sequence[tuple[str, int, int]], limit: int | None = None
) -> list[list[tuple[str, int, int]]]:
    """The picked companies in chunks of about `limit` (`PACK_CHUNK`) queued updates (a
    company is never split; one over the limit is a chunk of its own)."""
    limit = PACK_CHUNK if limit is None else limit
    chunks: list[list[tuple[str, int, int]]] = []
    current: list[tuple[str, int, int]] = []
    size = 0
    for entry in picked:
        if current and size + entry[2] > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry[2]
    if current:
        chunks.append(current)
    return chunks


def pack_chunk(
    *,
    job_id: str,
    owner: str,
    lease: float,
    chunk: Sequence[tuple[str, int, int]],
    max_merge: int,
    first: bool,
) -> Plan[BulkJob | None]:
    """Put a chunk of picked companies into the job, in one short transaction: the first
    chunk records the job (None when a job is unfinished already), a later one joins it only
    while this replica still packs it (None otherwise). A company that went in flight or into
    a backoff since the pick stays out; so do updates stored since (`last_seq`)."""
    if first:
        yield Statement(LOCK_JOBS)
        if (yield Statement(ACTIVE_JOBS)).rows:
            return None
    elif (yield Statement(JOB_PACKING, {"id": job_id, "owner": owner})).one() is None:
        return None
    yield Statement(LOCK_PACK)
    names = [c[0] for c in chunk]
    busy = {str(r[0]) for r in (yield Statement(BUSY_OF, {"companies": names})).rows}
    # An erased company never rides (suppressed since the pick, or since its batch was
    # stored): its queued updates are cancelled, as a claim does (`claims.CANCEL_ERASED`).
    erased = yield from erased_of(names)
    if erased:
        yield Statement(CANCEL_ERASED_QUEUED, {"companies": sorted(erased)})
    companies = [c for c in chunk if c[0] not in busy and c[0] not in erased]
    updates = 0
    taken = 0
    if companies:
        assigned = yield Statement(
            PACK_ASSIGN,
            {
                "job": job_id,
                "token": job_token(job_id),
                "companies": [c[0] for c in companies],
                "last_seq": max(c[1] for c in companies),
                "max_merge": max_merge,
            },
        )
        updates = assigned.rowcount
        if updates:
            params = {"job": job_id, "companies": [c[0] for c in companies]}
            row = (yield Statement(JOB_COMPANIES_IN, params)).one()
            taken = int(row[0]) if row else 0
    if first:
        if not taken:
            return None
        yield Statement(
            INSERT_JOB,
            {
                "id": job_id,
                "parent": None,
                "rows": taken,
                "updates": updates,
                "owner": owner,
                "leased": 1,
                "lease": lease,
                "uncertain_at": None,
            },
        )
    elif taken:
        grew: dict[str, object] = {"id": job_id, "owner": owner, "rows": taken}
        yield Statement(JOB_GREW, {**grew, "updates": updates, "lease": lease})
    return (yield from _job(job_id))


def analyze() -> Plan[None]:
    """Fresh planner statistics for the deliveries (PostgreSQL; nothing on SQLite)."""
    yield Statement(ANALYZE_DELIVERIES)


def expand_for_job(max_rows: int) -> Plan[bool]:
    """Before packing, in a transaction of its own (claims wait on the packing lock, not on
    this): expand the next chunk of a stored batch unless `max_rows` companies are queued
    already. Answers whether there may be more to expand."""
    queued = (yield Statement(QUEUED_COMPANIES, {"limit": max_rows})).one()
    if queued is not None and int(queued[0]) >= max_rows:
        return False
    return (yield from expand(before_seq=None))


EXPANSIONS_PER_JOB = 10_000 // EXPAND_CHUNK + 1  # at most a job's rows, a chunk at a time


def companies(job_id: str) -> Plan[list[tuple[str, int]]]:
    """The job's companies, oldest first, each with how many of its updates the job holds."""
    found = (yield Statement(JOB_COMPANIES, {"job": job_id})).rows
    return [(str(company_id), int(count)) for company_id, count in found]


def rows(job_id: str, companies: Sequence[str]) -> Plan[tuple[list[Claim], list[str]]]:
    """The job's deliveries of `companies` (a chunk of `companies()`), a `Claim` per company in
    arrival order, with the property versions that guard against older values; less the
    companies erased (suppressed) since the pack, answered apart (`drop_erased` them)."""
    erased = yield from erased_of(list(companies))
    wanted = [c for c in companies if c not in erased]
    found = (yield Statement(JOB_ROWS, {"job": job_id, "companies": wanted})).rows
    by_company: dict[str, list[ClaimedUpdate]] = {}
    for company_id, delivery_id, seq, metadata, attempts in found:
        by_company.setdefault(company_id, []).append(
            ClaimedUpdate(
                id=delivery_id, seq=int(seq), metadata=orjson.loads(metadata), attempts=attempts
            )
        )
    versions: dict[str, dict[str, int]] = {}
    if by_company:
        stmt = Statement(delivered.VERSIONS_OF, {"companies": list(by_company)})
        for company_id, key, seq in (yield stmt).rows:
            versions.setdefault(company_id, {})[key] = int(seq)
    token = job_token(job_id)
    return [  # rows come in seq order
        Claim(company_id=c, updates=updates, versions=versions.get(c, {}), owner=token)
        for c, updates in by_company.items()
    ], sorted(erased)


def drop_erased(job_id: str, companies: Sequence[str]) -> Plan[int]:
    """The job's rows of erased `companies` deleted (never uploaded), the job's counts less
    them; answers how many rows went."""
    params = {"job": job_id, "companies": list(companies)}
    counted = (yield Statement(JOB_ERASED_COUNTS, params)).one()
    dropped = (yield Statement(JOB_DROP_ERASED, params)).rowcount
    if dropped and counted is not None:
        shrank = {"id": job_id, "rows": int(counted[0]), "updates": int(counted[1])}
        yield Statement(JOB_SHRANK, shrank)
    return int(dropped)


def _text(value: str | None, limit: int = 500) -> str | None:
    """Userpilot's words, safe for any column (no control characters, bounded)."""
    return None if value is None else printable(value, limit)


def _owned(job: BulkJob, owner: str, expected: JobStatus) -> dict[str, Any]:
    return {"id": job.id, "owner": owner, "expected": expected}


def uploading(job: BulkJob, owner: str, lease: float) -> Plan[bool]:
    """About to upload: renew the lease, mark the job uncertain; False when not ours."""
    params = {**_owned(job, owner, "waiting"), "lease": lease}
    return (yield Statement(JOB_UPLOADING, params)).rowcount > 0


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
    if not (yield Statement(JOB_SUBMITTED, params)).rowcount:
        return False
    yield Statement(JOBS_CERTAIN, {"within": within})
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
        return (yield Statement(JOB_POLL_FAILED, base)).rowcount > 0
    params = {
        **base,
        "upstream_status": _text(upstream_status, 60),
        "completed_rows": completed_rows if completed_rows is not None else job.completed_rows,
    }
    return (yield Statement(JOB_POLLED, params)).rowcount > 0


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
    return (yield Statement(JOB_DEFERRED, params)).rowcount > 0


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
    return (yield Statement(JOB_FINISHED, params)).rowcount > 0


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
    yield Statement(JOB_DELIVERED, {"job": job.id})
    yield from _record_sent(job, sent_versions, completed_rows)
    return True


def _record_sent(
    job: BulkJob, sent_versions: Mapping[str, Mapping[str, int]], completed_rows: int | None
) -> Plan[None]:
    """The property versions a job's rows sent, and their digests for reconciliations."""
    versions = [  # one lock order, whoever else writes these rows
        {"company": company, "key": key, "seq": keys[key]}
        for company, keys in sorted(sent_versions.items())
        for key in sorted(keys)
    ]
    if versions:
        yield Statement(delivered.SENT_VERSION, versions, many=True)
    yield from delivered.record_delivered_job(job, sent_versions, completed_rows)


def delivered_part(
    job: BulkJob,
    owner: str,
    companies: Sequence[str],
    sent_versions: Mapping[str, Mapping[str, int]],
    completed_rows: int | None,
) -> Plan[bool]:
    """A chunk of a completed job's companies delivered, in one short transaction with the
    property versions and digests their rows sent; only while `owner` holds the job (False
    otherwise: nothing changes). A crash between chunks leaves the rest `delivering` in the
    job, which whoever drives it next completes; versions only ever rise, so none is lost
    and none applied twice."""
    if (yield Statement(JOB_HELD, _owned(job, owner, job.status))).one() is None:
        return False
    params = {"job": job.id, "companies": list(companies)}
    yield Statement(JOB_PART_DELIVERED, params)
    yield from _record_sent(job, sent_versions, completed_rows)
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
    companies = (yield Statement(JOB_COMPANIES, {"job": job.id})).rows
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
            INSERT_JOB,
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
        yield Statement(JOB_MOVE_ROWS, {**moved, "companies": [c[0] for c in half]})
    for half in to_realtime:
        params = {
            "job": job.id,
            "companies": [c[0] for c in half],
            "status": http_status,
            "error": _text(error),
        }
        yield Statement(JOB_ROWS_TO_REALTIME, params)
    return children


def release(job: BulkJob, owner: str) -> Plan[None]:
    yield Statement(RELEASE_JOB, {"id": job.id, "owner": owner})


def prune_jobs(before: float) -> Plan[int]:
    return (yield Statement(PRUNE_JOBS, {"before": before})).rowcount


def abandon(job_id: str, by: str) -> Plan[tuple[BulkJob | None, bool]]:
    """An operator ends the job (`by`: the relay key's name) and its rows go out again as
    real-time calls, merged with anything newer for their companies. Answers the job and
    whether this ended it (False: unknown, or already finished)."""
    yield Statement(LOCK_JOBS)
    job = yield from _job(job_id)
    if job is None or job.status not in ("waiting", "running"):
        return job, False
    who = _text(by, 200)
    outcome = f"abandoned by {who}: {job.rows} companies sent again as real-time calls"
    params = {"id": job_id, "by": who, "outcome": _text(outcome, 2000)}
    if not (yield Statement(JOB_ABANDONED, params)).rowcount:
        return job, False
    error = _text(f"bulk job {job_id} abandoned by {who}")
    yield Statement(JOB_ALL_ROWS_TO_REALTIME, {"job": job_id, "error": error})
    return (yield from _job(job_id)), True


def certain(job: BulkJob, owner: str) -> Plan[bool]:
    """No upload of the job runs at Userpilot (its job list says so): doubt cleared."""
    return (yield Statement(JOB_CERTAIN, _owned(job, owner, "waiting"))).rowcount > 0


def known_upstream_ids(ids: Sequence[str]) -> Plan[set[str]]:
    """Which of Userpilot's job ids the relay recorded for one of its jobs."""
    if not ids:
        return set()
    return {r[0] for r in (yield Statement(KNOWN_UPSTREAM_IDS, {"ids": list(ids)})).rows}


def shortfall(job: BulkJob, note: str) -> Plan[bool]:
    """A completed job that Userpilot reported short: the shortfall in its outcome and error."""
    params = {"id": job.id, "note": _text(note)}
    return (yield Statement(JOB_SHORTFALL, params)).rowcount > 0


class Jobs(StorePart):
    """Bulk jobs, one at a time across every replica."""

    async def waiting_companies(self, limit: int) -> int:
        """About how many companies wait for delivery, counted up to about `limit`."""
        return await self._read(lambda: waiting_companies(limit), snapshot=True)

    async def pack(
        self,
        *,
        owner: str,
        lease_seconds: float,
        max_rows: int,
        max_merge: int,
        settle_seconds: float,
        fresh_seconds: float,
    ) -> BulkJob | None:
        """Record a `waiting` job of the oldest waiting companies, leased to `owner`.

        A company rides only when every queued update of it is ready, allowed on a job (not
        `realtime_only`) and not a single update younger than `fresh_seconds`, and nothing of
        it is in flight; its updates (at most `max_merge`) are in flight from then on. None
        when some job is unfinished, or no company may ride.
        """
        job_id = new_job_id()
        for _ in range(EXPANSIONS_PER_JOB):  # the oldest waiting may sit in a batch
            if not await self._write(lambda: expand_for_job(max_rows)):
                break
        picked = await self._read(
            lambda: pick(max_rows=max_rows, settle=settle_seconds, fresh=fresh_seconds),
            snapshot=True,
        )
        job: BulkJob | None = None
        for chunk in pack_chunks(picked):  # short transactions: ingest keeps its pace
            packed = await self.pack_chunk(
                job_id=job_id,
                owner=owner,
                lease_seconds=lease_seconds,
                chunk=chunk,
                max_merge=max_merge,
                first=job is None,
            )
            if packed is None and job is not None:
                break  # taken over or abandoned meanwhile: the job is what it holds
            job = packed or job
        if job is not None:
            await self._write(analyze, atomic=False)
            job = await self.get(job_id)
        return job

    async def pack_chunk(
        self,
        *,
        job_id: str,
        owner: str,
        lease_seconds: float,
        chunk: Sequence[tuple[str, int, int]],
        max_merge: int,
        first: bool,
    ) -> BulkJob | None:
        """Put a chunk of picked companies (`pick`: company, newest seq, queued count) into
        job `job_id` in one short transaction: the `first` chunk records the job, a later one
        joins it only while `owner` still packs it. None when it could not (a job unfinished
        already, or this one taken over or abandoned) or, for the first, took no company."""
        # Not durable: a chunk lost in a power cut leaves its updates queued; the upload's own
        # durable write (`uploading`) comes first and makes every chunk durable.
        return await self._write(
            lambda: pack_chunk(
                job_id=job_id,
                owner=owner,
                lease=lease_seconds,
                chunk=chunk,
                max_merge=max_merge,
                first=first,
            ),
            durable=False,
        )

    async def take(self, *, owner: str, lease_seconds: float) -> BulkJob | None:
        """Lease the job `owner` should drive now: the running one, else the oldest waiting
        one that is due; None while another owner's lease on an unfinished job is live."""
        return await self._write(lambda: take(owner, lease_seconds))

    async def companies(self, job_id: str) -> list[tuple[str, int]]:
        """The job's companies, oldest first, each with how many updates the job holds of it."""
        return await self._read(lambda: companies(job_id))

    async def rows(self, job_id: str, companies: Sequence[str]) -> list[Claim]:
        """The job's deliveries of `companies` (read a chunk at a time: a job may hold a whole
        backlog), a `Claim` per company, oldest company first. A company erased since the
        pack is left out and its rows in the job deleted: a job packed before an erasure and
        uploaded after it never sends the company."""
        claims, erased = await self._read(lambda: rows(job_id, list(companies)), snapshot=True)
        if erased:
            await self._write(lambda: drop_erased(job_id, erased))
        return claims

    async def submitted(
        self,
        job: BulkJob,
        *,
        owner: str,
        upstream_id: str,
        upstream_status: str,
        lease: float,
        http_status: int,
        request_id: str | None,
        within: float,
    ) -> bool:
        """Userpilot accepted the job (its answer's status and x-request-id become its
        deliveries' last); waiting jobs whose uploads went unanswered more than `within`
        seconds ago are certain again. False (here and below) when `owner` no longer holds
        it."""
        return await self._write(
            lambda: submitted(
                job, owner, upstream_id, upstream_status, lease, http_status, request_id, within
            )
        )

    async def polled(
        self,
        job: BulkJob,
        *,
        owner: str,
        upstream_status: str | None,
        completed_rows: int | None,
        error: str | None,
        lease: float,
    ) -> bool:
        """Record a poll (`upstream_status` None: the poll failed) and renew the lease."""
        return await self._write(
            lambda: polled(
                job,
                owner,
                upstream_status=upstream_status,
                completed_rows=completed_rows,
                error=error,
                lease=lease,
            )
        )

    async def uploading(self, job: BulkJob, *, owner: str, lease: float) -> bool:
        """About to upload the waiting job: its lease renewed, and the job `uncertain` until
        Userpilot's answer is recorded (False: `owner` no longer holds it; do not upload)."""
        return await self._write(lambda: uploading(job, owner, lease))

    async def deferred(
        self,
        job: BulkJob,
        *,
        owner: str,
        delay: float,
        error: str,
        counted: bool,
        uncertain: bool,
    ) -> bool:
        """Not accepted (or lost): `waiting` again, submitted by any replica after `delay`;
        `uncertain` when the upload may still be pending at Userpilot (no answer)."""
        return await self._write(
            lambda: deferred(
                job, owner, delay=delay, error=error, counted=counted, uncertain=uncertain
            )
        )

    async def completed(
        self,
        job: BulkJob,
        *,
        owner: str,
        sent_versions: Mapping[str, Mapping[str, int]],
        completed_rows: int | None = None,
    ) -> bool:
        """Userpilot completed the job: its deliveries are delivered (via bulk);
        `completed_rows` as Userpilot last reported it."""
        done = await self._write(lambda: completed(job, owner, sent_versions, completed_rows))
        if done:
            await self._write(analyze, atomic=False)
            self._work_committed()  # updates that waited behind the job may go now
        return done

    async def delivered_part(
        self,
        job: BulkJob,
        *,
        owner: str,
        companies: Sequence[str],
        sent_versions: Mapping[str, Mapping[str, int]],
        completed_rows: int | None = None,
    ) -> bool:
        """Userpilot completed the job: the deliveries of `companies` (a chunk of the job's)
        are delivered, with the versions they sent, in one short transaction; False (nothing
        changed) when `owner` no longer holds the job. `completed` then ends the job."""
        return await self._write(
            lambda: delivered_part(job, owner, companies, sent_versions, completed_rows)
        )

    async def split(
        self,
        job: BulkJob,
        *,
        owner: str,
        status: JobStatus,
        error: str,
        upstream_status: str | None,
        min_rows: int,
        http_status: int | None,
        keep_in_bulk: bool = False,
    ) -> list[str] | None:
        """End the job (`failed`, `split` or `rejected`): its companies in two halves, a half
        of at least `min_rows` a new waiting job, a smaller one back to real-time calls; with
        `keep_in_bulk` every half a job. Answers the new jobs' ids (None when `owner` no longer
        holds it)."""
        child_ids = [new_job_id() for _ in range(2)]
        children = await self._write(
            lambda: split(
                job,
                owner,
                status=status,
                error=error,
                upstream_status=upstream_status,
                min_rows=min_rows,
                child_ids=child_ids,
                http_status=http_status,
                keep_in_bulk=keep_in_bulk,
            )
        )
        if children is not None:
            self._work_committed()
        return children

    async def release(self, job: BulkJob, *, owner: str) -> None:
        """Give the job's lease up (shutdown): another replica may drive it at once."""
        await self._write(lambda: release(job, owner))

    async def unfinished(self) -> BulkJob | None:
        """The running job, else the oldest waiting one, whoever drives it."""
        return await self._read(unfinished)

    async def get(self, job_id: str) -> BulkJob | None:
        return await self._read(lambda: get_job(job_id))

    async def listing(
        self, *, status: JobStatus | None, before: str | None, limit: int
    ) -> list[BulkJob]:
        """Jobs newest first, older than the job `before` (a page cursor)."""
        return await self._read(lambda: list_jobs(status, before, limit))

    # doubt and abandon ------------------------------------------------------------------

    async def certain(self, job: BulkJob, *, owner: str) -> bool:
        """Userpilot's job list shows no job from the job's unanswered upload: not in doubt."""
        return await self._write(lambda: certain(job, owner))

    async def known_upstream_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these Userpilot job ids belong to jobs the relay recorded."""
        return await self._read(lambda: known_upstream_ids(ids))

    async def abandon(self, job_id: str, *, by: str) -> tuple[BulkJob | None, bool]:
        """End an unfinished job for an operator (`by`) and send its rows again real-time
        (the feeder finds them at its next look); answers the job (None: unknown) and whether
        this call ended it."""
        return await self._write(lambda: abandon(job_id, by))

    async def shortfall(self, job: BulkJob, note: str) -> bool:
        """Record on a completed job that Userpilot reported fewer rows done than sent."""
        return await self._write(lambda: shortfall(job, note))
