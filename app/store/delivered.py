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
            yield Statement(bq.SENT_VALUES, {"job": job.id, "seqs": chunk})
        ).rows:
            values: Metadata = orjson.loads(raw)
            for company, key in wanted.get(int(seq), ()):
                if company == str(company_id) and key in values:
                    digests.append((company, key, value_digest(values[key])))
    if digests:
        digests.sort()  # one lock order, whoever else writes these rows
        rows = [{"company": c, "key": k, "digest": d} for c, k, d in digests]
        yield Statement(bq.DELIVERED_VALUE, rows, many=True)
