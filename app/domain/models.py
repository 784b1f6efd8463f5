"""Plain data passed between the routes, the stores and the dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Primitive = str | int | float | bool | None
Metadata = dict[str, Primitive]
Status = Literal["queued", "delivering", "delivered", "dead"]
STATUSES: tuple[Status, ...] = ("queued", "delivering", "delivered", "dead")
Via = Literal["realtime", "bulk"]
JobStatus = Literal["waiting", "running", "completed", "failed", "split", "rejected", "abandoned"]


@dataclass(frozen=True, slots=True)
class NewUpdate:
    """One validated company update to store.

    `event_key` deduplicates webhook events: an update whose key was already recorded for
    its source is skipped. `property_times` carries each property's source event time; a
    property older than the newest time already recorded for it is dropped, so an event that
    arrives late never overwrites a newer value. With `skip_if_empty`, an update left with no
    property after that is not stored at all. `stamp_times` (on the API's updates, which carry
    no source time) names the properties that take the moment it is stored as their source
    time: it is newer than any source value before it, so a later backfill, reconciliation or
    webhook with an older source time is skipped as older. Only properties a source mapping can
    write need it (no other ever gets a source time).
    """

    company_id: str
    metadata: Metadata
    event_key: str | None = None
    property_times: Mapping[str, float] | None = None
    skip_if_empty: bool = False
    stamp_times: tuple[str, ...] = ()
    # Never packed into a bulk job (its caller waits for the real-time answer).
    realtime_only: bool = False


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
    emptied by ordering). `older` holds the input positions of the updates that lost some or
    all of their properties to a newer source time already recorded; `suppressed` those whose
    company is erased (never stored). `replayed` means an
    earlier request with the same idempotency key already stored this; `ids`/`batch_id` are
    then the first request's.
    """

    ids: list[str | None]
    batch_id: str | None = None
    replayed: bool = False
    older: frozenset[int] = frozenset()
    # Input positions of updates not stored because their company is erased (suppressed).
    suppressed: frozenset[int] = frozenset()

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
    via: Via | None = None  # how it went out (or goes out, while delivering)
    job_id: str | None = None  # the bulk job that carries or carried it


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


@dataclass(frozen=True, slots=True)
class BulkJob:
    """One Userpilot bulk job the relay recorded (before submitting it).

    `waiting`: not yet accepted by Userpilot (new, split from another, or retrying after a
    409 or an outage); `running`: accepted, `upstream_id` is Userpilot's job id; the rest are
    final: `completed` (its rows delivered), `failed` (Userpilot said so, or refused the
    upload: its rows went to smaller jobs or real-time calls), `split` (too large, or bulk
    switched off: its rows went to smaller jobs or real-time calls), `rejected` (Userpilot
    refused bulk jobs for this key, or the endpoint has none: its rows went out real-time and
    the process packs no jobs for a while), `abandoned` (an operator ended it: its rows went
    out real-time; Userpilot may still run it).
    """

    id: str
    parent_id: str | None
    status: JobStatus
    upstream_id: str | None
    upstream_status: str | None
    rows: int  # companies, one row each
    updates: int  # the stored updates merged into those rows
    completed_rows: int
    attempts: int  # submissions so far
    owner: str | None
    next_attempt_at: float
    created_at: float
    updated_at: float
    submitted_at: float | None
    progress_at: float | None  # the last time Userpilot reported progress (or accepted it)
    finished_at: float | None
    last_error: str | None
    outcome: str | None
    # When an upload of its rows left whose answer is not recorded (None: none): that upload
    # may be pending at Userpilot, so the rows stay in bulk jobs (see `in_doubt`).
    uncertain_at: float | None = None
    # `abandoned`: an operator ended it (the relay key's name, when); its rows were sent again.
    abandoned_by: str | None = None
    abandoned_at: float | None = None

    def in_doubt(self, now: float | None = None) -> bool:
        """An unanswered upload may have started a job at Userpilot: until Userpilot's job list
        shows it (adopted) or shows none (see `bulk_answers.resolve_doubt`), or a later
        submission is accepted. No timer ends the doubt."""
        return self.uncertain_at is not None

    def stuck(self, *, after: float, now: float) -> bool:
        """Unfinished with no progress (accepted, a new status, more rows done) for `after`
        seconds: running, or waiting to be accepted."""
        if self.status not in ("waiting", "running"):
            return False
        return now - (self.progress_at or self.created_at) > after


def job_token(job_id: str) -> str:
    return f"job:{job_id}"
