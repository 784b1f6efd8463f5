"""Deliveries: storing updates (singles, batches, idempotency keys), reading them, dead
letters (replay, purge) and retention (prune).

A plan that writes runs in one transaction, committed by the engine, or rolled back when the
plan raises (one that is a single statement safe to repeat may run on its own, in
autocommit); a plan that only reads may run without one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.domain.digest import company_digest
from app.domain.errors import (
    CompanyErased,
    IdempotencyConflict,
    NotDead,
    NothingStored,
    StoreUnavailable,
)
from app.domain.models import (
    STATUSES,
    Batch,
    Delivery,
    EnqueueResult,
    Idempotency,
    NewUpdate,
    QueueStats,
    Status,
    UpstreamAnswer,
)
from app.domain.rules import REFUSED, parse_ascii_int
from app.store import delivered, webhooks
from app.store.claims import BATCHES_WAITING, erased_of, expand_rows
from app.store.jobs import prune_jobs
from app.store.part import StorePart
from app.store.rows import (
    DELIVERY_COLUMNS,
    batch_ids,
    encode_batch,
    new_ids,
    row_to_delivery,
    staged_delivery,
)
from app.store.sql import Plan, Statement, filtered

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
# The id is ours: a retry after a lost answer cannot store the update twice. An erased
# company's update is not stored (its suppression, checked in the same statement).
INSERT_DELIVERY = """
    INSERT INTO deliveries (id, company_id, metadata, status, source, caller,
        created_at, updated_at, next_attempt_at, enqueued_at, realtime_only)
    SELECT :id, :company, :metadata, 'queued', :source, :caller, {now}, {now}, {now}, {now},
        :realtime_only
    WHERE NOT EXISTS (SELECT 1 FROM suppressions WHERE digest = :digest)
    ON CONFLICT (id) DO NOTHING
