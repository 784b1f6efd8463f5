"""Merging a company's queued updates into one Userpilot call."""

from __future__ import annotations

from app.domain.models import Claim, Metadata


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
