"""The relay app with a store that stores nothing: the framework's own floor for the benchmark.

Same routes, auth, validation, metrics and logging as `app.main:app`; `enqueue` answers ids at
once instead of committing. Run as `uvicorn bench.floor_app:app`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.domain.models import (
    Batch,
    BulkJob,
    Claim,
    Delivery,
    EnqueueResult,
    Idempotency,
    NewUpdate,
    QueueStats,
    Status,
    UpstreamAnswer,
)
from app.main import service_app
from app.store.backfills import BackfillStore
from app.store.base import Store
from app.store.catalogue import PropertyCatalogue
from app.store.rows import new_ids


async def _nothing(plan: Any, **_: Any) -> Any:
    return []  # what a plan of the catalogue answers on an empty table


class _NoBackfills(BackfillStore):
    async def take(self, **_: Any) -> None:  # type: ignore[override]
        return None


class NullStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self.catalogue = PropertyCatalogue(_nothing, _nothing)
        self.backfills = _NoBackfills(_nothing, _nothing)

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool:
        return True

    async def enqueue(
        self,
        updates: Sequence[NewUpdate],
        *,
        source: str,
        caller: str | None,
        batch: bool = False,
        idempotency: Idempotency | None = None,
    ) -> EnqueueResult:
        ids = new_ids(len(updates) + 1)
        batch_id = ids.pop() if batch else None
        return EnqueueResult(ids=list(ids), batch_id=batch_id)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        return None

    async def get_deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        return []

    async def get_batch(self, batch_id: str) -> Batch | None:
        return None

    async def list_deliveries(
        self, *, status: Status | None, company_id: str | None, after_seq: int, limit: int
    ) -> list[Delivery]:
        return []

    async def recent_answers(self, limit: int) -> list[UpstreamAnswer]:
        return []

    async def stats(self) -> QueueStats:
        return QueueStats(queued=0, delivering=0, dead=0, oldest_queued_at=None)

    async def replay(self, delivery_id: str) -> Delivery | None:
        return None

    async def replay_dead(self, *, company_id: str | None = None) -> int:
        return 0

    async def purge_dead(
        self, *, delivery_id: str | None = None, company_id: str | None = None
    ) -> int:
        return 0

    async def prune(self, *, delivered_before: float) -> int:
        return 0

    async def claim(self, **_: Any) -> Claim | None:  # type: ignore[override]
        return None

    async def mark_delivered(
        self, claim: Claim, *, status: int, request_id: str | None, sent_versions: Mapping[str, int]
    ) -> None: ...

    async def mark_retry(
        self, claim: Claim, *, status: int | None, error: str, delay: float
    ) -> None: ...

    async def mark_dead(
        self, claim: Claim, *, status: int | None, error: str, request_id: str | None
    ) -> None: ...

    async def release(self, claim: Claim) -> None: ...

    async def send_pause(self) -> tuple[float, str | None]:
        return 0.0, None

    async def reserve_send_slot(self, interval: float) -> float:
        import time

        return time.time()

    async def pause_sending(self, until: float) -> None: ...

    async def link_customers(self, links: Sequence[tuple[str, str]]) -> None: ...

    async def company_for_customer(self, customer_id: str) -> str | None:
        return None

    async def park_event(self, *, source: str, key: str, payload: bytes, reason: str) -> None: ...

    async def parked_events(self, *, source: str, limit: int) -> list[tuple[str, bytes]]:
        return []

    async def unpark_event(self, *, source: str, key: str) -> None: ...

    async def count_parked(self) -> int:
        return 0

    # bulk jobs: never any (the floor stores nothing to pack) ----------------------------------
    async def retry_now(self, *, one_company: bool = False) -> int:
        return 0

    async def waiting_companies(self, limit: int) -> int:
        return 0

    async def pack_job(self, **_: Any) -> BulkJob | None:  # type: ignore[override]
        return None

    async def take_job(self, *, owner: str, lease_seconds: float) -> BulkJob | None:
        return None

    async def job_companies(self, job_id: str) -> list[tuple[str, int]]:
        return []

    async def job_rows(self, job_id: str, companies: Sequence[str]) -> list[Claim]:
        return []

    async def job_submitted(self, *_: Any, **__: Any) -> bool:  # type: ignore[override]
        return False

    async def job_polled(self, *_: Any, **__: Any) -> bool:  # type: ignore[override]
        return False

    async def job_uploading(self, job: BulkJob, *, owner: str, lease: float) -> bool:
        return False

    async def job_deferred(self, *_: Any, **__: Any) -> bool:  # type: ignore[override]
        return False

    async def job_completed(self, *_: Any, **__: Any) -> bool:  # type: ignore[override]
        return False

    async def job_split(self, *_: Any, **__: Any) -> list[str] | None:  # type: ignore[override]
        return None

    async def release_job(self, job: BulkJob, *, owner: str) -> None: ...

    async def unfinished_job(self) -> BulkJob | None:
        return None

    async def get_job(self, job_id: str) -> BulkJob | None:
        return None

    async def list_jobs(self, **_: Any) -> list[BulkJob]:  # type: ignore[override]
        return []


app = service_app(store=NullStore())
