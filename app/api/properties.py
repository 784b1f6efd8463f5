"""`GET /properties` (admin): the catalogue of the properties sent, and type conflicts.

Every stored update is counted per property and type (`app/store/catalogue.py`), whichever
path it came by (`api`, `bulk`, `hubspot`, `stripe`), so a team can check that its data maps
as it expects before relying on it in Userpilot: a property seen with two types is a
conflict, logged once as a warning and counted in `userpilot_relay_property_type_conflicts`.
The list comes a page of names at a time (`limit`, `after`, `next`); each name records the
caller that added it, and a caller's new names past RELAY_CATALOGUE_NAMES_PER_CALLER are
counted in `userpilot_relay_catalogue_names_refused_total{caller}` instead of recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from app.api.companies import AUTH_ERRORS, _error
from app.api.deps import AdminCaller, SettingsDep, StoreDep
from app.domain.rules import property_name_problem
from app.domain.values import SeenType
from app.errors import FieldError, RelayError
from app.metrics import CATALOGUE_NAMES_REFUSED, PROPERTY_CONFLICTS
from app.store.catalogue import PropertySeen
from app.store.store import Store

router = APIRouter(tags=["operations"])
log = logging.getLogger("userpilot_relay.catalogue")

FLUSH_SECONDS = 5.0
PAGE_DEFAULT = 500
PAGE_MAX = 1000

Source = Annotated[str, Field(description="`api`, `bulk`, `hubspot` or `stripe`.")]


class TypeOut(BaseModel):
    type: SeenType = Field(description="`string`, `number`, `boolean` or `date`.")
    count: int = Field(description="Values of this type stored.")
    first_seen: float = Field(description="Unix time of the first.")
    last_seen: float = Field(description="Unix time of the last.")
    sources: list[Source]


class PropertyOut(BaseModel):
    name: str
    types: list[TypeOut] = Field(description="The types seen, the first recorded first.")
    conflict: bool = Field(description="Seen with more than one type.")
    declared: str | None = Field(description="Its type in RELAY_PROPERTY_SCHEMA_FILE, if any.")
    pii_allowed: bool = Field(
        description="Cleared to hold personal data (the schema, RELAY_PII_ALLOWED_PROPERTIES)."
    )
    count: int = Field(description="Values stored, all types.")
    first_seen: float
    last_seen: float
    sources: list[Source]
    added_by: str | None = Field(
        description="The caller that added the name: a relay key's name, `hubspot` or "
        "`stripe` (null when recorded before callers were)."
    )


class PropertiesOut(BaseModel):
    """A page of the properties recorded, by name."""

    properties: list[PropertyOut]
    conflicts: int = Field(description="Properties seen with more than one type, in all.")
    next: str | None = Field(
        description="Pass as `after` for the next page; null on the last page."
    )


@router.get(
    "/properties",
    response_model=PropertiesOut,
    responses={**AUTH_ERRORS, 422: _error("Invalid query parameter.")},
)
async def list_properties(
    _: AdminCaller,
    store: StoreDep,
    settings: SettingsDep,
    conflicts: Annotated[
        bool, Query(description="Only the properties seen with more than one type.")
    ] = False,
    limit: Annotated[
        int, Query(ge=1, le=PAGE_MAX, description="Properties in one page, 1 to 1,000.")
    ] = PAGE_DEFAULT,
    after: Annotated[
        str | None,
        Query(description="Start after this property name: the `next` of the last page."),
    ] = None,
) -> PropertiesOut:
    """The properties stored so far, by name, a page at a time: types with counts, first and
    last seen, sources, the caller that added each (admin). Follow `next` until it is null."""
    if after is not None and (problem := property_name_problem(after)) is not None:
        raise RelayError(
            422,
            "invalid_request",
            "invalid request: after",
            errors=[FieldError(field="query.after", message=f"must be a property name: {problem}")],
        )
    page = await store.catalogue.page(after=after, limit=limit, conflicts=conflicts)
    PROPERTY_CONFLICTS.set(page.conflicts)
    rules = settings.quality_rules()
    out = []
    for prop in page.properties:
        rule = rules.schema.properties.get(prop.name) if rules.schema is not None else None
        out.append(_out(prop, None if rule is None else rule.type, rules.cleared(prop.name)))
    return PropertiesOut(properties=out, conflicts=page.conflicts, next=page.next)


@router.delete(
    "/properties/{name}",
    status_code=204,
    response_class=Response,
    responses={
        **AUTH_ERRORS,
        404: _error("No such property in the catalogue."),
        422: _error("Invalid property name."),
    },
)
async def forget_property(
    name: Annotated[str, Path(description="The property's name, URL-encoded.")],
    _: AdminCaller,
    store: StoreDep,
) -> Response:
    """Forget a property: its counts and the type first recorded for it (admin), for example
    once the senders of a conflicting type are fixed, so RELAY_TYPE_DRIFT starts afresh."""
    known = property_name_problem(name) is None and await store.catalogue.forget(name)
    if not known:
        raise RelayError(404, "not_found", "no property with this name in the catalogue")
    return Response(status_code=204)


def _out(prop: PropertySeen, declared: str | None, cleared: bool) -> PropertyOut:
    types = [
        TypeOut(
            type=t.type,
            count=t.seen,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            sources=list(t.sources),
        )
        for t in prop.types
    ]
    sources = sorted({s for t in prop.types for s in t.sources})
    return PropertyOut(
        name=prop.name,
        types=types,
        conflict=prop.conflict,
        declared=declared,
        pii_allowed=cleared,
        count=sum(t.seen for t in prop.types),
        first_seen=min(t.first_seen for t in prop.types),
        last_seen=max(t.last_seen for t in prop.types),
        sources=sources,
        added_by=prop.added_by,
    )


def count_refused_names(caller: str, values: int) -> None:
    """The catalogue did not record `values` values of new names from `caller` (a relay key's
    name or a source: bounded)."""
    CATALOGUE_NAMES_REFUSED.labels(caller=caller).inc(values)


async def flush_catalogue(store: Store, *, every: float = FLUSH_SECONDS) -> None:
    """Add this process's counts to the shared catalogue every few seconds (until cancelled),
    and keep the conflicts gauge current; a failed flush keeps its counts for the next."""
    while True:
        await asyncio.sleep(every)
        try:
            PROPERTY_CONFLICTS.set(await store.catalogue.flush())
        except Exception as exc:  # the store is down: readiness says so; counts are kept
            log.debug("property catalogue flush failed", extra={"error": type(exc).__name__})
