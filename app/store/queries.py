"""Every statement the stores run, written once for both engines (see `app/store/sql.py`).

`{now}` is the transaction's clock; `{token}`s are what only one engine needs (advisory
locks, identity overrides, reserving sequence numbers), supplied by each backend's dialect.
"""

from __future__ import annotations

DELIVERY_COLUMNS = (
    "id, seq, company_id, metadata, status, attempts, source, caller, batch_id, created_at, "
    "updated_at, next_attempt_at, delivered_at, last_status, last_error, last_request_id, "
    "via, job_id"
)

# health ------------------------------------------------------------------------------------
HEALTH_WRITE = """
    INSERT INTO store_health (id, checked_at) VALUES (1, {now})
    ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at
"""

# ingest ------------------------------------------------------------------------------------
LOCK_IDEMPOTENCY = "{lock_idempotency}"
IDEMPOTENCY_GET = """
    SELECT fingerprint, result FROM idempotency_keys
    WHERE caller = :caller AND key = :key AND expires_at > {now}
"""
IDEMPOTENCY_PUT = """
    INSERT INTO idempotency_keys (caller, key, fingerprint, result, created_at, expires_at)
    VALUES (:caller, :key, :fingerprint, :result, {now}, {now} + :ttl)
    ON CONFLICT (caller, key) DO UPDATE SET fingerprint = excluded.fingerprint,
        result = excluded.result, created_at = excluded.created_at,
        expires_at = excluded.expires_at
"""
WEBHOOK_EVENT = """
    INSERT INTO webhook_events (source, event_key, received_at) VALUES (:source, :key, {now})
    ON CONFLICT DO NOTHING RETURNING 1
"""
# Only moves a property's source time forward: atomic when replicas map events at once.
SOURCE_TIME = """
    INSERT INTO source_property_times (company_id, key, event_time) VALUES (:company, :key, :at)
    ON CONFLICT (company_id, key) DO UPDATE SET event_time = excluded.event_time
    WHERE source_property_times.event_time <= excluded.event_time
    RETURNING 1
"""
# API updates' properties take their acceptance as their source time (never moved back): one
# statement for every `:pairs` ("company\x1fkey", unique; neither may hold control characters).
STAMP_TIMES = """
    INSERT INTO source_property_times (company_id, key, event_time)
    SELECT company_id, key, {now} FROM {stamp_pairs} WHERE true ORDER BY company_id, key
    ON CONFLICT (company_id, key) DO UPDATE SET event_time = excluded.event_time
    WHERE source_property_times.event_time < excluded.event_time
"""
# The id is ours: a retry after a lost answer cannot store the update twice.
INSERT_DELIVERY = """
    INSERT INTO deliveries (id, company_id, metadata, status, source, caller,
        created_at, updated_at, next_attempt_at, enqueued_at, realtime_only)
    VALUES (:id, :company, :metadata, 'queued', :source, :caller, {now}, {now}, {now}, {now},
        :realtime_only)
    ON CONFLICT (id) DO NOTHING
"""
RESERVE_SEQS = "{reserve_seqs}"
INSERT_BATCH = """
    INSERT INTO batches (id, caller, source, total, seq_from, expanded, payload, payload_format,
        created_at)
    VALUES (:id, :caller, :source, :total, :seq_from, 0, :payload, 'chunks', {now})
"""

# reads -------------------------------------------------------------------------------------
DELIVERY_BY_ID = f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = :id"
DELIVERIES_BY_IDS = f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ANY(:ids)"
STAGED_BATCH = """
    SELECT caller, created_at, seq_from, source, payload, payload_format FROM batches
    WHERE id = :id AND expanded <= :index AND :index < total AND payload IS NOT NULL
"""
BATCH = "SELECT caller, total, created_at, seq_from, expanded FROM batches WHERE id = :id"
BATCH_COUNTS = """
    SELECT status, count(*) FROM deliveries WHERE seq BETWEEN :first AND :last GROUP BY status
"""
RECENT_ANSWERS = """
    SELECT id, seq, company_id, last_status, last_error, updated_at FROM deliveries
    WHERE (last_status IS NOT NULL OR last_error IS NOT NULL)
      AND (last_error IS NULL OR substr(last_error, 1, :refused_len) <> :refused)
    ORDER BY seq DESC LIMIT :limit
"""
STATUS_COUNTS = """
    SELECT status, count(*) FROM deliveries
    WHERE status IN ('queued', 'delivering', 'dead') GROUP BY status
"""
OLDEST_PENDING = "SELECT min(enqueued_at) FROM deliveries WHERE status IN ('queued', 'delivering')"
BATCHES_WAITING = (
    "SELECT sum(total - expanded), min(created_at) FROM batches WHERE expanded < total"
)

