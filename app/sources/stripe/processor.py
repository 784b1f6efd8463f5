"""Stripe events stored as company updates: customers link and update, subscriptions update.

Customer events teach the relay which company a customer stands for (a link kept in the
store); subscription events find their company through that link, or through a customer
expanded in the event. A subscription event whose company is not known yet is parked in the
store for `customers.StripeResolver`: never dropped, never sent under a guessed id.

Subscriptions give `plan`, `status`, `mrr`, `currency`, `current_period_end` and `trial_end`
(see `revenue.py`), always sent, null included: the subscription's state as of the event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from app.domain.models import NewUpdate, Primitive
from app.domain.quality import Rules
from app.ingest import EventPlan, commit_events
from app.metrics import WEBHOOK_EVENTS
from app.sources.mapping import FieldRule, SourceMapping, apply, flatten
from app.sources.stripe.events import (
    CUSTOMER_EVENTS,
    SUBSCRIPTION_EVENTS,
    MissingCompany,
    StripeEvent,
    company_from_customer,
    company_id_refusal,
    customer_id_of,
)
from app.sources.stripe.revenue import subscription_record
from app.store.store import Store

log = logging.getLogger("userpilot_relay.webhooks.stripe")

# Always sent, null included: the subscription's state as of the event.
_SUBSCRIPTION_ALWAYS = frozenset(
    {"plan", "status", "mrr", "currency", "current_period_end", "trial_end"}
)


def _present(
    record: dict[str, Primitive], previous: Mapping[str, Any] | None, always: frozenset[str]
) -> dict[str, Primitive]:
    """Fields with a value; null only for those always sent or that this event emptied."""
    changed = flatten(previous) if previous else {}
    for path in changed:
        record.setdefault(path, None)
    return {k: v for k, v in record.items() if v is not None or k in always or k in changed}


def _plan(
    event: StripeEvent,
    company_id: str,
    rules: Mapping[str, FieldRule],
    record: dict[str, Primitive],
    unknown: list[str],
) -> EventPlan:
    mapped = apply(rules, record, epoch="s")
    invalid = [f for f in unknown if f in rules] + mapped.invalid
    metadata = mapped.metadata
    return EventPlan(
        event_id=event.id,
        event_type=event.type,
        company_id=company_id,
        update=NewUpdate(
            company_id=company_id,
            metadata=metadata,
            event_key=event.id,
            property_times=dict.fromkeys(metadata, float(event.created)),
            skip_if_empty=True,
        ),
        outcome="invalid_value" if invalid else "forwarded",
        unmapped=mapped.unmapped,
        invalid_fields=invalid,
    )


class StripeProcessor:
    """Turns verified Stripe events into stored company updates."""

    def __init__(
        self,
        *,
        store: Store,
        mapping: SourceMapping,
        metadata_key: str,
        missing: MissingCompany,
        quality: Rules | None = None,
    ) -> None:
        self.store = store
        self.quality = quality or Rules(pii="allow")
        self.customer_rules = mapping.section("customer")
        self.subscription_rules = mapping.section("subscription")
        self.metadata_key = metadata_key
        self.missing: MissingCompany = missing
        # Called when parked events may now resolve (a customer linked, an event parked).
        self.on_change: list[Callable[[], None]] = []

    def company_of(self, customer: Mapping[str, Any]) -> str | None:
        """The company a customer object stands for, under this relay's settings."""
        return company_from_customer(customer, key=self.metadata_key, missing=self.missing)

    def plan_customer(self, event: StripeEvent, company_id: str) -> EventPlan:
        """The customer's mapped fields; the company id key itself is no property."""
        customer = event.data.object
        record = flatten(customer)
        record.pop("object", None)
        record.pop(f"metadata.{self.metadata_key}", None)
        record = _present(record, event.data.previous_attributes, frozenset())
        return _plan(event, company_id, self.customer_rules, record, [])

    def plan_subscription(self, event: StripeEvent, company_id: str) -> EventPlan:
        """The subscription's mapped fields, the computed ones (plan, MRR) included."""
        record, unknown = subscription_record(event.data.object)
        record = _present(record, event.data.previous_attributes, _SUBSCRIPTION_ALWAYS)
        return _plan(event, company_id, self.subscription_rules, record, unknown)

    async def process(self, event: StripeEvent, raw: bytes) -> tuple[str, int]:
        """Store what the event means; answer its outcome and how many updates were stored."""
        if event.type in CUSTOMER_EVENTS:
            return await self._customer(event)
        if event.type in SUBSCRIPTION_EVENTS:
            return await self._subscription(event, raw)
        WEBHOOK_EVENTS.labels(source="stripe", outcome="ignored").inc()
        return "ignored", 0

    async def _customer(self, event: StripeEvent) -> tuple[str, int]:
        customer = event.data.object
        company_id = self.company_of(customer)
        refusal = company_id_refusal(customer, key=self.metadata_key)
        if refusal is not None:
            # The customer names its company, but an id no store or Userpilot takes: not
            # replaced by the customer id, which would be another company.
            WEBHOOK_EVENTS.labels(source="stripe", outcome="invalid_event").inc()
            log.warning(
                "stripe customer's company id is unusable: the event is skipped",
                extra={
                    "event_id": event.id,
                    "customer_id": customer_id_of(event),
                    "metadata_key": self.metadata_key,
                    "problem": f"the company id {refusal}",
                },
            )
            return "invalid_event", 0
        if company_id is None:
            WEBHOOK_EVENTS.labels(source="stripe", outcome="no_company").inc()
            log.info(
                "stripe customer without a company id skipped",
                extra={"event_id": event.id, "customer_id": customer_id_of(event)},
            )
            return "no_company", 0
        await self.store.webhooks.link_customers([(customer_id_of(event), company_id)])
        for poke in self.on_change:
            poke()
        return await self._commit(self.plan_customer(event, company_id))

    async def _subscription(self, event: StripeEvent, raw: bytes) -> tuple[str, int]:
        customer_id = customer_id_of(event)
        company_id = await self.store.webhooks.company_for_customer(customer_id)
        expanded = event.data.object.get("customer")
        if company_id is None and isinstance(expanded, dict) and "metadata" in expanded:
            company_id = self.company_of(expanded)
        if company_id is None:
            await self.store.webhooks.park(
                source="stripe", key=event.id, payload=raw, reason="unknown_customer"
            )
            WEBHOOK_EVENTS.labels(source="stripe", outcome="unresolved").inc()
            log.info(
                "stripe subscription event waits for its customer's company",
                extra={"event_id": event.id, "customer_id": customer_id, "type": event.type},
            )
            for poke in self.on_change:
                poke()
            return "unresolved", 0
        return await self._commit(self.plan_subscription(event, company_id))

    async def _commit(self, plan: EventPlan, *, resolved: bool = False) -> tuple[str, int]:
        result = await commit_events(
            self.store, [plan], source="stripe", resolved=resolved, quality=self.quality
        )
        stored = result.ids[0] if result.ids else None
        if plan.update is not None and stored is None:
            return "skipped", 0
        return plan.outcome, result.stored

    async def forward_resolved(self, event: StripeEvent, company_id: str) -> tuple[str, int]:
        """Store a parked subscription event now that its company is known."""
        return await self._commit(self.plan_subscription(event, company_id), resolved=True)