"""
SUPPRESSED = "SELECT digest FROM suppressions WHERE digest = ANY(:digests)"
STORED_ID = "SELECT 1 FROM deliveries WHERE id = :id"
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
# dead letters and retention ----------------------------------------------------------------
DEAD_STATE = "SELECT status, last_error, company_id FROM deliveries WHERE id = :id FOR UPDATE"
# The companies of the dead letters a replay-all would queue (those erased stay dead).
DEAD_COMPANIES = "SELECT DISTINCT company_id FROM deliveries WHERE status = 'dead'"
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
PRUNE_DEAD = """
    DELETE FROM deliveries WHERE seq IN (
      SELECT seq FROM deliveries WHERE status = 'dead' AND updated_at < :before
      LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
PRUNE_PARKED = "DELETE FROM parked_events WHERE created_at < :before"
PRUNE_BACKFILLS = """
    DELETE FROM backfills WHERE status <> 'running' AND finished_at < :before
"""
PRUNE_BACKFILL_CUSTOMERS = """
    DELETE FROM backfill_customers
    WHERE NOT EXISTS (SELECT 1 FROM backfills b WHERE b.id = backfill_customers.backfill_id)
"""
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


# forgetting companies (erasure) ----------------------------------------------------------
FORGET_IDS = "SELECT id, batch_id FROM deliveries WHERE company_id = ANY(:ids)"
# Stored batches whose payload is still kept (some updates not yet expanded), locked.
KEPT_PAYLOADS = """
    SELECT id, seq_from, expanded, payload, payload_format, caller, source, created_at
    FROM batches WHERE payload IS NOT NULL ORDER BY seq_from FOR UPDATE
"""
FORGET_DELIVERIES = "DELETE FROM deliveries WHERE company_id = ANY(:ids)"
FORGET_VERSIONS = "DELETE FROM property_versions WHERE company_id = ANY(:ids)"
IDEMPOTENCY_RESULTS = "SELECT caller, key, result FROM idempotency_keys FOR UPDATE"
FORGET_IDEMPOTENCY = "DELETE FROM idempotency_keys WHERE caller = :caller AND key = :key"


def _listing_sql(*, status: str | None, company_id: str | None) -> tuple[str, dict[str, object]]:
    """The delivery listing, in arrival order after the cursor `:after` (`:limit` rows)."""
    sql, params = filtered(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE seq > :after",
        status=status,
        company_id=company_id,
    )
    return sql + " ORDER BY seq LIMIT :limit", params


PRUNE_BATCH = 5000  # rows one pruning transaction deletes at most: the queue never waits long


# ingest ------------------------------------------------------------------------------------
def idempotent_result(idem: Idempotency) -> Plan[Any]:
    """The first request's stored result for this key, or None; a conflict raises.

    Two replicas given the same key at once: the second waits for the first to commit.
    """
    key = {"caller": idem.caller, "key": idem.key}
    yield Statement(LOCK_IDEMPOTENCY, {"lock_key": f"{idem.caller}\x1f{idem.key}"})
    found = (yield Statement(IDEMPOTENCY_GET, key)).one()
    if found is None:
        return None
    if found[0] != idem.fingerprint:
        raise IdempotencyConflict(idem.key)
    return orjson.loads(found[1])


def remember(idem: Idempotency, result: object) -> Plan[None]:
    yield Statement(
        IDEMPOTENCY_PUT,
        {
            "caller": idem.caller,
            "key": idem.key,
            "fingerprint": idem.fingerprint,
            "result": orjson.dumps(result),
            "ttl": idem.ttl_seconds,
        },
    )


def plain(update: NewUpdate) -> bool:
    """Nothing to check or record against other stored state: no event key, no source times."""
    return update.event_key is None and not update.property_times and not update.stamp_times


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
    digests = [company_digest(u.company_id) for u in updates]
    erased: set[str] = set()
    if len(updates) > 1 or not plain(updates[0]):
        found = yield Statement(SUPPRESSED, {"digests": digests})
        erased = {str(r[0]) for r in found.rows}
    suppressed: set[int] = set()
    for index, update in enumerate(updates):
        body = encoded[index]
        if digests[index] in erased:
            stored_ids[index] = None
            suppressed.add(index)
            continue
        if update.event_key is not None:
            fresh = yield Statement(WEBHOOK_EVENT, {"source": source, "key": update.event_key})
            if not fresh.rows:
                stored_ids[index] = None
                continue
        if update.property_times:
            kept = yield from delivered.newest_only(update)
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
                "digest": digests[index],
            }
        )
    if len(rows) == 1:  # the common case: one plain statement, one round trip
        inserted = yield Statement(INSERT_DELIVERY, rows[0])
        if inserted.rowcount == 0 and not erased and len(updates) == 1:
            # Not stored: a retry of a committed insert (the id is there), or an erased company.
            there = yield Statement(STORED_ID, {"id": rows[0]["id"]})
            if not there.rows:
                return EnqueueResult(ids=[None], suppressed=frozenset({0}))
    elif rows:
        yield Statement(INSERT_DELIVERY, rows, many=True)
    yield from delivered.stamp_times(stamped)
    if idem is not None:
        yield from remember(idem, {"ids": stored_ids})
    return EnqueueResult(ids=stored_ids, older=frozenset(older), suppressed=frozenset(suppressed))


def enqueue_batch(
    payload: bytes,
    count: int,
    batch_id: str,
    source: str,
    caller: str | None,
    idem: Idempotency | None,
    stamped: Sequence[tuple[str, str]] = (),
    updates: Sequence[NewUpdate] = (),
) -> Plan[EnqueueResult]:
    """Store a whole batch as one row, reserving its updates' places in the arrival order;
    `stamped` company properties take now as their source time (`NewUpdate.stamp_times`).

    The updates become deliveries later, a chunk at a time, as the dispatcher needs them
    (`expand`): ingest costs one insert whatever the batch size, and update i's place
    is `seq_from + i`, before anything that arrives after it.
    """
    if idem is not None:
        first = yield from idempotent_result(idem)
        if first is not None:
            return EnqueueResult(
                ids=batch_ids(first["batch_id"], first["count"]),
                batch_id=first["batch_id"],
                replayed=True,
                suppressed=frozenset(first.get("suppressed", ())),
            )
    suppressed: frozenset[int] = frozenset()
    if updates:  # an erased company's update is left out (its index answered)
        digests = [company_digest(u.company_id) for u in updates]
        found = yield Statement(SUPPRESSED, {"digests": digests})
        erased = {str(r[0]) for r in found.rows}
        if erased:
            suppressed = frozenset(i for i, d in enumerate(digests) if d in erased)
            kept = [u for i, u in enumerate(updates) if i not in suppressed]
            payload, count = encode_batch(kept), len(kept)
            stamped = [(c, k) for c, k in stamped if company_digest(c) not in erased]
            if not kept:
                if idem is not None:
                    yield from remember(
                        idem, {"batch_id": None, "count": 0, "suppressed": sorted(suppressed)}
                    )
                return EnqueueResult(ids=[], batch_id=None, suppressed=suppressed)
    reserved = (yield Statement(RESERVE_SEQS, {"count": count})).one()
    assert reserved is not None, "no sequence numbers reserved: run userpilot-relay migrate"
    yield Statement(
        INSERT_BATCH,
        {
            "id": batch_id,
            "caller": caller,
            "source": source,
            "total": count,
            "seq_from": int(reserved[0]),
            "payload": payload,
        },
    )
    yield from delivered.stamp_times(stamped)
    if idem is not None:
        answer = {"batch_id": batch_id, "count": count, "suppressed": sorted(suppressed)}
        yield from remember(idem, answer)
    return EnqueueResult(ids=batch_ids(batch_id, count), batch_id=batch_id, suppressed=suppressed)


