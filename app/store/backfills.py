"""Backfills from HubSpot and Stripe (issue 14): their progress and committed cursors.

A page is committed in one transaction with everything it means: its updates stored as one
batch (so the dispatcher drains them through bulk jobs), the source times that keep an older
value from overwriting a newer one (as webhooks do), the cursor of the next page and the
counts. A relay killed mid-backfill therefore resumes from the last committed page, never
reading a committed page twice nor losing one.

A reconciliation stores only the properties whose value differs from what the relay last
delivered (`delivered.py`).

A backfill row is leased to the replica driving it (`owner`, `lease_until`), renewed with every
page it commits; the partial unique index `backfills_one_running` keeps one running backfill
per source across every replica.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.domain.models import Metadata, NewUpdate
from app.domain.rules import printable
from app.store.delivered import DELIVERED_OF, source_times, value_digest
from app.store.deliveries import enqueue_batch
from app.store.part import StorePart
from app.store.rows import encode_batch, new_ids
from app.store.sql import Plan, Row, Statement, filtered
from app.store.webhooks import LINK_CUSTOMER, link_rows

BackfillStatus = Literal["running", "completed", "failed"]
Mode = Literal["full", "reconcile"]
_TIMES_CHUNK = 256  # company properties per source-times statement at most


class BackfillRunning(Exception):
    """A backfill of this source runs already (one per source at a time)."""

    def __init__(self, backfill_id: str) -> None:
        super().__init__(f"backfill {backfill_id} of this source is running")
        self.backfill_id = backfill_id


class LostBackfill(Exception):
    """This replica no longer drives the backfill (another took it over, or it ended)."""


@dataclass(frozen=True, slots=True)
class Backfill:
    """One backfill's row."""

    id: str
    source: str
    mode: Mode
    status: BackfillStatus
    cursor: str | None  # where the next page starts (JSON of the source's own cursor)
    pages: int
    companies: int  # records read
    enqueued: int
    skipped: int
    unchanged: int
    errors: int
    total: int | None  # the provider's estimate of the records to read, when it gives one
    last_error: str | None
    owner: str | None
    lease_until: float | None
    started_at: float
    updated_at: float
    finished_at: float | None


def _backfill(row: Row) -> Backfill:
    return Backfill(
        id=row[0],
        source=row[1],
        mode=row[2],
        status=row[3],
        cursor=row[4],
        pages=int(row[5]),
        companies=int(row[6]),
        enqueued=int(row[7]),
        skipped=int(row[8]),
        unchanged=int(row[9]),
        errors=int(row[10]),
        total=None if row[11] is None else int(row[11]),
        last_error=row[12],
        owner=row[13],
        lease_until=row[14],
        started_at=row[15],
        updated_at=row[16],
        finished_at=row[17],
    )


@dataclass(frozen=True, slots=True)
class Record:
    """One company as a page maps it: its properties, and their source time (unix seconds)."""

    company_id: str
    metadata: Metadata
    at: float


@dataclass(frozen=True, slots=True)
class Page:
    """What one page read means, committed at once with the cursor of the next (None: the
    last page)."""

    number: int  # 1-based: the page after the `pages` committed so far
    cursor: str | None
    records: Sequence[Record]
    read: int  # companies read on the page, those dropped before the store included
    skipped: int = 0  # dropped before the store (no company, an unusable id or record)
    errors: int = 0
    last_error: str | None = None
    links: Sequence[tuple[str, str]] = ()  # Stripe: (customer id, company id)
    customers: Sequence[tuple[str, bool]] = ()  # Stripe: (customer id, live) taken


@dataclass(frozen=True, slots=True)
class PageOutcome:
    enqueued: int
    skipped: int  # older than what a source event already set (or dropped before the store)
    unchanged: int  # reconciliation: the same values as the relay last delivered
    batch_id: str | None = None
    suppressed: int = 0  # records of erased companies, dropped (counted in `skipped` too)


@dataclass(slots=True)
class _Kept:
    updates: list[NewUpdate] = field(default_factory=list)
    skipped: int = 0
    unchanged: int = 0


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


# plans ---------------------------------------------------------------------------------------
def _start(backfill_id: str, source: str, mode: Mode, owner: str, lease: float) -> Plan[Backfill]:
    params = {"id": backfill_id, "source": source, "mode": mode, "owner": owner, "lease": lease}
    row = (yield Statement(START, params)).one()
    if row is None:
        running = (yield Statement(RUNNING_OF, {"source": source})).one()
        raise BackfillRunning(running[0] if running else "?")
    return _backfill(row)


def _one(sql: str, params: dict[str, Any]) -> Plan[Backfill | None]:
    row = (yield Statement(sql, params)).one()
    return None if row is None else _backfill(row)


