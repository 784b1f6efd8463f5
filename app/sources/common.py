"""What both sources share: the malformed-body error, an event's plan, the commit, the answer.

Outcomes label `userpilot_relay_webhook_events_total{source,outcome}`:
- `forwarded`: stored for delivery;
- `skipped`: a redelivery, or older than what was already applied, so nothing new was stored;
- `ignored`: an event type the relay does not forward (deletions, merges, associations...);
- `unmapped`: a HubSpot property change of a property no mapping names;
- `invalid_value`: a value did not convert to its mapped type: it was dropped and logged, the
  event's other fields were forwarded;
- `invalid_event`: an event whose company id, identity or property name cannot be stored as
  given (an `objectId` that is not an id, a blank or over-long company id, control characters):
  skipped and logged, the other events of its batch were stored;
- `unresolved`: a Stripe subscription event whose company is not known yet: kept and retried;
- `resolved`: such an event, later forwarded once its company became known;
- `no_company`: a Stripe customer without a company id, skipped as configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from app.domain.models import EnqueueResult, NewUpdate
from app.domain.schema import PropertySchema, check
from app.metrics import UPDATES_ACCEPTED, WEBHOOK_EVENTS, WEBHOOK_UNMAPPED_FIELDS
from app.store.base import Store

Outcome = Literal[
    "forwarded",
    "skipped",
    "ignored",
    "unmapped",
    "invalid_value",
    "invalid_event",
    "unresolved",
    "resolved",
    "no_company",
]
Source = Literal["hubspot", "stripe"]

log = logging.getLogger("userpilot_relay.webhooks")


class Malformed(Exception):
    """A verified body that is not what the provider documents; `errors` are (field, message)."""

    def __init__(self, message: str, errors: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)


def load_json(body: bytes) -> Any:
    """A verified body parsed, or `Malformed` saying it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not valid JSON ({exc})") from None


@dataclass(frozen=True, slots=True)
class Ack:
    """What one webhook request became: the events it held and the updates stored from them."""

    received: int
    accepted: int


@dataclass(slots=True)
class EventPlan:
    """What one event becomes before it is stored: an update (or none) and how it went."""

    event_id: str
    event_type: str
    company_id: str | None = None
    update: NewUpdate | None = None
    outcome: Outcome = "forwarded"
    unmapped: int = 0
    invalid_fields: list[str] = field(default_factory=list)
    problem: str | None = None  # why an `invalid_event` was skipped


def declared(plans: Sequence[EventPlan], schema: PropertySchema | None) -> None:
    """Each planned update in the declared property types (`RELAY_PROPERTY_SCHEMA_FILE`): a
    value that does not convert is dropped and counted as an invalid value, never refusing the
    event."""
    if schema is None:
        return
    for plan in plans:
        if plan.update is None or not plan.update.metadata:
            continue
        checked = check(schema, plan.update.metadata)
        if checked.problems:
            plan.invalid_fields += [key for key, _ in checked.problems]
            if plan.outcome == "forwarded":
                plan.outcome = "invalid_value"
        if checked.metadata != plan.update.metadata:
            plan.update = replace(plan.update, metadata=checked.metadata)


async def commit(
    store: Store,
    plans: Sequence[EventPlan],
    *,
    source: Source,
    resolved: bool = False,
    schema: PropertySchema | None = None,
) -> EnqueueResult:
    """Store every planned update in one transaction and count what became of each event.

    Raises `StoreUnavailable` (nothing stored, nothing counted) when the store is down.
    """
    declared(plans, schema)
    updates = [p.update for p in plans if p.update is not None]
    result = (
        await store.enqueue(updates, source=source, caller=None)
        if updates
        else EnqueueResult(ids=[])
    )
    stored = iter(result.ids)
    unmapped = 0
    for plan in plans:
        outcome = plan.outcome
        if plan.update is not None and next(stored) is None and outcome != "invalid_value":
            outcome = "skipped"
        elif resolved and outcome == "forwarded":
            outcome = "resolved"
        WEBHOOK_EVENTS.labels(source=source, outcome=outcome).inc()
        unmapped += plan.unmapped
        if plan.problem is not None:
            log.warning(
                "webhook event skipped: it cannot be stored as given",
                extra={
                    "source": source,
                    "event_id": plan.event_id,
                    "event_type": plan.event_type,
                    "problem": plan.problem,
                },
            )
        if plan.invalid_fields:
            log.warning(
                "webhook values did not convert to their mapped or declared type and were dropped",
                extra={
                    "source": source,
                    "event_id": plan.event_id,
                    "event_type": plan.event_type,
                    "company_id": plan.company_id,
                    "fields": plan.invalid_fields,
                },
            )
    if unmapped:
        WEBHOOK_UNMAPPED_FIELDS.labels(source=source).inc(unmapped)
    if result.stored:
        UPDATES_ACCEPTED.labels(source=source).inc(result.stored)
    return result
