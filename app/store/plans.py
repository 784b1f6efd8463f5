"""The store's transactions as plans (see `app/store/sql.py`): ingest, reads, dead letters.

Claims and their outcomes are in `claims.py`. A plan that writes runs in one transaction,
committed by the backend, or rolled back when the plan raises (one that is a single statement
safe to repeat may run on its own, in autocommit); a plan that only reads may run without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.domain.errors import IdempotencyConflict, NotDead
from app.domain.models import (
    STATUSES,
    Batch,
    Delivery,
    EnqueueResult,
    Idempotency,
    NewUpdate,
    QueueStats,
    UpstreamAnswer,
)
from app.domain.rules import REFUSED, parse_ascii_int
from app.store import queries as q
from app.store.rows import batch_ids, row_to_delivery, staged_delivery
from app.store.sql import Plan, Statement

PRUNE_BATCH = 5000  # rows one pruning transaction deletes at most: the queue never waits long


# ingest ------------------------------------------------------------------------------------
def idempotent_result(idem: Idempotency) -> Plan[Any]:
    """The first request's stored result for this key, or None; a conflict raises.

    Two replicas given the same key at once: the second waits for the first to commit.
    """
    key = {"caller": idem.caller, "key": idem.key}
    yield Statement(q.LOCK_IDEMPOTENCY, {"lock_key": f"{idem.caller}\x1f{idem.key}"})
    found = (yield Statement(q.IDEMPOTENCY_GET, key)).one()
    if found is None:
        return None
    if found[0] != idem.fingerprint:
        raise IdempotencyConflict(idem.key)
    return orjson.loads(found[1])


def remember(idem: Idempotency, result: object) -> Plan[None]:
    yield Statement(
        q.IDEMPOTENCY_PUT,
        {
            "caller": idem.caller,
            "key": idem.key,
            "fingerprint": idem.fingerprint,
            "result": orjson.dumps(result),
            "ttl": idem.ttl_seconds,
        },
    )


def newest_only(update: NewUpdate) -> Plan[dict[str, Any]]:
    """Drop the properties that a newer source event already set; record the rest's times."""
    assert update.property_times is not None
    kept: dict[str, Any] = {}
    for key, value in update.metadata.items():
        when = update.property_times.get(key)
        if when is not None:
            moved = yield Statement(
                q.SOURCE_TIME, {"company": update.company_id, "key": key, "at": when}
            )
            if not moved.rows:
                continue
        kept[key] = value
    return kept


def plain(update: NewUpdate) -> bool:
    """Nothing to check or record against other stored state: no event key, no source times."""
    return update.event_key is None and not update.property_times and not update.stamp_times


def stamp_times(pairs: Sequence[tuple[str, str]]) -> Plan[None]:
    """These company properties were set by the API now: their source time moves to now (one
    statement, however many; validated ids and names hold no control character)."""
    joined = sorted({f"{c}\x1f{k}" for c, k in pairs})
    if any(text.count("\x1f") != 1 for text in joined):
        raise ValueError("a company id or property name holds a control character")
    if joined:
        yield Statement(q.STAMP_TIMES, {"pairs": joined})


def enqueue(
    updates: Sequence[NewUpdate],
    encoded: list[bytes],
    ids: list[str],
    source: str,
    caller: str | None,
    idem: Idempotency | None,
) -> Plan[EnqueueResult]:
    """Store single updates: skip duplicate events and properties a newer event set."""
    if idem is not None:
        first = yield from idempotent_result(idem)
        if first is not None:
            return EnqueueResult(ids=first["ids"], replayed=True)
    stored_ids: list[str | None] = list(ids)
    older: set[int] = set()
    stamped: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    for index, update in enumerate(updates):
        body = encoded[index]
        if update.event_key is not None:
            fresh = yield Statement(q.WEBHOOK_EVENT, {"source": source, "key": update.event_key})
            if not fresh.rows:
                stored_ids[index] = None
                continue
        if update.property_times:
            kept = yield from newest_only(update)
            if len(kept) != len(update.metadata):
                older.add(index)
            if not kept and update.skip_if_empty:
                stored_ids[index] = None
                continue
            if len(kept) != len(update.metadata):
                body = orjson.dumps(kept)
        stamped += [(update.company_id, key) for key in update.stamp_times]
        rows.append(
            {
                "id": ids[index],
                "company": update.company_id,
                "metadata": body,
                "source": source,
                "caller": caller,
                "realtime_only": 1 if update.realtime_only else 0,
            }
        )
    if len(rows) == 1:  # the common case: one plain statement, one round trip
        yield Statement(q.INSERT_DELIVERY, rows[0])
    elif rows:
        yield Statement(q.INSERT_DELIVERY, rows, many=True)
    yield from stamp_times(stamped)
    if idem is not None:
        yield from remember(idem, {"ids": stored_ids})
    return EnqueueResult(ids=stored_ids, older=frozenset(older))