# reads -------------------------------------------------------------------------------------
def get_delivery(delivery_id: str) -> Plan[Delivery | None]:
    row = (yield Statement(DELIVERY_BY_ID, {"id": delivery_id})).one()
    if row is not None:
        return row_to_delivery(row)
    # A batch's update not expanded yet: `{batch_id}.{i}`.
    batch_id, dot, index_text = delivery_id.rpartition(".")
    index = parse_ascii_int(index_text, maximum=2**31 - 1) if dot else None
    if index is None:
        return None
    staged = (yield Statement(STAGED_BATCH, {"id": batch_id, "index": index})).one()
    return staged_delivery(delivery_id, batch_id, index, staged) if staged else None


def get_deliveries(delivery_ids: list[str]) -> Plan[list[Delivery]]:
    rows = (yield Statement(DELIVERIES_BY_IDS, {"ids": delivery_ids})).rows
    return [row_to_delivery(r) for r in rows]


def get_batch(batch_id: str) -> Plan[Batch | None]:
    row = (yield Statement(BATCH, {"id": batch_id})).one()
    if row is None:
        return None
    caller, total, created_at, seq_from, expanded = row
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    span = {"first": seq_from, "last": seq_from + total - 1}
    for status, n in (yield Statement(BATCH_COUNTS, span)).rows:
        counts[status] = int(n)
    counts["queued"] += total - expanded  # stored, not yet expanded into deliveries
    return Batch(id=batch_id, caller=caller, total=total, created_at=created_at, counts=counts)


def list_deliveries(
    status: str | None, company_id: str | None, after_seq: int, limit: int
) -> Plan[list[Delivery]]:
    sql, params = _listing_sql(status=status, company_id=company_id)
    rows = (yield Statement(sql, {**params, "after": after_seq, "limit": limit})).rows
    return [row_to_delivery(r) for r in rows]


