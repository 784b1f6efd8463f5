"""The statements behind Userpilot bulk jobs, written once for both engines (see `queries.py`).

A job's deliveries are `delivering` under the lease owner `job:<id>` with no `lease_until`
(so `EXPIRE_LEASES` never hands them back): the job row's own lease, renewed at every poll,
says which replica drives it, and any replica takes over a job whose lease ran out.
"""

from __future__ import annotations

JOB_COLUMNS = (
    "id, parent_id, status, upstream_id, upstream_status, total_rows, updates, completed_rows, "
    "attempts, owner, next_attempt_at, created_at, updated_at, submitted_at, progress_at, "
    "finished_at, last_error, outcome, uncertain_at, abandoned_by, abandoned_at"
)

# PostgreSQL: one replica at a time decides which job runs (`LOCK_JOBS`); packing also holds the
# claims' lock exclusively (see `queries.LOCK_CLAIMS`).
LOCK_JOBS = "{lock_jobs}"
LOCK_PACK = "{lock_pack}"

JOB_BY_ID = f"SELECT {JOB_COLUMNS} FROM bulk_jobs WHERE id = :id"
# Newest first (ids sort by creation); `jobs.list_jobs` adds the filters and the cursor.
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
        SELECT company_id, min(seq) AS first_seq, max(seq) AS last_seq FROM deliveries
        WHERE status = 'queued'
        GROUP BY company_id
        HAVING max(CASE WHEN realtime_only = 1 OR next_attempt_at > {now}
            OR enqueued_at > {now} - :settle
            OR (batch_id IS NULL AND enqueued_at > {now} - :fresh) THEN 1 ELSE 0 END) = 0
    )
    SELECT w.company_id, w.last_seq FROM waiting w
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
INSERT_JOB = """
    INSERT INTO bulk_jobs (id, parent_id, status, total_rows, updates, owner, lease_until,
        next_attempt_at, created_at, updated_at, uncertain_at)
    VALUES (:id, :parent, 'waiting', :rows, :updates, :owner,
        CASE WHEN :leased = 1 THEN {now} + :lease END, {now}, {now}, {now}, :uncertain_at)
"""

# a job's rows ------------------------------------------------------------------------------
# Read a chunk of the job's companies at a time (`jobs.rows`): never the whole backlog at once.
# Through the companies' index: `COALESCE` keeps the planner off the job's and the status's
# (either would visit every row of the job, or in flight, for every chunk).
JOB_ROWS = """
    SELECT company_id, id, seq, metadata, attempts FROM deliveries
    WHERE company_id = ANY(:companies) AND COALESCE(job_id, '') = :job
        AND COALESCE(status, '') = 'delivering'
    ORDER BY seq
"""
JOB_COMPANIES = """
    SELECT company_id, count(*) FROM deliveries WHERE job_id = :job AND status = 'delivering'
    GROUP BY company_id ORDER BY min(seq)
"""
VERSIONS_OF = """
    SELECT company_id, key, seq FROM property_versions WHERE company_id = ANY(:companies)
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

# recovery after an outage -------------------------------------------------------------------
RETRY_NOW = """
    UPDATE deliveries SET next_attempt_at = {now}
    WHERE status = 'queued' AND attempts > 0 AND next_attempt_at > {now}
"""
# While probing: the company of the oldest update waiting out a backoff, brought forward.
RETRY_OLDEST = """
    UPDATE deliveries SET next_attempt_at = {now}
    WHERE status = 'queued' AND next_attempt_at > {now} AND company_id = (
        SELECT company_id FROM deliveries WHERE status = 'queued' AND attempts > 0
            AND next_attempt_at > {now}
        ORDER BY seq LIMIT 1)
"""
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
JOBS_RETRY_NOW = """
    UPDATE bulk_jobs SET next_attempt_at = {now}
    WHERE status = 'waiting' AND next_attempt_at > {now}
"""

PRUNE_JOBS = """
    DELETE FROM bulk_jobs WHERE finished_at < :before AND NOT EXISTS (
        SELECT 1 FROM deliveries d WHERE d.job_id = bulk_jobs.id AND d.status = 'delivering')
"""
