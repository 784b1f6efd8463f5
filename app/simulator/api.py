"""The Userpilot-compatible routes: identify a company, bulk identify, background jobs, and
delete companies."""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.simulator.config import (
    BULK_PATH,
    DELETE_PATH,
    IDENTIFY_PATH,
    JOBS_PATH,
    USERS_BULK_PATH,
)
from app.simulator.deps import ApiKeyDep, RateLimitedApiKeyDep, StateDep
from app.simulator.errors import SimulatorError
from app.simulator.jobs import JOB_TYPE, USERS_JOB_TYPE, BulkJob, JobType, Row, new_job_id
from app.simulator.middleware import REQUEST_ID_KEY
from app.simulator.state import SimulatorState
from app.simulator.validation import (
    invalid,
    parse_company,
    parse_company_ids,
    parse_json,
    parse_multipart,
    parse_ndjson,
    parse_user,
    refused,
)

router = APIRouter(tags=["userpilot"])


class _RowParser(Protocol):
    def __call__(self, value: object, *, index: int | None = None) -> Row: ...


@router.post(IDENTIFY_PATH, status_code=202)
async def identify_company(request: Request, state: StateDep, _: RateLimitedApiKeyDep) -> Response:
    """Merge `metadata` into the company `company_id` (absent keys kept, `null` removes)."""
    if state.config.latency > 0:
        await asyncio.sleep(state.config.latency)
    record = parse_company(parse_json(await request.body()))
    if record.company_id in state.config.invalid_company_ids:
        raise refused(record.company_id)
    state.apply(record)
    state.stats.identify_accepted += 1
    if state.config.success_status == 200:
        return JSONResponse({}, status_code=200)
    return Response(status_code=state.config.success_status)


async def _submit(
    request: Request,
    state: SimulatorState,
    api_key: str,
    *,
    job_type: JobType,
    collection: str,
    parse: _RowParser,
) -> JSONResponse:
    """Validate a bulk upload of `collection` and start its job if the slot is free."""
    config = state.config
    raw = await request.body()
    if len(raw) > config.max_bulk_bytes:
        raise SimulatorError(413, f"upload larger than {config.max_bulk_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    rows: list[object]
    if content_type.lower().startswith("multipart/form-data"):
        part = parse_multipart(raw, content_type).get("file")
        if part is None:
            raise invalid("multipart upload needs a 'file' field holding NDJSON", field="file")
        rows = parse_ndjson(part.content)
        filename, file_size = part.filename or f"{collection}.ndjson", len(part.content)
    else:
        payload = parse_json(raw)
        items = payload.get(collection) if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise invalid(f'body must be {{"{collection}": [...]}}', field=collection)
        rows = items
        filename, file_size = f"{collection}.json", len(raw)
    if len(rows) > config.max_bulk_records:
        raise SimulatorError(
            413, f"{len(rows)} records: at most {config.max_bulk_records} per request"
        )
    if not rows:
        raise invalid(f"no {collection} to identify", field=collection)
    records = [parse(row, index=index) for index, row in enumerate(rows)]
    running = state.running_job(api_key)
    if running is not None:
        state.stats.jobs_conflicted += 1
        raise SimulatorError(
            409, "a bulk job is already running for this environment", {"job_id": running.job_id}
        )
    job = BulkJob(
        job_id=new_job_id(job_type),
        api_key=api_key,
        records=records,
        file_size=file_size,
        filename=filename,
        base_url=str(request.base_url).rstrip("/"),
        job_type=job_type,
        fault=state.take_job_fault(records),
    )
    state.add_job(job)
    return JSONResponse(job.to_json(), status_code=config.bulk_success_status)


@router.post(BULK_PATH, status_code=202)
async def bulk_identify_companies(
    request: Request, state: StateDep, api_key: RateLimitedApiKeyDep
) -> JSONResponse:
    """Queue a job merging up to 10,000 companies: JSON `{"companies": [...]}` or NDJSON `file`."""
    return await _submit(
        request, state, api_key, job_type=JOB_TYPE, collection="companies", parse=parse_company
    )


@router.post(USERS_BULK_PATH, status_code=202)
async def bulk_identify_users(
    request: Request, state: StateDep, api_key: RateLimitedApiKeyDep
) -> JSONResponse:
    """Queue a users job (`{"users": [...]}` or NDJSON `file`): it takes the one-job slot."""
    return await _submit(
        request, state, api_key, job_type=USERS_JOB_TYPE, collection="users", parse=parse_user
    )


@router.get(JOBS_PATH)
async def list_background_jobs(state: StateDep, api_key: ApiKeyDep) -> JSONResponse:
    """The environment's jobs of both types, newest first."""
    return JSONResponse({"jobs": [job.to_json() for job in state.jobs_of(api_key)]})


@router.get(JOBS_PATH + "/{job_id}")
async def get_background_job(job_id: str, state: StateDep, api_key: ApiKeyDep) -> JSONResponse:
    """A bulk job's status and progress (URL-encode the id: it contains colons)."""
    job = state.jobs.get(job_id)
    if job is None or job.api_key != api_key:
        raise SimulatorError(404, f"no job {job_id!r} in this environment")
    return JSONResponse(job.to_json())


@router.delete(DELETE_PATH, status_code=202)
async def delete_companies(request: Request, state: StateDep, api_key: ApiKeyDep) -> JSONResponse:
    """Schedule `{"companies": [ids]}` for deletion at the next daily run (02:00 UTC).

    At most one request every `delete_interval_seconds` per key (429 with Retry-After beyond),
    a limit apart from identify's. `X-API-Version: 2020-09-22` is recorded, not required.
    """
    wait = state.admit_delete(api_key)
    if wait is not None:
        interval = state.config.delete_interval_seconds
        raise SimulatorError(
            429,
            f"rate limit exceeded: at most one delete request every {interval:g} seconds",
            {"retry_after_seconds": round(wait, 3)},
            headers={"retry-after": str(max(1, math.ceil(wait)))},
        )
    company_ids = parse_company_ids(parse_json(await request.body()))
    request_id = request.scope.get(REQUEST_ID_KEY)
    deletion = state.schedule_deletion(
        company_ids,
        request_id=request_id if isinstance(request_id, str) else "",
        api_version=request.headers.get("x-api-version"),
    )
    count = len(dict.fromkeys(deletion.company_ids))
    return JSONResponse({"message": f"{count} companies scheduled for deletion"}, status_code=202)
