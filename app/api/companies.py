"""`POST /companies` and `POST /companies/bulk`: validate, store durably, answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response

from app.api.admission import bulk_admission
from app.api.body import parse, read_body
from app.api.deps import IngestCaller, SettingsDep, StoreDep, admit
from app.api.prefer import MAX_WAIT_SECONDS, wait_seconds
from app.api.routing import RequestRoute, idempotency_key_of
from app.api.schemas import (
    Accepted,
    BulkAccepted,
    BulkIn,
    CompanyIn,
    DeliveryOut,
    fast_companies,
)
from app.config import Settings
from app.domain.models import Idempotency
from app.domain.quality import Rules
from app.errors import ErrorBody
from app.ingest import review_api, store_api
from app.store.store import Store

router = APIRouter(tags=["companies"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description=(
            "Repeat a request safely: the same key from the same caller within 24 h answers "
            "the first request's id and stores nothing new; with another body it is a 422."
        ),
    ),
]
Prefer = Annotated[
    str | None,
    Header(
        description=(
            f"`wait=N` (N whole seconds, capped at {MAX_WAIT_SECONDS}): wait up to N seconds "
            "for the upstream outcome. 200 once delivered, 502 once Userpilot permanently "
            "rejected it, else 202 (still queued). Every Prefer header is read (RFC 7240), the "
            "first `wait` counts; one that is not whole seconds (`1.5`, `1e2`, `-1`) is ignored."
        ),
    ),
]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        **_error("Missing or unknown relay key."),
        "headers": {
            "WWW-Authenticate": {
                "description": 'The scheme to use: `Bearer realm="userpilot-relay"`.',
                "schema": {"type": "string"},
            }
        },
    },
    403: _error("The relay key's role may not use this route."),
    503: _error("The store is unreachable: nothing was changed; retry."),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: _error("The body stalled or trickled past the read timeouts: nothing was stored."),
    413: _error("The body is over the configured limit."),
    415: _error("The body is not application/json."),
    422: _error("Invalid payload: `errors` names each offending field."),
}


PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=N`: how long the answer waited for the outcome at most.",
        "schema": {"type": "string"},
    }
}


def _body_schema(model: type[CompanyIn] | type[BulkIn]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def parse_wait(prefer: str | None) -> int | None:
    """Seconds from one `Prefer` header's `wait=N`, capped at 30; None when absent."""
    return wait_seconds([prefer] if prefer else ())


Companies = list[tuple[str, dict[str, Any]]]


def validated(body: bytes, *, bulk: bool) -> Companies:
    """The body's (company_id, metadata) pairs, or a 422 naming every bad field."""
    fast = fast_companies(body, bulk=bulk)
    if fast is not None:
        return fast
    if bulk:
        return [(c.company_id, c.metadata) for c in parse(BulkIn, body).companies]
    company = parse(CompanyIn, body)
    return [(company.company_id, company.metadata)]


def _reviewed(body: bytes, rules: Rules, store: Store, *, bulk: bool) -> Companies:
    """`validated`, then the ingest service's review at the API's door (a 422 when something
    does not fit)."""
    return review_api(validated(body, bulk=bulk), rules, store.catalogue.first_types(), bulk=bulk)


