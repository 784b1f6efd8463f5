"""The SHA-256 digest of a company id: how suppressions and finished erasures name a company
without keeping its id (docs/erasure.md)."""

from __future__ import annotations

import hashlib


def company_digest(company_id: str) -> str:
    """The hex SHA-256 of the company id's UTF-8 bytes."""
    return hashlib.sha256(company_id.encode("utf-8", "surrogatepass")).hexdigest()