def enqueue_batch(
    payload: bytes,
    count: int,
    batch_id: str,
    source: str,
    caller: str | None,
    idem: Idempotency | None,
    stamped: Sequence[tuple[str, str]] = (),
) -> Plan[EnqueueResult]:
    """Store a whole batch as one row, reserving its updates' places in the arrival order;
    `stamped` company properties take now as their source time (`NewUpdate.stamp_times`).

    The updates become deliveries later, a chunk at a time, as the dispatcher needs them
    (`claims.expand`): ingest costs one insert whatever the batch size, and update i's place
    is `seq_from + i`, before anything that arrives after it.
    """
    if idem is not None:
        first = yield from idempotent_result(idem)
        if first is not None:
            return EnqueueResult(
                ids=batch_ids(first["batch_id"], first["count"]),
                batch_id=first["batch_id"],
                replayed=True,
            )
    reserved = (yield Statement(q.RESERVE_SEQS, {"count": count})).one()
    assert reserved is not None, "no sequence numbers reserved: run userpilot-relay migrate"
    yield Statement(
        q.INSERT_BATCH,
        {
            "id": batch_id,
            "caller": caller,
            "source": source,
            "total": count,
            "seq_from": int(reserved[0]),
            "payload": payload,
        },
    )
    yield from stamp_times(stamped)
    if idem is not None:
        yield from remember(idem, {"batch_id": batch_id, "count": count})
    return EnqueueResult(ids=batch_ids(batch_id, count), batch_id=batch_id)


# reads -------------------------------------------------------------------------------------
def get_delivery(delivery_id: str) -> Plan[Delivery | None]:
    row = (yield Statement(q.DELIVERY_BY_ID, {"id": delivery_id})).one()
    if row is not None:
        return row_to_delivery(row)
    # A batch's update not expanded yet: `{batch_id}.{i}`.
    batch_id, dot, index_text = delivery_id.rpartition(".")
    index = parse_ascii_int(index_text, maximum=2**31 - 1) if dot else None
    if index is None:
        return None
    staged = (yield Statement(q.STAGED_BATCH, {"id": batch_id, "index": index})).one()
    return staged_delivery(delivery_id, batch_id, index, staged) if staged else None


def get_deliveries(delivery_ids: list[str]) -> Plan[list[Delivery]]:
    rows = (yield Statement(q.DELIVERIES_BY_IDS, {"ids": delivery_ids})).rows
    return [row_to_delivery(r) for r in rows]


def get_batch(batch_id: str) -> Plan[Batch | None]:
    row = (yield Statement(q.BATCH, {"id": batch_id})).one()
    if row is None:
        return None
    caller, total, created_at, seq_from, expanded = row
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    span = {"first": seq_from, "last": seq_from + total - 1}
    for status, n in (yield Statement(q.BATCH_COUNTS, span)).rows:
        counts[status] = int(n)
    counts["queued"] += total - expanded  # stored, not yet expanded into deliveries
    return Batch(id=batch_id, caller=caller, total=total, created_at=created_at, counts=counts)


def list_deliveries(
    status: str | None, company_id: str | None, after_seq: int, limit: int
) -> Plan[list[Delivery]]:
    sql, params = q.listing(status=status, company_id=company_id)
    rows = (yield Statement(sql, {**params, "after": after_seq, "limit": limit})).rows
    return [row_to_delivery(r) for r in rows]