def _listing(source: str | None, before: str | None, limit: int) -> Plan[list[Backfill]]:
    sql, params = filtered(LIST, source=source)
    if before is not None:
        sql, params = sql + " AND id < :before", {**params, "before": before}
    stmt = Statement(sql + " ORDER BY id DESC LIMIT :limit", {**params, "limit": limit})
    return [_backfill(r) for r in (yield stmt).rows]


def _held(sql: str, params: dict[str, Any]) -> Plan[bool]:
    return (yield Statement(sql, params)).rowcount > 0


def _unchanged(records: Sequence[Record]) -> Plan[_Kept]:
    """Reconciliation: each record without the properties the relay last delivered as they are."""
    companies = sorted({r.company_id for r in records})
    delivered: dict[tuple[str, str], int] = {}
    for company, key, digest in (yield Statement(DELIVERED_OF, {"companies": companies})).rows:
        delivered[(company, key)] = int(digest)
    kept = _Kept()
    for record in records:
        changed = {
            k: v
            for k, v in record.metadata.items()
            if delivered.get((record.company_id, k)) != value_digest(v)
        }
        if changed:
            kept.updates.append(NewUpdate(record.company_id, changed, property_times=None))
        else:
            kept.unchanged += 1
    return kept


def _newest(records: Sequence[Record], updates: Sequence[NewUpdate]) -> Plan[_Kept]:
    """The updates without the properties a newer source event already set; the rest's source
    times moved forward (atomically, as for webhooks, in a few statements)."""
    at = {r.company_id: r.at for r in records}
    times: dict[tuple[str, str], float] = {}
    for update in updates:
        for key in update.metadata:
            pair = (update.company_id, key)
            times[pair] = max(times.get(pair, 0.0), at[update.company_id])
    pairs = sorted(times)  # one lock order, whoever else writes these rows
    moved: set[tuple[str, str]] = set()
    start = 0
    while start < len(pairs):
        size = _TIMES_CHUNK
        while size > len(pairs) - start:
            size //= 2  # a few statement shapes only, each rendered once
        chunk = pairs[start : start + size]
        params: dict[str, Any] = {}
        for i, (company, key) in enumerate(chunk):
            params |= {f"c{i}": company, f"k{i}": key, f"t{i}": times[(company, key)]}
        for company, key in (yield Statement(source_times(size), params)).rows:
            moved.add((str(company), str(key)))
        start += size
    kept = _Kept()
    for update in updates:
        metadata = {k: v for k, v in update.metadata.items() if (update.company_id, k) in moved}
        if metadata:
            kept.updates.append(NewUpdate(update.company_id, metadata))
        else:
            kept.skipped += 1
    return kept


def _commit_page(
    backfill_id: str, owner: str, page: Page, lease: float, batch_id: str
) -> Plan[PageOutcome]:
    held = (yield Statement(LOCK_PAGE, {"id": backfill_id, "owner": owner})).one()
    if held is None or int(held[0]) != page.number - 1:
        raise LostBackfill(backfill_id)
    if page.links:  # never a link to an erased company (`LINK_CUSTOMER` checks)
        yield Statement(LINK_CUSTOMER, link_rows(page.links), many=True)
    if page.customers:
        taken = [
            {"id": backfill_id, "customer": c, "live": 1 if live else 0}
            for c, live in page.customers
        ]
        yield Statement(TAKE_CUSTOMER, taken, many=True)
    unchanged = 0
    updates = [NewUpdate(r.company_id, dict(r.metadata)) for r in page.records]
    if held[1] == "reconcile" and page.records:
        compared = yield from _unchanged(page.records)
        updates, unchanged = compared.updates, compared.unchanged
    kept = yield from _newest(page.records, updates) if updates else _nothing()
    stored: str | None = None
    suppressed = 0
    if kept.updates:
        payload = encode_batch(kept.updates)
        # The provider's name as its webhooks' updates have it; the backfill as the caller.
        source = str(held[2])
        result = yield from enqueue_batch(
            payload, len(kept.updates), batch_id, source, backfill_id, None, (), kept.updates
        )
        stored = result.batch_id
        suppressed = len(result.suppressed)
    last = page.cursor is None
    outcome = PageOutcome(
        enqueued=len(kept.updates) - suppressed,
        skipped=page.skipped + kept.skipped + suppressed,
        unchanged=unchanged,
        batch_id=stored,
        suppressed=suppressed,
    )
    params = {
        "id": backfill_id,
        "owner": owner,
        "cursor": page.cursor,
        "read": page.read,
        "enqueued": outcome.enqueued,
        "skipped": outcome.skipped,
        "unchanged": outcome.unchanged,
        "errors": page.errors,
        "error": None if page.last_error is None else printable(page.last_error, 500),
        "lease": lease,
        "last": 1 if last else 0,
    }
    yield Statement(PAGE_DONE, params)
    if last:
        yield Statement(FORGET_CUSTOMERS, {"id": backfill_id})
    return outcome