# dead letters and retention ----------------------------------------------------------------
DEAD_STATE = "SELECT status, last_error FROM deliveries WHERE id = :id FOR UPDATE"
_REQUEUE = """
    UPDATE deliveries SET status = 'queued', next_attempt_at = {now}, enqueued_at = {now},
        updated_at = {now}, attempts = 0, realtime_only = 0, via = NULL, job_id = NULL
"""
REPLAY_ONE = _REQUEUE + "WHERE id = :id RETURNING " + DELIVERY_COLUMNS
# Updates the relay itself refused (they cannot be sent as stored) stay dead.
REPLAY_DEAD = (
    _REQUEUE
    + "WHERE status = 'dead' "
    + "AND (last_error IS NULL OR substr(last_error, 1, :refused_len) <> :refused)"
)
PURGE_DEAD = "DELETE FROM deliveries WHERE status = 'dead'"
PRUNE_DELIVERED = """
    DELETE FROM deliveries WHERE seq IN (
      SELECT seq FROM deliveries WHERE status = 'delivered' AND delivered_at < :before
      LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
PRUNE_BATCHES = """
    DELETE FROM batches WHERE created_at < :before AND expanded = total AND NOT EXISTS (
      SELECT 1 FROM deliveries d
      WHERE d.seq BETWEEN batches.seq_from AND batches.seq_from + batches.total - 1)
"""
PRUNE_IDEMPOTENCY = "DELETE FROM idempotency_keys WHERE expires_at < {now}"
PRUNE_EVENTS = "DELETE FROM webhook_events WHERE received_at < :before"
# A property version matters only while an older update of the company may still be sent: a
# queued, delivering or dead one with a lower sequence number, or a stored batch's update not
# yet expanded (those all have sequence numbers at or above the oldest pending one).
PRUNE_VERSIONS = """
    DELETE FROM property_versions WHERE (company_id, key) IN (
      SELECT v.company_id, v.key FROM property_versions v WHERE v.updated_at < :before
        AND v.seq <= COALESCE(
          (SELECT min(seq_from + expanded) FROM batches WHERE expanded < total),
          9223372036854775807)
        AND NOT EXISTS (
          SELECT 1 FROM deliveries d WHERE d.company_id = v.company_id
            AND d.status IN ('queued', 'delivering', 'dead') AND d.seq < v.seq)
      LIMIT :limit FOR UPDATE SKIP LOCKED)
"""

# claims ------------------------------------------------------------------------------------
# PostgreSQL: a claim holds this shared, packing a bulk job holds it exclusively, so a company
# is never leased for a real-time call while a job takes it, nor the other way round.
LOCK_CLAIMS = "{lock_claims}"
# A crashed holder's lease puts its updates back in line once it expires.
EXPIRE_LEASES = """
    UPDATE deliveries SET status = 'queued', lease_owner = NULL, lease_until = NULL
    WHERE seq IN (
        SELECT seq FROM deliveries WHERE status = 'delivering' AND lease_until < {now}
        FOR UPDATE SKIP LOCKED)
"""
# What makes a company busy: a live delivery, or updates waiting out a backoff.
_BUSY = """
    SELECT 1 FROM deliveries b WHERE b.company_id = @company AND (
        b.status = 'delivering'
        OR (b.status = 'queued' AND b.attempts > 0 AND b.next_attempt_at > {now}))
"""
# The oldest ready update's company that is free, locked for this transaction (PostgreSQL:
# an advisory lock, tried company by company, oldest first). Cheap first (a partial index): is
# anything ready at all? During an outage nothing is, and the search would walk the backlog.
_PICK = """
    WITH any_ready AS MATERIALIZED (
        SELECT 1 FROM deliveries WHERE status = 'queued' AND next_attempt_at <= {now} @lane
        LIMIT 1
    ),
    ready AS MATERIALIZED (
        SELECT r.company_id, min(r.seq) AS first_seq FROM (
            SELECT d.company_id, d.seq FROM deliveries d
            WHERE EXISTS (SELECT 1 FROM any_ready) @lane
              AND d.status = 'queued' AND d.next_attempt_at <= {now}
              AND (d.enqueued_at <= {now} - :settle OR d.realtime_only = 1)
              AND d.company_id <> ALL(:skip)
              AND NOT EXISTS (@busy)
            ORDER BY d.seq LIMIT :scan
        ) r
        GROUP BY r.company_id ORDER BY first_seq
    )
    SELECT company_id, first_seq FROM ready WHERE {lock_company} LIMIT 1
""".replace("@busy", _BUSY.replace("@company", "d.company_id"))
PICK_COMPANY = _PICK.replace("@lane", "")
# Fairness: the oldest ready single update (not from a batch), on its own partial index.
PICK_SINGLE = _PICK.replace("@lane", "AND batch_id IS NULL")
# Under the company lock, with a fresh snapshot: still free and ready? Then lease its updates.
# The rows are picked in a CTE: evaluated once, so LIMIT bounds what is leased.
LEASE = """
    WITH picked AS (
        SELECT seq FROM deliveries
        WHERE company_id = :company AND status = 'queued'
          AND NOT EXISTS (@busy)
          AND EXISTS (
            SELECT 1 FROM deliveries r WHERE r.company_id = :company
              AND r.status = 'queued' AND r.next_attempt_at <= {now}
              AND (r.enqueued_at <= {now} - :settle OR r.realtime_only = 1))
        ORDER BY seq LIMIT :max_merge
        FOR UPDATE
    )
    UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, via = 'realtime',
        lease_owner = :owner, lease_until = {now} + :lease, updated_at = {now}
    WHERE seq IN (SELECT seq FROM picked)
    RETURNING id, seq, metadata, attempts
