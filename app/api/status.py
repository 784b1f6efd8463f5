"""`GET /status` (admin): what an operator asks first, in one answer.

The queue by state, the age of the oldest waiting update, Userpilot's last answer and the
pacing in force; `userpilot-relay status` shows it. It reads only the store interface and the
settings: no route knows the dispatcher.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app import __version__
from app.api.companies import AUTH_ERRORS
from app.api.deps import AdminCaller, SettingsDep, StoreDep
from app.api.jobs import JobOut
from app.domain.models import UpstreamAnswer as StoredAnswer

router = APIRouter(tags=["operations"])

# Userpilot's last answer is looked for among this many of the newest updates that have one.
RECENT = 200


class QueueDepth(BaseModel):
    """Stored updates by state, now."""

    queued: int = Field(description="Waiting for their call (unexpanded bulk items included).")
    delivering: int = Field(description="In a call to Userpilot now.")
    dead: int = Field(description="Dead letters, waiting for a replay or a purge.")
    oldest_queued_age_seconds: float | None = Field(
        description="How long the oldest waiting update has waited; null when none waits."
    )


class UpstreamAnswer(BaseModel):
    """Userpilot's last answer, as recorded on the update it was for."""

    delivery_id: str
    company_id: str
    status: int | None = Field(description="Userpilot's HTTP status; null for a network error.")
    error: str | None = Field(description="Userpilot's error, or the network error.")
    at: float = Field(description="Unix time the answer was recorded.")


class RelayStatus(BaseModel):
    """The relay's queue, Userpilot's last answer and the pacing in force."""

    version: str
    queue: QueueDepth
    last_upstream: UpstreamAnswer | None = Field(
        description=(
            f"The most recently recorded answer among the {RECENT} newest updates that have one "
            "(null when none has been sent yet)."
        )
    )
    recent_window: int = Field(
        description="How many of the newest updates with an answer were looked at."
    )
    rate_limit_per_minute: int = Field(description="RELAY_RATE_LIMIT_PER_MINUTE: upstream calls.")
    delivery_concurrency: int = Field(description="RELAY_DELIVERY_CONCURRENCY: calls in flight.")
    upstream_bulk: Literal["auto", "off"] = Field(description="RELAY_UPSTREAM_BULK.")
    paused_until: float | None = Field(
        default=None,
        description=(
            "Unix time until which every call to Userpilot is held after a 429 (capped at "
            "RELAY_MAX_UPSTREAM_PAUSE_SECONDS); null when not paused."
        ),
    )
    pause_reason: str | None = Field(
        default=None, description="Why calls are paused (which call got the 429, for how long)."
    )
    bulk_job: JobOut | None = Field(
        description="The bulk job running now, else the oldest waiting one (null when none)."
    )


def last_answer(answers: list[StoredAnswer]) -> UpstreamAnswer | None:
    if not answers:
        return None
    latest = max(answers, key=lambda a: (a.at, a.seq))
    return UpstreamAnswer(
        delivery_id=latest.delivery_id,
        company_id=latest.company_id,
        status=latest.status,
        error=latest.error,
        at=latest.at,
    )


@router.get("/status", response_model=RelayStatus, responses=AUTH_ERRORS)
async def get_status(_: AdminCaller, settings: SettingsDep, store: StoreDep) -> RelayStatus:
    """The queue by state, Userpilot's last answer and the pacing in force (admin)."""
    stats = await store.deliveries.stats()
    job = await store.jobs.unfinished()
    oldest = stats.oldest_queued_at
    paused_until, pause_reason = await store.pacing.send_pause()
    paused = paused_until > time.time()
    return RelayStatus(
        version=__version__,
        queue=QueueDepth(
            queued=stats.queued,
            delivering=stats.delivering,
            dead=stats.dead,
            oldest_queued_age_seconds=None if oldest is None else max(0.0, time.time() - oldest),
        ),
        last_upstream=last_answer(await store.deliveries.recent_answers(RECENT)),
        recent_window=RECENT,
        rate_limit_per_minute=settings.relay_rate_limit_per_minute,
        delivery_concurrency=settings.relay_delivery_concurrency,
        upstream_bulk=settings.relay_upstream_bulk,
        bulk_job=None if job is None else JobOut.of(job, settings.relay_bulk_stuck_seconds),
        paused_until=paused_until if paused else None,
        pause_reason=pause_reason if paused else None,
    )
