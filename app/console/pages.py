"""The console's pages: the overview, deliveries, dead letters, bulk jobs, backfills, properties.

Each page reads through the store and the functions the admin routes use (`last_answer`,
`replay`, `replay_dead`, `purge_dead`), never through the relay's own HTTP API. Query
parameters are checked here and a bad one is a 400 page that says which; every action is a
POST carrying the session's CSRF token, answered with a redirect (`done` says what happened).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from fastapi import Request, Response
from fastapi.responses import FileResponse
from prometheus_client import REGISTRY

from app.api.jobs import JobOut
from app.api.status import RECENT, last_answer
from app.console import erasures  # noqa: F401  (its routes come before the catch-all below)
from app.console.auth import checked_form, signed_in
from app.console.web import HERE, ConsoleError, link, redirect, render, router, store_of
from app.console.web import settings_of as settings
from app.domain.errors import NotDead
from app.domain.models import STATUSES, Delivery
from app.domain.rules import MAX_COMPANY_ID, has_control
from app.domain.values import SeenType
from app.store.console import DeliveryFilter, Rate

PAGE = 50
_JOB_ID = re.compile(r"^job_[0-9]{13}_[0-9a-f]{12}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
DONE = {  # what a redirect's `done` says; never text from the query itself
    "replayed": "Replayed: back in the queue.",
    "replayed_all": "Replayed {n} dead letters.",
    "purged": "Purged {n} dead letters.",
}


def _text(request: Request, name: str, limit: int) -> str | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if len(value) > limit or has_control(value):
        raise ConsoleError(400, f"{name} must be at most {limit} printable characters.")
    return value


def _time(request: Request, name: str) -> float | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if not _TIME.match(value):
        raise ConsoleError(400, f"{name} must be a time like 2025-01-31T14:00 (UTC).")
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ConsoleError(400, f"{name} is not a valid time.") from None


def _cursor(request: Request) -> int | None:
    value = request.query_params.get("before", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise ConsoleError(400, "before must be a page cursor from a previous page.")
    return int(value)


def _filter(request: Request, *, status: str | None = None) -> DeliveryFilter:
    if status is None:
        status = _text(request, "status", 16)
        if status is not None and status not in STATUSES:
            raise ConsoleError(400, f"status must be one of: {', '.join(STATUSES)}.")
    return DeliveryFilter(
        company_id=_text(request, "company_id", MAX_COMPANY_ID),
        status=status,
        source=_text(request, "source", 64),
        caller=_text(request, "caller", 64),
        since=_time(request, "since"),
        until=_time(request, "until"),
    )


def _done(request: Request) -> str | None:
    message = DONE.get(request.query_params.get("done", ""))
    n = request.query_params.get("n", "")
    return None if message is None else message.format(n=n if n.isdigit() else "?")


def chart(rate: Rate, *, width: int = 600, height: int = 80) -> dict[str, object]:
    """The delivery-rate bars as SVG geometry (rendered inline by the template)."""
    peak = max(rate.per_minute) or 1
    step = width / len(rate.per_minute)
    bars = [
        {
            "x": round(i * step, 1),
            "w": round(step * 0.8, 1),
            "h": round(height * n / peak, 1),
            "y": round(height - height * n / peak, 1),
            "n": n,
            "at": rate.start + 60 * i,
        }
        for i, n in enumerate(rate.per_minute)
    ]
    return {"bars": bars, "width": width, "height": height, "peak": peak, "total": rate.total}


@router.get("/static/console.css")
async def stylesheet(request: Request) -> Response:
    return FileResponse(HERE / "static" / "console.css", media_type="text/css")


@router.get("")
async def overview(request: Request) -> Response:
    signed_in(request)
    store = store_of(request)
    stats = await store.deliveries.stats()
    job = await store.jobs.unfinished()
    running = await store.backfills.listing(source=None, before=None, limit=20)
    circuit = REGISTRY.get_sample_value("userpilot_relay_upstream_circuit_open")
    now = time.time()
    oldest = stats.oldest_queued_at
    return render(
        request,
        "overview.html",
        active="",
        stats=stats,
        oldest_age=None if oldest is None else now - oldest,
        rate=chart(await store.console.rate(now=now)),
        answer=last_answer(await store.deliveries.recent_answers(RECENT)),
        circuit_open=bool(circuit),
        paused_until=await store.pacing.paused_until(),
        job=None if job is None else JobOut.of(job, settings(request).relay_bulk_stuck_seconds),
        backfills=[b for b in running if b.status == "running"],
        now=now,
    )


@router.get("/deliveries")
async def deliveries(request: Request) -> Response:
    signed_in(request)
    where = _filter(request)
    found = await store_of(request).console.search(where, before=_cursor(request), limit=PAGE)
    return render(
        request,
        "deliveries.html",
        active="/deliveries",
        items=found,
        where=where,
        statuses=STATUSES,
        query=dict(request.query_params),
        next_link=_next(request, "/deliveries", found),
    )


def _next(request: Request, path: str, found: list[Delivery]) -> str | None:
    if len(found) < PAGE:
        return None
    query = {k: v for k, v in request.query_params.items() if k not in ("before", "done", "n")}
    return link(request, path, **query, before=found[-1].seq)


def _delivery_id(delivery_id: str) -> str:
    if not delivery_id or len(delivery_id) > 64 or has_control(delivery_id):
        raise ConsoleError(404, "No delivery with this id.")
    return delivery_id


@router.get("/deliveries/{delivery_id}")
async def delivery(request: Request, delivery_id: str) -> Response:
    signed_in(request)
    found = await store_of(request).deliveries.get(_delivery_id(delivery_id))
    if found is None:
        raise ConsoleError(404, "No delivery with this id.")
    return render(request, "delivery.html", active="/deliveries", d=found, done=_done(request))


@router.post("/deliveries/{delivery_id}/replay")
async def replay(request: Request, delivery_id: str) -> Response:
    await checked_form(request)
    try:
        found = await store_of(request).deliveries.replay(_delivery_id(delivery_id))
    except NotDead as exc:
        message = f"Only a dead delivery can be replayed (this one: {exc.state})."
        raise ConsoleError(409, message) from None
    if found is None:
        raise ConsoleError(404, "No delivery with this id.")
    return redirect(request, f"/deliveries/{found.id}", done="replayed")


@router.post("/deliveries/{delivery_id}/purge")
async def purge(request: Request, delivery_id: str) -> Response:
    await checked_form(request)
    store = store_of(request)
    count = await store.deliveries.purge_dead(delivery_id=_delivery_id(delivery_id))
    if count == 0:
        raise ConsoleError(409, "Only a dead delivery can be purged.")
    return redirect(request, "/dead-letters", done="purged", n=count)


@router.get("/dead-letters")
async def dead_letters(request: Request) -> Response:
    signed_in(request)
    where = DeliveryFilter(company_id=_text(request, "company_id", MAX_COMPANY_ID), status="dead")
    store = store_of(request)
    found = await store.console.search(where, before=_cursor(request), limit=PAGE)
    return render(
        request,
        "dead_letters.html",
        active="/dead-letters",
        items=found,
        company_id=where.company_id,
        matching=await store.console.count(where),
        done=_done(request),
        next_link=_next(request, "/dead-letters", found),
    )


@router.get("/dead-letters/confirm")
async def confirm(request: Request) -> Response:
    """Asks before replaying or purging every dead letter matching the filter."""
    signed_in(request)
    action = request.query_params.get("action", "")
    if action not in ("replay", "purge"):
        raise ConsoleError(400, "action must be replay or purge.")
    company_id = _text(request, "company_id", MAX_COMPANY_ID)
    where = DeliveryFilter(company_id=company_id, status="dead")
    return render(
        request,
        "confirm.html",
        active="/dead-letters",
        action=action,
        company_id=company_id,
        matching=await store_of(request).console.count(where),
    )


def _company_field(fields: dict[str, str]) -> str | None:
    company_id = fields.get("company_id", "").strip() or None
    if company_id is not None and (len(company_id) > MAX_COMPANY_ID or has_control(company_id)):
        raise ConsoleError(400, "company_id is not a company id.")
    return company_id


@router.post("/dead-letters/replay")
async def replay_all(request: Request) -> Response:
    _, fields = await checked_form(request)
    company_id = _company_field(fields)
    count = await store_of(request).deliveries.replay_dead(company_id=company_id)
    return redirect(request, "/dead-letters", company_id=company_id, done="replayed_all", n=count)


@router.post("/dead-letters/purge")
async def purge_all(request: Request) -> Response:
    _, fields = await checked_form(request)
    company_id = _company_field(fields)
    count = await store_of(request).deliveries.purge_dead(company_id=company_id)
    return redirect(request, "/dead-letters", company_id=company_id, done="purged", n=count)


@router.get("/jobs")
async def jobs(request: Request) -> Response:
    signed_in(request)
    before = request.query_params.get("before") or None
    if before is not None and not _JOB_ID.match(before):
        raise ConsoleError(400, "before must be a job id from a previous page.")
    found = await store_of(request).jobs.listing(status=None, before=before, limit=PAGE)
    stuck = settings(request).relay_bulk_stuck_seconds
    return render(
        request,
        "jobs.html",
        active="/jobs",
        items=[JobOut.of(job, stuck) for job in found],
        next_link=link(request, "/jobs", before=found[-1].id) if len(found) == PAGE else None,
    )


@router.get("/backfills")
async def backfills(request: Request) -> Response:
    signed_in(request)
    before = _text(request, "before", 64)
    found = await store_of(request).backfills.listing(source=None, before=before, limit=PAGE)
    return render(
        request,
        "backfills.html",
        active="/backfills",
        items=found,
        next_link=link(request, "/backfills", before=found[-1].id) if len(found) == PAGE else None,
    )


@router.get("/properties")
async def properties(request: Request) -> Response:
    signed_in(request)
    found = await store_of(request).catalogue.properties()
    counts: dict[SeenType, int] = {}
    for prop in found:
        for seen in prop.types:
            counts[seen.type] = counts.get(seen.type, 0) + 1
    return render(
        request,
        "properties.html",
        active="/properties",
        items=found,
        type_counts=sorted(counts.items()),
        conflicts=sum(1 for p in found if p.conflict),
    )


@router.get("/{rest:path}")
async def not_found(request: Request, rest: str) -> Response:
    raise ConsoleError(404, "There is no such console page.")
