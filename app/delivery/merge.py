"""Merging a company's queued updates into one Userpilot call, or one row of a bulk job."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.domain.models import Claim, Metadata

# Userpilot takes bulk files up to 50 MB: keep clear of it.
MAX_JOB_BYTES = 50 * 1024 * 1024 - 256 * 1024


def merge_claim(claim: Claim) -> tuple[Metadata, dict[str, int]]:
    """Merge the claim's updates in arrival order: later values win per key, `null` kept.

    A key that a newer, already delivered update has set (see `Claim.versions`) is skipped,
    so a replayed dead letter never overwrites it. Answers the metadata to send and, per key,
    the sequence number of the update whose value is sent.
    """
    merged: Metadata = {}
    sent_versions: dict[str, int] = {}
    for update in claim.updates:
        for key, value in update.metadata.items():
            if claim.versions.get(key, -1) > update.seq:
                continue
            merged[key] = value
            sent_versions[key] = update.seq
    return merged, sent_versions


def bulk_body(claims: Sequence[Claim]) -> bytes:
    """A bulk identify body: `{"companies": [...]}`, a row per company, merged as above."""
    rows = [{"company_id": c.company_id, "metadata": merge_claim(c)[0]} for c in claims]
    return orjson.dumps({"companies": rows})