def recent_answers(limit: int) -> Plan[list[UpstreamAnswer]]:
    params = {"limit": limit, "refused_len": len(REFUSED), "refused": REFUSED}
    rows = (yield Statement(q.RECENT_ANSWERS, params)).rows
    return [UpstreamAnswer(str(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def stats() -> Plan[QueueStats]:
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in (yield Statement(q.STATUS_COUNTS)).rows:
        counts[status] = int(n)
    oldest_row = (yield Statement(q.OLDEST_PENDING)).one()
    oldest = oldest_row[0] if oldest_row else None
    waiting = (yield Statement(q.BATCHES_WAITING)).one()
    if waiting is not None and waiting[0] is not None:
        counts["queued"] += int(waiting[0])
        oldest = waiting[1] if oldest is None else min(oldest, waiting[1])
    return QueueStats(
        queued=counts["queued"],
        delivering=counts["delivering"],
        dead=counts["dead"],
        oldest_queued_at=oldest,
    )


# dead letters and retention ----------------------------------------------------------------
def replay(delivery_id: str) -> Plan[Delivery | None]:
    row = (yield Statement(q.DEAD_STATE, {"id": delivery_id})).one()
    if row is None:
        return None
    if row[0] != "dead":
        raise NotDead(row[0])
    if (row[1] or "").startswith(REFUSED):
        raise NotDead("refused by the relay (it cannot be sent as stored): purge it")
    updated = (yield Statement(q.REPLAY_ONE, {"id": delivery_id})).one()
    assert updated is not None
    return row_to_delivery(updated)


def replay_dead(company_id: str | None) -> Plan[int]:
    sql, params = q.filtered(q.REPLAY_DEAD, company_id=company_id)
    params |= {"refused_len": len(REFUSED), "refused": REFUSED}
    return (yield Statement(sql, params)).rowcount


def purge_dead(delivery_id: str | None, company_id: str | None) -> Plan[int]:
    sql, params = q.filtered(q.PURGE_DEAD, id=delivery_id, company_id=company_id)
    return (yield Statement(sql, params)).rowcount


def prune_delivered(before: float) -> Plan[int]:
    """One short transaction's worth: at most `PRUNE_BATCH` delivered updates."""
    params = {"before": before, "limit": PRUNE_BATCH}
    return (yield Statement(q.PRUNE_DELIVERED, params)).rowcount


def prune_rest(before: float) -> Plan[None]:
    """Finished batches, expired idempotency keys, old webhook event keys."""
    yield Statement(q.PRUNE_BATCHES, {"before": before})
    yield Statement(q.PRUNE_IDEMPOTENCY)
    yield Statement(q.PRUNE_EVENTS, {"before": before})


def prune_versions(before: float) -> Plan[int]:
    """One short transaction's worth of property versions no older update can need."""
    params = {"before": before, "limit": PRUNE_BATCH}
    return (yield Statement(q.PRUNE_VERSIONS, params)).rowcount


# webhook state -----------------------------------------------------------------------------
def link_customers(links: Sequence[tuple[str, str]]) -> Plan[None]:
    latest = dict(links)  # one row per customer: the last link given wins
    if latest:
        rows = [{"customer": c, "company": latest[c]} for c in sorted(latest)]  # one lock order
        yield Statement(q.LINK_CUSTOMER, rows, many=True)


def company_for_customer(customer_id: str) -> Plan[str | None]:
    row = (yield Statement(q.CUSTOMER_COMPANY, {"customer": customer_id})).one()
    return str(row[0]) if row else None


def park_event(source: str, key: str, payload: bytes, reason: str) -> Plan[None]:
    params = {"source": source, "key": key, "payload": payload, "reason": reason}
    yield Statement(q.PARK_EVENT, params)


def parked_events(source: str, limit: int) -> Plan[list[tuple[str, bytes]]]:
    rows = (yield Statement(q.PARKED_EVENTS, {"source": source, "limit": limit})).rows
    return [(str(k), bytes(p)) for k, p in rows]


def unpark_event(source: str, key: str) -> Plan[None]:
    yield Statement(q.UNPARK_EVENT, {"source": source, "key": key})


def count_parked() -> Plan[int]:
    row = (yield Statement(q.COUNT_PARKED)).one()
    return int(row[0]) if row else 0


def probe() -> Plan[None]:
    """A read that reaches the database."""
    yield Statement("SELECT 1")


def health() -> Plan[None]:
    """A write that commits: readiness fails while writes fail."""
    yield Statement(q.HEALTH_WRITE)
