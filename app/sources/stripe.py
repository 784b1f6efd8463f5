"""Stripe events: customers and subscriptions turned into company updates.

The company id is a key of the customer's `metadata` (default `company_id`); a customer
without it stands for the company whose id is the Stripe customer id, or is skipped, as
configured. Customer events teach the relay which company a customer stands for; subscription
events find their company through that link or, with `STRIPE_API_KEY`, through Stripe's API.
A subscription event whose company is not known yet is parked in the store and retried by
`StripeResolver`: never dropped, never sent under a guessed id.

Subscriptions give `plan` (the prices' nicknames), `status`, `mrr`, `currency`,
`current_period_end` and `trial_end`. `mrr` sums every item's unit amount times quantity,
normalised to a month (year / 12, week * 52 / 12, day * 365 / 12, divided by the interval
count), in major currency units, before discounts; it is 0 unless the subscription is
`active` or `past_due` (Stripe's own definition: trials and cancelled subscriptions bring no
revenue). A price without a unit amount (tiered, metered) makes it unknown: reported, not sent;
so does an amount no real price has (`1e999999`, beyond 10^15 minor units): never a 500.

An event id, a customer id or a company id that a store could not hold as given (control
characters such as NUL, blank, too long) never reaches the store: the event is refused (400)
or, for a customer's company id, the customer is skipped (`invalid_event`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from app import __version__
from app.domain.models import NewUpdate, Primitive
from app.domain.rules import company_id_problem, has_control
from app.lifecycle import cancel_and_wait
from app.metrics import WEBHOOK_EVENTS
from app.sources.common import EventPlan, Malformed, commit
from app.sources.mapping import FieldRule, SourceMapping, apply, flatten
from app.store.base import Store

log = logging.getLogger("userpilot_relay.webhooks.stripe")

CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated"})
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
MissingCompany = Literal["customer_id", "skip"]

# Always sent, null included: the subscription's state as of the event.
_SUBSCRIPTION_ALWAYS = frozenset(
    {"plan", "status", "mrr", "currency", "current_period_end", "trial_end"}
)
_REVENUE_STATUSES = frozenset({"active", "past_due"})
_PER_MONTH = {
    "day": Decimal(365) / Decimal(12),
    "week": Decimal(52) / Decimal(12),
    "month": Decimal(1),
    "year": Decimal(1) / Decimal(12),
}
# ISO 4217 currencies Stripe counts in whole units, or in thousandths.
_ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
# Stripe amounts are at most 12 digits (unit_amount_decimal: 12 decimals more); anything at or
# beyond 10^15 minor units is no price, and Decimal arithmetic on it could overflow.
_MAX_UNIT_EXPONENT = 15
# A decimal string in ASCII (Decimal() would also read other scripts' digits, NaN, Infinity).
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_PARKED_BATCH = 500
_API_TIMEOUT = 10.0


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(BaseModel):
    """A Stripe event (`object: "event"`); fields the relay does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr = Field(min_length=1, max_length=255)
    type: StrictStr = Field(min_length=1, max_length=255)
    created: StrictInt = Field(ge=0)
    data: StripeEventData

    @field_validator("id")
    @classmethod
    def _storable_id(cls, value: str) -> str:
        # The id is the deduplication key: PostgreSQL text cannot hold NUL.
        if not value.strip() or has_control(value):
            raise ValueError("must not be blank nor hold control characters (NUL, newline...)")
        return value


