"""Settings of one simulator instance.

A plain mutable dataclass rather than pydantic settings: the simulator is configured from the
command line or by tests, and `PUT /_sim/config` changes some fields while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTIFY_PATH = "/v1/companies/identify"
BULK_PATH = "/v1/companies/bulk_identify"
USERS_BULK_PATH = "/v1/users/bulk_identify"
JOBS_PATH = "/v1/background_jobs"
# `DELETE` with `{"companies": [ids]}` schedules companies for deletion.
DELETE_PATH = "/v1/companies"
CONTROL_PREFIX = "/_sim"

DEFAULT_RATE_LIMIT_PER_MINUTE = 600
DEFAULT_BULK_ROWS_PER_MINUTE = 1_800
MAX_BULK_RECORDS = 10_000
MAX_BULK_BYTES = 50 * 1024 * 1024
DEFAULT_BULK_PHASE_SECONDS = 0.1
DEFAULT_BULK_REFRESH_SECONDS = 0.1
# Userpilot takes at most one delete request every 2 seconds per API key.
DEFAULT_DELETE_INTERVAL_SECONDS = 2.0
# How many writes `/_sim/companies/{id}/history` keeps per company (the most recent).
HISTORY_LIMIT = 50


@dataclass
class SimulatorConfig:
    """What the simulated Userpilot environment accepts and how fast it is."""

    api_keys: frozenset[str] = field(default_factory=frozenset)
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    # Userpilot's prose says 200, its OpenAPI file says 202 with no body: clients must take both.
    success_status: int = 202
    # Seconds added to every identify request, to model a slow upstream.
    latency: float = 0.0
    # 0 pauses bulk processing (handy to keep a job "running" in a test).
    bulk_rows_per_minute: int = DEFAULT_BULK_ROWS_PER_MINUTE
    # Time a bulk job spends in each of the `queued` and `validating` states.
    bulk_phase_seconds: float = DEFAULT_BULK_PHASE_SECONDS
    # Time a bulk job shows `pending_refresh` after its last row, before `completed`.
    bulk_refresh_seconds: float = DEFAULT_BULK_REFRESH_SECONDS
    # The status of an accepted bulk upload (200, 201 or 202; the body is the job either way).
    bulk_success_status: int = 202
    # Companies Userpilot refuses: identify answers 400 INVALID_COMPANY, a bulk job holding
    # one fails in `validating` with no row applied.
    invalid_company_ids: list[str] = field(default_factory=list)
    max_bulk_records: int = MAX_BULK_RECORDS
    max_bulk_bytes: int = MAX_BULK_BYTES
    # `/_sim/requests` keeps the most recent this many requests (bounded for long benchmarks).
    request_log_limit: int = 100_000
    # At most one `DELETE /v1/companies` per key in this many seconds (0: no limit).
    delete_interval_seconds: float = DEFAULT_DELETE_INTERVAL_SECONDS
    # False: accepted deletions wait for `POST /_sim/run-deletions` (Userpilot's daily 02:00
    # UTC run); True: the companies are deleted as the request is accepted.
    delete_immediately: bool = False

    def __post_init__(self) -> None:
        # Our own copy: `dataclasses.replace` would otherwise share the caller's list.
        self.invalid_company_ids = list(self.invalid_company_ids)

    def to_json(self) -> dict[str, object]:
        """The settings as `GET`/`PUT /_sim/config` show them (keys included: it is a test tool)."""
        return {
            "api_keys": sorted(self.api_keys),
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "success_status": self.success_status,
            "latency": self.latency,
            "bulk_rows_per_minute": self.bulk_rows_per_minute,
            "bulk_phase_seconds": self.bulk_phase_seconds,
            "bulk_refresh_seconds": self.bulk_refresh_seconds,
            "bulk_success_status": self.bulk_success_status,
            "invalid_company_ids": list(self.invalid_company_ids),
            "max_bulk_records": self.max_bulk_records,
            "max_bulk_bytes": self.max_bulk_bytes,
            "request_log_limit": self.request_log_limit,
            "delete_interval_seconds": self.delete_interval_seconds,
            "delete_immediately": self.delete_immediately,
        }
