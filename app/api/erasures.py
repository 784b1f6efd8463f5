"""`POST /erasures`, `GET /erasures`, `GET /erasures/{id}` (admin) and `GET`/`DELETE
/suppressions/{company_id}`: forgetting companies and keeping them forgotten (docs/erasure.md)."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from app.api.companies import AUTH_ERRORS, _error
from app.api.deps import AdminCaller, AnyCaller, StoreDep
from app.domain.errors import NotFound
from app.domain.rules import MAX_COMPANY_ID, company_id_problem, has_control
from app.store.erasures import Erasure

log = logging.getLogger("userpilot_relay.erasure")

router = APIRouter(tags=["erasure"])

MAX_COMPANIES = 10_000
MAX_ID = 1024  # the longest company id a suppression lookup takes
ERASURE_ID = r"^er_[0-9]{13}_[0-9a-f]{12}$"  # as the store makes them; the cursor is one
MAX_REASON = 500
ERASURE_STATUSES = ("running", "completed", "failed")
ErasureStatus = Literal["running", "completed", "failed"]


def usable_company_id(value: str) -> str:
    """An id the relay itself takes (as on `POST /companies`): an erasure of an id no door
    stores would only fail Userpilot's delete, with the other companies of its request."""
    problem = company_id_problem(value)
    if problem is not None:
        raise PydanticCustomError("company_id", problem)
    return value


CompanyId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_COMPANY_ID),
    AfterValidator(usable_company_id),
]


def printable_reason(reason: str) -> str:
    """A reason is text for the audit trail: no NUL or other control character."""
    if has_control(reason):
        raise ValueError("must not contain control characters")
    return reason


class ErasureIn(BaseModel):
    """Companies to forget in Userpilot and in the relay, and why (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    company_ids: list[CompanyId] = Field(min_length=1, max_length=MAX_COMPANIES)
    reason: Annotated[str, AfterValidator(printable_reason)] = Field(
        min_length=1, max_length=MAX_REASON
    )


class UpstreamOut(BaseModel):
    """Userpilot's answer to the delete call."""

    status: int | None
    request_id: str | None = Field(description="Userpilot's `x-request-id`: quote it to support.")
    accepted_at: float | None
    scheduled_for: float | None = Field(description="The 02:00 UTC run that deletes them.")


class ErasureOut(BaseModel):
    """One erasure: the companies are counted, never listed."""

    id: str
    status: ErasureStatus
    reason: str
    requested_by: str | None
    companies: int
    erased: int
    created_at: float
    finished_at: float | None
    last_error: str | None
    upstream: UpstreamOut

    @classmethod
    def of(cls, e: Erasure) -> ErasureOut:
        return cls(
            id=e.id,
            status=e.status,
            reason=e.reason,
            requested_by=e.requested_by,
            companies=e.companies,
            erased=e.erased,
            created_at=e.created_at,
            finished_at=e.finished_at,
            last_error=e.last_error,
            upstream=UpstreamOut(
                status=e.upstream_status,
                request_id=e.upstream_request_id,
                accepted_at=e.upstream_accepted_at,
                scheduled_for=e.upstream_scheduled_for,
            ),
        )


class ErasurePage(BaseModel):
    items: list[ErasureOut]
    next_cursor: str | None


class SuppressionOut(BaseModel):
    company_id: str
    suppressed: bool
    since: float | None
    erasure_id: str | None


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("Not found.")}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: _error("Invalid input: `errors` names the field.")
}


@router.post(
    "/erasures",
    status_code=202,
    response_model=ErasureOut,
    responses={**AUTH_ERRORS, **_INVALID},
)
async def post_erasure(body: ErasureIn, caller: AdminCaller, store: StoreDep) -> ErasureOut:
    """Forget companies: from this answer their updates are suppressed at every door; the
    relay deletes what it holds of them, then asks Userpilot to delete them (its daily run at
    02:00 UTC). Follow it with `GET /erasures/{id}`."""
    erasure = await store.erasures.create(body.company_ids, reason=body.reason, by=caller.name)
    log.info(
        "erasure accepted",
        extra={"erasure_id": erasure.id, "companies": erasure.companies, "caller": caller.name},
    )
    return ErasureOut.of(erasure)


@router.get("/erasures", response_model=ErasurePage, responses={**AUTH_ERRORS, **_INVALID})
async def list_erasures(
    _: AdminCaller,
    store: StoreDep,
    status: ErasureStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(pattern=ERASURE_ID)] = None,
) -> ErasurePage:
    """Erasures, newest first, a page at a time (`next_cursor` to the next page)."""
    found = await store.erasures.page(status=status, before=cursor, limit=limit + 1)
    items = found[:limit]
    more = len(found) > limit
    return ErasurePage(
        items=[ErasureOut.of(e) for e in items], next_cursor=items[-1].id if more else None
    )


@router.get(
    "/erasures/{erasure_id}",
    response_model=ErasureOut,
    responses={**AUTH_ERRORS, **_NOT_FOUND, **_INVALID},
)
async def get_erasure(
    erasure_id: Annotated[str, Path(max_length=100)], _: AdminCaller, store: StoreDep
) -> ErasureOut:
    """One erasure: its status, counts, times, reason and Userpilot's answer."""
    erasure = await store.erasures.get(erasure_id) if re.match(ERASURE_ID, erasure_id) else None
    if erasure is None:
        raise NotFound("erasure")
    return ErasureOut.of(erasure)


@router.get(
    "/suppressions/{company_id}",
    response_model=SuppressionOut,
    responses={**AUTH_ERRORS, **_INVALID},
)
async def get_suppression(
    company_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
    _: AnyCaller,
    store: StoreDep,
) -> SuppressionOut:
    """Whether the company is suppressed (erased): its updates are then not taken."""
    found = await store.erasures.suppression(company_id)
    return SuppressionOut(
        company_id=company_id,
        suppressed=found is not None,
        since=None if found is None else found[0],
        erasure_id=None if found is None else found[1],
    )


@router.delete(
    "/suppressions/{company_id}",
    status_code=204,
    response_class=Response,
    responses={**AUTH_ERRORS, **_NOT_FOUND, **_INVALID},
)
async def lift_suppression(
    company_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
    caller: AdminCaller,
    store: StoreDep,
) -> Response:
    """Lift a company's suppression (a customer who came back): its updates are taken again."""
    if not await store.erasures.lift(company_id):
        raise NotFound("suppression")
    log.info("suppression lifted", extra={"caller": caller.name})
    return Response(status_code=204)
