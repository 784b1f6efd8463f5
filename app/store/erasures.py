"""Erasures: forgetting companies, the suppressions that keep them forgotten, the pacing row of
Userpilot's delete, and the erasure records (the audit trail).

An erasure is recorded with its companies and their suppressions in one transaction: from its
commit no door stores the companies' updates (`deliveries.INSERT_DELIVERY` checks the digest).
The driver (`app/delivery/erasure.py`) leases running erasures (one replica drives each), purges
the relay's data for them a chunk of companies per transaction (`purge`: every feature's
`forget`), then records Userpilot's answer to the delete. A company's id is kept only while its
erasure runs; the finished record and the suppression keep its SHA-256 digest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from app.domain.digest import company_digest
from app.store import delivered, deliveries, webhooks
from app.store.jobs import LOCK_PACK
from app.store.part import StorePart
from app.store.rows import new_ids
from app.store.sql import Plan, Row, Statement

PURGE_CHUNK = 500  # companies forgotten per transaction

COLUMNS = (
    "id, status, reason, requested_by, companies, erased, created_at, finished_at, last_error, "
    "upstream_status, upstream_request_id, upstream_accepted_at, upstream_scheduled_for, purged"
)
INSERT_ERASURE = """
    INSERT INTO erasures (id, status, reason, requested_by, companies, next_attempt_at,
        created_at, updated_at)
    VALUES (:id, 'running', :reason, :by, :companies, {now}, {now}, {now})
"""
INSERT_COMPANY = """
    INSERT INTO erasure_companies (erasure_id, digest, company_id)
    VALUES (:erasure, :digest, :company) ON CONFLICT DO NOTHING
"""
SUPPRESS = """
    INSERT INTO suppressions (digest, erasure_id, since) VALUES (:digest, :erasure, {now})
    ON CONFLICT (digest) DO NOTHING
"""
GET = f"SELECT {COLUMNS} FROM erasures WHERE id = :id"
# Newest first; the cursor is the last id of the previous page (ids sort by creation).
PAGE = f"""
    SELECT {COLUMNS} FROM erasures
    WHERE (CAST(:status AS TEXT) IS NULL OR status = :status)
      AND (CAST(:before AS TEXT) IS NULL OR id < :before)
    ORDER BY id DESC LIMIT :limit
