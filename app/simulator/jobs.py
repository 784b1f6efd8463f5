"""Bulk identify jobs: accepted at once, then worked through in the background.

Userpilot answers a bulk upload with a job that moves `queued -> validating -> processing ->
pending_refresh -> completed` at about 1,800 rows a minute, and lets one job (users or
companies) run at a time per environment. The simulator reproduces that pacing (configurable,
read live each tick so a test can speed up or pause a running job) and applies each row's merge
as the row completes.

A job can also end badly, as tests ask: a row naming one of `invalid_company_ids` fails the
whole job in `validating` (nothing applied; Userpilot reports no per-row errors), and an
injected `JobFault` fails or stalls it after a given number of rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol
from urllib.parse import quote

from app.simulator.config import JOBS_PATH, SimulatorConfig
from app.simulator.validation import CompanyRecord, UserRecord

JobStatus = Literal["queued", "validating", "processing", "pending_refresh", "completed", "failed"]
JobType = Literal["companies_bulk_identify", "users_bulk_identify"]
JobFaultAction = Literal["fail", "stall", "report"]
Row = CompanyRecord | UserRecord
JOB_TYPE: JobType = "companies_bulk_identify"
USERS_JOB_TYPE: JobType = "users_bulk_identify"
_TICK_SECONDS = 0.05


def _iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def new_job_id(job_type: JobType = JOB_TYPE) -> str:
    """Userpilot's ids contain colons, which is why clients must URL-encode them."""
    kind = "users" if job_type == USERS_JOB_TYPE else "companies"
    return f"job:{kind}:{uuid.uuid4()}"


@dataclass
class JobFault:
    """A bad ending for the next `times` jobs created whose rows include `company_id` (if set).

    `fail`: the job applies `after_rows` rows, then ends `failed`. `stall`: it applies
    `after_rows` rows, then stays `processing` with no progress until `/_sim/reset`. `report`:
    it runs as usual, but its answers say `status` (an undocumented one, or a premature
    `completed`) with at most `after_rows` rows done, for `seconds` (None: for ever).
    """

    action: JobFaultAction
    times: int = 1
    company_id: str | None = None
    after_rows: int = 0
    status: str | None = None
    seconds: float | None = None

    def matches(self, rows: Sequence[Row]) -> bool:
        if self.company_id is None:
            return True
        return any(isinstance(r, CompanyRecord) and r.company_id == self.company_id for r in rows)

    def to_json(self) -> dict[str, object]:
        found = asdict(self)
        if self.action != "report":  # only a `report` fault says a status, for a while
            del found["status"], found["seconds"]
        return found


class JobHost(Protocol):
    """What a running job needs from the simulator state (which owns the jobs)."""

    @property
    def config(self) -> SimulatorConfig: ...

    def apply_row(self, job: BulkJob, row: Row) -> None: ...

    def job_failed(self, job: BulkJob) -> None: ...


@dataclass
class BulkJob:
    """One bulk identify job of one environment (API key)."""

    job_id: str
    api_key: str
    records: Sequence[Row]
    file_size: int
    filename: str | None
    base_url: str
    job_type: JobType = JOB_TYPE
    fault: JobFault | None = None
    status: JobStatus = "queued"
    completed_rows: int = 0
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.total_rows = len(self.records)

    @property
    def running(self) -> bool:
        return self.status not in ("completed", "failed")

    def to_json(self) -> dict[str, object]:
        """The job as `bulk_identify` and `GET /v1/background_jobs/{id}` return it."""
        now = time.time()
        end = self.end_time if self.end_time is not None else now
        status: str = self.status
        done = self.completed_rows
        fault = self.fault
        if (
            fault is not None
            and fault.action == "report"
            and (fault.seconds is None or now - self.start_time < fault.seconds)
        ):
            status, done = fault.status or status, min(done, fault.after_rows)
        return {
            "job_id": self.job_id,
            "status": status,
            "type": self.job_type,
            "total_rows": self.total_rows,
            "completed_rows": done,
            "start_time": _iso(self.start_time),
            "end_time": None if self.end_time is None else _iso(self.end_time),
            "elapsed_time": int(end - self.start_time),
            "file_size": self.file_size,
            "filename": self.filename,
            "links": {"self": f"{self.base_url}{JOBS_PATH}/{quote(self.job_id, safe='')}"},
        }

    async def run(self, host: JobHost) -> None:
        """Walk through the states, completing rows at `config.bulk_rows_per_minute`."""
        config = host.config
        await asyncio.sleep(config.bulk_phase_seconds)
        self.status = "validating"
        await asyncio.sleep(config.bulk_phase_seconds)
        refused = set(config.invalid_company_ids)
        if refused and any(
            isinstance(row, CompanyRecord) and row.company_id in refused for row in self.records
        ):
            self._end("failed", host)
            return
        self.status = "processing"
        if self.fault is None or self.fault.action == "report":
            await self._process(host, self.total_rows)
        else:
            await self._process(host, min(self.total_rows, self.fault.after_rows))
            if self.fault.action == "fail":
                self._end("failed", host)
                return
            await asyncio.Future()  # stalled: never resolves; /_sim/reset cancels the task
        self.status = "pending_refresh"
        await asyncio.sleep(config.bulk_refresh_seconds)
        self._end("completed", host)

    async def _process(self, host: JobHost, rows: int) -> None:
        """Apply rows up to `rows`, at the configured pace."""
        progress = 0.0
        last = time.monotonic()
        while self.completed_rows < rows:
            await asyncio.sleep(_TICK_SECONDS)
            now = time.monotonic()
            progress += (now - last) * host.config.bulk_rows_per_minute / 60
            last = now
            target = min(rows, int(progress))
            for row in self.records[self.completed_rows : target]:
                host.apply_row(self, row)
            self.completed_rows = max(self.completed_rows, target)

    def _end(self, status: Literal["completed", "failed"], host: JobHost) -> None:
        self.status = status
        self.end_time = time.time()
        self.records = []
        if status == "failed":
            host.job_failed(self)
