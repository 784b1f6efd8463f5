"""What every lister shares: the page cursor, the hostile-answer checks, a record's mapping.

A cursor is the provider's own (HubSpot's `after`, Stripe's last object id), kept as JSON in
the store. A provider's answer that is not a page as documented (not an object, no results
list, a paging field missing or of the wrong type, a cursor that is blank, too long or holds
control characters) fails the page with a `ProviderError` naming what is wrong: never a loop,
never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from app.domain.models import Metadata, Primitive
from app.domain.quality import Rules
from app.domain.rules import has_control
from app.domain.values import SeenType
from app.ingest import review_record
from app.sources.backfill.client import ProviderError
from app.sources.mapping import ConversionError, FieldRule, apply, convert
from app.store.backfills import Page

log = logging.getLogger("userpilot_relay.backfill")

MAX_CURSOR = 1000
PAGE_SIZE = 100  # what every list request asks for (`limit=100`)


class Lister(Protocol):
    """One provider's records, a page at a time."""

    source: str

    async def total(self) -> int | None:
        """About how many records the backfill will read (None: the provider does not say)."""

    async def page(self, cursor: dict[str, str] | None) -> Page:
        """The page at `cursor` (None: the first), its `cursor` the next one's (None: last).
        `number` is left 0: the runner numbers pages."""

    async def aclose(self) -> None: ...


def encode_cursor(cursor: dict[str, str] | None) -> str | None:
    return None if cursor is None else orjson.dumps(cursor, option=orjson.OPT_SORT_KEYS).decode()


def decode_cursor(stored: str | None) -> dict[str, str] | None:
    if stored is None:
        return None
    value = orjson.loads(stored)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def cursor_text(value: Any, where: str, name: str) -> str:
    """A provider's cursor as the next request may carry it, or `ProviderError`."""
    if not isinstance(value, str) or not value.strip():
        raise ProviderError("invalid_answer", f"{name} answered a page without {where}")
    if len(value) > MAX_CURSOR or has_control(value):
        raise ProviderError(
            "invalid_answer",
            f"{name} answered a {where} that is too long or holds control characters",
        )
    return value


def object_of(body: Any, name: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProviderError("invalid_answer", f"{name} answered a page that is not a JSON object")
    return body


def list_of(body: Mapping[str, Any], key: str, name: str, *, most: int = PAGE_SIZE) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise ProviderError("invalid_answer", f"{name} answered a page without a `{key}` list")
    if len(value) > most:
        raise ProviderError(
            "invalid_answer", f"{name} answered {len(value)} records for a page of {most}"
        )
    return value


def plausible(at: float | None, now: float) -> float:
    """A source time to order by: `now` (the relay's clock when it asked) when missing or
    later, so a provider's clock running ahead cannot hold back later webhooks."""
    return now if at is None or at > now else at


def epoch(value: Any) -> float | None:
    """A source time (ISO 8601, or epoch milliseconds) as unix seconds; None when unreadable."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    try:
        iso = convert(value, "date", epoch="ms")
    except ConversionError:
        return None
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).timestamp()
    except (ValueError, OverflowError):
        return None


@dataclass(slots=True)
class Mapped:
    """A record as its mapping and the declared types make it; the fields dropped."""

    metadata: Metadata = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)


def map_record(
    rules: Mapping[str, FieldRule],
    record: Mapping[str, Primitive],
    *,
    epoch_unit: str,
    quality: Rules,
    first_types: Mapping[str, SeenType],
    source: str,
) -> Mapped:
    """Map a flat record as the webhooks do, then through the ingest service's review as a
    webhook event goes (`app/ingest.py`: never refused, what does not fit dropped)."""
    mapped = apply(rules, record, epoch="ms" if epoch_unit == "ms" else "s")
    out = Mapped(metadata=mapped.metadata, invalid=list(mapped.invalid))
    if out.metadata:
        out.metadata, dropped = review_record(out.metadata, quality, first_types, source=source)
        out.invalid += dropped
    return out


def note_invalid(source: str, backfill_id: str, company_id: str, fields: list[str]) -> None:
    log.warning(
        "backfilled values did not convert to their mapped or declared type and were dropped",
        extra={
            "source": source,
            "backfill_id": backfill_id,
            "company_id": company_id,
            "fields": fields[:20],
        },
    )
