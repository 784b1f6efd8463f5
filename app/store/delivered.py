"""Per company property: its source time, the version sent, and the value delivered.

Source times keep an older event's value from overwriting a newer one (webhooks, backfills,
and API acceptance stamps); property versions keep an older update replayed later from
overwriting what was sent; a 64-bit digest per property (`delivered_values`) is what the relay
delivered, written by the delivered-marking plans (`claims.mark_delivered`, `jobs.completed`)
in the same transaction, and read by reconciliations (`backfills.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import orjson

from app.domain.models import BulkJob, ClaimedUpdate, Metadata, NewUpdate, Primitive
from app.store.sql import Plan, Statement

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


@cache
def source_times(rows: int) -> str:
    """Move the source time of `rows` company properties forward, in one statement, answering
    those that moved (`:c<i>`, `:k<i>`, `:t<i>`): as `SOURCE_TIME` does for one."""
    values = ", ".join(f"(:c{i}, :k{i}, :t{i})" for i in range(rows))
    return f"""
    INSERT INTO source_property_times (company_id, key, event_time) VALUES {values}
    ON CONFLICT (company_id, key) DO UPDATE SET event_time = excluded.event_time
    WHERE source_property_times.event_time <= excluded.event_time
    RETURNING company_id, key
"""


# The version each property was last sent at: an older update replayed later cannot
# overwrite it.
SENT_VERSION = """
    INSERT INTO property_versions (company_id, key, seq, updated_at)
    VALUES (:company, :key, :seq, {now})
    ON CONFLICT (company_id, key) DO UPDATE
    SET seq = GREATEST(property_versions.seq, excluded.seq), updated_at = excluded.updated_at
"""
VERSIONS_OF = """
    SELECT company_id, key, seq FROM property_versions WHERE company_id = ANY(:companies)
"""


# What the relay last delivered (a digest per company property).
DELIVERED_OF = (
    "SELECT company_id, key, digest FROM delivered_values WHERE company_id = ANY(:companies)"
)
DELIVERED_VALUE = """
    INSERT INTO delivered_values (company_id, key, digest, seen_at)
    VALUES (:company, :key, :digest, {now})
    ON CONFLICT (company_id, key) DO UPDATE SET digest = excluded.digest, seen_at = {now}
"""
# The updates of a job whose values it sent (`delivered.record_delivered_job`), a chunk at a time.
SENT_VALUES = """
    SELECT company_id, seq, metadata FROM deliveries WHERE seq = ANY(:seqs) AND job_id = :job
"""


def newest_only(update: NewUpdate) -> Plan[dict[str, Any]]:
    """Drop the properties that a newer source event already set; record the rest's times."""
    assert update.property_times is not None
    kept: dict[str, Any] = {}
    for key, value in update.metadata.items():
        when = update.property_times.get(key)
        if when is not None:
            moved = yield Statement(
                SOURCE_TIME, {"company": update.company_id, "key": key, "at": when}
            )
            if not moved.rows:
                continue
        kept[key] = value
    return kept


def stamp_times(pairs: Sequence[tuple[str, str]]) -> Plan[None]:
    """These company properties were set by the API now: their source time moves to now (one
    statement, however many; validated ids and names hold no control character)."""
    joined = sorted({f"{c}\x1f{k}" for c, k in pairs})
    if any(text.count("\x1f") != 1 for text in joined):
        raise ValueError("a company id or property name holds a control character")
    if joined:
        yield Statement(STAMP_TIMES, {"pairs": joined})


def value_digest(value: Primitive) -> int:
    """A 64-bit digest of a delivered value (signed, as both engines store integers)."""
    raw = hashlib.blake2b(orjson.dumps(value), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True)


def record_delivered(
    company_id: str, updates: Sequence[ClaimedUpdate], sent_versions: Mapping[str, int]
) -> Plan[None]:
    """A claim's values as sent (`sent_versions`: the update whose value each property had)."""
    by_seq = {u.seq: u.metadata for u in updates}
    rows = []
    for key in sorted(sent_versions):
        metadata = by_seq.get(sent_versions[key])
        if metadata is not None and key in metadata:
            rows.append({"company": company_id, "key": key, "digest": value_digest(metadata[key])})
    if rows:
        yield Statement(DELIVERED_VALUE, rows, many=True)


VALUES_CHUNK = 1_000  # sent updates read at a time: never the job's whole backlog


def record_delivered_job(
    job: BulkJob, sent_versions: Mapping[str, Mapping[str, int]], completed_rows: int | None
) -> Plan[None]:
    """A completed bulk job's values as sent (per company, as `record_delivered`). Nothing
    when Userpilot counted fewer rows done than the job held: which rows it dropped is not
    known, so a reconciliation sends them all again rather than trust any. Only the updates
    whose values were sent are read, a chunk at a time."""
    if not sent_versions or (completed_rows is not None and completed_rows < job.rows):
        return
    wanted: dict[int, list[tuple[str, str]]] = {}  # seq -> (company, key) it sent
    for company in sorted(sent_versions):
        keys = sent_versions[company]
        for key in sorted(keys):
            wanted.setdefault(int(keys[key]), []).append((company, key))
    seqs = sorted(wanted)
    digests: list[tuple[str, str, int]] = []
    for start in range(0, len(seqs), VALUES_CHUNK):
        chunk = seqs[start : start + VALUES_CHUNK]
        for company_id, seq, raw in (
            yield Statement(SENT_VALUES, {"job": job.id, "seqs": chunk})
        ).rows:
            values: Metadata = orjson.loads(raw)
            for company, key in wanted.get(int(seq), ()):
                if company == str(company_id) and key in values:
                    digests.append((company, key, value_digest(values[key])))
    if digests:
        digests.sort()  # one lock order, whoever else writes these rows
        rows = [{"company": c, "key": k, "digest": d} for c, k, d in digests]
        yield Statement(DELIVERED_VALUE, rows, many=True)


FORGET_TIMES = "DELETE FROM source_property_times WHERE company_id = ANY(:ids)"
FORGET_VALUES = "DELETE FROM delivered_values WHERE company_id = ANY(:ids)"


def forget(company_ids: Sequence[str]) -> Plan[None]:
    """Delete the companies' source times and delivered value digests."""
    ids = list(company_ids)
    yield Statement(FORGET_TIMES, {"ids": ids})
    yield Statement(FORGET_VALUES, {"ids": ids})


# Retention: the companies not seen for long (every property older than `:before`).
PRUNE_VALUES = """
    DELETE FROM delivered_values WHERE company_id IN (
        SELECT company_id FROM delivered_values GROUP BY company_id
        HAVING max(seen_at) < :before)
"""
PRUNE_TIMES = """
    DELETE FROM source_property_times WHERE company_id IN (
        SELECT company_id FROM source_property_times GROUP BY company_id
        HAVING max(event_time) < :before)
"""


def prune(before: float) -> Plan[int]:
    """Forget the value digests and source times of companies not seen since `before`: a
    reconciliation then sends their values once again."""
    values = (yield Statement(PRUNE_VALUES, {"before": before})).rowcount
    times = (yield Statement(PRUNE_TIMES, {"before": before})).rowcount
    return int(values) + int(times)
