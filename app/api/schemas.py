"""Request and response bodies. Validation follows what Userpilot would otherwise reject or
silently mangle: flat primitive metadata, finite numbers, no unknown top-level fields, and
`null` kept (it removes the property in Userpilot).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from app.domain.models import Batch, Delivery, Metadata
from app.domain.pii import MAX_VALUE
from app.domain.rules import MAX_COMPANY_ID as MAX_COMPANY_ID
from app.domain.rules import (
    MAX_PROPERTY_NAME,
    company_id_problem,
    has_control,
    property_name_problem,
)

_SCALARS = frozenset({str, bool, type(None)})
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what a JSON number carries without loss here
_FLOAT_PLAIN = 2.0**63
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
    """Every value a string (of at most `MAX_VALUE` characters, Userpilot's limit), finite
    number, boolean or null; every key a non-empty string."""
    for key, item in value.items():
        if type(item) is str and len(item) > MAX_VALUE:
            raise PydanticCustomError(
                "metadata_value", f"must be at most {MAX_VALUE:,} characters", {"key": key}
            )
        if not _primitive(item):
            if type(item) is int:
                raise PydanticCustomError(
                    "metadata_value", "is an integer out of the 64-bit range", {"key": key}
                )
            raise PydanticCustomError(
                "metadata_value",
                "must be a string, a finite number, a boolean or null, not {got}",
                {"key": key, "got": _json_type(item)},
            )
        problem = property_name_problem(key)
        if problem is not None:
            raise PydanticCustomError("metadata_key", problem, {"key": key})
    return value


def _primitive(item: object) -> bool:
    kind = type(item)
    if kind in _SCALARS:
        return True
    if kind is int:
        return _INT_MIN <= item <= _INT_MAX  # type: ignore[operator]
    return kind is float and math.isfinite(item)  # type: ignore[arg-type]


def fast_companies(body: bytes, *, bulk: bool) -> list[tuple[str, dict[str, Any]]] | None:
    """The (company_id, metadata) pairs of a valid body, or None when it is not plainly valid.

    An accelerator for the hot path (a 10,000-company bulk body validates about 1.5x faster
    than through the models): it accepts a strict subset of what `CompanyIn`/`BulkIn` accept,
    exact JSON types and nothing unusual. Whatever it does not accept goes through the models,
    which stay the one authority on validity and on the error messages.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items: Any
    if not bulk:
        items = [document]
    elif type(document) is dict and len(document) == 1:
        items = document.get("companies")
        if type(items) is not list or not 1 <= len(items) <= MAX_BULK:
            return None
    else:
        return None
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if type(item) is not dict:
            return None
        company_id = item.get("company_id")
        if type(company_id) is not str or not 0 < len(company_id) <= MAX_COMPANY_ID:
            return None
        if company_id.isspace() or has_control(company_id):
            return None
        if len(item) == 1:
            metadata: dict[str, Any] = {}
        elif len(item) == 2 and type(item.get("metadata")) is dict:
            metadata = item["metadata"]
        else:
            return None
        for key, value in metadata.items():
            kind = type(value)
            if kind is str:
                if len(value) > MAX_VALUE:
                    return None
            elif kind in _SCALARS:
                pass
            elif kind is int:
                if not _INT_MIN <= value <= _INT_MAX:
                    return None
            elif kind is not float or not -_FLOAT_PLAIN < value < _FLOAT_PLAIN:
                # Also NaN and infinities. orjson reads an integer literal past 64 bits as a
                # float: leave every large number to the models, which see the literal.
                return None
            if not 0 < len(key) <= MAX_PROPERTY_NAME or key.isspace() or has_control(key):
                return None
        out.append((company_id, metadata))
    return out


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
            max_length=MAX_COMPANY_ID,
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
    def _usable(cls, value: str) -> str:
        problem = company_id_problem(value)
        if problem is not None:
            raise PydanticCustomError("company_id", problem)
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

    batch_id: str | None = Field(
        description="None when every company of the request was erased (nothing stored)."
    )
    accepted: int
    suppressed: list[int] = Field(
        default_factory=list,
        description="Indexes of the companies not stored because they were erased.",
    )


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
    via: Literal["realtime", "bulk"] | None = Field(
        description=(
            "How it went out (or goes out, while delivering): a real-time call, or a row of a "
            "Userpilot bulk job; null before its first attempt."
        )
    )
    job_id: str | None = Field(
        description="The relay's bulk job (GET /jobs/{job_id}) that carries or carried it."
    )

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
            via=d.via,
            job_id=d.job_id if d.via == "bulk" else None,
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