def recent_answers(limit: int) -> Plan[list[UpstreamAnswer]]:
    params = {"limit": limit, "refused_len": len(REFUSED), "refused": REFUSED}
    rows = (yield Statement(RECENT_ANSWERS, params)).rows
    return [UpstreamAnswer(str(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def stats() -> Plan[QueueStats]:
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in (yield Statement(STATUS_COUNTS)).rows:
        counts[status] = int(n)
    oldest_row = (yield Statement(OLDEST_PENDING)).one()
    oldest = oldest_row[0] if oldest_row else None
    waiting = (yield Statement(BATCHES_WAITING)).one()
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
    row = (yield Statement(DEAD_STATE, {"id": delivery_id})).one()
    if row is None:
        return None
    if row[0] != "dead":
        raise NotDead(row[0])
    if (row[1] or "").startswith(REFUSED):
        raise NotDead("refused by the relay (it cannot be sent as stored): purge it")
    if (yield from erased_of([str(row[2])])):
        raise CompanyErased  # an erased company's update is never queued again
    updated = (yield Statement(REPLAY_ONE, {"id": delivery_id})).one()
    assert updated is not None
    return row_to_delivery(updated)


def replay_dead(company_id: str | None) -> Plan[int]:
    """Re-queue the dead letters (of one company), less those of erased companies."""
    sql, params = filtered(REPLAY_DEAD, company_id=company_id)
    params |= {"refused_len": len(REFUSED), "refused": REFUSED}
    dead_sql, dead_params = filtered(DEAD_COMPANIES, company_id=company_id)
    dead = [str(r[0]) for r in (yield Statement(dead_sql, dead_params)).rows]
    erased = yield from erased_of(dead)
    if erased:
        sql, params = sql + " AND company_id <> ALL(:erased)", {**params, "erased": sorted(erased)}
    return (yield Statement(sql, params)).rowcount


def purge_dead(delivery_id: str | None, company_id: str | None) -> Plan[int]:
    sql, params = filtered(PURGE_DEAD, id=delivery_id, company_id=company_id)
    return (yield Statement(sql, params)).rowcount


def prune_delivered(before: float) -> Plan[int]:
    """One short transaction's worth: at most `PRUNE_BATCH` delivered updates."""
    params = {"before": before, "limit": PRUNE_BATCH}
    return (yield Statement(PRUNE_DELIVERED, params)).rowcount


def prune_rest(before: float) -> Plan[None]:
    """Finished batches, expired idempotency keys, old webhook event keys."""
    yield Statement(PRUNE_BATCHES, {"before": before})
    yield Statement(PRUNE_IDEMPOTENCY)
    yield Statement(PRUNE_EVENTS, {"before": before})


def prune_dead(before: float) -> Plan[int]:
    """One short transaction's worth of dead letters older than their retention."""
    return (yield Statement(PRUNE_DEAD, {"before": before, "limit": PRUNE_BATCH})).rowcount


def prune_kept(retention: Retention, now: float) -> Plan[None]:
    """Parked events, finished bulk jobs and backfills past their retention."""
    yield Statement(PRUNE_PARKED, {"before": now - retention.parked_events})
    jobs_before = now - retention.jobs
    yield from prune_jobs(jobs_before)
    yield Statement(PRUNE_BACKFILLS, {"before": jobs_before})
    yield Statement(PRUNE_BACKFILL_CUSTOMERS)


def prune_versions(before: float) -> Plan[int]:
    """One short transaction's worth of property versions no older update can need."""
    params = {"before": before, "limit": PRUNE_BATCH}
    return (yield Statement(PRUNE_VERSIONS, params)).rowcount


def forget(company_ids: Sequence[str]) -> Plan[int]:
    """Delete every stored update of the companies (queued, delivered, dead: nothing of them is
    sent after this), with the idempotency records that answer them and their property
    versions. A stored batch holding one of them is expanded first, so its payload (dropped
    once expanded) keeps no byte of them. Answers how many updates were deleted."""
    ids = list(company_ids)
    needles = [orjson.dumps(c) for c in ids]
    batches: set[str] = set()
    for row in (yield Statement(KEPT_PAYLOADS)).rows:
        payload = bytes(row[3])
        if any(n in payload for n in needles):
            batches.add(str(row[0]))
            yield from expand_rows(row, 1 << 31)
    found = (yield Statement(FORGET_IDS, {"ids": ids})).rows
    delivery_ids = {str(r[0]) for r in found}
    batches |= {str(r[1]) for r in found if r[1] is not None}
    deleted = (yield Statement(FORGET_DELIVERIES, {"ids": ids})).rowcount
    yield Statement(FORGET_VERSIONS, {"ids": ids})
    if delivery_ids or batches:
        for caller, key, result in (yield Statement(IDEMPOTENCY_RESULTS)).rows:
            answer = orjson.loads(result)
            answered = set(answer.get("ids") or ()) if isinstance(answer, dict) else set()
            batch = answer.get("batch_id") if isinstance(answer, dict) else None
            if answered & delivery_ids or batch in batches:
                yield Statement(FORGET_IDEMPOTENCY, {"caller": caller, "key": key})
    return int(deleted)


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds each kind of record is kept (the `RELAY_*_RETENTION_SECONDS` settings)."""

    dead_letters: float = 30 * 86_400
    parked_events: float = 30 * 86_400
    jobs: float = 30 * 86_400
    values: float = 180 * 86_400


class Deliveries(StorePart):
    """Stored updates: ingest, reads, dead letters and retention."""

    # ingest --------------------------------------------------------------------------------
    async def enqueue(
        self,
        updates: Sequence[NewUpdate],
        *,
        source: str,
        caller: str | None,
        batch: bool = False,
        idempotency: Idempotency | None = None,
    ) -> EnqueueResult:
        """Commit the updates (all or none) and answer their delivery ids.

        With `batch`, the updates form a batch: update i's delivery id is `{batch_id}.{i}`.

        Raises `IdempotencyConflict` when the key was used with another body, and
        `StoreUnavailable` when nothing could be committed.
        """
        try:
            result = await self._enqueue(updates, source, caller, batch, idempotency)
        except StoreUnavailable as exc:  # the commit did not happen: say so, for the answer
            raise NothingStored(str(exc)) from None
        if result.stored and not result.replayed:
            if any(u.realtime_only for u in updates):
                self._signals.caller_waits()
            self._work_committed()
        return result

    async def _enqueue(
        self,
        updates: Sequence[NewUpdate],
        source: str,
        caller: str | None,
        batch: bool,
        idempotency: Idempotency | None,
    ) -> EnqueueResult:
        # Serialise before the transaction: it is the one thing that cannot run in parallel.
        if batch:
            if any(u.event_key or u.property_times for u in updates):
                raise ValueError("a batch carries plain updates only")
            limit = self._engine.dialect.max_batch
            if limit is not None and len(updates) > limit:
                raise ValueError(f"a batch holds at most {limit} updates")
            batch_id, payload, count = new_ids(1)[0], encode_batch(updates), len(updates)
            stamped = [(u.company_id, k) for u in updates for k in u.stamp_times]
            args = (payload, count, batch_id, source, caller, idempotency, stamped, updates)
            return await self._write(lambda: enqueue_batch(*args), ingest=True)
        ids = new_ids(len(updates))
        encoded = [orjson.dumps(u.metadata) for u in updates]
        # One plain update, the common case: one statement, safe to repeat (the id is ours).
        single = len(updates) == 1 and idempotency is None and plain(updates[0])
        return await self._write(
            lambda: enqueue(updates, encoded, ids, source, caller, idempotency),
            atomic=not single,
            ingest=True,
        )

    # reads ---------------------------------------------------------------------------------
    async def get(self, delivery_id: str) -> Delivery | None:
        return await self._read(lambda: get_delivery(delivery_id))

    async def get_many(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        ids = list(delivery_ids)
        return await self._read(lambda: get_deliveries(ids)) if ids else []

    async def batch(self, batch_id: str) -> Batch | None:
        return await self._read(lambda: get_batch(batch_id), snapshot=True)

    async def listing(
        self, *, status: Status | None, company_id: str | None, after_seq: int, limit: int
    ) -> list[Delivery]:
        """Deliveries in arrival order after `after_seq` (a page cursor)."""
        return await self._read(lambda: list_deliveries(status, company_id, after_seq, limit))

    async def recent_answers(self, limit: int) -> list[UpstreamAnswer]:
        """The answers recorded on the `limit` newest updates that have one, newest first
        (the relay's own refusals left out); no update's metadata is read."""
        return await self._read(lambda: recent_answers(limit))

    async def stats(self) -> QueueStats:
        return await self._read(stats, snapshot=True)

    # dead letters --------------------------------------------------------------------------
    async def replay(self, delivery_id: str) -> Delivery | None:
        """Re-queue one dead delivery; None when unknown, `NotDead` when not dead."""
        delivery = await self._write(lambda: replay(delivery_id))
        if delivery is not None:
            self._work_committed()
        return delivery

    async def replay_dead(self, *, company_id: str | None = None) -> int:
        """Re-queue every dead delivery (of one company when given); answer how many."""
        count = await self._write(lambda: replay_dead(company_id))
        if count:
            self._work_committed()
        return count

    async def purge_dead(
        self, *, delivery_id: str | None = None, company_id: str | None = None
    ) -> int:
        """Delete dead deliveries (one, one company's, or all); answer how many."""
        return await self._write(lambda: purge_dead(delivery_id, company_id))

    async def prune(self, *, delivered_before: float, retention: Retention | None = None) -> int:
        """Delete delivered updates older than the retention period; answer how many. With
        `retention`, also dead letters, parked events, finished jobs and backfills, value
        digests, source times and Stripe customer links of companies not seen for long
        (docs/settings.md).

        In short transactions of their own, so pruning never holds up the queue."""
        total = 0
        if retention is not None:
            now = time.time()
            dead_before = now - retention.dead_letters
            while await self._write(lambda: prune_dead(dead_before)) >= PRUNE_BATCH:
                pass
            await self._write(lambda: prune_kept(retention, now))
            values_before = now - retention.values
            await self._write(lambda: delivered.prune(values_before))
            await self._write(lambda: webhooks.prune_links(values_before))
        while True:
            n = await self._write(lambda: prune_delivered(delivered_before))
            total += n
            if n < PRUNE_BATCH:
                break
        await self._write(lambda: prune_rest(delivered_before))
        if retention is None:  # with one, jobs keep their own (`prune_kept`)
            await self._write(lambda: prune_jobs(delivered_before))
        batch = PRUNE_BATCH
        while await self._write(lambda: prune_versions(delivered_before)) >= batch:
            pass
        return total