""".replace("@busy", _BUSY.replace("@company", ":company"))
VERSIONS = "SELECT key, seq FROM property_versions WHERE company_id = :company"

# The next stored batch to expand, then (PostgreSQL) its row locked: two replicas never
# expand the same chunk.
NEXT_BATCH = """
    SELECT seq_from + expanded FROM batches WHERE expanded < total ORDER BY seq_from LIMIT 1
"""
LOCK_NEXT_BATCH = """
    SELECT id, seq_from, expanded, payload, payload_format, caller, source, created_at
    FROM batches WHERE expanded < total ORDER BY seq_from LIMIT 1 FOR UPDATE
"""
INSERT_EXPANDED = """
    INSERT INTO deliveries (seq, id, company_id, metadata, status, source, caller, batch_id,
        created_at, updated_at, next_attempt_at, enqueued_at, last_error) {overriding}
    VALUES (:seq, :id, :company, :metadata, :status, :source, :caller, :batch,
        :created, {now}, :created, :created, :error)
"""
BATCH_EXPANDED = """
    UPDATE batches SET expanded = :done,
        payload = CASE WHEN :done >= total THEN NULL ELSE payload END
    WHERE id = :id
"""

# outcomes: only the claim's own lease may record -------------------------------------------
_HELD = " WHERE id = ANY(:ids) AND lease_owner = :owner"
MARK_DELIVERED = (
    """
    UPDATE deliveries SET status = 'delivered', delivered_at = {now}, updated_at = {now},
        last_status = :status, last_error = NULL, last_request_id = :request_id,
        lease_owner = NULL, lease_until = NULL, via = 'realtime', job_id = NULL"""
    + _HELD
)
MARK_DELIVERED_RETURNING = MARK_DELIVERED + " RETURNING " + DELIVERY_COLUMNS
SENT_VERSION = """
    INSERT INTO property_versions (company_id, key, seq, updated_at)
    VALUES (:company, :key, :seq, {now})
    ON CONFLICT (company_id, key) DO UPDATE
    SET seq = GREATEST(property_versions.seq, excluded.seq), updated_at = excluded.updated_at
"""
MARK_RETRY = (
    """
    UPDATE deliveries SET status = 'queued', next_attempt_at = {now} + :delay,
        updated_at = {now}, last_status = :status, last_error = :error,
        lease_owner = NULL, lease_until = NULL"""
    + _HELD
)
MARK_DEAD = (
    """
    UPDATE deliveries SET status = 'dead', updated_at = {now}, last_status = :status,
        last_error = :error, last_request_id = :request_id, lease_owner = NULL,
        lease_until = NULL"""
    + _HELD
)
RELEASE = (
    """
    UPDATE deliveries SET status = 'queued', attempts = GREATEST(attempts - 1, 0),
        lease_owner = NULL, lease_until = NULL"""
    + _HELD
)

# webhook state -----------------------------------------------------------------------------
LINK_CUSTOMER = """
    INSERT INTO customer_links (customer_id, company_id, updated_at)
    VALUES (:customer, :company, {now})
    ON CONFLICT (customer_id) DO UPDATE SET
        company_id = excluded.company_id, updated_at = excluded.updated_at
"""
CUSTOMER_COMPANY = "SELECT company_id FROM customer_links WHERE customer_id = :customer"
PARK_EVENT = """
    INSERT INTO parked_events (source, key, payload, reason, created_at, updated_at)
    VALUES (:source, :key, :payload, :reason, {now}, {now})
    ON CONFLICT (source, key) DO UPDATE SET reason = excluded.reason,
        updated_at = excluded.updated_at, attempts = parked_events.attempts + 1
"""
PARKED_EVENTS = """
    SELECT key, payload FROM parked_events WHERE source = :source
    ORDER BY updated_at, created_at LIMIT :limit
"""
UNPARK_EVENT = "DELETE FROM parked_events WHERE source = :source AND key = :key"
COUNT_PARKED = "SELECT count(*) FROM parked_events"


def filtered(base: str, **equal: object) -> tuple[str, dict[str, object]]:
    """`base` with `AND column = :column` for every filter given (None: not filtered)."""
    params = {column: value for column, value in equal.items() if value is not None}
    return base + "".join(f" AND {column} = :{column}" for column in params), params


def listing(*, status: str | None, company_id: str | None) -> tuple[str, dict[str, object]]:
    """The delivery listing, in arrival order after the cursor `:after` (`:limit` rows)."""
    sql, params = filtered(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE seq > :after",
        status=status,
        company_id=company_id,
    )
    return sql + " ORDER BY seq LIMIT :limit", params
