"""The one ingest service: every front door's updates are reviewed, stored, counted and
catalogued here.

The doors only parse and answer: `POST /companies` and `POST /companies/bulk` (`store_api`),
the HubSpot and Stripe webhooks (`commit_events`), the backfills (`review_record`,
`commit_page`). Review is one code path, `review_update` (the company id, then
`app/domain/quality.py`'s schema, type drift, PII guard and value limits); where the doors
differ on purpose, they say so by their `Door`: the API refuses (a 422 naming every field, type
drift checked), webhooks and backfills never refuse (what does not fit is stripped, dropped and
counted). What became of each webhook event is documented in docs/webhooks.md, the metrics in
docs/metrics.md. Below the routes and the sources: never imports them, nor the delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from app.domain.errors import CompanyErased, RelayError
from app.domain.models import EnqueueResult, Idempotency, Metadata, NewUpdate
from app.domain.pii import PiiKind
from app.domain.quality import (
    PII_LABELS,
    PiiAction,
    Reviewed,
    Rules,
    all_plain,
    company_pii,
    pii_problem,
    plain,
    review,
)
from app.domain.values import SeenType
from app.errors import FieldError, field_path
from app.metrics import (
    PII_FINDINGS,
    SUPPRESSED_UPDATES,
    TYPE_DRIFT_REJECTIONS,
    UPDATES_ACCEPTED,
    VALUES_TOO_LONG,
    WEBHOOK_EVENTS,
    WEBHOOK_UNMAPPED_FIELDS,
)
from app.store.backfills import Page, PageOutcome
from app.store.store import Store

log = logging.getLogger("userpilot_relay.webhooks")

Companies = list[tuple[str, Metadata]]
Source = Literal["hubspot", "stripe"]
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
    "suppressed",
]

MAX_ERRORS = 1000  # fields named at most in one 422
# Seconds an event's time may run ahead of the relay's clock (the providers' own signature
# tolerance); further ahead, the clock that dated it is wrong and the relay's is taken.
MAX_AHEAD = 300.0


# The doors' policies -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Door:
    """How a front door treats what does not fit: `refuse` (the API: a 422, nothing stored,
    type drift checked) or strip, drop and count (webhooks, backfills: never refused)."""

    refuse: bool


API = Door(refuse=True)
SOURCE = Door(refuse=False)


@dataclass(slots=True)
class Findings:
    """What the review saw, counted when the door says (once a request's or a page's fate is
    known): personal data by kind and action, values refused for drift, values too long."""

    pii: dict[tuple[PiiKind, PiiAction], int] = field(default_factory=dict)
    drifted: int = 0
    too_long: int = 0

    def saw(self, found: Iterable[tuple[PiiKind, PiiAction]]) -> None:
        for key in found:
            self.pii[key] = self.pii.get(key, 0) + 1

    def count(self, source: str | None = None) -> None:
        for (kind, action), n in self.pii.items():
            PII_FINDINGS.labels(kind=PII_LABELS[kind], action=action).inc(n)
        if self.drifted:
            TYPE_DRIFT_REJECTIONS.inc(self.drifted)
        if self.too_long and source is not None:
            VALUES_TOO_LONG.labels(source=source).inc(self.too_long)
        self.pii.clear()
        self.drifted = self.too_long = 0


@dataclass(slots=True)
class Verdict:
    """One update as its door's policy makes it: `company` is why its company id cannot be
    stored (personal data: it cannot be stripped), `reviewed` its metadata through the rules."""

    company: str | None
    reviewed: Reviewed


def review_update(
    company_id: str | None,
    metadata: Metadata,
    rules: Rules,
    first_types: Mapping[str, SeenType],
    *,
    door: Door,
    findings: Findings,
) -> Verdict:
    """The one review of one update, every door's (see the module)."""
    company = None
    kind = company_pii(company_id, rules) if company_id is not None else None
    if kind is not None:
        findings.saw([(kind, "rejected")])
        company = pii_problem(kind)
        if not door.refuse:  # a source skips the record: nothing of it is reviewed
            return Verdict(company, Reviewed(metadata=metadata))
    if rules.inert or not metadata:
        return Verdict(company, Reviewed(metadata=metadata))
    reviewed = review(metadata, rules, first_types, refuse=door.refuse)
    findings.saw(reviewed.pii)
    findings.drifted += reviewed.drifted
    findings.too_long += reviewed.too_long
    return Verdict(company, reviewed)


