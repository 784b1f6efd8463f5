"""Backfills from HubSpot and Stripe (issue 14): their progress and committed cursors."""

from __future__ import annotations

from app.store.part import StorePart


class BackfillStore(StorePart):
    """One row per backfill: source, status, cursor and counts."""
