"""The console's erasures and suppressions pages (docs/erasure.md).

An erasure is started in two steps: the form (company ids, one a line, and a reason) posts to
`/erasures/review`, which checks it with the rules of `POST /erasures` and answers a
confirmation page carrying the ids in a hidden field; only that page's POST to `/erasures`
creates the erasure (`store.erasures.create`, as the route does). Lifting a suppression asks
first too. Every POST carries the session's CSRF token. Company ids are never shown once
stored: the store keeps them only while the erasure runs, and the pages show counts.

Imported by `pages` before its catch-all route, so these routes are matched first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request, Response

from app.api.erasures import ERASURE_STATUSES, MAX_COMPANIES, MAX_ID, MAX_REASON
from app.console.auth import checked_form, signed_in
from app.console.web import (
    MAX_ERASURE_FORM_BYTES,
    ConsoleError,
    link,
    redirect,
    render,
    router,
    store_of,
)
from app.domain.rules import company_id_problem, has_control

log = logging.getLogger("userpilot_relay.erasure")

PAGE = 50
DONE = {  # what a redirect's `done` says; never text from the query itself
    "started": "Erasure started: the companies are suppressed from now on.",
    "lifted": "Suppression lifted: this company's updates are taken again.",
}


@dataclass(frozen=True, slots=True)
class ErasureForm:
    """The start form as typed: the ids' text and the reason, and what is wrong with them."""

    ids_text: str
    reason: str
    ids: list[str]
    error: str | None


def read_erasure_form(fields: dict[str, str]) -> ErasureForm:
    """The ids (one a line, blank lines ignored, duplicates once) and the reason, checked with
    the rules of `POST /erasures`: 1 to 10,000 ids each as `POST /companies` takes it (not
    blank, at most 255 characters, no control character), a reason of 1 to 500 characters.

    Each id is kept as typed but for its line ending: an id with surrounding spaces is an id
    the relay takes (and stores) as it is, so erasing it must not erase another one. Lines are
    split on LF alone (CR LF from a browser too), never on the other characters `splitlines`
    takes for line breaks."""
    ids_text = fields.get("company_ids", "")
    reason = fields.get("reason", "").strip()
    lines = (line.removesuffix("\r") for line in ids_text.split("\n"))
    ids = list(dict.fromkeys(line for line in lines if line.strip()))

    def checked() -> str | None:
        if not ids:
            return "Enter at least one company id (one a line)."
        if len(ids) > MAX_COMPANIES:
            return (
                f"At most {MAX_COMPANIES:,} companies an erasure: this form has {len(ids):,}. "
                "Split them into several erasures."
            )
        for number, company_id in enumerate(ids, 1):
            problem = company_id_problem(company_id)
            if problem is not None:
                return f"Company id number {number} {problem}."
        if not reason:
            return "Enter a reason: it is kept in the audit trail."
        if has_control(reason):
            return "The reason must not contain control characters."
        if len(reason) > MAX_REASON:
            return f"The reason must be at most {MAX_REASON} characters (it has {len(reason)})."
        return None

    return ErasureForm(ids_text=ids_text, reason=reason, ids=ids, error=checked())


def _status(request: Request) -> str | None:
    status = request.query_params.get("status", "").strip() or None
    if status is not None and status not in ERASURE_STATUSES:
        raise ConsoleError(400, f"status must be one of: {', '.join(ERASURE_STATUSES)}.")
    return status


def _erasure_id(value: str) -> str:
    if not value or len(value) > 100 or has_control(value):
        raise ConsoleError(404, "No erasure with this id.")
    return value


def _done(request: Request) -> str | None:
    return DONE.get(request.query_params.get("done", ""))


