"""Merging a company's queued updates into one Userpilot call, or one row of a bulk job.

A bulk job's rows are merged as they are read, a chunk of companies at a time (`JobMerge`):
what is kept is one row per company with only the newest value per property, never the
updates themselves, so memory follows the job's companies, not the backlog behind them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from app.domain.models import Claim, Metadata

# Userpilot takes bulk files up to 50 MB: keep clear of it.
MAX_JOB_BYTES = 50 * 1024 * 1024 - 256 * 1024


def _fold(claim: Claim, merged: Metadata, sent_versions: dict[str, int]) -> None:
    """Merge the claim's updates into `merged` in arrival order (see `merge_claim`)."""
    versions = claim.versions
    for update in claim.updates:
        seq = update.seq
        for key, value in update.metadata.items():
            if versions.get(key, -1) > seq:
                continue
            merged[key] = value
            sent_versions[key] = seq


def merge_claim(claim: Claim) -> tuple[Metadata, dict[str, int]]:
    """Merge the claim's updates in arrival order: later values win per key, `null` kept.

    A key that a newer, already delivered update has set (see `Claim.versions`) is skipped,
    so a replayed dead letter never overwrites it. Answers the metadata to send and, per key,
    the sequence number of the update whose value is sent.
    """
    merged: Metadata = {}
    sent_versions: dict[str, int] = {}
    _fold(claim, merged, sent_versions)
    return merged, sent_versions


@dataclass(slots=True)
class JobRow:
    """One company's row of a bulk job: its updates merged, and how many there were."""

    company_id: str
    metadata: Metadata = field(default_factory=dict)
    sent_versions: dict[str, int] = field(default_factory=dict)
    updates: int = 0


class JobMerge:
    """A job's rows, merged as its updates are read (claims of one company in arrival order,
    the company's claims in arrival order too); rows keep the order companies first came."""

    def __init__(self) -> None:
        self._rows: dict[str, JobRow] = {}

    def add(self, claims: Iterable[Claim]) -> None:
        for claim in claims:
            if not claim.updates:
                continue
            row = self._rows.get(claim.company_id)
            if row is None:
                row = self._rows[claim.company_id] = JobRow(claim.company_id)
            _fold(claim, row.metadata, row.sent_versions)
            row.updates += len(claim.updates)

    @property
    def rows(self) -> list[JobRow]:
        return list(self._rows.values())


def bulk_body(rows: Sequence[JobRow]) -> bytes:
    """A bulk identify body: `{"companies": [...]}`, a row per company, merged as above."""
    return orjson.dumps(
        {"companies": [{"company_id": r.company_id, "metadata": r.metadata} for r in rows]}
    )


READ_UPDATES = 5_000  # a job's updates read (and held) at a time, about


def read_chunks(companies: Sequence[tuple[str, int]], limit: int = READ_UPDATES) -> list[list[str]]:
    """The job's companies (each with its count of updates) cut into chunks of about `limit`
    updates, in order; a company is never cut."""
    chunks: list[list[str]] = []
    chunk: list[str] = []
    held = 0
    for company_id, count in companies:
        if chunk and held + count > limit:
            chunks.append(chunk)
            chunk, held = [], 0
        chunk.append(company_id)
        held += count
    if chunk:
        chunks.append(chunk)
    return chunks
