"""Rows to domain types and back, the same for both backends.

A stored batch's payload is one JSON array of `[company_id, metadata]` items with a line break
after every `PAYLOAD_CHUNK`th item (`payload_format = 'chunks'`): expanding a chunk, or reading
one staged update, parses one line, not the whole batch, and storing it costs one encoder call
a chunk. It stays one JSON array, so a relay of the previous version (a replica mid-rollout, or
after a rollback) still reads it whole. Batches stored without the breaks (`'array'`) are read
whole.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from app.domain.models import Delivery, NewUpdate
from app.domain.rules import REFUSED, printable, update_problem

DELIVERY_COLUMNS = (
    "id, seq, company_id, metadata, status, attempts, source, caller, batch_id, created_at, "
    "updated_at, next_attempt_at, delivered_at, last_status, last_error, last_request_id, "
    "via, job_id"
)
_POOL_BYTES = 16 * 1024  # 1,024 ids a system call


class _Entropy(threading.local):
    """Random bytes from the system, drawn in blocks: a `getrandom` call costs about 15 µs in
    some sandboxes, more than the rest of storing an update. The ids are as random as
    `os.urandom`'s (they are its bytes); each thread draws from its own block."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def take(self, size: int) -> bytes:
        if size > _POOL_BYTES:
            return os.urandom(size)
        if self.at + size > len(self.pool):
            self.pool, self.at = os.urandom(_POOL_BYTES), 0
        chunk = self.pool[self.at : self.at + size]
        self.at += size
        return chunk


_entropy = _Entropy()


def _fresh_entropy() -> None:
    """A forked child draws its own bytes: never the ids its parent draws next."""
    global _entropy
    _entropy = _Entropy()


os.register_at_fork(after_in_child=_fresh_entropy)


def new_ids(count: int) -> list[str]:
    """`count` random 128-bit hex ids."""
    raw = _entropy.take(16 * count).hex()
    return [raw[i : i + 32] for i in range(0, 32 * count, 32)]


def new_job_id() -> str:
    """A bulk job's id: sortable by creation (milliseconds), then random."""
    return f"job_{int(time.time() * 1000):013d}_{os.urandom(6).hex()}"


def batch_ids(batch_id: str, count: int) -> list[str | None]:
    """The delivery ids a batch's updates get when they are expanded."""
    return [f"{batch_id}.{i}" for i in range(count)]


def row_to_delivery(row: Sequence[Any]) -> Delivery:
    """A row of `DELIVERY_COLUMNS`."""
    return Delivery(
        id=row[0],
        seq=int(row[1]),
        company_id=row[2],
        metadata=orjson.loads(row[3]),
        status=row[4],
        attempts=row[5],
        source=row[6],
        caller=row[7],
        batch_id=row[8],
        created_at=row[9],
        updated_at=row[10],
        next_attempt_at=row[11] if row[4] == "queued" else None,
        delivered_at=row[12],
        last_status=row[13],
        last_error=row[14],
        last_request_id=row[15],
        via=row[16],
        job_id=row[17],
    )


# Part of the stored format: a batch stored with one chunk size is read with the same one, so
# another size would be another `payload_format`.
PAYLOAD_CHUNK = 2000


def encode_batch(updates: Sequence[NewUpdate]) -> bytes:
    """A batch's payload: one JSON array, broken into lines of `PAYLOAD_CHUNK` items (the break
    is JSON white space; the JSON that orjson writes never holds a raw newline)."""
    items = [[u.company_id, u.metadata] for u in updates]
    chunks = [
        orjson.dumps(items[i : i + PAYLOAD_CHUNK])[1:-1]
        for i in range(0, len(items), PAYLOAD_CHUNK)
    ]
    return b"[" + b",\n".join(chunks) + b"]"


def batch_items(payload: bytes, payload_format: str, start: int, stop: int) -> list[Any]:
    """The stored updates `start` to `stop` (exclusive) of a batch, parsing only their lines."""
    data = bytes(payload)
    if payload_format == "array":
        whole: list[Any] = orjson.loads(data)[start:stop]
        return whole
    if payload_format != "chunks":
        raise ValueError(f"unknown batch payload format {payload_format!r}")
    first, last = start // PAYLOAD_CHUNK, (stop - 1) // PAYLOAD_CHUNK
    items: list[Any] = []
    for number, line in enumerate(data.split(b"\n", last + 1)[first : last + 1], start=first):
        # The first line opens the array; every line ends with its comma but the last, which
        # closes the array.
        inner = (line[1:] if number == 0 else line)[:-1]
        items.extend(orjson.loads(b"[" + inner + b"]"))
    offset = start - first * PAYLOAD_CHUNK
    return items[offset : offset + stop - start]


def staged_delivery(
    delivery_id: str, batch_id: str, index: int, row: Sequence[Any]
) -> Delivery | None:
    """A batch's update not expanded yet, as the queued delivery it is.

    `row` is `deliveries.STAGED_BATCH`'s: caller, created_at, seq_from, source, payload, format.
    """
    caller, created_at, seq_from, source, payload, payload_format = row
    items = batch_items(payload, payload_format, index, index + 1)
    if not items:
        return None
    company_id, metadata = items[0]
    return Delivery(
        id=delivery_id,
        seq=int(seq_from) + index,
        company_id=company_id,
        metadata=metadata,
        status="queued",
        attempts=0,
        source=source,
        caller=caller,
        batch_id=batch_id,
        created_at=created_at,
        updated_at=created_at,
        next_attempt_at=created_at,
        delivered_at=None,
        last_status=None,
        last_error=None,
        last_request_id=None,
    )


def expansion_item(item: Any) -> tuple[str, Any, str, str | None]:
    """(company_id, metadata, status, error) for one stored batch update.

    An update that cannot be sent as stored (a control character in an id, from before the
    relay refused them at the door) becomes a dead letter with the reason, so that it can
    never stall the queue for everyone.
    """
    company_id, metadata = item if isinstance(item, list) and len(item) == 2 else (item, None)
    problem = update_problem(company_id, metadata)
    if problem is None:
        return company_id, metadata, "queued", None
    kept = metadata if isinstance(metadata, dict) else {"value": metadata}
    return printable(company_id), kept, "dead", REFUSED + problem