def _nothing() -> Plan[_Kept]:
    return _Kept()
    yield  # a plan that runs no statement


def _fail(backfill_id: str, owner: str, error: str) -> Plan[bool]:
    params = {"id": backfill_id, "owner": owner, "error": printable(error, 500)}
    failed = (yield Statement(FAIL, params)).rowcount > 0
    yield Statement(FORGET_CUSTOMERS, {"id": backfill_id})
    return failed


def _customers(backfill_id: str, ids: list[str]) -> Plan[tuple[dict[str, str], dict[str, bool]]]:
    links = {str(c): str(co) for c, co in (yield Statement(LINKED, {"ids": ids})).rows}
    taken_rows = (yield Statement(TAKEN, {"id": backfill_id, "ids": ids})).rows
    return links, {str(c): bool(live) for c, live in taken_rows}


def _latest_start(source: str) -> Plan[float | None]:
    row = (yield Statement(LATEST_START, {"source": source})).one()
    return None if row is None or row[0] is None else float(row[0])


class BackfillStore(StorePart):
    """One row per backfill: source, status, cursor and counts."""

    async def start(self, *, source: str, mode: Mode, owner: str, lease: float) -> Backfill:
        """Record a running backfill leased to `owner`; `BackfillRunning` when one of that
        source runs already (on any replica)."""
        backfill_id = new_backfill_id()
        return await self._write(lambda: _start(backfill_id, source, mode, owner, lease))

    async def get(self, backfill_id: str) -> Backfill | None:
        return await self._read(lambda: _one(BY_ID, {"id": backfill_id}))

    async def running(self, source: str) -> Backfill | None:
        return await self._read(lambda: _one(RUNNING_OF, {"source": source}))

    async def listing(
        self, *, source: str | None, before: str | None, limit: int
    ) -> list[Backfill]:
        """Backfills newest first, older than the backfill `before` (a page cursor)."""
        return await self._read(lambda: _listing(source, before, limit))

    async def latest_start(self, source: str) -> float | None:
        """When the newest backfill of `source` started (None: none ever did)."""
        return await self._read(lambda: _latest_start(source))

    async def take(self, *, owner: str, lease: float, busy: Sequence[str] = ()) -> Backfill | None:
        """A running backfill for `owner` to drive (its own, or one whose lease ran out), other
        than those it drives already (`busy`), leased to it."""
        params = {"owner": owner, "lease": lease, "busy": list(busy)}
        return await self._write(lambda: _one(TAKE, params))

    async def renew(self, backfill_id: str, *, owner: str, lease: float) -> bool:
        """Renew the lease (False: `owner` no longer drives it)."""
        params = {"id": backfill_id, "owner": owner, "lease": lease}
        return await self._write(lambda: _held(RENEW, params))

    async def release(self, backfill_id: str, *, owner: str) -> None:
        """Give the lease up (shutdown): another replica, or a restart, resumes it at once."""
        params = {"id": backfill_id, "owner": owner}
        await self._write(lambda: _held(RELEASE, params))

    async def set_total(self, backfill_id: str, *, owner: str, total: int) -> None:
        params = {"id": backfill_id, "owner": owner, "total": total}
        await self._write(lambda: _held(SET_TOTAL, params))

    async def commit_page(
        self, backfill_id: str, *, owner: str, page: Page, lease: float
    ) -> PageOutcome:
        """Store the page's updates (one batch), their source times, the next cursor and the
        counts, in one transaction; `LostBackfill` (nothing stored) when `owner` no longer
        drives it or the page was committed already."""
        batch_id = new_ids(1)[0]
        return await self._write(lambda: _commit_page(backfill_id, owner, page, lease, batch_id))

    async def fail(self, backfill_id: str, *, owner: str, error: str) -> bool:
        return await self._write(lambda: _fail(backfill_id, owner, error))

    async def customers(
        self, backfill_id: str, customer_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, bool]]:
        """Stripe: the companies of these customers (their links), and those whose
        subscription this backfill took already (whether that one was live)."""
        ids = sorted(set(customer_ids))
        return await self._read(lambda: _customers(backfill_id, ids))


def new_backfill_id() -> str:
    """`bf_<ms>_<random>`: sortable by creation."""
    return f"bf_{int(time.time() * 1000):013d}_{os.urandom(6).hex()}"
