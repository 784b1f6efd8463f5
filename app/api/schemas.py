"""Request and response bodies. Validation follows what Userpilot would otherwise reject or
silently mangle: flat primitive metadata, finite numbers, no unknown top-level fields, and
`null` kept (it removes the property in Userpilot).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from app.queue.models import Batch, Delivery, Metadata

_PRIMITIVES = frozenset({str, int, bool, type(None)})
MAX_BULK = 10_000


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else "an infinite number"
    return type(value).__name__


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Every value a string, finite number, boolean or null; every key a non-empty string."""
    for key, item in value.items():
        kind = type(item)
        if kind in _PRIMITIVES or (kind is float and math.isfinite(item)):
            if not key.strip():
                raise PydanticCustomError(
                    "metadata_key", "property names must not be empty", {"key": key}
                )
            continue
        raise PydanticCustomError(
            "metadata_value",
            "must be a string, a finite number, a boolean or null, not {got}",
            {"key": key, "got": _json_type(item)},
        )
    return value


class CompanyIn(BaseModel):
    """One company update, as Userpilot's identify call takes it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"company_id": "acme", "metadata": {"plan": "pro", "seats": 42, "trial": None}}
            ]
        },
    )

    company_id: Annotated[
        StrictStr,
        Field(
            min_length=1,
            max_length=255,
            description="Userpilot company id: a non-empty string.",
        ),
    ]
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Flat properties: string, number, boolean or null values. null removes the "
            "property in Userpilot. Nested objects, arrays, NaN and infinities are refused."
        ),
        json_schema_extra={
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]}
        },
    )

    @field_validator("company_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must not be blank")
        return value

    @field_validator("metadata")
    @classmethod
    def _primitive(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)


class BulkIn(BaseModel):
    """Up to 10,000 company updates, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    companies: list[CompanyIn] = Field(min_length=1, max_length=MAX_BULK)


class Accepted(BaseModel):
    """The update is stored durably and will be delivered."""

    id: str = Field(description="Delivery id, for GET /deliveries/{id}.")
    status: Literal["queued", "delivering", "delivered", "dead"]


class BulkAccepted(BaseModel):
    """Every update of the batch is stored durably."""

    batch_id: str
    accepted: int


class DeliveryOut(BaseModel):
    """A stored update and where it stands."""

    id: str
    company_id: str
    status: Literal["queued", "delivering", "delivered", "dead"]
    attempts: int = Field(description="Upstream calls made for this update so far.")
    metadata: Metadata
    source: str = Field(description="api, bulk, hubspot or stripe.")
    caller: str | None
    batch_id: str | None
    created_at: float = Field(description="Unix time the update was stored.")
    updated_at: float
    next_attempt_at: float | None = Field(description="Earliest retry time while queued.")
    delivered_at: float | None
    last_upstream_status: int | None = Field(description="Userpilot's last HTTP status.")
    last_error: str | None = Field(description="Userpilot's last error, or the network error.")
    last_request_id: str | None = Field(description="Userpilot's x-request-id of the last call.")

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls(
            id=d.id,
            company_id=d.company_id,
            status=d.status,
            attempts=d.attempts,
            metadata=d.metadata,
            source=d.source,
            caller=d.caller,
            batch_id=d.batch_id,
            created_at=d.created_at,
            updated_at=d.updated_at,
            next_attempt_at=d.next_attempt_at,
            delivered_at=d.delivered_at,
            last_upstream_status=d.last_status,
            last_error=d.last_error,
            last_request_id=d.last_request_id,
        )


class DeliveryPage(BaseModel):
    """One page of deliveries; pass `next_cursor` as `cursor` for the next one."""

    items: list[DeliveryOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    """A bulk request: its size and its deliveries counted by status."""

    id: str
    caller: str | None
    total: int
    created_at: float
    counts: dict[str, int] = Field(description="queued, delivering, delivered, dead.")
    done: bool = Field(description="True when every update is delivered or dead.")

    @classmethod
    def of(cls, b: Batch) -> BatchOut:
        finished = b.counts.get("delivered", 0) + b.counts.get("dead", 0)
        return cls(
            id=b.id,
            caller=b.caller,
            total=b.total,
            created_at=b.created_at,
            counts=b.counts,
            done=finished >= b.total,
        )


class Replayed(BaseModel):
    """How many dead deliveries went back in the queue."""

    replayed: int


class Purged(BaseModel):
    """How many dead deliveries were deleted."""

    purged: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    store: Literal["ok", "unreachable"] | None = None
