"""The Userpilot-compatible routes: identify a company, bulk identify, background jobs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.simulator.config import BULK_PATH, IDENTIFY_PATH, JOBS_PATH
from app.simulator.deps import ApiKeyDep, RateLimitedApiKeyDep, StateDep
from app.simulator.errors import SimulatorError
from app.simulator.jobs import BulkJob, new_job_id
from app.simulator.validation import (
    invalid,
    parse_company,
    parse_json,
    parse_multipart,
    parse_ndjson,
)

router = APIRouter(tags=["userpilot"])


@router.post(IDENTIFY_PATH, status_code=202)
async def identify_company(request: Request, state: StateDep, _: RateLimitedApiKeyDep) -> Response:
    """Merge `metadata` into the company `company_id` (absent keys kept, `null` removes)."""
    if state.config.latency > 0:
        await asyncio.sleep(state.config.latency)
    record = parse_company(parse_json(await request.body()))
    state.apply(record)
    state.stats.identify_accepted += 1
    if state.config.success_status == 200:
        return JSONResponse({}, status_code=200)
    return Response(status_code=state.config.success_status)


@router.post(BULK_PATH, status_code=202)
async def bulk_identify_companies(
    request: Request, state: StateDep, api_key: RateLimitedApiKeyDep
) -> JSONResponse:
    """Queue a job merging up to 10,000 companies: JSON `{"companies": [...]}` or NDJSON `file`."""
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
        filename, file_size = part.filename or "companies.ndjson", len(part.content)
    else:
        payload = parse_json(raw)
        companies = payload.get("companies") if isinstance(payload, dict) else None
        if not isinstance(companies, list):
            raise invalid('body must be {"companies": [...]}', field="companies")
        rows = companies
        filename, file_size = "companies.json", len(raw)
    if len(rows) > config.max_bulk_records:
        raise SimulatorError(
            413, f"{len(rows)} records: at most {config.max_bulk_records} per request"
        )
    if not rows:
        raise invalid("no companies to identify", field="companies")
    records = [parse_company(row, index=index) for index, row in enumerate(rows)]
    running = state.running_job(api_key)
    if running is not None:
        raise SimulatorError(
            409, "a bulk job is already running for this environment", {"job_id": running.job_id}
        )
    job = BulkJob(
        job_id=new_job_id(),
        api_key=api_key,
        records=records,
        file_size=file_size,
        filename=filename,
        base_url=str(request.base_url).rstrip("/"),
    )
    state.jobs[job.job_id] = job
    state.stats.jobs_created += 1
    job.task = asyncio.create_task(job.run(config, state.apply))
    return JSONResponse(job.to_json(), status_code=202)


@router.get(JOBS_PATH + "/{job_id}")
async def get_background_job(job_id: str, state: StateDep, api_key: ApiKeyDep) -> JSONResponse:
    """A bulk job's status and progress (URL-encode the id: it contains colons)."""
    job = state.jobs.get(job_id)
    if job is None or job.api_key != api_key:
        raise SimulatorError(404, f"no job {job_id!r} in this environment")
    return JSONResponse(job.to_json())