"""
SUPPRESSION = "SELECT since, erasure_id FROM suppressions WHERE digest = :digest"
LIFT = "DELETE FROM suppressions WHERE digest = :digest"
OLDEST_RUNNING = "SELECT min(created_at) FROM erasures WHERE status = 'running'"
# Running erasures due and free (or already this owner's), leased to `:owner`.
LEASE = """
    UPDATE erasures SET owner = :owner, lease_until = {now} + :lease, updated_at = {now}
    WHERE id IN (
        SELECT id FROM erasures WHERE status = 'running' AND next_attempt_at <= {now}
          AND (owner IS NULL OR owner = :owner OR lease_until < {now})
        ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id, purged
"""
RELEASE = """
    UPDATE erasures SET owner = NULL, lease_until = NULL, next_attempt_at = {now} + :delay,
        updated_at = {now}
    WHERE id = ANY(:ids) AND owner = :owner
"""
# A company is in flight while an update of it is leased (a real-time call or a bulk job).
IN_FLIGHT = """
    SELECT count(*) FROM deliveries d JOIN erasure_companies e ON d.company_id = e.company_id
    WHERE e.erasure_id = :id AND d.status = 'delivering'
"""
TO_PURGE = """
    SELECT company_id FROM erasure_companies WHERE erasure_id = :id AND purged = 0
    ORDER BY digest LIMIT :limit
"""
MARK_PURGED = """
    UPDATE erasure_companies SET purged = 1 WHERE erasure_id = :id AND company_id = ANY(:ids)
"""
ERASURE_PURGED = "UPDATE erasures SET purged = 1, updated_at = {now} WHERE id = :id"
TO_SEND = """
    SELECT erasure_id, digest, company_id FROM erasure_companies
    WHERE erasure_id = ANY(:ids) AND sent = 0 ORDER BY erasure_id, digest LIMIT :limit
"""
RESERVE_SLOT = """
    UPDATE erasure_pacing SET next_slot = GREATEST(next_slot, {now}) + :interval WHERE id = 1
    RETURNING next_slot - :interval
"""
MARK_SENT = "UPDATE erasure_companies SET sent = 1 WHERE erasure_id = :erasure AND digest = :digest"
ANSWERED = """
    UPDATE erasures SET upstream_status = :status, upstream_request_id = :request_id,
        upstream_accepted_at = :accepted_at, upstream_scheduled_for = :scheduled_for,
        last_error = NULL, updated_at = {now}
    WHERE id = :id
"""
UNSENT = "SELECT count(*) FROM erasure_companies WHERE erasure_id = :id AND sent = 0"
COMPLETE = """
    UPDATE erasures SET status = 'completed', erased = companies, finished_at = {now},
        owner = NULL, lease_until = NULL, updated_at = {now}
    WHERE id = :id AND status = 'running'
"""
FAIL = """
    UPDATE erasures SET status = 'failed', last_error = :error, upstream_status = :status,
        upstream_request_id = :request_id, finished_at = {now}, owner = NULL,
        lease_until = NULL, updated_at = {now}
    WHERE id = ANY(:ids) AND status = 'running'
"""
RETRY = """
    UPDATE erasures SET attempts = attempts + 1, last_error = :error, upstream_status = :status,
        next_attempt_at = {now} + :delay, owner = NULL, lease_until = NULL, updated_at = {now}
    WHERE id = ANY(:ids)
"""
ATTEMPTS = "SELECT max(attempts) FROM erasures WHERE id = ANY(:ids)"
DROP_IDS = "UPDATE erasure_companies SET company_id = NULL WHERE erasure_id = ANY(:ids)"
PRUNE = """
    DELETE FROM erasures WHERE status <> 'running' AND finished_at < :before
"""
PRUNE_COMPANIES = """
    DELETE FROM erasure_companies WHERE NOT EXISTS (
        SELECT 1 FROM erasures e WHERE e.id = erasure_companies.erasure_id)
"""


@dataclass(frozen=True, slots=True)
class Erasure:
    """One erasure as the routes show it (docs/erasure.md)."""

    id: str
    status: str
    reason: str
    requested_by: str | None
    companies: int
    erased: int
    created_at: float
    finished_at: float | None
    last_error: str | None
    upstream_status: int | None
    upstream_request_id: str | None
    upstream_accepted_at: float | None
    upstream_scheduled_for: float | None
    purged: bool


@dataclass(frozen=True, slots=True)
class ToSend:
    """Companies of leased, purged erasures not yet sent to Userpilot's delete."""

    items: list[tuple[str, str, str]]  # (erasure id, digest, company id)

    @property
    def erasure_ids(self) -> list[str]:
        return sorted({e for e, _, _ in self.items})


def _erasure(row: Row) -> Erasure:
    return Erasure(
        id=row[0],
        status=row[1],
        reason=row[2],
        requested_by=row[3],
        companies=int(row[4]),
        erased=int(row[5]),
        created_at=float(row[6]),
        finished_at=None if row[7] is None else float(row[7]),
        last_error=row[8],
        upstream_status=row[9],
        upstream_request_id=row[10],
        upstream_accepted_at=row[11],
        upstream_scheduled_for=row[12],
        purged=bool(row[13]),
    )


def create(erasure_id: str, ids: list[str], reason: str, by: str | None) -> Plan[Erasure]:
    yield Statement(
        INSERT_ERASURE, {"id": erasure_id, "reason": reason, "by": by, "companies": len(ids)}
    )
    digests = [company_digest(c) for c in ids]
    rows = [
        {"erasure": erasure_id, "digest": d, "company": c}
        for c, d in zip(ids, digests, strict=False)
    ]
    yield Statement(INSERT_COMPANY, rows, many=True)
    yield Statement(SUPPRESS, [{"digest": d, "erasure": erasure_id} for d in digests], many=True)
    row = (yield Statement(GET, {"id": erasure_id})).one()
    assert row is not None
    return _erasure(row)


def purge_chunk(erasure_id: str) -> Plan[int | None]:
    """Forget the next chunk of the erasure's companies; None while one is in flight (then
    nothing is deleted), 0 when every company is forgotten."""
    yield Statement(LOCK_PACK)  # PostgreSQL: no claim nor bulk job takes a company meanwhile
    busy = (yield Statement(IN_FLIGHT, {"id": erasure_id})).one()
    if busy is not None and int(busy[0]) > 0:
        return None
    params = {"id": erasure_id, "limit": PURGE_CHUNK}
    ids = [str(r[0]) for r in (yield Statement(TO_PURGE, params)).rows if r[0] is not None]
    if not ids:
        yield Statement(ERASURE_PURGED, {"id": erasure_id})
        return 0
    yield from deliveries.forget(ids)
    yield from delivered.forget(ids)
    yield from webhooks.forget(ids)
    yield Statement(MARK_PURGED, {"id": erasure_id, "ids": ids})
    return len(ids)


def record_sent(
    to_send: ToSend,
    status: int,
    request_id: str | None,
    accepted_at: float,
    scheduled_for: float,
) -> Plan[list[tuple[str, int]]]:
    """Userpilot accepted the delete: the companies are sent, each erasure with none left
    completes (its ids dropped). Answers the completed erasures with their company counts."""
    yield Statement(
        MARK_SENT, [{"erasure": e, "digest": d} for e, d, _ in to_send.items], many=True
    )
    done: list[tuple[str, int]] = []
    for erasure_id in to_send.erasure_ids:
        answer = {
            "id": erasure_id,
            "status": status,
            "request_id": request_id,
            "accepted_at": accepted_at,
            "scheduled_for": scheduled_for,
        }
        yield Statement(ANSWERED, answer)
        left = (yield Statement(UNSENT, {"id": erasure_id})).one()
        if left is None or int(left[0]) > 0:
            continue
        if (yield Statement(COMPLETE, {"id": erasure_id})).rowcount:
            row = (yield Statement(GET, {"id": erasure_id})).one()
            done.append((erasure_id, int(row[4]) if row else 0))
    if done:
        yield Statement(DROP_IDS, {"ids": [e for e, _ in done]})
    return done


def fail(ids: list[str], error: str, status: int | None, request_id: str | None) -> Plan[int]:
    params = {"ids": ids, "error": error, "status": status, "request_id": request_id}
    failed = (yield Statement(FAIL, params)).rowcount
    yield Statement(DROP_IDS, {"ids": ids})
    return int(failed)


def retry_later(
    ids: list[str], error: str, status: int | None, delay_for: Callable[[int], float]
) -> Plan[float]:
    row = (yield Statement(ATTEMPTS, {"ids": ids})).one()
    delay = delay_for(int(row[0] or 0) + 1 if row else 1)
    params = {"ids": ids, "error": error, "status": status, "delay": delay}
    yield Statement(RETRY, params)
    return delay


class Erasures(StorePart):
    """Erasures, their companies, suppressions and the delete's pacing row."""

    async def create(self, company_ids: Sequence[str], *, reason: str, by: str | None) -> Erasure:
        """Record an erasure and suppress its companies (one transaction)."""
        ids = list(dict.fromkeys(company_ids))
        erasure_id = f"er_{int(time.time() * 1000):013d}_{new_ids(1)[0][:12]}"  # sorts by time
        return await self._write(lambda: create(erasure_id, ids, reason, by))

    async def get(self, erasure_id: str) -> Erasure | None:
        row = await self._read(lambda: _one(GET, {"id": erasure_id}))
        return None if row is None else _erasure(row)

    async def page(self, *, status: str | None, before: str | None, limit: int) -> list[Erasure]:
        params = {"status": status, "before": before, "limit": limit}
        rows = await self._read(lambda: _rows(PAGE, params))
        return [_erasure(r) for r in rows]

    async def suppression(self, company_id: str) -> tuple[float, str | None] | None:
        """(since, erasure id) when the company is suppressed, else None."""
        row = await self._read(lambda: _one(SUPPRESSION, {"digest": company_digest(company_id)}))
        return None if row is None else (float(row[0]), row[1])

    async def lift(self, company_id: str) -> bool:
        """Lift a company's suppression: its updates are taken again. True when there was one."""
        digest = company_digest(company_id)
        return bool(await self._write(lambda: _count(LIFT, {"digest": digest})))

    async def oldest_running(self) -> float | None:
        row = await self._read(lambda: _one(OLDEST_RUNNING, {}))
        return None if row is None or row[0] is None else float(row[0])

    # the driver ----------------------------------------------------------------------------
    async def lease(self, *, owner: str, seconds: float, limit: int = 50) -> list[tuple[str, bool]]:
        """Lease running erasures that are due: (id, purged)."""
        params = {"owner": owner, "lease": seconds, "limit": limit}
        rows = await self._write(lambda: _rows(LEASE, params))
        return [(str(r[0]), bool(r[1])) for r in rows]

    async def release(self, ids: list[str], *, owner: str, delay: float) -> None:
        params = {"ids": ids, "owner": owner, "delay": delay}
        await self._write(lambda: _count(RELEASE, params))

    async def purge_chunk(self, erasure_id: str) -> int | None:
        return await self._write(lambda: purge_chunk(erasure_id))

    async def after_purge(self) -> None:
        await self._engine.after_purge()

    async def to_send(self, erasure_ids: list[str], *, limit: int) -> ToSend:
        params = {"ids": erasure_ids, "limit": limit}
        rows = await self._read(lambda: _rows(TO_SEND, params))
        return ToSend(items=[(str(e), str(d), str(c)) for e, d, c in rows])

    async def reserve_slot(self, interval: float) -> float:
        """The start of the next delete slot, `interval` s after the last, across replicas."""
        row = await self._write(lambda: _one(RESERVE_SLOT, {"interval": interval}))
        assert row is not None
        return float(row[0])

    async def record_sent(
        self,
        to_send: ToSend,
        *,
        status: int,
        request_id: str | None,
        accepted_at: float,
        scheduled_for: float,
    ) -> list[tuple[str, int]]:
        return await self._write(
            lambda: record_sent(to_send, status, request_id, accepted_at, scheduled_for)
        )

    async def fail(
        self, ids: list[str], *, error: str, status: int | None, request_id: str | None
    ) -> int:
        return await self._write(lambda: fail(ids, error, status, request_id))

    async def retry_later(
        self,
        ids: list[str],
        *,
        error: str,
        status: int | None,
        delay_for: Callable[[int], float],
    ) -> float:
        """Back off by `delay_for(attempt)` seconds; answers the delay."""
        return await self._write(lambda: retry_later(ids, error, status, delay_for))

    async def prune(self, *, before: float) -> int:
        """Delete finished erasure records older than `before` (the audit trail's retention)."""
        return await self._write(lambda: _prune(before))


def _prune(before: float) -> Plan[int]:
    n = (yield Statement(PRUNE, {"before": before})).rowcount
    yield Statement(PRUNE_COMPANIES)
    return int(n)


def _one(sql: str, params: Mapping[str, object]) -> Plan[Row | None]:
    return (yield Statement(sql, params)).one()


def _rows(sql: str, params: Mapping[str, object]) -> Plan[list[Row]]:
    return (yield Statement(sql, params)).rows


def _count(sql: str, params: Mapping[str, object]) -> Plan[int]:
    return int((yield Statement(sql, params)).rowcount)
