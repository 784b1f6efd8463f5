"""The statements behind backfills, written once for both engines (see `queries.py`).

A backfill row is leased to the replica driving it (`owner`, `lease_until`), renewed with every
page it commits; the partial unique index `backfills_one_running` keeps one running backfill
per source across every replica.
"""

from __future__ import annotations

from functools import cache

BACKFILL_COLUMNS = (
    "id, source, mode, status, cursor, pages, companies, enqueued, skipped, unchanged, errors, "
    "total, last_error, owner, lease_until, started_at, updated_at, finished_at"
)

# The unique index refuses a second running backfill of a source: nothing is inserted then.
START = f"""
    INSERT INTO backfills (id, source, mode, status, owner, lease_until, started_at, updated_at)
    VALUES (:id, :source, :mode, 'running', :owner, {{now}} + :lease, {{now}}, {{now}})
    ON CONFLICT DO NOTHING
    RETURNING {BACKFILL_COLUMNS}
"""
BY_ID = f"SELECT {BACKFILL_COLUMNS} FROM backfills WHERE id = :id"
RUNNING_OF = (
    f"SELECT {BACKFILL_COLUMNS} FROM backfills WHERE source = :source AND status = 'running'"
)
# Newest first; `backfills.listing` adds the filter and the cursor.
LIST = f"SELECT {BACKFILL_COLUMNS} FROM backfills WHERE 1 = 1"
LATEST_START = "SELECT max(started_at) FROM backfills WHERE source = :source"
# A running backfill nobody drives (its lease ran out: the replica died or stopped), or ours.
# The outer condition is evaluated again on PostgreSQL after a concurrent update: two replicas
# never both take it.
_FREE = "(lease_until IS NULL OR lease_until < {now} OR owner = :owner)"
TAKE = f"""
    UPDATE backfills SET owner = :owner, lease_until = {{now}} + :lease, updated_at = {{now}}
    WHERE status = 'running' AND {_FREE} AND id = (
        SELECT id FROM backfills WHERE status = 'running' AND {_FREE} AND id <> ALL(:busy)
        ORDER BY started_at LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING {BACKFILL_COLUMNS}
"""
_HELD = " WHERE id = :id AND owner = :owner AND status = 'running'"
RENEW = "UPDATE backfills SET lease_until = {now} + :lease, updated_at = {now}" + _HELD
RELEASE = "UPDATE backfills SET lease_until = NULL, updated_at = {now}" + _HELD
SET_TOTAL = "UPDATE backfills SET total = :total" + _HELD
# The page's row, locked for the page's transaction: still ours, at the page we expect?
LOCK_PAGE = """
    SELECT pages, mode, source FROM backfills
    WHERE id = :id AND owner = :owner AND status = 'running' FOR UPDATE
"""
PAGE_DONE = (
    """
    UPDATE backfills SET cursor = :cursor, pages = pages + 1, companies = companies + :read,
        enqueued = enqueued + :enqueued, skipped = skipped + :skipped,
        unchanged = unchanged + :unchanged, errors = errors + :errors,
        last_error = COALESCE(:error, last_error), lease_until = {now} + :lease,
        updated_at = {now},
        status = CASE WHEN :last = 1 THEN 'completed' ELSE status END,
        finished_at = CASE WHEN :last = 1 THEN {now} ELSE finished_at END"""
    + _HELD
)
FAIL = (
    """
    UPDATE backfills SET status = 'failed', last_error = :error, errors = errors + 1,
        finished_at = {now}, updated_at = {now}, lease_until = NULL"""
    + _HELD
)
FORGET_CUSTOMERS = "DELETE FROM backfill_customers WHERE backfill_id = :id"

# Stripe: which company a customer stands for, and which customers this backfill already took.
LINKED = "SELECT customer_id, company_id FROM customer_links WHERE customer_id = ANY(:ids)"
TAKEN = """
    SELECT customer_id, live FROM backfill_customers
    WHERE backfill_id = :id AND customer_id = ANY(:ids)
"""
TAKE_CUSTOMER = """
    INSERT INTO backfill_customers (backfill_id, customer_id, live) VALUES (:id, :customer, :live)
    ON CONFLICT (backfill_id, customer_id) DO UPDATE SET live = excluded.live
"""

# What the relay last delivered (a digest per company property).
DELIVERED_OF = (
    "SELECT company_id, key, digest FROM delivered_values WHERE company_id = ANY(:companies)"
)
DELIVERED_VALUE = """
    INSERT INTO delivered_values (company_id, key, digest) VALUES (:company, :key, :digest)
    ON CONFLICT (company_id, key) DO UPDATE SET digest = excluded.digest
"""
# The updates of a job whose values it sent (`delivered.record_delivered_job`), a chunk at a time.
SENT_VALUES = """
    SELECT company_id, seq, metadata FROM deliveries WHERE seq = ANY(:seqs) AND job_id = :job
"""


@cache
def source_times(rows: int) -> str:
    """Move the source time of `rows` company properties forward, in one statement, answering
    those that moved (`:c<i>`, `:k<i>`, `:t<i>`): as `queries.SOURCE_TIME` does for one."""
    values = ", ".join(f"(:c{i}, :k{i}, :t{i})" for i in range(rows))
    return f"""
    INSERT INTO source_property_times (company_id, key, event_time) VALUES {values}
    ON CONFLICT (company_id, key) DO UPDATE SET event_time = excluded.event_time
    WHERE source_property_times.event_time <= excluded.event_time
    RETURNING company_id, key
"""
