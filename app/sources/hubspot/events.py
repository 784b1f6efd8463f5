"""HubSpot webhook batches: parsed, then planned as company updates (pure: no store, no I/O).

`company.creation` identifies the company; `company.propertyChange` sets one mapped property
(`""` becomes null: the property is removed in Userpilot). Other types are acknowledged and
counted. The Userpilot company id is the HubSpot `objectId` behind an optional prefix.
Redeliveries are recognised by (portalId, subscriptionId, eventId, objectId, occurredAt);
`occurredAt` keeps a late event from overwriting a newer value of the same property.

A body that is not a batch of events as HubSpot documents them (not JSON, not an array, an
event without its ids or of the wrong JSON types) is refused whole. Within a well-formed batch
each event stands alone: a value that does not convert is dropped (`invalid_value`), and an
event whose company id, identity or property name could not be stored as given (an `objectId`
that is not an integer or a digit string, a blank or over-long company id, control characters)
is skipped (`invalid_event`); the batch's other events are stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from app.domain.models import NewUpdate, Primitive
from app.domain.rules import company_id_problem, has_control, printable, property_name_problem
from app.sources.common import EventPlan, Malformed, load_json
from app.sources.mapping import ConversionError, FieldRule, convert

MAX_EVENTS = 100
CREATION = "company.creation"
PROPERTY_CHANGE = "company.propertyChange"
# HubSpot's ids are integers; a string id is kept as given when it is this short and plain.
MAX_KEY_PART = 64
_ASCII_DIGITS = frozenset("0123456789")
# A JSON integer or a string (a bool, a float, an object... is not a documented id).
Id = StrictInt | StrictStr


class HubSpotEvent(BaseModel):
    """One event of a batch; fields the relay does not use are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    event_id: Id = Field(alias="eventId")
    subscription_id: Id = Field(alias="subscriptionId")
    portal_id: Id = Field(alias="portalId")
    occurred_at: StrictInt = Field(alias="occurredAt", ge=0)
    subscription_type: StrictStr | None = Field(default=None, alias="subscriptionType")
    event_type: StrictStr | None = Field(default=None, alias="eventType")
    # Checked per event (`object_id_text`): an unusable one skips its event, not the batch.
    object_id: Any = Field(default=None, alias="objectId")
    property_name: StrictStr | None = Field(default=None, alias="propertyName")
    property_value: str | int | float | bool | None = Field(default=None, alias="propertyValue")

    @property
    def kind(self) -> str:
        """The event type: HubSpot names it `subscriptionType`, older payloads `eventType`."""
        return self.subscription_type or self.event_type or ""

    @model_validator(mode="after")
    def _shape(self) -> HubSpotEvent:
        if not self.kind:
            raise ValueError("needs a subscriptionType (or eventType)")
        if self.kind in (CREATION, PROPERTY_CHANGE) and self.object_id is None:
            raise ValueError(f"a {self.kind} event needs an objectId")
        if self.kind == PROPERTY_CHANGE:
            if self.property_name is None:
                raise ValueError("a company.propertyChange event needs a propertyName")
            if "property_value" not in self.model_fields_set:
                raise ValueError("a company.propertyChange event needs a propertyValue")
        return self

    @property
    def object_id_text(self) -> str | None:
        """`objectId` as text when it is a non-negative integer or a string of ASCII digits.

        A bool is no id (`true` would become company 1), nor is a float, a blank or a name.
        """
        value = self.object_id
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value) if value >= 0 else None
        if isinstance(value, str) and value and set(value) <= _ASCII_DIGITS:
            return value
        return None

    @property
    def key(self) -> str:
        """HubSpot's composite identity: `eventId` alone is not unique."""
        return (
            f"{self.portal_id}:{self.subscription_id}:{self.event_id}:"
            f"{self.object_id_text}:{self.occurred_at}"
        )

    def problem(self, prefix: str) -> str | None:
        """Why this company event cannot be stored as given, or None when it can."""
        for name, part in (
            ("eventId", self.event_id),
            ("subscriptionId", self.subscription_id),
            ("portalId", self.portal_id),
        ):
            if isinstance(part, str) and (
                not part or len(part) > MAX_KEY_PART or has_control(part)
            ):
                return f"{name} must be an integer or 1-{MAX_KEY_PART} plain characters"
        object_id = self.object_id_text
        if object_id is None:
            return "objectId must be a non-negative integer or a string of digits"
        problem = company_id_problem(f"{prefix}{object_id}")
        if problem is not None:
            return f"the company id (prefix + objectId) {problem}"
        if self.property_name is not None:
            problem = property_name_problem(self.property_name)
            if problem is not None:
                return f"propertyName: {problem}"
        return None


_BATCH = TypeAdapter(list[HubSpotEvent])


def parse_batch(body: bytes) -> list[HubSpotEvent]:
    """The events of a verified body, or `Malformed` naming what is wrong."""
    data = load_json(body)
    if not isinstance(data, list):
        raise Malformed("the body must be a JSON array of events")
    if len(data) > MAX_EVENTS:
        raise Malformed(f"a batch holds at most {MAX_EVENTS} events, not {len(data)}")
    try:
        return _BATCH.validate_python(data)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            index, *rest = error["loc"]
            field = f"[{index}]" + "".join(f".{p}" for p in rest)
            errors.append((field, str(error["msg"]).removeprefix("Value error, ")))
        shown = "; ".join(f"{f}: {m}" for f, m in errors[:3])
        raise Malformed(f"invalid events: {shown}", errors) from None


def plan_event(event: HubSpotEvent, rules: Mapping[str, FieldRule], prefix: str) -> EventPlan:
    """What one event becomes: an update of its company, or an outcome without one."""
    plan = EventPlan(event_id=printable(event.event_id, 64), event_type=printable(event.kind, 64))
    if event.kind not in (CREATION, PROPERTY_CHANGE):
        plan.outcome = "ignored"
        return plan
    problem = event.problem(prefix)
    if problem is not None:
        plan.outcome = "invalid_event"
        plan.problem = problem
        return plan
    company_id = f"{prefix}{event.object_id_text}"
    plan.company_id = company_id
    if event.kind == CREATION:
        plan.update = NewUpdate(company_id=company_id, metadata={}, event_key=event.key)
        return plan
    assert event.property_name is not None
    rule = rules.get(event.property_name)
    if rule is None:
        plan.outcome = "unmapped"
        plan.unmapped = 1
        return plan
    raw: Primitive = None if event.property_value == "" else event.property_value
    try:
        value = convert(raw, rule.type, epoch="ms")
    except ConversionError:
        plan.outcome = "invalid_value"
        plan.invalid_fields = [event.property_name]
        return plan
    plan.update = NewUpdate(
        company_id=company_id,
        metadata={rule.property: value},
        event_key=event.key,
        property_times={rule.property: event.occurred_at / 1000},
        skip_if_empty=True,
    )
    return plan


def plan_batch(
    events: list[HubSpotEvent], rules: Mapping[str, FieldRule], prefix: str
) -> list[EventPlan]:
    """Every event planned on its own: one event's problem never decides another's outcome."""
    return [plan_event(event, rules, prefix) for event in events]
