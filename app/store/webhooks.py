"""What the webhook sources keep between events: Stripe customer links and parked events.

A Stripe event names a customer, not a company: `customer_links` remembers which company a
customer stands for (written by the Stripe source and by Stripe backfills). An event that
cannot be mapped yet (its customer unknown) is parked, idempotently on source and key, and
retried later least recently tried first. Webhook event keys (deduplication) are kept with
the updates they store (`deliveries.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from app.domain.digest import company_digest
from app.store.part import StorePart
from app.store.sql import Plan, Statement

# An erased company is never linked again (its suppression, checked in the same statement):
# a Stripe event, lookup or backfill page naming it stores no trace of it.
LINK_CUSTOMER = """
    INSERT INTO customer_links (customer_id, company_id, updated_at)
    SELECT :customer, :company, {now}
    WHERE NOT EXISTS (SELECT 1 FROM suppressions WHERE digest = :digest)
    ON CONFLICT (customer_id) DO UPDATE SET
        company_id = excluded.company_id, updated_at = excluded.updated_at
"""
CUSTOMER_COMPANY = "SELECT company_id FROM customer_links WHERE customer_id = :customer"
PARK_EVENT = """
    INSERT INTO parked_events (source, key, payload, reason, created_at, updated_at)
    VALUES (:source, :key, :payload, :reason, {now}, {now})
    ON CONFLICT (source, key) DO UPDATE SET reason = excluded.reason,
        updated_at = excluded.updated_at, attempts = parked_events.attempts + 1
"""
PARKED_EVENTS = """
    SELECT key, payload FROM parked_events WHERE source = :source
    ORDER BY updated_at, created_at LIMIT :limit
"""
UNPARK_EVENT = "DELETE FROM parked_events WHERE source = :source AND key = :key"
COUNT_PARKED = "SELECT count(*) FROM parked_events"


LINKED_CUSTOMERS = "SELECT customer_id FROM customer_links WHERE company_id = ANY(:ids)"
FORGET_LINKS = "DELETE FROM customer_links WHERE company_id = ANY(:ids)"
# Retention: links not written (by an event, a lookup or a backfill) since `:before`.
PRUNE_LINKS = "DELETE FROM customer_links WHERE updated_at < :before"
FORGET_TAKEN = "DELETE FROM backfill_customers WHERE customer_id = ANY(:customers)"
PARKED_PAYLOADS = "SELECT source, key, payload FROM parked_events FOR UPDATE"


def forget(company_ids: Sequence[str]) -> Plan[None]:
    """Delete the companies' Stripe customer links (and the backfills' record of those
    customers), and every parked event that names one of them or their customers."""
    ids = list(company_ids)
    customers = [str(r[0]) for r in (yield Statement(LINKED_CUSTOMERS, {"ids": ids})).rows]
    needles = [orjson.dumps(c) for c in [*ids, *customers]]
    for source, key, payload in (yield Statement(PARKED_PAYLOADS)).rows:
        if any(n in bytes(payload) for n in needles):
            yield Statement(UNPARK_EVENT, {"source": source, "key": key})
    yield Statement(FORGET_LINKS, {"ids": ids})
    if customers:
        yield Statement(FORGET_TAKEN, {"customers": customers})


def link_rows(links: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The parameters of `LINK_CUSTOMER`: one row per customer (the last link given wins), in
    one lock order, each with its company's digest (the suppression check)."""
    latest = dict(links)
    return [
        {"customer": c, "company": latest[c], "digest": company_digest(latest[c])}
        for c in sorted(latest)
    ]


def link_customers(links: Sequence[tuple[str, str]]) -> Plan[None]:
    rows = link_rows(links)
    if rows:
        yield Statement(LINK_CUSTOMER, rows, many=True)


def prune_links(before: float) -> Plan[int]:
    """Forget the links not written since `before` (the value digests' retention)."""
    return int((yield Statement(PRUNE_LINKS, {"before": before})).rowcount)


def company_for_customer(customer_id: str) -> Plan[str | None]:
    row = (yield Statement(CUSTOMER_COMPANY, {"customer": customer_id})).one()
    return str(row[0]) if row else None


def park_event(source: str, key: str, payload: bytes, reason: str) -> Plan[None]:
    params = {"source": source, "key": key, "payload": payload, "reason": reason}
    yield Statement(PARK_EVENT, params)


def parked_events(source: str, limit: int) -> Plan[list[tuple[str, bytes]]]:
    rows = (yield Statement(PARKED_EVENTS, {"source": source, "limit": limit})).rows
    return [(str(k), bytes(p)) for k, p in rows]


def unpark_event(source: str, key: str) -> Plan[None]:
    yield Statement(UNPARK_EVENT, {"source": source, "key": key})


def count_parked() -> Plan[int]:
    row = (yield Statement(COUNT_PARKED)).one()
    return int(row[0]) if row else 0


class Webhooks(StorePart):
    """Customer links and parked events."""

    async def link_customers(self, links: Sequence[tuple[str, str]]) -> None:
        """Remember (Stripe customer id, company id) pairs."""
        await self._write(lambda: link_customers(links))

    async def company_for_customer(self, customer_id: str) -> str | None:
        return await self._read(lambda: company_for_customer(customer_id))

    async def park(self, *, source: str, key: str, payload: bytes, reason: str) -> None:
        """Keep an event that cannot be mapped yet (idempotent on source and key: parking it
        again records the new reason and moves it to the back of `parked_events`)."""
        await self._write(lambda: park_event(source, key, payload, reason))

    async def parked(self, *, source: str, limit: int) -> list[tuple[str, bytes]]:
        """Parked events (key, payload), least recently parked or retried first."""
        return await self._read(lambda: parked_events(source, limit))

    async def unpark(self, *, source: str, key: str) -> None:
        await self._write(lambda: unpark_event(source, key))

    async def count_parked(self) -> int:
        return await self._read(count_parked)
