"""The test-control API under `/_sim/` (no auth): faults, live config, what was received.

Tests drive the simulator through these routes to make Userpilot misbehave on cue and to
check what the relay really sent, how fast, and how concurrently.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from app.simulator.config import CONTROL_PREFIX
from app.simulator.deps import StateDep
from app.simulator.errors import SimulatorError
from app.simulator.jobs import JobFault, JobFaultAction
from app.simulator.state import Fault, FaultAction

router = APIRouter(prefix=CONTROL_PREFIX, tags=["control"])


class FaultIn(BaseModel):
    """A fault for the next `times` requests matching `path` (a prefix) and/or `company_id`."""

    model_config = ConfigDict(extra="forbid")

    action: FaultAction
    times: int = Field(default=1, ge=1)
    status: int = Field(default=503, ge=100, le=599)
    delay: float = Field(default=0.5, ge=0)
    retry_after: int | float | str | None = None
    company_id: str | None = None
    path: str | None = None
    body: JsonValue = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None = None

    def to_fault(self) -> Fault:
        return Fault(**self.model_dump())


class JobFaultIn(BaseModel):
    """A bad ending (`fail` or `stall` after `after_rows` rows), or a false `status` reported
    for `seconds` (`report`), for the next `times` jobs."""

    model_config = ConfigDict(extra="forbid")

    action: JobFaultAction
    times: int = Field(default=1, ge=1)
    company_id: str | None = None
    after_rows: int = Field(default=0, ge=0)
    status: str | None = Field(default=None, min_length=1, max_length=60)
    seconds: float | None = Field(default=None, ge=0)

    def to_fault(self) -> JobFault:
        return JobFault(**self.model_dump())


class ConfigIn(BaseModel):
    """The settings that may change while the simulator runs."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_minute: int | None = Field(default=None, ge=0)
    success_status: Literal[200, 202] | None = None
    latency: float | None = Field(default=None, ge=0)
    bulk_rows_per_minute: int | None = Field(default=None, ge=0)
    bulk_phase_seconds: float | None = Field(default=None, ge=0)
    bulk_refresh_seconds: float | None = Field(default=None, ge=0)
    bulk_success_status: Literal[200, 201, 202] | None = None
    invalid_company_ids: list[str] | None = None
    delete_interval_seconds: float | None = Field(default=None, ge=0)
    delete_immediately: bool | None = None


T = TypeVar("T")

_FAULTS = TypeAdapter(FaultIn | list[FaultIn])
_JOB_FAULTS = TypeAdapter(JobFaultIn | list[JobFaultIn])
_CONFIG = TypeAdapter(ConfigIn)


async def _parse(adapter: TypeAdapter[T], request: Request) -> T:
    """Validate a JSON body whatever its Content-Type (so a bare `curl -d` works too)."""
    try:
        return adapter.validate_json(await request.body())
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
        where = ".".join(str(part) for part in problems[0]["loc"]) if problems else ""
        message = problems[0]["msg"] if problems else "invalid body"
        raise SimulatorError(
            400, f"{where}: {message}" if where else message, {"problems": problems}
        ) from None


def _faults(state: StateDep) -> dict[str, object]:
    return {"faults": [fault.to_json() for fault in state.faults]}


@router.post("/faults")
async def add_faults(request: Request, state: StateDep) -> dict[str, object]:
    """Queue one fault or a list; matching requests consume them first in, first out."""
    faults = await _parse(_FAULTS, request)
    for fault in faults if isinstance(faults, list) else [faults]:
        state.faults.append(fault.to_fault())
    return _faults(state)


@router.get("/faults")
async def list_faults(state: StateDep) -> dict[str, object]:
    """Faults not yet consumed, with their remaining `times`."""
    return _faults(state)


@router.delete("/faults")
async def clear_faults(state: StateDep) -> dict[str, object]:
    """Drop every pending fault."""
    state.faults.clear()
    return _faults(state)


