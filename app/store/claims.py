"""Claims and their outcomes: leasing a company's queued updates for a real-time call, then
recording what became of them; expanding stored batches into deliveries on the way.

A claim leases every queued update of the company that has waited longest and is free. On
PostgreSQL the company is taken under a transaction-level advisory lock (two replicas never
lease the same company) and its rows `FOR UPDATE`; SQLite has one writer, so the locks render
to nothing there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from app.domain.digest import company_digest
from app.domain.models import Claim, ClaimedUpdate, Delivery
from app.store import delivered
from app.store.part import StorePart
from app.store.rows import (
    DELIVERY_COLUMNS,
    PAYLOAD_CHUNK,
    batch_items,
    expansion_item,
    row_to_delivery,
)
from app.store.sql import Plan, Row, Statement

# claims ------------------------------------------------------------------------------------
# PostgreSQL: a claim holds this shared, packing a bulk job holds it exclusively, so a company
# is never leased for a real-time call while a job takes it, nor the other way round.
LOCK_CLAIMS = "{lock_claims}"
IS_SUPPRESSED = "SELECT 1 FROM suppressions WHERE digest = :digest"
# An erased company's queued updates, cancelled (the erasure's purge deletes the rest).
CANCEL_ERASED = (
    "DELETE FROM deliveries WHERE company_id = :company AND status IN ('queued', 'delivering') "
    "AND job_id IS NULL"
)
# Of these digests, the suppressed ones (bulk jobs and replays check a chunk of companies).
SUPPRESSED_DIGESTS = "SELECT digest FROM suppressions WHERE digest = ANY(:digests)"
# The erased companies' queued updates, cancelled before a bulk job packs them.
CANCEL_ERASED_QUEUED = (
    "DELETE FROM deliveries WHERE company_id = ANY(:companies) AND status = 'queued' "
    "AND job_id IS NULL"
)
# A crashed holder's lease puts its updates back in line once it expires. Through the index
# of leased rows (`COALESCE` keeps the planner off the status index: a running bulk job holds
# many rows `delivering` without a lease, and every claim would walk them).
EXPIRE_LEASES = """
    UPDATE deliveries SET status = 'queued', lease_owner = NULL, lease_until = NULL
    WHERE seq IN (
        SELECT seq FROM deliveries
        WHERE lease_until < {now} AND COALESCE(status, '') = 'delivering'
        FOR UPDATE SKIP LOCKED)
"""
# What makes a company busy: a live delivery, or updates waiting out a backoff. Written as the
# predicate of the `deliveries_busy` index and then narrowed, so the check is one probe of that
# index per company; the fence keeps PostgreSQL from turning the pick's check into an anti-join,
# which it did with a bulk job in flight: a hash of every delivering row and a sort of every
# ready one, 0.4 to 1.7 s a claim, holding the lock a job's packing waits for.
_BUSY = """
    SELECT 1 FROM deliveries b WHERE b.company_id = @company
        AND (b.status = 'delivering' OR (b.status = 'queued' AND b.attempts > 0))
        AND (b.status = 'delivering' OR b.next_attempt_at > {now})
    {fence}
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

# How many updates of stored batches wait to be expanded, and since when.
BATCHES_WAITING = (
    "SELECT sum(total - expanded), min(created_at) FROM batches WHERE expanded < total"
)


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


# recovery after an outage ------------------------------------------------------------
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
JOBS_RETRY_NOW = """
    UPDATE bulk_jobs SET next_attempt_at = {now}
    WHERE status = 'waiting' AND next_attempt_at > {now}
"""


EXPAND_CHUNK = PAYLOAD_CHUNK  # a stored chunk at a time: one line parsed
CANDIDATES = 64  # ready updates a pick looks through for a free company
CLAIM_TRIES = 3  # companies a claim tries when others take them first
EXPANSIONS_PER_CLAIM = 4
MAX_SINGLE_EXPANSIONS = 16  # chunks expanded at most per claim to put a single update first


def erased_of(company_ids: Sequence[str]) -> Plan[set[str]]:
    """Which of these companies are suppressed (erased), matched by digest."""
    if not company_ids:
        return set()
    digests = {company_digest(c): c for c in company_ids}
    found = (yield Statement(SUPPRESSED_DIGESTS, {"digests": sorted(digests)})).rows
    return {digests[str(r[0])] for r in found if str(r[0]) in digests}


