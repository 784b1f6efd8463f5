"""Stripe's customers, then its subscriptions, a page at a time, mapped as the webhooks map them.

`GET /v1/customers?limit=100&starting_after=<last id>` first: each customer names its company
(the metadata key, else per STRIPE_MISSING_COMPANY), is linked to it as a customer event links
it, and sends its mapped fields. Then `GET /v1/subscriptions?status=all&limit=100&...`: each
subscription finds its company through those links and sends plan, status, MRR and dates.
Stripe lists subscriptions newest first; a customer's first one listed wins unless it has ended
and an older one is still live (a customer with several keeps the state of its newest live
one).

Stripe objects carry no modification time: a listed object is its state when Stripe answered,
so the answer's `Date` (Stripe's clock, as its events' `created` is) is every value's source
time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from app.domain.models import Primitive
from app.domain.quality import Rules
from app.domain.rules import company_id_problem
from app.domain.values import SeenType
from app.ingest import company_refusal
from app.sources.backfill.client import ListClient, ProviderError, text
from app.sources.backfill.pages import (
    PAGE_SIZE,
    cursor_text,
    encode_cursor,
    list_of,
    map_record,
    note_invalid,
    object_of,
    plausible,
)
from app.sources.mapping import SourceMapping, flatten
from app.sources.stripe.events import MissingCompany, company_from_customer, company_id_refusal
from app.sources.stripe.revenue import subscription_record
from app.store.backfills import Page, Record
from app.store.store import Store

CUSTOMERS, SUBSCRIPTIONS = "customers", "subscriptions"
# Always sent, null included: the subscription's state (as the webhooks send it).
_ALWAYS = frozenset({"plan", "status", "mrr", "currency", "current_period_end", "trial_end"})
_ENDED = frozenset({"canceled", "incomplete_expired"})


class StripeLister:
    """Pages through Stripe's customers and subscriptions for one backfill."""

    source = "stripe"

    def __init__(
        self,
        *,
        client: ListClient,
        mapping: SourceMapping,
        metadata_key: str,
        missing: MissingCompany,
        quality: Rules,
        first_types: Mapping[str, SeenType],
        store: Store,
        backfill_id: str,
    ) -> None:
        self._client = client
        self._customer_rules = mapping.section("customer")
        self._subscription_rules = mapping.section("subscription")
        self._key = metadata_key
        self._missing: MissingCompany = missing
        self._quality = quality
        self._first = first_types  # the catalogue's, kept current by its flushes
        self._store = store
        self._backfill_id = backfill_id

    async def aclose(self) -> None:
        await self._client.aclose()

    async def total(self) -> int | None:
        return None  # Stripe's lists do not count

    async def page(self, cursor: dict[str, str] | None) -> Page:
        phase = (cursor or {}).get("phase", CUSTOMERS)
        if phase not in (CUSTOMERS, SUBSCRIPTIONS):
            phase = CUSTOMERS
        params = {"limit": str(PAGE_SIZE)}
        if phase == SUBSCRIPTIONS:
            params["status"] = "all"
        after = (cursor or {}).get("after")
        if after:
            params["starting_after"] = after
        asked = time.time()
        answer = await self._client.get(f"/v1/{phase}", params)
        body = object_of(answer.body, "Stripe")
        data = list_of(body, "data", "Stripe")
        has_more = body.get("has_more")
        if not isinstance(has_more, bool):
            raise _invalid("a page without a true or false `has_more`")
        following: dict[str, str] | None = None
        if has_more:
            if not data or not isinstance(data[-1], dict):
                raise _invalid("`has_more` with no object to continue after")
            last = cursor_text(data[-1].get("id"), "id on its last object", "Stripe")
            if last == after:
                raise _invalid("the same last object twice: its cursor repeats")
            following = {"phase": phase, "after": last}
        elif phase == CUSTOMERS:
            following = {"phase": SUBSCRIPTIONS}
        at = plausible(answer.date, asked)
        if phase == CUSTOMERS:
            page = self._customers(data, at)
        else:
            page = await self._subscriptions(data, at)
        return Page(
            number=0,
            cursor=encode_cursor(following),
            records=page.records,
            read=len(data),
            skipped=page.skipped,
            errors=page.errors,
            last_error=page.last_error,
            links=page.links,
            customers=page.customers,
        )

    def _customers(self, data: list[Any], at: float) -> Page:
        records: list[Record] = []
        links: list[tuple[str, str]] = []
        skipped = errors = 0
        last_error: str | None = None
        for customer in data:
            customer_id = customer.get("id") if isinstance(customer, dict) else None
            if not isinstance(customer, dict) or customer.get("deleted") is True:
                skipped += 1
                continue
            problem = None if isinstance(customer_id, str) else "has no id"
            if isinstance(customer_id, str):
                problem = company_id_problem(customer_id) or company_id_refusal(
                    customer, key=self._key
                )
            if problem is not None:
                skipped, errors = skipped + 1, errors + 1
                last_error = f"a Stripe customer ({text(customer_id, 40)}) was skipped: {problem}"
                continue
            assert isinstance(customer_id, str)
            company_id = company_from_customer(customer, key=self._key, missing=self._missing)
            if company_id is None:
                skipped += 1  # no company, and STRIPE_MISSING_COMPANY=skip
                continue
            refusal = company_refusal(company_id, self._quality)
            if refusal is not None:  # personal data as the company id: never linked or sent
                skipped, errors = skipped + 1, errors + 1
                last_error = f"a Stripe customer ({text(customer_id, 40)}) was skipped: {refusal}"
                continue
            links.append((customer_id, company_id))
            record = flatten(customer)
            record.pop("object", None)
            record.pop(f"metadata.{self._key}", None)
            present: dict[str, Primitive] = {k: v for k, v in record.items() if v is not None}
            records.append(self._record(company_id, self._customer_rules, present, [], at))
        return Page(0, None, records, len(data), skipped, errors, last_error, links=links)

    async def _subscriptions(self, data: list[Any], at: float) -> Page:
        subscriptions = [s for s in data if isinstance(s, dict)]
        customer_of = [_customer_id(s) for s in subscriptions]
        known = [c for c in customer_of if c is not None]
        links, taken = await self._store.backfills.customers(self._backfill_id, known)
        records: list[Record] = []
        chosen: list[tuple[str, bool]] = []
        skipped, errors, last_error = len(data) - len(subscriptions), 0, None

        for subscription, customer_id in zip(subscriptions, customer_of, strict=True):
            company_id = links.get(customer_id) if customer_id else None
            expanded = subscription.get("customer")
            if company_id is None and isinstance(expanded, dict) and "metadata" in expanded:
                company_id = company_from_customer(expanded, key=self._key, missing=self._missing)
                refusal = company_refusal(company_id, self._quality) if company_id else None
                if refusal is not None:
                    skipped, errors = skipped + 1, errors + 1
                    last_error = f"a Stripe subscription was skipped: {refusal}"
                    continue
            if customer_id is None or company_id is None:
                skipped += 1  # its customer stands for no company (or was never listed)
                continue
            live = subscription.get("status") not in _ENDED
            before = taken.get(customer_id)
            if before is not None and (before or not live):
                skipped += 1  # the customer's newer (or live) subscription was taken
                continue
            taken[customer_id] = live
            chosen.append((customer_id, live))
            record, unknown = subscription_record(subscription)
            present = {k: v for k, v in record.items() if v is not None or k in _ALWAYS}
            records.append(self._record(company_id, self._subscription_rules, present, unknown, at))
        return Page(0, None, records, len(data), skipped, errors, last_error, customers=chosen)

    def _record(
        self,
        company_id: str,
        rules: Any,
        record: dict[str, Primitive],
        unknown: list[str],
        at: float,
    ) -> Record:
        mapped = map_record(
            rules,
            record,
            epoch_unit="s",
            quality=self._quality,
            first_types=self._first,
            source=self.source,
        )
        invalid = [f for f in unknown if f in rules] + mapped.invalid
        if invalid:
            note_invalid(self.source, self._backfill_id, company_id, invalid)
        return Record(company_id, mapped.metadata, at)


def _customer_id(subscription: dict[str, Any]) -> str | None:
    value = subscription.get("customer")
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or company_id_problem(value) is not None:
        return None
    return value


def _invalid(what: str) -> ProviderError:
    return ProviderError("invalid_answer", f"Stripe answered {what}")
