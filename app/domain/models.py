"""Plain data passed between the routes, the stores and the dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Primitive = str | int | float | bool | None
Metadata = dict[str, Primitive]
Status = Literal["queued", "delivering", "delivered", "dead"]
STATUSES: tuple[Status, ...] = ("queued", "delivering", "delivered", "dead")


@dataclass(frozen=True, slots=True)
class NewUpdate:
    """One validated company update to store.

    `event_key` deduplicates webhook events: an update whose key was already recorded for
    its source is skipped. `property_times` carries each property's source event time; a
    property older than the newest time already recorded for it is dropped, so an event that
    arrives late never overwrites a newer value. With `skip_if_empty`, an update left with no
    property after that is not stored at all.
    """

    company_id: str
    metadata: Metadata
    event_key: str | None = None
    property_times: Mapping[str, float] | None = None
    skip_if_empty: bool = False


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A caller's `Idempotency-Key` with the fingerprint of the request it came with."""

    caller: str
    key: str
    fingerprint: str
    ttl_seconds: float


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What a store answers once the updates are committed.

    `ids` follows the input order with None for a skipped update (a duplicate event, or one
    emptied by ordering). `replayed` means an earlier request with the same idempotency key
    already stored this; `ids`/`batch_id` are then the first request's.
    """

    ids: list[str | None]
    batch_id: str | None = None
    replayed: bool = False

    @property
    def stored(self) -> int:
        return sum(1 for i in self.ids if i is not None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A stored update and where it stands."""

    id: str
    seq: int
    company_id: str
    metadata: Metadata
    status: Status
    attempts: int
    source: str
    caller: str | None
    batch_id: str | None
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    delivered_at: float | None
    last_status: int | None
    last_error: str | None
    last_request_id: str | None


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """Userpilot's answer (or the network's error) as recorded on the update it was for."""

    delivery_id: str
    seq: int
    company_id: str
    status: int | None
    error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Batch:
    """A bulk request and its deliveries counted by status."""

    id: str
    caller: str | None
    total: int
    created_at: float
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ClaimedUpdate:
    id: str
    seq: int
    metadata: Metadata
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    """Every queued update of one company, leased to one dispatcher worker.

    `versions` maps a property to the sequence number of the newest delivered update that set
    it: a replayed (older) update never overwrites it.
    """

    company_id: str
    updates: list[ClaimedUpdate]
    versions: dict[str, int] = field(default_factory=dict)
    owner: str = ""

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self.updates]

    @property
    def attempts(self) -> int:
        return max(u.attempts for u in self.updates)


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    delivering: int
    dead: int
    oldest_queued_at: float | None
