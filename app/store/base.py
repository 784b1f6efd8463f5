"""The store interface: everything the routes and the dispatcher ask of durable storage.

Two backends implement it (`sqlite` for one replica, `postgres` for several), both through
`sqlstore.SQLStore`, which runs the same SQL on each; nothing outside `app/store/` knows which
one runs. `app.store.connect.open_store` picks one from the database URL.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence

from app.domain.models import (
    Batch,
    BulkJob,
    Claim,
    Delivery,
    EnqueueResult,
    Idempotency,
    JobStatus,
    NewUpdate,
    QueueStats,
    Status,
    UpstreamAnswer,
)
from app.store.backfills import BackfillStore
from app.store.catalogue import PropertyCatalogue
from app.store.console import ConsoleReads
from app.store.job_recovery import JobRecovery
from app.store.signals import Signals


class Store(abc.ABC):
    """Durable queue of company updates plus the small shared state around it.

    `signals` is set after commits: new work for the dispatcher, settled deliveries for
    requests that wait on them.

    Features with state of their own keep it in parts built over the same engine
    (`app/store/part.py`): `catalogue` (the properties sent), `backfills` and `console` (the
    operator console's search and delivery rate).


    (`app/store/part.py`): `catalogue` (the properties sent), `backfills` and
    `job_recovery` (a bulk job's doubt settled, an operator's abandon).
    """

    catalogue: PropertyCatalogue
    backfills: BackfillStore
    console: ConsoleReads

    job_recovery: JobRecovery

    def __init__(self) -> None:
        self.signals = Signals()
        self.applied_migrations: list[int] = []  # by the last `open()`

    # lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations (safe when several replicas start at once)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release connections."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers a read and commits a write now (readiness)."""

    # ingest --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(
        self,
        updates: Sequence[NewUpdate],
        *,
        source: str,
        caller: str | None,
        batch: bool = False,
        idempotency: Idempotency | None = None,
    ) -> EnqueueResult:
        """Commit the updates (all or none) and answer their delivery ids.

        With `batch`, the updates form a batch: update i's delivery id is `{batch_id}.{i}`.

        Raises `IdempotencyConflict` when the key was used with another body, and
        `StoreUnavailable` when nothing could be committed.
        """

    # reads ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    @abc.abstractmethod
    async def get_deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]: ...

    @abc.abstractmethod
    async def get_batch(self, batch_id: str) -> Batch | None: ...

    @abc.abstractmethod
    async def list_deliveries(
        self,
        *,
        status: Status | None,
        company_id: str | None,
        after_seq: int,
        limit: int,
    ) -> list[Delivery]:
        """Deliveries in arrival order after `after_seq` (a page cursor)."""

    @abc.abstractmethod
    async def recent_answers(self, limit: int) -> list[UpstreamAnswer]:
        """The answers recorded on the `limit` newest updates that have one, newest first
        (the relay's own refusals left out); no update's metadata is read."""

    @abc.abstractmethod
    async def stats(self) -> QueueStats: ...

    # dead letters --------------------------------------------------------------------------
    @abc.abstractmethod
    async def replay(self, delivery_id: str) -> Delivery | None:
        """Re-queue one dead delivery; None when unknown, `NotDead` when not dead."""

    @abc.abstractmethod
    async def replay_dead(self, *, company_id: str | None = None) -> int:
        """Re-queue every dead delivery (of one company when given); answer how many."""

    @abc.abstractmethod
    async def purge_dead(
        self, *, delivery_id: str | None = None, company_id: str | None = None
    ) -> int:
        """Delete dead deliveries (one, one company's, or all); answer how many."""

    @abc.abstractmethod
    async def prune(self, *, delivered_before: float) -> int:
        """Delete delivered updates older than the retention period; answer how many."""

    # dispatcher ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self,
        *,
        owner: str,
        lease_seconds: float,
        max_merge: int,
        settle_seconds: float = 0.0,
        single_first: bool = False,
    ) -> Claim | None:
        """Lease every queued update of the company that has waited longest and is free.

        With `single_first`, the company of the oldest ready single update (one not from a
        batch) goes first, so one caller's single update never waits behind a whole import;
        batch updates that arrived before it are expanded first and ride in the same claim.

        A company is free when none of its updates is being delivered (under a live lease)
        and none is waiting out a retry backoff. Its oldest ready update must have been queued
        `settle_seconds` ago, so a burst of updates to one company leaves in one call, unless
        a caller waits for one of them (`realtime_only`, `Prefer: wait`): that company goes at
        once, with whatever else of it is queued. Updates come in arrival order (at most
        `max_merge`).
        """

    @abc.abstractmethod
    async def mark_delivered(
        self,
        claim: Claim,
        *,
        status: int,
        request_id: str | None,
        sent_versions: Mapping[str, int],
    ) -> None:
        """Record success for every update of the claim.

        `sent_versions` maps each property sent to the sequence number of the update whose
        value was sent, so that an older update replayed later cannot overwrite it.
        """

    @abc.abstractmethod
    async def mark_retry(
        self, claim: Claim, *, status: int | None, error: str, delay: float
    ) -> None:
        """Put the claim's updates back in the queue, not before `delay` seconds."""

    @abc.abstractmethod
    async def mark_dead(
        self, claim: Claim, *, status: int | None, error: str, request_id: str | None
    ) -> None:
        """Dead-letter every update of the claim (a permanent rejection)."""

    @abc.abstractmethod
    async def release(self, claim: Claim) -> None:
        """Hand the claim back untouched (shutdown): it is delivered again later."""

    @abc.abstractmethod
    async def retry_now(self, *, one_company: bool = False) -> int:
        """Bring updates waiting out a retry backoff forward (Userpilot is back): every one,
        and every waiting bulk job's next submission, or (a probe) only the company of the
        oldest such update. Answers how many updates moved."""

    # bulk jobs (see `app/store/jobs.py`) ---------------------------------------------------------
    @abc.abstractmethod
    async def waiting_companies(self, limit: int) -> int:
        """About how many companies wait for delivery, counted up to about `limit`."""

    @abc.abstractmethod
    async def pack_job(
        self,
        *,
        owner: str,
        lease_seconds: float,
        max_rows: int,
        max_merge: int,
        settle_seconds: float,
        fresh_seconds: float,
    ) -> BulkJob | None:
        """Record a `waiting` job of the oldest waiting companies, leased to `owner`.

        A company rides only when every queued update of it is ready, allowed on a job (not
        `realtime_only`) and not a single update younger than `fresh_seconds`, and nothing of
        it is in flight; its updates (at most `max_merge`) are in flight from then on. None
        when some job is unfinished, or no company may ride.
        """

    @abc.abstractmethod
    async def take_job(self, *, owner: str, lease_seconds: float) -> BulkJob | None:
        """Lease the job `owner` should drive now: the running one, else the oldest waiting
        one that is due; None while another owner's lease on an unfinished job is live."""

    @abc.abstractmethod
    async def job_companies(self, job_id: str) -> list[tuple[str, int]]:
        """The job's companies, oldest first, each with how many updates the job holds of it."""

    @abc.abstractmethod
    async def job_rows(self, job_id: str, companies: Sequence[str]) -> list[Claim]:
        """The job's deliveries of `companies` (read a chunk at a time: a job may hold a whole
        backlog), a `Claim` per company, oldest company first."""

    @abc.abstractmethod
    async def job_submitted(
        self,
        job: BulkJob,
        *,
        owner: str,
        upstream_id: str,
        upstream_status: str,
        lease: float,
        http_status: int,
        request_id: str | None,
        within: float,
    ) -> bool:
        """Userpilot accepted the job (its answer's status and x-request-id become its
        deliveries' last); waiting jobs whose uploads went unanswered more than `within`
        seconds ago are certain again. False (here and below) when `owner` no longer holds
        it."""

    @abc.abstractmethod
    async def job_polled(
        self,
        job: BulkJob,
        *,
        owner: str,
        upstream_status: str | None,
        completed_rows: int | None,
        error: str | None,
        lease: float,
    ) -> bool:
        """Record a poll (`upstream_status` None: the poll failed) and renew the lease."""

    @abc.abstractmethod
    async def job_uploading(self, job: BulkJob, *, owner: str, lease: float) -> bool:
        """About to upload the waiting job: its lease renewed, and the job `uncertain` until
        Userpilot's answer is recorded (False: `owner` no longer holds it; do not upload)."""

    @abc.abstractmethod
    async def job_deferred(
        self,
        job: BulkJob,
        *,
        owner: str,
        delay: float,
        error: str,
        counted: bool,
        uncertain: bool,
    ) -> bool:
        """Not accepted (or lost): `waiting` again, submitted by any replica after `delay`;
        `uncertain` when the upload may still be pending at Userpilot (no answer)."""

    @abc.abstractmethod
    async def job_completed(
        self,
        job: BulkJob,
        *,
        owner: str,
        sent_versions: Mapping[str, Mapping[str, int]],
        completed_rows: int | None = None,
    ) -> bool:
        """Userpilot completed the job: its deliveries are delivered (via bulk);
        `completed_rows` as Userpilot last reported it."""

    @abc.abstractmethod
    async def job_split(
        self,
        job: BulkJob,
        *,
        owner: str,
        status: JobStatus,
        error: str,
        upstream_status: str | None,
        min_rows: int,
        http_status: int | None,
        keep_in_bulk: bool = False,
    ) -> list[str] | None:
        """End the job (`failed`, `split` or `rejected`): its companies in two halves, a half
        of at least `min_rows` a new waiting job, a smaller one back to real-time calls; with
        `keep_in_bulk` every half a job. Answers the new jobs' ids (None when `owner` no longer
        holds it)."""

    @abc.abstractmethod
    async def release_job(self, job: BulkJob, *, owner: str) -> None:
        """Give the job's lease up (shutdown): another replica may drive it at once."""

    @abc.abstractmethod
    async def unfinished_job(self) -> BulkJob | None:
        """The running job, else the oldest waiting one, whoever drives it."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> BulkJob | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self, *, status: JobStatus | None, before: str | None, limit: int
    ) -> list[BulkJob]:
        """Jobs newest first, older than the job `before` (a page cursor)."""

    # pacing, shared by every replica on the store -----------------------------------------------
    @abc.abstractmethod
    async def reserve_send_slot(self, interval: float) -> float:
        """Reserve the next upstream send slot; answer the unix time it starts at.

        Slots are `interval` seconds apart across everything that shares this store, and none
        starts before a pause set by `pause_sending`.
        """

    async def release_send_slot(self, slot: float, interval: float) -> None:
        """Give back a slot reserved and not used (nothing was ready to send), when no later
        one was reserved since: an idle relay keeps its next slot free, so an update stored
        then goes at once. By default the slot is only lost."""
        return None

    @abc.abstractmethod
    async def pause_sending(self, until: float, *, reason: str | None = None) -> None:
        """Hold every send slot until `until` (unix time): Userpilot said 429 (`reason`)."""

    @abc.abstractmethod
    async def send_pause(self) -> tuple[float, str | None]:
        """Until when sends are held (unix time; past or 0: not paused), and why."""

    async def paused_until(self) -> float | None:
        """The unix time a pause set by `pause_sending` ends, while one is in force (on
        SQLite: this process's; on PostgreSQL: every replica's)."""
        until, _ = await self.send_pause()
        return until if until > time.time() else None

    # webhook state --------------------------------------------------------------------------
    @abc.abstractmethod
    async def link_customers(self, links: Sequence[tuple[str, str]]) -> None:
        """Remember (Stripe customer id, company id) pairs."""

    @abc.abstractmethod
    async def company_for_customer(self, customer_id: str) -> str | None: ...

    @abc.abstractmethod
    async def park_event(self, *, source: str, key: str, payload: bytes, reason: str) -> None:
        """Keep an event that cannot be mapped yet (idempotent on source and key: parking it
        again records the new reason and moves it to the back of `parked_events`)."""

    @abc.abstractmethod
    async def parked_events(self, *, source: str, limit: int) -> list[tuple[str, bytes]]:
        """Parked events (key, payload), least recently parked or retried first."""

    @abc.abstractmethod
    async def unpark_event(self, *, source: str, key: str) -> None: ...

    @abc.abstractmethod
    async def count_parked(self) -> int: ...
