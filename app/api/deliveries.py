"""Delivery and batch status; dead letters: list, replay, purge."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from app.api.companies import AUTH_ERRORS, _error
from app.api.deps import AdminCaller, AnyCaller, StoreDep
from app.api.schemas import BatchOut, DeliveryOut, DeliveryPage, Purged, Replayed
from app.config import ApiKey
from app.domain.errors import NotDead
from app.domain.rules import MAX_COMPANY_ID, has_control, parse_ascii_int
from app.errors import FieldError, RelayError

router = APIRouter(tags=["deliveries"])

DeliveryId = Annotated[str, Path(min_length=1, max_length=64, description="Delivery id.")]
CompanyFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=MAX_COMPANY_ID, description="Only this company's deliveries."),
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("No such delivery.")}
READ_ERRORS = {**AUTH_ERRORS, **NOT_FOUND, 422: _error("Invalid path or query parameter.")}


def _missing(what: str) -> RelayError:
    return RelayError(404, "not_found", f"no {what} with this id")


def _company(company_id: str | None) -> str | None:
    """The `company_id` filter, refused when it cannot name a stored company."""
    if company_id is not None and has_control(company_id):
        raise RelayError(
            422,
            "invalid_request",
            "invalid request: company_id",
            errors=[
                FieldError(field="query.company_id", message="must not contain control characters")
            ],
        )
    return company_id


def _visible(caller: ApiKey, owner: str | None) -> bool:
    """An ingest key sees what it stored; an admin key sees everything."""
    return caller.role == "admin" or owner == caller.name


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut, responses=READ_ERRORS)
async def get_delivery(delivery_id: DeliveryId, caller: AnyCaller, store: StoreDep) -> DeliveryOut:
    """Where one update stands: `queued`, `delivering`, `delivered` or `dead`, with its
    attempts and Userpilot's last status, error and x-request-id.

    An ingest key sees only the deliveries it stored (another caller's is a 404); an admin
    key sees every delivery."""
    delivery = None if has_control(delivery_id) else await store.deliveries.get(delivery_id)
    if delivery is None or not _visible(caller, delivery.caller):
        raise _missing("delivery")
    return DeliveryOut.of(delivery)


@router.get(
    "/batches/{batch_id}",
    response_model=BatchOut,
    responses={**READ_ERRORS, 404: _error("No such batch.")},
    tags=["companies"],
)
async def get_batch(
    batch_id: Annotated[str, Path(min_length=1, max_length=64)],
    caller: AnyCaller,
    store: StoreDep,
) -> BatchOut:
    """A bulk request's deliveries counted by status (an ingest key sees only its own)."""
    batch = None if has_control(batch_id) else await store.deliveries.batch(batch_id)
    if batch is None or not _visible(caller, batch.caller):
        raise _missing("batch")
    return BatchOut.of(batch)


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    responses={**AUTH_ERRORS, 422: _error("Invalid query parameter.")},
)
async def list_deliveries(
    _: AdminCaller,
    store: StoreDep,
    status: Annotated[
        Literal["queued", "delivering", "delivered", "dead"] | None,
        Query(description="Only deliveries in this state, e.g. `dead` for the dead letters."),
    ] = None,
    company_id: CompanyFilter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,19}$", description="`next_cursor` of the last page."),
    ] = None,
) -> DeliveryPage:
    """Deliveries in arrival order, one page at a time (admin)."""
    after = parse_ascii_int(cursor) if cursor else 0
    if after is None:
        raise RelayError(
            422,
            "invalid_request",
            "invalid request: cursor",
            errors=[FieldError(field="query.cursor", message="must be a next_cursor from a page")],
        )
    items = await store.deliveries.listing(
        status=status, company_id=_company(company_id), after_seq=after, limit=limit
    )
    next_cursor = str(items[-1].seq) if len(items) == limit else None
    return DeliveryPage(items=[DeliveryOut.of(d) for d in items], next_cursor=next_cursor)


@router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=DeliveryOut,
    responses={**READ_ERRORS, 409: _error("The delivery is not dead.")},
)
async def replay_delivery(delivery_id: DeliveryId, _: AdminCaller, store: StoreDep) -> DeliveryOut:
    """Put one dead delivery back in the queue (admin).

    It never overwrites a property that a later update of the same company has already set.
    """
    # A delivery that is not dead raises `NotDead`: a 409 (app/errors.py).
    delivery = None if has_control(delivery_id) else await store.deliveries.replay(delivery_id)
    if delivery is None:
        raise _missing("delivery")
    return DeliveryOut.of(delivery)


@router.post(
    "/deliveries/replay",
    response_model=Replayed,
    responses={**AUTH_ERRORS, 422: _error("Invalid query parameter.")},
)
async def replay_all(
    _: AdminCaller,
    store: StoreDep,
    company_id: CompanyFilter = None,
) -> Replayed:
    """Put every dead delivery (of one company, when given) back in the queue (admin).

    Deliveries the relay itself refused (they cannot be sent as stored) stay dead."""
    count = await store.deliveries.replay_dead(company_id=_company(company_id))
    return Replayed(replayed=count)


@router.delete(
    "/deliveries/{delivery_id}",
    response_model=Purged,
    responses={**READ_ERRORS, 409: _error("Only a dead delivery can be purged.")},
)
async def purge_delivery(delivery_id: DeliveryId, _: AdminCaller, store: StoreDep) -> Purged:
    """Delete one dead delivery for good (admin)."""
    if has_control(delivery_id):
        raise _missing("delivery")
    count = await store.deliveries.purge_dead(delivery_id=delivery_id)
    if count == 0:
        delivery = await store.deliveries.get(delivery_id)
        if delivery is None:
            raise _missing("delivery")
        raise NotDead(delivery.status, action="purged")
    return Purged(purged=count)


@router.delete(
    "/deliveries",
    response_model=Purged,
    responses={**AUTH_ERRORS, 422: _error("Invalid query parameter.")},
)
async def purge_dead(
    _: AdminCaller,
    store: StoreDep,
    status: Annotated[
        Literal["dead"], Query(description="Must be `dead`: only dead letters can be purged.")
    ],
    company_id: CompanyFilter = None,
) -> Purged:
    """Delete every dead delivery (of one company, when given) for good (admin)."""
    return Purged(purged=await store.deliveries.purge_dead(company_id=_company(company_id)))