def expand(*, before_seq: int | None) -> Plan[bool]:
    """Turn the next chunk of the oldest stored batch into deliveries.

    Only when that batch's next update arrived before `before_seq` (None: whatever it is), so
    updates keep their arrival order. Answers whether anything was expanded.
    """
    pending = (yield Statement(NEXT_BATCH)).one()
    if pending is None or (before_seq is not None and int(pending[0]) >= before_seq):
        return False
    row = (yield Statement(LOCK_NEXT_BATCH)).one()
    if row is None:
        return False  # another replica expanded the last of it meanwhile
    if before_seq is not None and int(row[1]) + int(row[2]) >= before_seq:
        return False
    yield from expand_rows(row, EXPAND_CHUNK)
    return True


def expand_rows(row: Row, count: int) -> Plan[None]:
    """Turn up to `count` more updates of a locked batch (`LOCK_NEXT_BATCH`'s columns) into
    deliveries; its payload is dropped once every update is expanded."""
    batch_id, seq_from, expanded, payload, payload_format, caller, source, created_at = row
    items = batch_items(payload, payload_format, expanded, expanded + count)
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        company_id, metadata, status, error = expansion_item(item)
        rows.append(
            {
                "seq": seq_from + expanded + i,
                "id": f"{batch_id}.{expanded + i}",
                "company": company_id,
                "metadata": orjson.dumps(metadata),
                "status": status,
                "source": source,
                "caller": caller,
                "batch": batch_id,
                "created": created_at,
                "error": error,
            }
        )
    if rows:
        yield Statement(INSERT_EXPANDED, rows, many=True)
    yield Statement(BATCH_EXPANDED, {"id": batch_id, "done": expanded + len(rows)})


def claim(
    *, owner: str, lease_seconds: float, max_merge: int, settle_seconds: float, single_first: bool
) -> Plan[Claim | None]:
    """The `Claims.claim` transaction: see its contract."""
    params: dict[str, Any] = {
        "settle": settle_seconds,
        "scan": CANDIDATES,
        "max_merge": max_merge,
        "owner": owner,
        "lease": lease_seconds,
    }
    yield Statement(LOCK_CLAIMS)
    yield Statement(EXPIRE_LEASES)
    skip: list[str] = []
    expansions = 0
    single = single_first
    while len(skip) < CLAIM_TRIES:
        pick = PICK_SINGLE if single else PICK_COMPANY
        picked = (yield Statement(pick, {**params, "skip": skip})).one()
        before = int(picked[1]) if picked else None
        if single and picked is None:
            single = False  # no single update waits: the oldest of any kind
            continue
        if single:
            # Fairness: a single update goes first, after every stored batch update that
            # arrived before it is expanded, so its company's claim merges them in order.
            if expansions >= MAX_SINGLE_EXPANSIONS:
                single = False
                continue
            if (yield from expand(before_seq=before)):
                expansions += 1
                continue
        # A stored batch whose next update arrived earlier goes first: expand, look again.
        elif expansions < EXPANSIONS_PER_CLAIM and (yield from expand(before_seq=before)):
            expansions += 1
            continue
        if picked is None:
            return None
        company_id: str = picked[0]
        leased = (yield Statement(LEASE, {**params, "company": company_id})).rows
        if not leased:
            # Another replica took it between our look and our lock: try the next.
            skip.append(company_id)
            continue
        erased = yield Statement(IS_SUPPRESSED, {"digest": company_digest(company_id)})
        if erased.rows:  # belt and braces: an erased company's updates are never sent
            yield Statement(CANCEL_ERASED, {"company": company_id})
            skip.append(company_id)
            continue
        versions = (yield Statement(VERSIONS, {"company": company_id})).rows
        return Claim(
            company_id=company_id,
            updates=[
                ClaimedUpdate(id=r[0], seq=int(r[1]), metadata=orjson.loads(r[2]), attempts=r[3])
                for r in sorted(leased, key=lambda r: int(r[1]))
            ],
            versions={str(k): int(v) for k, v in versions},
            owner=owner,
        )
    return None


def _held(claim: Claim) -> dict[str, Any]:
    return {"ids": claim.ids, "owner": claim.owner}


