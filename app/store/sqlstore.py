"""`Store` written once over the shared plans; a backend supplies only how plans run.

A backend implements `_write` (one transaction, committed before it answers) and `_read`,
plus what truly differs: opening, health, and send-slot pacing. Signals fire here, after the
commit: new work wakes the dispatcher (and, through `_work_committed`, other replicas'),
settled deliveries wake their waiters.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import orjson

from app.domain.errors import NothingStored, StoreUnavailable
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
from app.store import claims, console, job_recovery, jobs, plans
from app.store.backfills import BackfillStore
from app.store.base import Store
from app.store.catalogue import PropertyCatalogue
from app.store.rows import encode_batch, new_ids, new_job_id
from app.store.sql import Dialect, Plan

T = TypeVar("T")
PlanFactory = Callable[[], Plan[T]]


class SQLStore(Store):
    """Every `Store` operation as a plan; the backend runs them."""

    dialect: Dialect
    leases_durable = True  # a database restarting under its relay must not forget a call

    def __init__(self) -> None:
        super().__init__()
        self.catalogue = PropertyCatalogue(self._write, self._read)
        self.backfills = BackfillStore(self._write, self._read)
        self.console = console.ConsoleReads(self._write, self._read)

        self.job_recovery = job_recovery.JobRecovery(self._write, self._read)

    def _work_committed(self) -> None:
        """Work became ready to deliver: wake this process's dispatcher."""
        self.signals.work_arrived()

    @abc.abstractmethod
    async def _write(self, plan: PlanFactory[T], *, atomic: bool = True, durable: bool = True) -> T:
        """Run the plan in one committed transaction (the factory may run again if the backend
        retries). Without `atomic`, it is one statement safe to repeat, maybe run without a
        transaction. Without `durable`, the commit may answer before it is on disk (a lease,
        lost in a power cut, only leaves its updates queued)."""

    @abc.abstractmethod
    async def _read(self, plan: PlanFactory[T], *, snapshot: bool = False) -> T:
        """Run a plan that only reads; with `snapshot`, in one transaction where the backend
        has them for reads (PostgreSQL: counts taken apart may still differ a little)."""

    # ingest --------------------------------------------------------------------------------
    async def enqueue(
        self,
        updates: Sequence[NewUpdate],
        *,
        source: str,
        caller: str | None,
        batch: bool = False,
        idempotency: Idempotency | None = None,
    ) -> EnqueueResult:
        try:
            result = await self._enqueue(updates, source, caller, batch, idempotency)
        except StoreUnavailable as exc:  # the commit did not happen: say so, for the answer
            raise NothingStored(str(exc)) from None
        if result.stored and not result.replayed:
            if any(u.realtime_only for u in updates):
                self.signals.caller_waits()
            self._work_committed()
        return result

    async def _enqueue(
        self,
        updates: Sequence[NewUpdate],
        source: str,
        caller: str | None,
        batch: bool,
        idempotency: Idempotency | None,
    ) -> EnqueueResult:
        # Serialise before the transaction: it is the one thing that cannot run in parallel.
        if batch:
            if any(u.event_key or u.property_times for u in updates):
                raise ValueError("a batch carries plain updates only")
            limit = self.dialect.max_batch
            if limit is not None and len(updates) > limit:
                raise ValueError(f"a batch holds at most {limit} updates")
            batch_id, payload, count = new_ids(1)[0], encode_batch(updates), len(updates)
            stamped = [(u.company_id, k) for u in updates for k in u.stamp_times]
            args = (payload, count, batch_id, source, caller, idempotency, stamped)
            return await self._write(lambda: plans.enqueue_batch(*args))
        ids = new_ids(len(updates))
        encoded = [orjson.dumps(u.metadata) for u in updates]
        # One plain update, the common case: one statement, safe to repeat (the id is ours).
        single = len(updates) == 1 and idempotency is None and plans.plain(updates[0])
        return await self._write(
            lambda: plans.enqueue(updates, encoded, ids, source, caller, idempotency),
            atomic=not single,
        )

    # reads ---------------------------------------------------------------------------------
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        return await self._read(lambda: plans.get_delivery(delivery_id))

    async def get_deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        ids = list(delivery_ids)
        return await self._read(lambda: plans.get_deliveries(ids)) if ids else []

    async def get_batch(self, batch_id: str) -> Batch | None:
        return await self._read(lambda: plans.get_batch(batch_id), snapshot=True)

    async def list_deliveries(
        self, *, status: Status | None, company_id: str | None, after_seq: int, limit: int
    ) -> list[Delivery]:
        return await self._read(lambda: plans.list_deliveries(status, company_id, after_seq, limit))

    async def recent_answers(self, limit: int) -> list[UpstreamAnswer]:
        return await self._read(lambda: plans.recent_answers(limit))

    async def stats(self) -> QueueStats:
        return await self._read(plans.stats, snapshot=True)

    # dead letters --------------------------------------------------------------------------
    async def replay(self, delivery_id: str) -> Delivery | None:
        delivery = await self._write(lambda: plans.replay(delivery_id))
        if delivery is not None:
            self._work_committed()
        return delivery

    async def replay_dead(self, *, company_id: str | None = None) -> int:
        count = await self._write(lambda: plans.replay_dead(company_id))
        if count:
            self._work_committed()
        return count

    async def purge_dead(
        self, *, delivery_id: str | None = None, company_id: str | None = None
    ) -> int:
        return await self._write(lambda: plans.purge_dead(delivery_id, company_id))

    async def prune(self, *, delivered_before: float) -> int:
        """In short transactions of their own, so pruning never holds up the queue."""
        total = 0
        while True:
            n = await self._write(lambda: plans.prune_delivered(delivered_before))
            total += n
            if n < plans.PRUNE_BATCH:
                break
        await self._write(lambda: plans.prune_rest(delivered_before))
        await self._write(lambda: jobs.prune_jobs(delivered_before))
        batch = plans.PRUNE_BATCH
        while await self._write(lambda: plans.prune_versions(delivered_before)) >= batch:
            pass
        return total

    # dispatcher and bulk jobs -------------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        lease_seconds: float,
        max_merge: int,
        settle_seconds: float = 0.0,
        single_first: bool = False,
    ) -> Claim | None:
        return await self._write(
            lambda: claims.claim(
                owner=owner,
                lease_seconds=lease_seconds,
                max_merge=max_merge,
                settle_seconds=settle_seconds,
                single_first=single_first,
            ),
            durable=self.leases_durable,
        )

    async def mark_delivered(
        self,
        claim: Claim,
        *,
        status: int,
        request_id: str | None,
        sent_versions: Mapping[str, int],
    ) -> None:
        watched = self.signals.watched(claim.ids)
        # Not durable: a power cut may lose the last commits (none a durable one followed),
        # and their updates go again. `watched`: a waiting request gets the rows committed.
        marked = await self._write(
            lambda: claims.mark_delivered(claim, status, request_id, sent_versions, watched),
            durable=False,
        )
        self.signals.settled(claim.ids, marked)

    async def mark_retry(
        self, claim: Claim, *, status: int | None, error: str, delay: float
    ) -> None:
        await self._write(lambda: claims.mark_retry(claim, status, error, delay))

    async def mark_dead(
        self, claim: Claim, *, status: int | None, error: str, request_id: str | None
    ) -> None:
        await self._write(lambda: claims.mark_dead(claim, status, error, request_id))
        self.signals.settled(claim.ids)

    async def release(self, claim: Claim) -> None:
        await self._write(lambda: claims.release(claim))
        self._work_committed()

    async def retry_now(self, *, one_company: bool = False) -> int:
        moved = await self._write(lambda: job_recovery.retry_now(one_company=one_company))
        self._work_committed()
        return moved

    async def waiting_companies(self, limit: int) -> int:
        return await self._read(lambda: jobs.waiting_companies(limit), snapshot=True)

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
        job_id = new_job_id()
        for _ in range(jobs.EXPANSIONS_PER_JOB):  # the oldest waiting may sit in a batch
            if not await self._write(lambda: jobs.expand_for_job(max_rows)):
                break
        return await self._write(
            lambda: jobs.pack(
                job_id=job_id,
                owner=owner,
                lease=lease_seconds,
                max_rows=max_rows,
                max_merge=max_merge,
                settle=settle_seconds,
                fresh=fresh_seconds,
            )
        )

    async def take_job(self, *, owner: str, lease_seconds: float) -> BulkJob | None:
        return await self._write(lambda: jobs.take(owner, lease_seconds))

    async def job_companies(self, job_id: str) -> list[tuple[str, int]]:
        return await self._read(lambda: jobs.companies(job_id))

    async def job_rows(self, job_id: str, companies: Sequence[str]) -> list[Claim]:
        return await self._read(lambda: jobs.rows(job_id, list(companies)), snapshot=True)

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
        return await self._write(
            lambda: jobs.submitted(
                job, owner, upstream_id, upstream_status, lease, http_status, request_id, within
            )
        )

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
        return await self._write(
            lambda: jobs.polled(
                job,
                owner,
                upstream_status=upstream_status,
                completed_rows=completed_rows,
                error=error,
                lease=lease,
            )
        )

    async def job_uploading(self, job: BulkJob, *, owner: str, lease: float) -> bool:
        return await self._write(lambda: jobs.uploading(job, owner, lease))

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
        return await self._write(
            lambda: jobs.deferred(
                job, owner, delay=delay, error=error, counted=counted, uncertain=uncertain
            )
        )

    async def job_completed(
        self,
        job: BulkJob,
        *,
        owner: str,
        sent_versions: Mapping[str, Mapping[str, int]],
        completed_rows: int | None = None,
    ) -> bool:
        done = await self._write(lambda: jobs.completed(job, owner, sent_versions, completed_rows))
        if done:
            self._work_committed()  # updates that waited behind the job may go now
        return done

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
        child_ids = [new_job_id() for _ in range(2)]
        children = await self._write(
            lambda: jobs.split(
                job,
                owner,
                status=status,
                error=error,
                upstream_status=upstream_status,
                min_rows=min_rows,
                child_ids=child_ids,
                http_status=http_status,
                keep_in_bulk=keep_in_bulk,
            )
        )
        if children is not None:
            self._work_committed()
        return children

    async def release_job(self, job: BulkJob, *, owner: str) -> None:
        await self._write(lambda: jobs.release(job, owner))

    async def unfinished_job(self) -> BulkJob | None:
        return await self._read(jobs.unfinished)

    async def get_job(self, job_id: str) -> BulkJob | None:
        return await self._read(lambda: jobs.get_job(job_id))

    async def list_jobs(
        self, *, status: JobStatus | None, before: str | None, limit: int
    ) -> list[BulkJob]:
        return await self._read(lambda: jobs.list_jobs(status, before, limit))

    # webhook state -------------------------------------------------------------------------
    async def link_customers(self, links: Sequence[tuple[str, str]]) -> None:
        await self._write(lambda: plans.link_customers(links))

    async def company_for_customer(self, customer_id: str) -> str | None:
        return await self._read(lambda: plans.company_for_customer(customer_id))

    async def park_event(self, *, source: str, key: str, payload: bytes, reason: str) -> None:
        await self._write(lambda: plans.park_event(source, key, payload, reason))

    async def parked_events(self, *, source: str, limit: int) -> list[tuple[str, bytes]]:
        return await self._read(lambda: plans.parked_events(source, limit))

    async def unpark_event(self, *, source: str, key: str) -> None:
        await self._write(lambda: plans.unpark_event(source, key))

    async def count_parked(self) -> int:
        return await self._read(plans.count_parked)
