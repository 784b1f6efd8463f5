"""What both sources share: the malformed-body error, an event's plan, the commit, the answer.

Outcomes label `userpilot_relay_webhook_events_total{source,outcome}`:
- `forwarded`: stored for delivery;
- `skipped`: a redelivery, so nothing new was stored;
- `older`: some or all of its values were older than values already applied to those company
  properties: those were not stored (the rest were; a parked Stripe event stored at last
  counts `resolved`). An event time more than `MAX_AHEAD` seconds ahead of the relay's clock
  (a wrong clock) counts as the relay's clock, so it never holds back later changes;
- `ignored`: an event type the relay does not forward (deletions, merges, associations...);
- `unmapped`: a HubSpot property change of a property no mapping names;
- `invalid_value`: a value did not convert to its mapped or declared type: it was dropped and
  logged, the event's other fields were forwarded (personal data stripped by the PII guard is
  counted in `userpilot_relay_pii_findings_total`, not here; a string value over 65,535
  characters also in `userpilot_relay_values_too_long_total`);
- `invalid_event`: an event whose company id, identity or property name cannot be stored as
  given (an `objectId` that is not an id, a blank or over-long company id, control characters,
  a company id that is personal data while the PII guard is on): skipped and logged, the other
  events of its batch were stored;
- `unresolved`: a Stripe subscription event whose company is not known yet: kept and retried;
- `resolved`: such an event, later forwarded once its company became known;
- `no_company`: a Stripe customer without a company id, skipped as configured.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from app.domain.models import EnqueueResult, Metadata, NewUpdate
from app.domain.pii import PiiKind
from app.domain.quality import PII_LABELS, PiiAction, Rules, company_pii, pii_problem, review
from app.domain.values import SeenType
from app.metrics import (
    PII_FINDINGS,
    UPDATES_ACCEPTED,
    VALUES_TOO_LONG,
    WEBHOOK_EVENTS,
    WEBHOOK_UNMAPPED_FIELDS,
)
from app.store.store import Store

Outcome = Literal[
    "forwarded",
    "skipped",
    "older",
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

# Seconds an event's time may run ahead of the relay's clock (the providers' own signature
# tolerance); further ahead, the clock that dated it is wrong and the relay's is taken.
MAX_AHEAD = 300.0


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
    pii_stripped: list[str] = field(default_factory=list)  # properties removed as personal data
    problem: str | None = None  # why an `invalid_event` was skipped
    too_long: int = 0  # values dropped for their length


def reviewed(
    plans: Sequence[EventPlan], quality: Rules, first_types: Mapping[str, SeenType]
) -> Counter[tuple[PiiKind, PiiAction]]:
    """Each planned update through the data-quality rules (`app/domain/quality.py`), never
    refusing the event: a value that does not fit its declared type is dropped and counted as
    an invalid value; personal data is stripped unless RELAY_PII_POLICY is `allow` or the
    property is cleared. Answers what the PII guard found."""
    found: Counter[tuple[PiiKind, PiiAction]] = Counter()
    for plan in plans:
        if plan.update is None:
            continue
        kind = company_pii(plan.update.company_id, quality)
        if kind is not None:  # it cannot be stripped: the event is skipped
            found[(kind, "rejected")] += 1
            plan.update, plan.outcome = None, "invalid_event"
            plan.company_id = None  # never logged
            plan.problem = f"the company id {pii_problem(kind)}"
            continue
        if quality.inert or not plan.update.metadata:
            continue
        reviewed = review(plan.update.metadata, quality, first_types, refuse=False)
        found.update(reviewed.pii)
        plan.pii_stripped += reviewed.stripped
        plan.too_long += reviewed.too_long
        if reviewed.problems:
            plan.invalid_fields += [key for key, _ in reviewed.problems]
            if plan.outcome == "forwarded":
                plan.outcome = "invalid_value"
        if reviewed.metadata != plan.update.metadata:
            plan.update = replace(plan.update, metadata=reviewed.metadata)
    return found


def clamped(update: NewUpdate, now: float) -> NewUpdate:
    """The update with every source time more than `MAX_AHEAD` ahead of the relay's clock set
    to `now`: an event dated in the future never holds back later changes. Times within it
    are kept, so events of a provider whose clock runs a little ahead still keep their order."""
    times = update.property_times
    latest = now + MAX_AHEAD
    if not times or all(at <= latest for at in times.values()):
        return update
    return replace(
        update, property_times={k: now if at > latest else at for k, at in times.items()}
    )


async def commit(
    store: Store,
    plans: Sequence[EventPlan],
    *,
    source: Source,
    resolved: bool = False,
    quality: Rules,
) -> EnqueueResult:
    """Store every planned update in one transaction and count what became of each event.

    Raises `StoreUnavailable` (nothing stored, nothing counted) when the store is down.
    """
    found = reviewed(plans, quality, store.catalogue.first_types())
    now = time.time()
    updates = [clamped(p.update, now) for p in plans if p.update is not None]
    result = (
        await store.deliveries.enqueue(updates, source=source, caller=None)
        if updates
        else EnqueueResult(ids=[])
    )
    stored = iter(enumerate(result.ids))
    kept: list[Metadata] = []
    unmapped = 0
    for (kind, action), n in found.items():
        PII_FINDINGS.labels(kind=PII_LABELS[kind], action=action).inc(n)
    for plan in plans:
        outcome = plan.outcome
        index, stored_id = next(stored) if plan.update is not None else (-1, None)
        if stored_id is not None and plan.update is not None:
            kept.append(plan.update.metadata)
        if plan.update is not None and stored_id is None and outcome != "invalid_value":
            outcome = "older" if index in result.older else "skipped"
        elif resolved and outcome == "forwarded":
            outcome = "resolved"  # as many as were counted `unresolved`
        elif index in result.older and outcome == "forwarded":
            outcome = "older"
        WEBHOOK_EVENTS.labels(source=source, outcome=outcome).inc()
        unmapped += plan.unmapped
        if plan.too_long:
            VALUES_TOO_LONG.labels(source=source).inc(plan.too_long)
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
        if plan.pii_stripped:
            log.warning(
                "webhook values that look like personal data were stripped",
                extra={
                    "source": source,
                    "event_id": plan.event_id,
                    "event_type": plan.event_type,
                    "company_id": plan.company_id,
                    "fields": plan.pii_stripped,
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
        store.catalogue.record(kept, source=source, caller=source)
    return result