def mark_delivered(
    claim: Claim,
    status: int,
    request_id: str | None,
    sent_versions: Mapping[str, int],
    returning: bool = False,
) -> Plan[list[Delivery]]:
    """The claim's updates delivered; with `returning`, answered as committed (a request
    waits for one of them)."""
    params = {**_held(claim), "status": status, "request_id": request_id}
    sql = MARK_DELIVERED_RETURNING if returning else MARK_DELIVERED
    marked = yield Statement(sql, params)
    if sent_versions:
        rows = [  # one lock order, whoever else writes these rows
            {"company": claim.company_id, "key": key, "seq": sent_versions[key]}
            for key in sorted(sent_versions)
        ]
        yield Statement(delivered.SENT_VERSION, rows, many=True)
        # What was sent, as a digest per property: reconciliations send only what differs.
        yield from delivered.record_delivered(claim.company_id, claim.updates, sent_versions)
    return [row_to_delivery(row) for row in marked.rows] if returning else []


def mark_retry(claim: Claim, status: int | None, error: str, delay: float) -> Plan[None]:
    params = {**_held(claim), "status": status, "error": error, "delay": delay}
    yield Statement(MARK_RETRY, params)


def mark_dead(claim: Claim, status: int | None, error: str, request_id: str | None) -> Plan[None]:
    params = {**_held(claim), "status": status, "error": error, "request_id": request_id}
    yield Statement(MARK_DEAD, params)


def release(claim: Claim) -> Plan[None]:
    yield Statement(RELEASE, _held(claim))


def retry_now(*, one_company: bool) -> Plan[int]:
    """Bring updates waiting out a backoff forward: every one, or the oldest one's company."""
    if one_company:
        return (yield Statement(RETRY_OLDEST)).rowcount
    moved = (yield Statement(RETRY_NOW)).rowcount
    yield Statement(JOBS_RETRY_NOW)
    return moved


class Claims(StorePart):
    """Real-time claims: lease, outcome, hand back; recovery after an outage."""

    async def claim(
        self,
        *,
        owner: str,
        lease_seconds: float,
        max_merge: int,
        settle_seconds: float = 0.0,
        single_first: bool = False,
    ) -> Claim | None:
        """Lease every queued update of the company that has waited longest and is free.

        With `single_first`, the company of the oldest ready single update (one not from a
        batch) goes first, so one caller's single update never waits behind a whole import;
        batch updates that arrived before it are expanded first and ride in the same claim.

        A company is free when none of its updates is being delivered (under a live lease)
        and none is waiting out a retry backoff. Its oldest ready update must have been queued
        `settle_seconds` ago, so a burst of updates to one company leaves in one call, unless
        a caller waits for one of them (`realtime_only`, `Prefer: wait`): that company goes at
        once, with whatever else of it is queued. Updates come in arrival order (at most
        `max_merge`).
        """
        return await self._write(
            lambda: claim(
                owner=owner,
                lease_seconds=lease_seconds,
                max_merge=max_merge,
                settle_seconds=settle_seconds,
                single_first=single_first,
            ),
            durable=self._engine.leases_durable,
        )

    async def mark_delivered(
        self,
        claim: Claim,
        *,
        status: int,
        request_id: str | None,
        sent_versions: Mapping[str, int],
    ) -> None:
        """Record success for every update of the claim.

        `sent_versions` maps each property sent to the sequence number of the update whose
        value was sent, so that an older update replayed later cannot overwrite it.
        """
        watched = self._signals.watched(claim.ids)
        # Not durable: a power cut may lose the last commits (none a durable one followed),
        # and their updates go again. `watched`: a waiting request gets the rows committed.
        marked = await self._write(
            lambda: mark_delivered(claim, status, request_id, sent_versions, watched),
            durable=False,
        )
        self._signals.settled(claim.ids, marked)

    async def mark_retry(
        self, claim: Claim, *, status: int | None, error: str, delay: float
    ) -> None:
        """Put the claim's updates back in the queue, not before `delay` seconds."""
        await self._write(lambda: mark_retry(claim, status, error, delay))

    async def mark_dead(
        self, claim: Claim, *, status: int | None, error: str, request_id: str | None
    ) -> None:
        """Dead-letter every update of the claim (a permanent rejection)."""
        await self._write(lambda: mark_dead(claim, status, error, request_id))
        self._signals.settled(claim.ids)

    async def release(self, claim: Claim) -> None:
        """Hand the claim back untouched (shutdown): it is delivered again later."""
        await self._write(lambda: release(claim))
        self._work_committed()

    async def retry_now(self, *, one_company: bool = False) -> int:
        """Bring updates waiting out a retry backoff forward (Userpilot is back): every one,
        and every waiting bulk job's next submission, or (a probe) only the company of the
        oldest such update. Answers how many updates moved."""
        moved = await self._write(lambda: retry_now(one_company=one_company))
        self._work_committed()
        return moved