def parse_event(body: bytes) -> StripeEvent:
    """The event of a verified body, or `Malformed` naming what is wrong."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Malformed("the body must be a JSON object (a Stripe event)")
    try:
        event = StripeEvent.model_validate(data)
    except ValidationError as exc:
        errors = [
            (".".join(str(p) for p in e["loc"]) or "body", str(e["msg"]))
            for e in exc.errors(include_url=False)
        ]
        shown = "; ".join(f"{f}: {m}" for f, m in errors[:3])
        raise Malformed(f"invalid event: {shown}", errors) from None
    if event.type in CUSTOMER_EVENTS | SUBSCRIPTION_EVENTS:
        customer_id_of(event)  # both need a customer: refuse the event now rather than later
    return event


def customer_id_of(event: StripeEvent) -> str:
    """The Stripe customer id a customer or subscription event is about."""
    obj = event.data.object
    value = obj.get("id") if event.type in CUSTOMER_EVENTS else obj.get("customer")
    if isinstance(value, dict):
        value = value.get("id")
    field = "data.object.id" if event.type in CUSTOMER_EVENTS else "data.object.customer"
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"{field} must be a Stripe customer id", [(field, "is required")])
    # Stored (customer links, and the company id of a customer without one): same rules.
    problem = company_id_problem(value)
    if problem is not None:
        raise Malformed(f"{field} must be a Stripe customer id: it {problem}", [(field, problem)])
    return value


def company_id_refusal(customer: Mapping[str, Any], *, key: str) -> str | None:
    """Why the company id in the customer's metadata cannot be used, or None (also when absent)."""
    metadata = customer.get("metadata")
    value = metadata.get(key) if isinstance(metadata, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    return company_id_problem(value.strip())


def company_from_customer(
    customer: Mapping[str, Any], *, key: str, missing: MissingCompany
) -> str | None:
    """The company a customer stands for: its metadata key, else per `missing`."""
    metadata = customer.get("metadata")
    if isinstance(metadata, dict):
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            # As on POST /companies: at most 255 characters, no control character (NUL...); an
            # unusable id is refused rather than cut, cleaned or replaced by a guess.
            return value.strip() if company_id_problem(value.strip()) is None else None
    customer_id = customer.get("id")
    if (
        missing == "customer_id"
        and isinstance(customer_id, str)
        and company_id_problem(customer_id) is None
    ):
        return customer_id
    return None


# subscriptions --------------------------------------------------------------------------------
class UnknownAmount(ValueError):
    """An item's price has no fixed unit amount, so its monthly revenue is unknown."""


def _decimals(currency: str | None) -> int:
    code = (currency or "").lower()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def _item_monthly_minor(item: Mapping[str, Any]) -> Decimal:
    price = item.get("price") if isinstance(item.get("price"), dict) else item.get("plan")
    if not isinstance(price, dict):
        raise UnknownAmount("an item has no price")
    nested = price.get("recurring")
    recurring: dict[str, Any] = nested if isinstance(nested, dict) else price
    interval = recurring.get("interval")
    count = recurring.get("interval_count") or 1
    if interval not in _PER_MONTH or type(count) is not int or count < 1:
        raise UnknownAmount("an item's price has no recurring interval")
    if recurring.get("usage_type") == "metered":
        raise UnknownAmount("an item's price is metered")
    amount: Any = price.get("unit_amount")
    if amount is None:
        amount = price.get("unit_amount_decimal") or price.get("amount")
    unit = _amount(amount)
    if unit is None:
        raise UnknownAmount("an item's price has no unit amount (tiered pricing?)")
    quantity = item.get("quantity")
    quantity = 1 if quantity is None else quantity
    if type(quantity) is not int or quantity < 0:
        raise UnknownAmount("an item has no valid quantity")
    return unit * quantity * _PER_MONTH[interval] / count


def _amount(value: Any) -> Decimal | None:
    """A price's amount in minor units: a finite number below 10^15, else None."""
    if type(value) is int or type(value) is float:
        text = repr(value)
    elif type(value) is str and len(value) <= 64 and _DECIMAL.fullmatch(value.strip()):
        text = value.strip()
    else:
        return None
    try:
        unit = Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation
        return None
    if not unit.is_finite() or (unit and unit.adjusted() >= _MAX_UNIT_EXPONENT):
        return None
    return unit


def _items(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = subscription.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []


def monthly_recurring_revenue(subscription: Mapping[str, Any]) -> float:
    """MRR in major currency units; raises `UnknownAmount` when an item's amount is unknown."""
    if subscription.get("status") not in _REVENUE_STATUSES:
        return 0.0
    currency = subscription.get("currency")
    if not isinstance(currency, str):
        price = next((i.get("price") for i in _items(subscription)), None)
        currency = price.get("currency") if isinstance(price, dict) else None
    decimals = _decimals(currency if isinstance(currency, str) else None)
    try:
        minor = sum((_item_monthly_minor(i) for i in _items(subscription)), Decimal(0))
        major = float(round(minor / (Decimal(10) ** decimals), max(decimals, 2)))
    except ArithmeticError:  # a sum beyond Decimal's precision or float's range
        raise UnknownAmount("the subscription's amounts are out of range") from None
    if not math.isfinite(major):
        raise UnknownAmount("the subscription's amounts are out of range")
    return major


def plan_name(subscription: Mapping[str, Any]) -> str | None:
    """The names of the subscription's prices (nickname, product name, lookup key or id)."""
    names: list[str] = []
    for item in _items(subscription):
        price = item.get("price") if isinstance(item.get("price"), dict) else item.get("plan")
        if not isinstance(price, dict):
            continue
        product = price.get("product")
        candidates = (
            price.get("nickname"),
            product.get("name") if isinstance(product, dict) else None,
            price.get("lookup_key"),
            price.get("id"),
        )
        name = next((c for c in candidates if isinstance(c, str) and c.strip()), None)
        if name is not None and name not in names:
            names.append(name)
    return ", ".join(names) or None


def subscription_record(subscription: Mapping[str, Any]) -> tuple[dict[str, Primitive], list[str]]:
    """The subscription's fields (dotted paths) plus the computed ones; and what is unknown."""
    record = flatten(subscription)
    record.pop("object", None)
    unknown: list[str] = []
    record["plan"] = plan_name(subscription)
    try:
        record["mrr"] = monthly_recurring_revenue(subscription)
    except UnknownAmount:
        record.pop("mrr", None)
        unknown.append("mrr")
    if record.get("current_period_end") is None:
        # Newer API versions keep the period on each item.
        ends = [
            i["current_period_end"]
            for i in _items(subscription)
            if type(i.get("current_period_end")) is int
        ]
        record["current_period_end"] = max(ends) if ends else None
    return record, unknown


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


class StripeApiError(Exception):
    """Stripe's API did not answer usefully (network, 5xx, 401...): try again later."""


class StripeApi:
    """The one call the relay makes to Stripe: read a customer it has not seen."""

    def __init__(self, *, base_url: str, api_key: str, timeout: float = _API_TIMEOUT) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"userpilot-relay/{__version__}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            follow_redirects=False,
        )

    async def customer(self, *, customer_id: str) -> dict[str, Any] | None:
        """The customer object; None when Stripe does not know it or it was deleted."""
        try:
            response = await self._http.get(f"/v1/customers/{quote(customer_id, safe='')}")
        except httpx.HTTPError as exc:
            raise StripeApiError(f"{type(exc).__name__}: {exc}"[:300]) from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise StripeApiError(f"Stripe answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise StripeApiError("Stripe answered something other than JSON") from None
        if not isinstance(body, dict) or body.get("deleted") is True:
            return None
        return body

    async def aclose(self) -> None:
        await self._http.aclose()


class StripeProcessor:
    """Turns verified Stripe events into stored company updates."""

    def __init__(
        self,
        *,
        store: Store,
        mapping: SourceMapping,
        metadata_key: str,
        missing: MissingCompany,
    ) -> None:
        self.store = store
        self.customer_rules = mapping.section("customer")
        self.subscription_rules = mapping.section("subscription")
        self.metadata_key = metadata_key
        self.missing: MissingCompany = missing
        # Called when parked events may now resolve (a customer linked, an event parked).
        self.on_change: list[Callable[[], None]] = []

    def company_of(self, customer: Mapping[str, Any]) -> str | None:
        return company_from_customer(customer, key=self.metadata_key, missing=self.missing)

    def plan_customer(self, event: StripeEvent, company_id: str) -> EventPlan:
        customer = event.data.object
        record = flatten(customer)
        record.pop("object", None)
        record.pop(f"metadata.{self.metadata_key}", None)
        record = _present(record, event.data.previous_attributes, frozenset())
        return _plan(event, company_id, self.customer_rules, record, [])

    def plan_subscription(self, event: StripeEvent, company_id: str) -> EventPlan:
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
        await self.store.link_customers([(customer_id_of(event), company_id)])
        for poke in self.on_change:
            poke()
        return await self._commit(self.plan_customer(event, company_id))

    async def _subscription(self, event: StripeEvent, raw: bytes) -> tuple[str, int]:
        customer_id = customer_id_of(event)
        company_id = await self.store.company_for_customer(customer_id)
        expanded = event.data.object.get("customer")
        if company_id is None and isinstance(expanded, dict) and "metadata" in expanded:
            company_id = self.company_of(expanded)
        if company_id is None:
            await self.store.park_event(
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
        result = await commit(self.store, [plan], source="stripe", resolved=resolved)
        stored = result.ids[0] if result.ids else None
        if plan.update is not None and stored is None:
            return "skipped", 0
        return plan.outcome, result.stored

    async def forward_resolved(self, event: StripeEvent, company_id: str) -> tuple[str, int]:
        """Store a parked subscription event now that its company is known."""
        return await self._commit(self.plan_subscription(event, company_id), resolved=True)


_Lookup = dict[str, Any] | None | StripeApiError


class StripeResolver:
    """Retries parked subscription events: at once when poked, else every `interval` s."""

    def __init__(
        self, *, processor: StripeProcessor, api: StripeApi | None, interval: float
    ) -> None:
        self.processor = processor
        self.store = processor.store
        self.api = api
        self.interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        processor.on_change.append(self.poke)

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stripe-resolver")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            await cancel_and_wait([self._task])
            self._task = None
        if self.api is not None:
            await self.api.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retrying parked stripe events failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)

    async def run_once(self) -> int:
        """Try every parked event once; answer how many left the parking."""
        parked = await self.store.parked_events(source="stripe", limit=_PARKED_BATCH)
        lookups: dict[str, _Lookup] = {}
        done = 0
        for key, payload in parked:
            try:
                event = parse_event(payload)
                customer_id = customer_id_of(event)
            except Malformed:  # verified and parsed once already: cannot happen
                log.error("a parked stripe event no longer parses; dropped", extra={"key": key})
                await self.store.unpark_event(source="stripe", key=key)
                continue
            company_id, reason = await self._resolve(customer_id, lookups)
            if company_id is None and reason == "no_company":
                WEBHOOK_EVENTS.labels(source="stripe", outcome="no_company").inc()
                log.info(
                    "stripe customer without a company id: its subscription event is skipped",
                    extra={"event_id": event.id, "customer_id": customer_id},
                )
            elif company_id is None:
                # Parking again records what the lookup said and sends the event to the back
                # of the line, so a head of unresolvable events never starves the rest.
                await self.store.park_event(
                    source="stripe", key=key, payload=payload, reason=reason
                )
                continue
            else:
                await self.forward_resolved(event, company_id)
            await self.store.unpark_event(source="stripe", key=key)
            done += 1
        waiting = len(parked) - done
        if waiting:
            log.warning(
                "stripe subscription events wait for their customer's company",
                extra={"waiting": waiting, "stripe_api": self.api is not None},
            )
        return done

    async def forward_resolved(self, event: StripeEvent, company_id: str) -> None:
        outcome, _ = await self.processor.forward_resolved(event, company_id)
        log.info(
            "parked stripe event resolved",
            extra={"event_id": event.id, "company_id": company_id, "outcome": outcome},
        )

    async def _resolve(
        self, customer_id: str, lookups: dict[str, _Lookup]
    ) -> tuple[str | None, str]:
        company_id = await self.store.company_for_customer(customer_id)
        if company_id is not None:
            return company_id, "linked"
        if self.api is None:
            return None, "unknown_customer"
        if customer_id not in lookups:
            try:
                lookups[customer_id] = await self.api.customer(customer_id=customer_id)
            except StripeApiError as exc:
                log.warning(
                    "stripe customer lookup failed",
                    extra={"customer_id": customer_id, "error": str(exc)},
                )
                lookups[customer_id] = exc
        found = lookups[customer_id]
        if isinstance(found, StripeApiError):
            return None, "stripe_api_error"
        if found is None:
            return None, "customer_not_found"
        company_id = self.processor.company_of(found)
        if company_id is None:
            return None, "no_company"
        await self.store.link_customers([(customer_id, company_id)])
        return company_id, "looked_up"