# The API's door ------------------------------------------------------------------------------
def review_api(
    companies: Companies,
    rules: Rules,
    first_types: Mapping[str, SeenType],
    *,
    bulk: bool,
) -> Companies:
    """The companies as the rules make them, or a 422 naming every field that does not fit
    (`companies[i]....` in bulk); what the guard saw is counted either way."""
    if rules.inert:
        return companies
    # Only the PII guard to apply: most updates pass its cheap tests and are kept as they are.
    guard_only = rules.schema is None and (rules.drift == "warn" or not first_types)
    if guard_only and all_plain(companies):
        return companies
    out: Companies = []
    errors: list[FieldError] = []
    findings = Findings()

    def problem(loc: tuple[str | int, ...], message: str) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(FieldError(field=field_path(loc), message=message))

    for index, (company_id, metadata) in enumerate(companies):
        prefix: tuple[str | int, ...] = ("companies", index) if bulk else ()
        if guard_only and plain(metadata):
            verdict = review_update(company_id, {}, rules, first_types, door=API, findings=findings)
            verdict.reviewed.metadata = metadata
        else:
            verdict = review_update(
                company_id, metadata, rules, first_types, door=API, findings=findings
            )
        reviewed = verdict.reviewed
        if verdict.company is not None:
            problem((*prefix, "company_id"), verdict.company)
        for position, why in reviewed.name_problems:
            problem((*prefix, "metadata"), f"{why} (property #{position})")
        for key, why in reviewed.problems:
            problem((*prefix, "metadata", key), why)
        out.append((company_id, reviewed.metadata))
    findings.count()
    if errors:
        first = f"{errors[0].field}: {errors[0].message}"
        more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
        raise RelayError(422, "invalid_payload", f"invalid payload: {first}{more}", errors=errors)
    return out


async def store_api(
    store: Store,
    companies: Companies,
    *,
    caller: str,
    bulk: bool,
    idempotency: Idempotency | None,
    sourced: frozenset[str],
    realtime_only: bool = False,
) -> EnqueueResult:
    """Store reviewed API updates (one, or a bulk batch) in one commit, then count and
    catalogue them unless the request was a replay of an earlier one (`Idempotency-Key`).
    An erased company's update is not stored: `CompanyErased` (409) for one, its index in
    `suppressed` in bulk.

    A property a source mapping can also write (`sourced`) takes the acceptance as its source
    time (`NewUpdate.stamp_times`)."""
    source = "bulk" if bulk else "api"
    result = await store.deliveries.enqueue(
        [
            NewUpdate(
                company_id=company_id,
                metadata=metadata,
                realtime_only=realtime_only,
                stamp_times=tuple(key for key in metadata if key in sourced),
            )
            for company_id, metadata in companies
        ],
        source=source,
        caller=caller,
        batch=bulk,
        idempotency=idempotency,
    )
    if result.suppressed:
        SUPPRESSED_UPDATES.labels(source=source).inc(len(result.suppressed))
        if not bulk:
            raise CompanyErased()
    if not result.replayed:
        UPDATES_ACCEPTED.labels(source=source).inc(result.stored)
        kept = [m for i, (_, m) in enumerate(companies) if i not in result.suppressed]
        if bulk:  # off the event loop: a type per value of up to 10,000 companies
            await asyncio.to_thread(store.catalogue.record, kept, source=source, caller=caller)
        else:
            store.catalogue.record(kept, source=source, caller=caller)
    return result


# The webhooks' door --------------------------------------------------------------------------
@dataclass(slots=True)
class EventPlan:
    """What one webhook event becomes before it is stored: an update (or none) and how it went
    (its `Outcome`, docs/webhooks.md)."""

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


def review_events(
    plans: Sequence[EventPlan], rules: Rules, first_types: Mapping[str, SeenType]
) -> Findings:
    """Each planned update through `review_update`, never refusing the event: a company id
    that is personal data skips it (`invalid_event`), a value that does not fit is dropped
    (`invalid_value`), personal data is stripped. Answers what was seen, not yet counted."""
    findings = Findings()
    for plan in plans:
        if plan.update is None:
            continue
        verdict = review_update(
            plan.update.company_id,
            plan.update.metadata,
            rules,
            first_types,
            door=SOURCE,
            findings=findings,
        )
        if verdict.company is not None:
            plan.update, plan.outcome = None, "invalid_event"
            plan.company_id = None  # never logged
            plan.problem = f"the company id {verdict.company}"
            continue
        reviewed = verdict.reviewed
        plan.pii_stripped += reviewed.stripped
        plan.too_long += reviewed.too_long
        if reviewed.problems:
            plan.invalid_fields += [key for key, _ in reviewed.problems]
            if plan.outcome == "forwarded":
                plan.outcome = "invalid_value"
        if reviewed.metadata != plan.update.metadata:
            plan.update = replace(plan.update, metadata=reviewed.metadata)
    return findings


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


