"""HubSpot webhook batches: parsed, then turned into company updates.

`company.creation` identifies the company; `company.propertyChange` sets one mapped property
(`""` becomes null: the property is removed in Userpilot). Other types are acknowledged and
counted. The Userpilot company id is the HubSpot `objectId` behind an optional prefix.
Redeliveries are recognised by (portalId, subscriptionId, eventId, objectId, occurredAt);
`occurredAt` keeps a late event from overwriting a newer value of the same property.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from app.queue.models import NewUpdate, Primitive
from app.sources.common import EventPlan, Malformed
from app.sources.mapping import ConversionError, FieldRule, convert

MAX_EVENTS = 100
CREATION = "company.creation"
PROPERTY_CHANGE = "company.propertyChange"


class HubSpotEvent(BaseModel):
    """One event of a batch; fields the relay does not use are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    event_id: int | str = Field(alias="eventId")
    subscription_id: int | str = Field(alias="subscriptionId")
    portal_id: int | str = Field(alias="portalId")
    occurred_at: int = Field(alias="occurredAt", ge=0)
    subscription_type: str | None = Field(default=None, alias="subscriptionType")
    event_type: str | None = Field(default=None, alias="eventType")
    object_id: int | str | None = Field(default=None, alias="objectId")
    property_name: str | None = Field(default=None, alias="propertyName", min_length=1)
    property_value: str | int | float | bool | None = Field(default=None, alias="propertyValue")

    @property
    def kind(self) -> str:
        return self.subscription_type or self.event_type or ""

    @model_validator(mode="after")
    def _shape(self) -> HubSpotEvent:
        if not self.kind:
            raise ValueError("needs a subscriptionType (or eventType)")
        if self.kind in (CREATION, PROPERTY_CHANGE) and self.object_id in (None, ""):
            raise ValueError(f"a {self.kind} event needs an objectId")
        if self.kind == PROPERTY_CHANGE:
            if self.property_name is None:
                raise ValueError("a company.propertyChange event needs a propertyName")
            if "property_value" not in self.model_fields_set:
                raise ValueError("a company.propertyChange event needs a propertyValue")
        return self

    @property
    def key(self) -> str:
        """HubSpot's composite identity: `eventId` alone is not unique."""
        return (
            f"{self.portal_id}:{self.subscription_id}:{self.event_id}:"
            f"{self.object_id}:{self.occurred_at}"
        )


_BATCH = TypeAdapter(list[HubSpotEvent])


def parse_batch(body: bytes) -> list[HubSpotEvent]:
    """The events of a verified body, or `Malformed` naming what is wrong."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not valid JSON ({exc})") from None
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
    plan = EventPlan(event_id=str(event.event_id), event_type=event.kind)
    if event.kind not in (CREATION, PROPERTY_CHANGE):
        plan.outcome = "ignored"
        return plan
    company_id = f"{prefix}{event.object_id}"
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
    return [plan_event(event, rules, prefix) for event in events]