def _job_faults(state: StateDep) -> dict[str, object]:
    return {"job_faults": [fault.to_json() for fault in state.job_faults]}


@router.post("/job_faults")
async def add_job_faults(request: Request, state: StateDep) -> dict[str, object]:
    """Queue one job fault or a list; each new job consumes the oldest one matching it."""
    faults = await _parse(_JOB_FAULTS, request)
    for fault in faults if isinstance(faults, list) else [faults]:
        state.job_faults.append(fault.to_fault())
    return _job_faults(state)


@router.get("/job_faults")
async def list_job_faults(state: StateDep) -> dict[str, object]:
    """Job faults not yet consumed, with their remaining `times`."""
    return _job_faults(state)


@router.delete("/job_faults")
async def clear_job_faults(state: StateDep) -> dict[str, object]:
    """Drop every pending job fault (jobs already stalled stay stalled until a reset)."""
    state.job_faults.clear()
    return _job_faults(state)


@router.get("/config")
async def get_config(state: StateDep) -> dict[str, object]:
    """The current settings."""
    return state.config.to_json()


@router.put("/config")
async def update_config(request: Request, state: StateDep) -> dict[str, object]:
    """Change the given settings; they apply to the next request (and to running bulk jobs)."""
    update = await _parse(_CONFIG, request)
    for name, value in update.model_dump(exclude_none=True).items():
        setattr(state.config, name, value)
    return state.config.to_json()


@router.get("/requests")
async def list_requests(state: StateDep, path: str | None = None) -> dict[str, object]:
    """Requests to Userpilot paths in arrival order; `path` keeps those starting with it."""
    return {
        "requests": [
            request.to_json()
            for request in state.requests
            if path is None or request.path.startswith(path)
        ]
    }


@router.get("/companies")
async def list_companies(state: StateDep) -> dict[str, object]:
    """Every stored company with its merged metadata."""
    return {"companies": state.companies}


# Registered before the plain company route, whose path converter would swallow `/history`.
@router.get("/companies/{company_id:path}/history")
async def get_company_history(company_id: str, state: StateDep) -> dict[str, object]:
    """The company's last writes, oldest first: `{at, via, job_id, metadata}` each."""
    if company_id not in state.companies:
        raise SimulatorError(404, f"no company {company_id!r}")
    return {"history": [write.to_json() for write in state.history.get(company_id, ())]}


@router.get("/companies/{company_id:path}")
async def get_company(company_id: str, state: StateDep) -> dict[str, object]:
    """One company's merged metadata."""
    try:
        return dict(state.companies[company_id])
    except KeyError:
        raise SimulatorError(404, f"no company {company_id!r}") from None


@router.get("/jobs")
async def list_jobs(state: StateDep) -> dict[str, object]:
    """Every bulk job since the last reset."""
    return {"jobs": [job.to_json() for job in state.jobs.values()]}


@router.get("/deletions")
async def list_deletions(state: StateDep) -> dict[str, object]:
    """Accepted delete requests, oldest first: ids, request id, when accepted, scheduled, run."""
    return {"deletions": [deletion.to_json() for deletion in state.deletions]}


@router.post("/run-deletions")
async def run_deletions(state: StateDep) -> dict[str, object]:
    """Run the daily deletion now: every scheduled deletion is executed, oldest first."""
    executed = state.run_deletions()
    return {
        "deletions": [deletion.to_json() for deletion in executed],
        "deleted": [company_id for deletion in executed for company_id in deletion.deleted],
    }


@router.get("/stats")
async def get_stats(state: StateDep) -> dict[str, object]:
    """Counters and high-water marks since the last reset (windows are per API key)."""
    return {**state.stats.to_json(), "in_flight": state.in_flight}


@router.post("/reset")
async def reset(state: StateDep) -> dict[str, object]:
    """Forget companies, history, requests, faults, jobs, deletions, rate windows, stats; keep
    config."""
    state.reset()
    return {"reset": True}
