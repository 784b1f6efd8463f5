"""Bulk identify jobs: accepted at once, then worked through in the background.

Userpilot answers a bulk upload with a job that moves `queued -> validating -> processing ->
completed` at about 1,800 rows a minute, and lets one job run at a time per environment. The
simulator reproduces that pacing (configurable, read live each tick so a test can speed up or
pause a running job) and applies each row's merge as the row completes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from app.simulator.config import JOBS_PATH, SimulatorConfig
from app.simulator.validation import CompanyRecord

JobStatus = Literal["queued", "validating", "processing", "pending_refresh", "completed", "failed"]
JOB_TYPE = "companies_bulk_identify"
_TICK_SECONDS = 0.05


def _iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def new_job_id() -> str:
    """Userpilot's ids contain colons, which is why clients must URL-encode them."""
    return f"job:companies:{uuid.uuid4()}"


@dataclass
class BulkJob:
    """One bulk identify job of one environment (API key)."""

    job_id: str
    api_key: str
    records: list[CompanyRecord]
    file_size: int
    filename: str | None
    base_url: str
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
        end = self.end_time if self.end_time is not None else time.time()
        return {
            "job_id": self.job_id,
            "status": self.status,
            "type": JOB_TYPE,
            "total_rows": self.total_rows,
            "completed_rows": self.completed_rows,
            "start_time": _iso(self.start_time),
            "end_time": None if self.end_time is None else _iso(self.end_time),
            "elapsed_time": int(end - self.start_time),
            "file_size": self.file_size,
            "filename": self.filename,
            "links": {"self": f"{self.base_url}{JOBS_PATH}/{quote(self.job_id, safe='')}"},
        }

    async def run(self, config: SimulatorConfig, apply: Callable[[CompanyRecord], None]) -> None:
        """Walk through the states, completing rows at `config.bulk_rows_per_minute`."""
        await asyncio.sleep(config.bulk_phase_seconds)
        self.status = "validating"
        await asyncio.sleep(config.bulk_phase_seconds)
        self.status = "processing"
        progress = 0.0
        last = time.monotonic()
        while self.completed_rows < self.total_rows:
            await asyncio.sleep(_TICK_SECONDS)
            now = time.monotonic()
            progress += (now - last) * config.bulk_rows_per_minute / 60
            last = now
            target = min(self.total_rows, int(progress))
            for record in self.records[self.completed_rows : target]:
                apply(record)
            self.completed_rows = max(self.completed_rows, target)
        self.status = "completed"
        self.end_time = time.time()
        self.records = []
