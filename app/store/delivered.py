"""What the relay delivered, kept compactly for reconciliations (issue 14).

A 64-bit digest per company property (`delivered_values`), written by the delivered-marking
plans (`claims.mark_delivered`, `jobs.completed`) in the same transaction, from the values a
claim or a job actually sent (`sent_versions`): one more batched statement per delivery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import orjson

from app.domain.models import BulkJob, ClaimedUpdate, Metadata, Primitive
from app.store import backfill_queries as bq
from app.store.sql import Plan, Statement


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
        yield Statement(bq.DELIVERED_VALUE, rows, many=True)


def record_delivered_job(
    job: BulkJob, sent_versions: Mapping[str, Mapping[str, int]], completed_rows: int | None
) -> Plan[None]:
    """A completed bulk job's values as sent (per company, as `record_delivered`). Nothing
    when Userpilot counted fewer rows done than the job held: which rows it dropped is not
    known, so a reconciliation sends them all again rather than trust any."""
    if not sent_versions or (completed_rows is not None and completed_rows < job.rows):
        return
    job_id = job.id
    metadata: dict[tuple[str, int], bytes] = {
        (str(c), int(s)): bytes(m)
        for c, s, m in (yield Statement(bq.JOB_VALUES, {"job": job_id})).rows
    }
    rows = []
    for company in sorted(sent_versions):
        keys = sent_versions[company]
        parsed: dict[int, Metadata] = {}
        for key in sorted(keys):
            seq = keys[key]
            if seq not in parsed and (company, seq) in metadata:
                parsed[seq] = orjson.loads(metadata[(company, seq)])
            values = parsed.get(seq)
            if values is not None and key in values:
                rows.append({"company": company, "key": key, "digest": value_digest(values[key])})
    if rows:
        yield Statement(bq.DELIVERED_VALUE, rows, many=True)