def fingerprint(route: str, companies: Companies) -> str:
    """The request's meaning, independent of key order and whitespace."""
    canonical = orjson.dumps([route, companies], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


async def post_company(
    request: Request,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Response:
    """Store one company update and answer its delivery id.

    The update is committed durably before the 202: it will reach Userpilot, merged with
    other updates of the same company, paced under the rate limit and retried through
    outages. `null` values remove the property in Userpilot.
    """
    del idempotency_key, prefer  # documented here; read from the request below
    state = request.state
    settings: Settings = state.settings
    store: Store = state.store
    caller = admit(request, settings, ("ingest",), "ingest")
    key = idempotency_key_of(request)
    body = await read_body(request, limit=settings.relay_max_body_bytes)
    companies = _reviewed(body, settings.quality_rules(), store, bulk=False)
    idempotency = None
    if key is not None:
        idempotency = Idempotency(
            caller=caller.name,
            key=key,
            fingerprint=fingerprint("companies", companies),
            ttl_seconds=settings.relay_idempotency_ttl_seconds,
        )
    wait = wait_seconds(request.headers.getlist("prefer"))
    # A reused Idempotency-Key (422) and an unreachable store (503) are answered by the one
    # handler in app/errors.py. A caller that waits never waits on a bulk job.
    result = await store_api(
        store,
        companies,
        caller=caller.name,
        bulk=False,
        idempotency=idempotency,
        sourced=state.sourced_properties,
        realtime_only=wait is not None,
    )
    delivery_id = result.ids[0]
    assert delivery_id is not None
    status = "queued"
    if result.replayed:  # the first request's delivery, wherever it stands now
        first = await store.deliveries.get(delivery_id)
        status = first.status if first else status
    if wait is None:
        return _json(202, {"id": delivery_id, "status": status})
    return await _wait_for_outcome(store, delivery_id, wait, replayed=result.replayed)


router.add_api_route(
    "/companies",
    post_company,
    methods=["POST"],
    status_code=202,
    response_model=Accepted,
    openapi_extra=_body_schema(CompanyIn),
    responses={
        200: {
            "model": DeliveryOut,
            "description": "Delivered (with `Prefer: wait`).",
            "headers": PREFERENCE_APPLIED,
        },
        502: {
            "model": DeliveryOut,
            "description": "Userpilot permanently rejected it (with `Prefer: wait`): dead.",
            "headers": PREFERENCE_APPLIED,
        },
        409: {"model": ErrorBody, "description": "The company was erased (`company_erased`)."},
        **AUTH_ERRORS,
        **BODY_ERRORS,
    },
    route_class_override=RequestRoute,
)


async def _wait_for_outcome(
    store: Store, delivery_id: str, wait: int, *, replayed: bool = False
) -> Response:
    applied = {"Preference-Applied": f"wait={wait}"}
    deadline = time.monotonic() + wait
    with store.signals.watching(delivery_id) as event:
        # Nothing settles a new update before this line (settling happens on this loop), so
        # the first look waits for this replica's signal (another replica's is polled for); a
        # replayed request's first update may have settled long ago: looked at at once.
        if not replayed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, 0.25)):  # no task, as wait_for makes
                    await event.wait()
        while True:
            delivery = store.signals.outcome(delivery_id) or await store.deliveries.get(delivery_id)
            if delivery is not None and delivery.status in ("delivered", "dead"):
                status = 200 if delivery.status == "delivered" else 502
                return _json(status, DeliveryOut.of(delivery).model_dump(), applied)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                current = delivery.status if delivery else "queued"
                return _json(202, {"id": delivery_id, "status": current}, applied)
            # Woken at once when this replica records it; polled for the others'.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.25)):
                    await event.wait()


@router.post(
    "/companies/bulk",
    status_code=202,
    response_model=BulkAccepted,
    openapi_extra=_body_schema(BulkIn),
    responses={
        **AUTH_ERRORS,
        **BODY_ERRORS,
        503: _error(
            "The store is unreachable, or other bulk requests hold every parsing turn "
            "(`busy`): nothing was stored; retry after `Retry-After`."
        ),
    },
)
async def post_companies_bulk(
    request: Request,
    caller: IngestCaller,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Store up to 10,000 company updates at once, all or none.

    A 422 names the index and field of every bad item (`companies[3].metadata.plan`) and
    stores nothing. Follow the batch with GET /batches/{batch_id}; item i's delivery is
    GET /deliveries/{batch_id}.{i}.
    """
    admission = bulk_admission(request, settings)
    async with admission.holding():
        body = await read_body(request, limit=settings.relay_max_bulk_body_bytes)
        async with admission.turn():
            rules = settings.quality_rules()
            companies = await asyncio.to_thread(_reviewed, body, rules, store, bulk=True)
            del body  # the parsed form replaces it
            names: frozenset[str] = request.state.sourced_properties
            return await _store_bulk(
                companies, caller.name, settings, store, idempotency_key, names
            )


async def _store_bulk(
    companies: Companies,
    caller: str,
    settings: SettingsDep,
    store: Store,
    idempotency_key: str | None,
    names: frozenset[str],
) -> Response:
    idempotency = None
    if idempotency_key is not None:
        idempotency = Idempotency(
            caller=caller,
            key=idempotency_key,
            fingerprint=fingerprint("companies/bulk", companies),
            ttl_seconds=settings.relay_idempotency_ttl_seconds,
        )
    result = await store_api(
        store, companies, caller=caller, bulk=True, idempotency=idempotency, sourced=names
    )
    body = {
        "batch_id": result.batch_id,
        "accepted": result.stored,
        "suppressed": sorted(result.suppressed),
    }
    return _json(202, body)
