"""Stripe events as received: the event envelope, and which customer and company it is about.

The company id is a key of the customer's `metadata` (default `company_id`); a customer
without it stands for the company whose id is the Stripe customer id, or is skipped, as
configured. An event id, a customer id or a company id that a store could not hold as given
(control characters such as NUL, blank, too long) never reaches the store: the event is
refused (400) or, for a customer's company id, the customer is skipped (`invalid_event`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from app.domain.rules import company_id_problem, has_control
from app.sources.common import Malformed, load_json

CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated"})
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
MissingCompany = Literal["customer_id", "skip"]


class StripeEventData(BaseModel):
    """`data`: the object as of the event and, on updates, the fields it changed from."""

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
    data = load_json(body)
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
