"""Everything one simulator instance remembers, held in memory on its app.

Companies and their write history, the request log, pending request and job faults, bulk
jobs, accepted deletion requests, the per-key rate windows and the counters behind
`/_sim/stats`. One object per app (no
module globals) so several simulators can run in one process, and `/_sim/reset` can clear it
between tests.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from app.simulator.config import HISTORY_LIMIT, SimulatorConfig
from app.simulator.jobs import BulkJob, JobFault, Row
from app.simulator.validation import CompanyRecord, Metadata, merge_metadata

FaultAction = Literal["status", "delay", "drop", "retry_after", "lose_answer"]
WriteVia = Literal["identify", "bulk"]


@dataclass
class Fault:
    """A misbehaviour to inject into the next `times` matching requests."""

    action: FaultAction
    times: int = 1
    status: int = 503
    delay: float = 0.5
    # Retry-After header value: always sent by `retry_after` (default 2), optional on `status`.
    retry_after: int | float | str | None = None
    company_id: str | None = None
    path: str | None = None
    body: object = None
    # Only requests with this HTTP method (e.g. "DELETE": `/v1/companies` prefixes identify).
    method: str | None = None

    def matches(self, path: str, company_id: str | None, method: str = "POST") -> bool:
        if self.path is not None and not path.startswith(self.path):
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.company_id is None or self.company_id == company_id

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RecordedRequest:
    """One request to a Userpilot-compatible path, as `/_sim/requests` lists it."""

    time: float
    method: str
    path: str
    headers: dict[str, str]
    body: object
    company_id: str | None
    # None while in flight, 0 when the connection was dropped.
    status: int | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Write:
    """One write applied to a company, as `/_sim/companies/{id}/history` lists it."""

    at: float
    via: WriteVia
    job_id: str | None
    metadata: Metadata

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def next_deletion_run(moment: float) -> float:
    """Userpilot's daily deletion run: the next 02:00 UTC at or after `moment` (unix time)."""
    day = datetime.fromtimestamp(moment, UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    run = day.timestamp()
    return run if run >= moment else (day + timedelta(days=1)).timestamp()


@dataclass
class Deletion:
    """One accepted `DELETE /v1/companies`, as `/_sim/deletions` lists it."""

    request_id: str
    company_ids: list[str]
    accepted_at: float
    # Userpilot's next daily run (02:00 UTC) at or after `accepted_at`.
    scheduled_for: float
    # The `X-API-Version` header as sent (None: absent; accepted anyway).
    api_version: str | None
    # When the deletion ran (None: still scheduled), and the ids that existed then.
    executed_at: float | None = None
    deleted: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RateWindow:
    """Timestamps of the requests one key had accepted in the last minute and second."""

    minute: deque[float] = field(default_factory=deque)
    second: deque[float] = field(default_factory=deque)


@dataclass
class Stats:
    """Counters and high-water marks since the last reset."""

    identify_calls: int = 0
    identify_accepted: int = 0
    throttled: int = 0
    max_concurrent: int = 0
    max_concurrent_per_company: int = 0
    max_in_any_60s_window: int = 0
    max_in_any_1s_window: int = 0
    bulk_calls: int = 0
    # Company rows of accepted companies jobs, and those applied so far.
    bulk_rows_received: int = 0
    bulk_rows_applied: int = 0
    # Jobs of both types (companies and users).
    jobs_created: int = 0
    jobs_failed: int = 0
    jobs_conflicted: int = 0
    # Most jobs running at once in one environment (the one-job slot keeps it at 1).
    max_running_jobs: int = 0
    faults_applied: int = 0
    dropped: int = 0
    # `DELETE /v1/companies`: requests, accepted ones, those over the pacing (429), and
    # companies actually removed by executed deletions.
    delete_calls: int = 0
    delete_accepted: int = 0
    delete_throttled: int = 0
    companies_deleted: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class SimulatorState:
    """The in-memory Userpilot environment(s) behind one simulator app."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.companies: dict[str, Metadata] = {}
        self.requests: deque[RecordedRequest] = deque(maxlen=config.request_log_limit)
        self.faults: list[Fault] = []
        self.job_faults: list[JobFault] = []
        self.jobs: dict[str, BulkJob] = {}
        self.history: dict[str, deque[Write]] = {}
        self.windows: dict[str, RateWindow] = {}
        self.deletions: list[Deletion] = []
        # When each key's last delete request was admitted (monotonic clock).
        self.last_delete: dict[str, float] = {}
        self.stats = Stats()
        self.in_flight = 0
        self.in_flight_by_company: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget everything but the configuration (in-flight requests still finish)."""
        self.cancel_jobs()
        self.companies.clear()
        self.requests.clear()
        self.faults.clear()
        self.job_faults.clear()
        self.jobs.clear()
        self.history.clear()
        self.windows.clear()
        self.deletions.clear()
        self.last_delete.clear()
        self.stats = Stats()

    def cancel_jobs(self) -> list[BulkJob]:
        running = [job for job in self.jobs.values() if job.task is not None]
        for job in running:
            assert job.task is not None
            job.task.cancel()
        return running

    # Faults

    def take_fault(self, path: str, company_id: str | None, method: str = "POST") -> Fault | None:
        """Consume one use of the oldest fault matching this request (FIFO)."""
        for index, fault in enumerate(self.faults):
            if fault.matches(path, company_id, method):
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[index]
                self.stats.faults_applied += 1
                return fault
        return None

    def take_job_fault(self, rows: Sequence[Row]) -> JobFault | None:
        """Consume one use of the oldest job fault matching a new job's rows (FIFO)."""
        for index, fault in enumerate(self.job_faults):
            if fault.matches(rows):
                fault.times -= 1
                if fault.times <= 0:
                    del self.job_faults[index]
                self.stats.faults_applied += 1
                return JobFault(
                    fault.action, 1, fault.company_id, fault.after_rows, fault.status, fault.seconds
                )
        return None

    # Rate limiting

    def admit(self, api_key: str) -> bool:
        """Count one request against the key's sliding 60 s window; False when over the limit."""
        now = time.monotonic()
        window = self.windows.setdefault(api_key, RateWindow())
        while window.minute and window.minute[0] <= now - 60:
            window.minute.popleft()
        if len(window.minute) >= self.config.rate_limit_per_minute:
            self.stats.throttled += 1
            return False
        window.minute.append(now)
        while window.second and window.second[0] <= now - 1:
            window.second.popleft()
        window.second.append(now)
        stats = self.stats
        stats.max_in_any_60s_window = max(stats.max_in_any_60s_window, len(window.minute))
        stats.max_in_any_1s_window = max(stats.max_in_any_1s_window, len(window.second))
        return True

    def admit_delete(self, api_key: str) -> float | None:
        """Admit one delete request for the key; else the seconds until the next is allowed."""
        now = time.monotonic()
        interval = self.config.delete_interval_seconds
        last = self.last_delete.get(api_key)
        if last is not None and now - last < interval:
            self.stats.delete_throttled += 1
            return interval - (now - last)
        self.last_delete[api_key] = now
        return None

    # Concurrency

    def request_started(self, company_id: str | None) -> None:
        self.in_flight += 1
        self.stats.max_concurrent = max(self.stats.max_concurrent, self.in_flight)
        if company_id is not None:
            self.in_flight_by_company[company_id] += 1
            self.stats.max_concurrent_per_company = max(
                self.stats.max_concurrent_per_company, self.in_flight_by_company[company_id]
            )

    def request_finished(self, company_id: str | None) -> None:
        self.in_flight -= 1
        if company_id is not None:
            self.in_flight_by_company[company_id] -= 1
            if self.in_flight_by_company[company_id] <= 0:
                del self.in_flight_by_company[company_id]

    # Companies and jobs

    def apply(
        self, record: CompanyRecord, via: WriteVia = "identify", job_id: str | None = None
    ) -> None:
        """Merge one write into its company and append it to the company's history."""
        merge_metadata(self.companies.setdefault(record.company_id, {}), record.metadata)
        history = self.history.get(record.company_id)
        if history is None:
            history = self.history[record.company_id] = deque(maxlen=HISTORY_LIMIT)
        history.append(Write(time.time(), via, job_id, dict(record.metadata)))

    def apply_row(self, job: BulkJob, row: Row) -> None:
        """A job's row completed: companies are merged, users rows change nothing."""
        if isinstance(row, CompanyRecord):
            self.apply(row, "bulk", job.job_id)
            self.stats.bulk_rows_applied += 1

    def job_failed(self, job: BulkJob) -> None:
        self.stats.jobs_failed += 1

    def running_job(self, api_key: str) -> BulkJob | None:
        for job in self.jobs.values():
            if job.api_key == api_key and job.running:
                return job
        return None

    def add_job(self, job: BulkJob) -> None:
        """Register a new job (the caller checked the slot) and start it."""
        self.jobs[job.job_id] = job
        stats = self.stats
        stats.jobs_created += 1
        stats.bulk_rows_received += sum(isinstance(r, CompanyRecord) for r in job.records)
        running = sum(1 for j in self.jobs.values() if j.api_key == job.api_key and j.running)
        stats.max_running_jobs = max(stats.max_running_jobs, running)
        job.task = asyncio.create_task(job.run(self))

    def jobs_of(self, api_key: str) -> list[BulkJob]:
        """The environment's jobs, newest first."""
        return [job for job in reversed(self.jobs.values()) if job.api_key == api_key]

    # Deletions

    def schedule_deletion(
        self, company_ids: list[str], *, request_id: str, api_version: str | None
    ) -> Deletion:
        """Record an accepted deletion; run it now when `delete_immediately` is set."""
        accepted_at = time.time()
        deletion = Deletion(
            request_id=request_id,
            company_ids=company_ids,
            accepted_at=accepted_at,
            scheduled_for=next_deletion_run(accepted_at),
            api_version=api_version,
        )
        self.deletions.append(deletion)
        self.stats.delete_accepted += 1
        if self.config.delete_immediately:
            self.execute(deletion)
        return deletion

    def execute(self, deletion: Deletion) -> None:
        """Delete the companies (and their history) that exist now; a later identify re-creates."""
        deletion.executed_at = time.time()
        for company_id in dict.fromkeys(deletion.company_ids):
            if self.companies.pop(company_id, None) is not None:
                self.history.pop(company_id, None)
                deletion.deleted.append(company_id)
        self.stats.companies_deleted += len(deletion.deleted)

    def run_deletions(self) -> list[Deletion]:
        """The daily run: execute every scheduled deletion, oldest first."""
        pending = [deletion for deletion in self.deletions if deletion.executed_at is None]
        for deletion in pending:
            self.execute(deletion)
        return pending