async def commit_events(
    store: Store,
    plans: Sequence[EventPlan],
    *,
    source: Source,
    resolved: bool = False,
    quality: Rules,
) -> EnqueueResult:
    """Review every planned update, store them in one transaction, count what became of each
    event and catalogue what was stored.

    Raises `StoreUnavailable` (nothing stored, nothing counted) when the store is down.
    """
    findings = review_events(plans, quality, store.catalogue.first_types())
    now = time.time()
    updates = [clamped(p.update, now) for p in plans if p.update is not None]
    result = (
        await store.deliveries.enqueue(updates, source=source, caller=None)
        if updates
        else EnqueueResult(ids=[])
    )
    findings.count()  # values too long: per event below, with the rest of its outcome
    stored = iter(enumerate(result.ids))
    kept: list[Metadata] = []
    unmapped = 0
    for plan in plans:
        outcome = plan.outcome
        index, stored_id = next(stored) if plan.update is not None else (-1, None)
        if stored_id is not None and plan.update is not None:
            kept.append(plan.update.metadata)
        if index in result.suppressed:
            outcome = "suppressed"  # an erased company: dropped, never refused
        elif plan.update is not None and stored_id is None and outcome != "invalid_value":
            outcome = "older" if index in result.older else "skipped"
        elif resolved and outcome == "forwarded":
            outcome = "resolved"  # as many as were counted `unresolved`
        elif index in result.older and outcome == "forwarded":
            outcome = "older"
        WEBHOOK_EVENTS.labels(source=source, outcome=outcome).inc()
        unmapped += plan.unmapped
        if plan.too_long:
            VALUES_TOO_LONG.labels(source=source).inc(plan.too_long)
        _log_event(plan, source)
    if result.suppressed:
        SUPPRESSED_UPDATES.labels(source=source).inc(len(result.suppressed))
    if unmapped:
        WEBHOOK_UNMAPPED_FIELDS.labels(source=source).inc(unmapped)
    if result.stored:
        UPDATES_ACCEPTED.labels(source=source).inc(result.stored)
        store.catalogue.record(kept, source=source, caller=source)
    return result


def _log_event(plan: EventPlan, source: Source) -> None:
    """One warning for each thing of an event that was skipped, stripped or dropped."""
    about = {"source": source, "event_id": plan.event_id, "event_type": plan.event_type}
    if plan.problem is not None:
        log.warning(
            "webhook event skipped: it cannot be stored as given",
            extra={**about, "problem": plan.problem},
        )
    if plan.pii_stripped:
        log.warning(
            "webhook values that look like personal data were stripped",
            extra={**about, "company_id": plan.company_id, "fields": plan.pii_stripped},
        )
    if plan.invalid_fields:
        log.warning(
            "webhook values did not convert to their mapped or declared type and were dropped",
            extra={**about, "company_id": plan.company_id, "fields": plan.invalid_fields},
        )


# The backfills' door -------------------------------------------------------------------------
def company_refusal(company_id: str, rules: Rules) -> str | None:
    """Why a backfilled record's company id cannot be sent while the PII guard is on (it is
    personal data, and cannot be stripped), counted as a rejected finding; None when it can."""
    findings = Findings()
    verdict = review_update(company_id, {}, rules, {}, door=SOURCE, findings=findings)
    findings.count()
    return None if verdict.company is None else f"the company id {verdict.company}"


def review_record(
    metadata: Metadata,
    rules: Rules,
    first_types: Mapping[str, SeenType],
    *,
    source: str,
) -> tuple[Metadata, list[str]]:
    """A mapped record's metadata as a webhook event's goes (never refused: a value that does
    not fit its declared type dropped, personal data stripped, a value too long dropped), and
    the properties dropped; what was seen is counted at once."""
    findings = Findings()
    verdict = review_update(None, metadata, rules, first_types, door=SOURCE, findings=findings)
    findings.count(source)
    reviewed = verdict.reviewed
    return dict(reviewed.metadata), [key for key, _ in reviewed.problems]


async def commit_page(
    store: Store, backfill_id: str, *, owner: str, page: Page, lease: float, source: str
) -> PageOutcome:
    """Store one backfill page (updates, source times, cursor and counts in one transaction),
    then count and catalogue what it enqueued and wake the dispatcher."""
    outcome = await store.backfills.commit_page(backfill_id, owner=owner, page=page, lease=lease)
    if outcome.suppressed:
        SUPPRESSED_UPDATES.labels(source="backfill").inc(outcome.suppressed)
    if outcome.enqueued:
        UPDATES_ACCEPTED.labels(source=source).inc(outcome.enqueued)
        store.signals.work_arrived()
        # The catalogue counts the values read (a value older than a webhook's included).
        store.catalogue.record((r.metadata for r in page.records), source=source, caller=source)
    return outcome


# A source deleting a company (RELAY_ERASE_ON_SOURCE_DELETE) ----------------------------------
async def erase_deleted(store: Store, company_ids: Sequence[str], *, source: str) -> str | None:
    """Start an erasure of the companies a source deleted (those not suppressed already), with
    the reason "source deleted"; answers its id, None when there was nothing to erase."""
    fresh = [c for c in dict.fromkeys(company_ids) if await store.erasures.suppression(c) is None]
    if not fresh:
        return None
    erasure = await store.erasures.create(fresh, reason="source deleted", by=source)
    log.info(
        "a source deleted companies: erasure started",
        extra={"source": source, "erasure_id": erasure.id, "companies": erasure.companies},
    )
    return erasure.id
