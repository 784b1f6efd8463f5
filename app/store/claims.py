"""Claims and their outcomes as plans (see `app/store/sql.py`), the same on both backends.

A claim leases every queued update of the company that has waited longest and is free. On
PostgreSQL the company is taken under a transaction-level advisory lock (two replicas never
lease the same company) and its rows `FOR UPDATE`; SQLite has one writer, so the locks render
to nothing there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from app.domain.models import Claim, ClaimedUpdate, Delivery
from app.store import queries as q
from app.store.delivered import record_delivered
from app.store.rows import PAYLOAD_CHUNK, batch_items, expansion_item, row_to_delivery
from app.store.sql import Plan, Statement

EXPAND_CHUNK = PAYLOAD_CHUNK  # a stored chunk at a time: one line parsed
CANDIDATES = 64  # ready updates a pick looks through for a free company
CLAIM_TRIES = 3  # companies a claim tries when others take them first
EXPANSIONS_PER_CLAIM = 4
MAX_SINGLE_EXPANSIONS = 16  # chunks expanded at most per claim to put a single update first


def expand(*, before_seq: int | None) -> Plan[bool]:
    """Turn the next chunk of the oldest stored batch into deliveries.

    Only when that batch's next update arrived before `before_seq` (None: whatever it is), so
    updates keep their arrival order. Answers whether anything was expanded.
    """
    pending = (yield Statement(q.NEXT_BATCH)).one()
    if pending is None or (before_seq is not None and int(pending[0]) >= before_seq):
        return False
    row = (yield Statement(q.LOCK_NEXT_BATCH)).one()
    if row is None:
        return False  # another replica expanded the last of it meanwhile
    batch_id, seq_from, expanded, payload, payload_format, caller, source, created_at = row
    if before_seq is not None and seq_from + expanded >= before_seq:
        return False
    items = batch_items(payload, payload_format, expanded, expanded + EXPAND_CHUNK)
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
        yield Statement(q.INSERT_EXPANDED, rows, many=True)
    yield Statement(q.BATCH_EXPANDED, {"id": batch_id, "done": expanded + len(rows)})
    return True


def claim(
    *, owner: str, lease_seconds: float, max_merge: int, settle_seconds: float, single_first: bool
) -> Plan[Claim | None]:
    """The `Store.claim` transaction: see its contract."""
    params: dict[str, Any] = {
        "settle": settle_seconds,
        "scan": CANDIDATES,
        "max_merge": max_merge,
        "owner": owner,
        "lease": lease_seconds,
    }
    yield Statement(q.LOCK_CLAIMS)
    yield Statement(q.EXPIRE_LEASES)
    skip: list[str] = []
    expansions = 0
    single = single_first
    while len(skip) < CLAIM_TRIES:
        pick = q.PICK_SINGLE if single else q.PICK_COMPANY
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
        leased = (yield Statement(q.LEASE, {**params, "company": company_id})).rows
        if not leased:
            # Another replica took it between our look and our lock: try the next.
            skip.append(company_id)
            continue
        versions = (yield Statement(q.VERSIONS, {"company": company_id})).rows
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
    sql = q.MARK_DELIVERED_RETURNING if returning else q.MARK_DELIVERED
    marked = yield Statement(sql, params)
    if sent_versions:
        rows = [  # one lock order, whoever else writes these rows
            {"company": claim.company_id, "key": key, "seq": sent_versions[key]}
            for key in sorted(sent_versions)
        ]
        yield Statement(q.SENT_VERSION, rows, many=True)
        # What was sent, as a digest per property: reconciliations send only what differs.
        yield from record_delivered(claim.company_id, claim.updates, sent_versions)
    return [row_to_delivery(row) for row in marked.rows] if returning else []


def mark_retry(claim: Claim, status: int | None, error: str, delay: float) -> Plan[None]:
    params = {**_held(claim), "status": status, "error": error, "delay": delay}
    yield Statement(q.MARK_RETRY, params)


def mark_dead(claim: Claim, status: int | None, error: str, request_id: str | None) -> Plan[None]:
    params = {**_held(claim), "status": status, "error": error, "request_id": request_id}
    yield Statement(q.MARK_DEAD, params)


def release(claim: Claim) -> Plan[None]:
    yield Statement(q.RELEASE, _held(claim))
