"""Settings of one simulator instance.

A plain mutable dataclass rather than pydantic settings: the simulator is configured from the
command line or by tests, and `PUT /_sim/config` changes some fields while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTIFY_PATH = "/v1/companies/identify"
BULK_PATH = "/v1/companies/bulk_identify"
JOBS_PATH = "/v1/background_jobs"
CONTROL_PREFIX = "/_sim"

DEFAULT_RATE_LIMIT_PER_MINUTE = 600
DEFAULT_BULK_ROWS_PER_MINUTE = 1_800
MAX_BULK_RECORDS = 10_000
MAX_BULK_BYTES = 50 * 1024 * 1024


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
    bulk_phase_seconds: float = 0.1
    max_bulk_records: int = MAX_BULK_RECORDS
    max_bulk_bytes: int = MAX_BULK_BYTES
    # `/_sim/requests` keeps the most recent this many requests (bounded for long benchmarks).
    request_log_limit: int = 100_000

    def to_json(self) -> dict[str, object]:
        """The settings as `GET`/`PUT /_sim/config` show them (keys included: it is a test tool)."""
        return {
            "api_keys": sorted(self.api_keys),
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "success_status": self.success_status,
            "latency": self.latency,
            "bulk_rows_per_minute": self.bulk_rows_per_minute,
            "bulk_phase_seconds": self.bulk_phase_seconds,
            "max_bulk_records": self.max_bulk_records,
            "max_bulk_bytes": self.max_bulk_bytes,
            "request_log_limit": self.request_log_limit,
        }