async def _erasures_page(
    request: Request, *, form: ErasureForm | None = None, status_code: int = 200
) -> Response:
    status = _status(request)
    before = request.query_params.get("before", "").strip() or None
    if before is not None and (len(before) > 100 or has_control(before)):
        raise ConsoleError(400, "before must be an erasure id from a previous page.")
    found = await store_of(request).erasures.page(status=status, before=before, limit=PAGE + 1)
    items = found[:PAGE]
    more = len(found) > PAGE
    return render(
        request,
        "erasures.html",
        status=status_code,
        active="/erasures",
        items=items,
        status_filter=status,
        statuses=ERASURE_STATUSES,
        form=form or ErasureForm(ids_text="", reason="", ids=[], error=None),
        max_companies=MAX_COMPANIES,
        max_reason=MAX_REASON,
        next_link=link(request, "/erasures", status=status, before=items[-1].id) if more else None,
    )


@router.get("/erasures")
async def erasures(request: Request) -> Response:
    signed_in(request)
    return await _erasures_page(request)


@router.post("/erasures/review")
async def review_erasure(request: Request) -> Response:
    """Checks the start form: the form again with what is wrong, else the confirmation page.
    Creates nothing."""
    _, fields = await checked_form(request, limit=MAX_ERASURE_FORM_BYTES)
    form = read_erasure_form(fields)
    if form.error is not None:
        return await _erasures_page(request, form=form, status_code=400)
    return render(
        request,
        "erasure_confirm.html",
        active="/erasures",
        count=len(form.ids),
        ids="\n".join(form.ids),
        reason=form.reason,
    )


@router.post("/erasures")
async def start_erasure(request: Request) -> Response:
    """The confirmation page's POST: records the erasure (as `POST /erasures` does)."""
    session, fields = await checked_form(request, limit=MAX_ERASURE_FORM_BYTES)
    form = read_erasure_form(fields)
    if form.error is not None:
        return await _erasures_page(request, form=form, status_code=400)
    erasure = await store_of(request).erasures.create(form.ids, reason=form.reason, by=session.name)
    log.info(
        "erasure accepted",
        extra={
            "erasure_id": erasure.id,
            "companies": erasure.companies,
            "caller": session.name,
            "via": "console",
        },
    )
    return redirect(request, f"/erasures/{erasure.id}", done="started")


@router.get("/erasures/{erasure_id}")
async def erasure(request: Request, erasure_id: str) -> Response:
    signed_in(request)
    found = await store_of(request).erasures.get(_erasure_id(erasure_id))
    if found is None:
        raise ConsoleError(404, "No erasure with this id.")
    return render(request, "erasure.html", active="/erasures", e=found, done=_done(request))


def _company_id(value: str | None) -> str | None:
    company_id = (value or "").strip() or None
    if company_id is not None and len(company_id) > MAX_ID:
        raise ConsoleError(400, f"company_id must be at most {MAX_ID:,} characters.")
    return company_id


@router.get("/suppressions")
async def suppressions(request: Request) -> Response:
    """Looks a company up: suppressed or not, since when, by which erasure."""
    signed_in(request)
    company_id = _company_id(request.query_params.get("company_id"))
    found = None if company_id is None else await store_of(request).erasures.suppression(company_id)
    return render(
        request,
        "suppressions.html",
        active="/suppressions",
        company_id=company_id,
        found=found,
        done=_done(request),
    )


@router.get("/suppressions/confirm")
async def confirm_lift(request: Request) -> Response:
    """Asks before lifting a company's suppression."""
    signed_in(request)
    company_id = _company_id(request.query_params.get("company_id"))
    if company_id is None:
        raise ConsoleError(400, "company_id is needed.")
    found = await store_of(request).erasures.suppression(company_id)
    if found is None:
        raise ConsoleError(404, "This company is not suppressed.")
    return render(
        request,
        "suppression_confirm.html",
        active="/suppressions",
        company_id=company_id,
        found=found,
    )


@router.post("/suppressions/lift")
async def lift(request: Request) -> Response:
    session, fields = await checked_form(request)
    company_id = _company_id(fields.get("company_id"))
    if company_id is None:
        raise ConsoleError(400, "company_id is needed.")
    if not await store_of(request).erasures.lift(company_id):
        raise ConsoleError(404, "This company is not suppressed.")
    log.info("suppression lifted", extra={"caller": session.name, "via": "console"})
    return redirect(request, "/suppressions", company_id=company_id, done="lifted")
