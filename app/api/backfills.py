"""`POST /backfills`, `GET /backfills`, `GET /backfills/{backfill_id}` (admin): initial syncs
and reconciliations from HubSpot and Stripe (docs/backfills.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.companies import AUTH_ERRORS, _error
from app.api.deps import AdminCaller, RunnerDep, StoreDep
from app.errors import RelayError
from app.store.backfills import Backfill, BackfillStatus, Mode

router = APIRouter(tags=["operations"])

Source = Literal["hubspot", "stripe"]
_BACKFILL_ID = r"^bf_[0-9]{13}_[0-9a-f]{12}$"


class BackfillIn(BaseModel):
    """What to backfill."""

    model_config = ConfigDict(extra="forbid")

    source: Source = Field(
        description="`hubspot` (its companies) or `stripe` (its customers, then its subscriptions)."
    )
    mode: Mode = Field(
        default="full",
        description=(
            "`full`: store every company's mapped values; `reconcile`: only the properties "
            "whose value differs from what the relay last delivered (what "
            "RELAY_RECONCILE_INTERVAL_SECONDS runs)."
        ),
    )


class BackfillStarted(BaseModel):
    """The backfill was recorded; this replica drives it now."""

    id: str
    status: Literal["running"]


class BackfillOut(BaseModel):
    """One backfill and how far it got."""

    id: str
    source: str
    mode: Mode
    status: BackfillStatus = Field(
        description="`running`, `completed` (every page read), `failed` (`last_error` says why)."
    )
    pages: int = Field(description="Pages read and committed.")
    companies: int = Field(
        description="Records read (HubSpot companies; Stripe customers and subscriptions)."
    )
    enqueued: int = Field(description="Companies stored for delivery, as bulk batches.")
    skipped: int = Field(
        description=(
            "Records not stored: every value older than what a webhook already applied, no "
            "company, or an unusable record (counted in `errors` too)."
        )
    )
    unchanged: int = Field(description="Reconciliation: the same values as last delivered.")
    errors: int = Field(description="Records the relay could not use, and the failure if any.")
    total: int | None = Field(description="The provider's count of records, when it gives one.")
    last_error: str | None
    owner: str | None = Field(description="The replica driving it (host:pid:tag) while running.")
    started_at: float = Field(description="Unix time.")
    updated_at: float
    finished_at: float | None

    @classmethod
    def of(cls, backfill: Backfill) -> BackfillOut:
        return cls(
            id=backfill.id,
            source=backfill.source,
            mode=backfill.mode,
            status=backfill.status,
            pages=backfill.pages,
            companies=backfill.companies,
            enqueued=backfill.enqueued,
            skipped=backfill.skipped,
            unchanged=backfill.unchanged,
            errors=backfill.errors,
            total=backfill.total,
            last_error=backfill.last_error,
            owner=backfill.owner if backfill.status == "running" else None,
            started_at=backfill.started_at,
            updated_at=backfill.updated_at,
            finished_at=backfill.finished_at,
        )


class BackfillPage(BaseModel):
    """Backfills newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[BackfillOut]
    next_cursor: str | None


@router.post(
    "/backfills",
    status_code=202,
    response_model=BackfillStarted,
    responses={
        **AUTH_ERRORS,
        400: _error("The source is not configured: the message names the setting to set."),
        409: _error("A backfill of that source runs already (its id is in the message)."),
        422: _error("Invalid body: an unknown source or mode, or an unknown field."),
    },
)
async def start_backfill(body: BackfillIn, _: AdminCaller, runner: RunnerDep) -> BackfillStarted:
    """Start a backfill of one source (admin): every company read through the provider's list
    API, stored as bulk batches and drained through Userpilot's bulk jobs. One per source at a
    time, across every replica; a relay stopped or killed meanwhile resumes it from its last
    committed page."""
    backfill = await runner.start(body.source, body.mode)  # NotConfigured, BackfillConflict
    return BackfillStarted(id=backfill.id, status="running")


@router.get(
    "/backfills",
    response_model=BackfillPage,
    responses={**AUTH_ERRORS, 422: _error("Invalid query parameter.")},
)
async def list_backfills(
    _: AdminCaller,
    store: StoreDep,
    source: Annotated[Source | None, Query(description="Only this source's.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=_BACKFILL_ID, description="`next_cursor` of the last page.")
    ] = None,
) -> BackfillPage:
    """The backfills, newest first, one page at a time (admin)."""
    found = await store.backfills.listing(source=source, before=cursor, limit=limit)
    return BackfillPage(
        items=[BackfillOut.of(b) for b in found],
        next_cursor=found[-1].id if len(found) == limit else None,
    )


@router.get(
    "/backfills/{backfill_id}",
    response_model=BackfillOut,
    responses={**AUTH_ERRORS, 404: _error("No such backfill."), 422: _error("Invalid id.")},
)
async def get_backfill(
    backfill_id: Annotated[str, Path(min_length=1, max_length=64, description="Its id.")],
    _: AdminCaller,
    store: StoreDep,
) -> BackfillOut:
    """One backfill: status, pages, companies enqueued, skipped and unchanged, errors, times
    (admin)."""
    found = (
        await store.backfills.get(backfill_id)
        if backfill_id.isascii() and backfill_id.isprintable()
        else None
    )
    if found is None:
        raise RelayError(404, "not_found", "no backfill with this id")
    return BackfillOut.of(found)
