"""The relay's Prometheus metrics as module-level objects, every name prefixed
`userpilot_relay_`, labels bounded (a route template, never a raw path or a company id).

What each one counts, with its labels and values, is documented once, in docs/metrics.md.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from app import __version__

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "userpilot_relay_http_requests",
    "Inbound HTTP requests answered, by route template, method, caller and status.",
    ["route", "method", "caller", "status"],
)
HTTP_DURATION = Histogram(
    "userpilot_relay_http_request_duration_seconds",
    "Inbound HTTP request latency in seconds.",
    ["route", "method", "caller"],
    buckets=_LATENCY,
)
UPDATES_ACCEPTED = Counter(
    "userpilot_relay_updates_accepted",
    "Company updates committed to the store, by source.",
    ["source"],
)
UPSTREAM_REQUESTS = Counter(
    "userpilot_relay_upstream_requests",
    "Calls to Userpilot by endpoint and status class (error: no HTTP answer).",
    ["endpoint", "status_class"],
)
UPSTREAM_DURATION = Histogram(
    "userpilot_relay_upstream_request_duration_seconds",
    "Latency of calls to Userpilot in seconds.",
    ["endpoint"],
    buckets=_LATENCY,
)
UPSTREAM_THROTTLED = Counter(
    "userpilot_relay_upstream_throttled", "Userpilot answers 429 (rate limited)."
)
UPSTREAM_AUTH_FAILURES = Counter(
    "userpilot_relay_upstream_auth_failures",
    "Userpilot answers 401/403: the configured USERPILOT_API_KEY is refused.",
)
DELIVERIES = Counter(
    "userpilot_relay_deliveries",
    "Company updates that reached a final state, by outcome (delivered, dead).",
    ["outcome"],
)
RETRIES = Counter(
    "userpilot_relay_delivery_retries",
    "Upstream calls scheduled for a retry, by reason.",
    ["reason"],
)
UPDATES_MERGED = Counter(
    "userpilot_relay_updates_merged",
    "Updates merged into a call carrying another update of the same company.",
)
QUEUE_DEPTH = Gauge(
    "userpilot_relay_queue_depth", "Updates waiting or being delivered.", ["status"]
)
QUEUE_OLDEST_AGE = Gauge(
    "userpilot_relay_queue_oldest_age_seconds",
    "Seconds the oldest undelivered update has been waiting (0 when none).",
)
DEAD_LETTERS = Gauge(
    "userpilot_relay_dead_letters", "Dead updates waiting for a replay or a purge."
)
STORE_UP = Gauge("userpilot_relay_store_up", "1 when the store answered its last check.")
WEBHOOK_EVENTS = Counter(
    "userpilot_relay_webhook_events",
    "Verified webhook events by source and outcome.",
    ["source", "outcome"],
)
WEBHOOK_REJECTIONS = Counter(
    "userpilot_relay_webhook_rejections",
    "Webhook requests refused, by source and reason.",
    ["source", "reason"],
)
WEBHOOK_UNMAPPED_FIELDS = Counter(
    "userpilot_relay_webhook_unmapped_fields",
    "Source fields dropped because no mapping names them.",
    ["source"],
)
WEBHOOK_PARKED = Gauge(
    "userpilot_relay_webhook_parked_events",
    "Verified webhook events waiting for their company to be known.",
)
BULK_JOBS = Counter("userpilot_relay_bulk_jobs", "Bulk jobs ended, by outcome.", ["outcome"])
BULK_ROWS = Counter(
    "userpilot_relay_bulk_rows", "Company rows of ended bulk jobs, by outcome.", ["outcome"]
)
BULK_SUBMISSIONS = Counter(
    "userpilot_relay_bulk_submissions", "Bulk job uploads, by result.", ["result"]
)
BULK_JOB_DURATION = Histogram(
    "userpilot_relay_bulk_job_duration_seconds",
    "Seconds from Userpilot accepting a bulk job to its end.",
    buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
BULK_JOB_ROWS = Gauge(
    "userpilot_relay_bulk_job_rows", "The running bulk job's rows, total and completed.", ["state"]
)
BULK_JOB_STUCK = Gauge(
    "userpilot_relay_bulk_job_stuck",
    "1 while an unfinished bulk job has made no progress for RELAY_BULK_STUCK_SECONDS.",
)
UPSTREAM_PAUSED_UNTIL = Gauge(
    "userpilot_relay_upstream_paused_until_seconds",
    "Unix time until which calls to Userpilot are held after a 429 (0 or past: not paused).",
)
CIRCUIT_OPEN = Gauge(
    "userpilot_relay_upstream_circuit_open",
    "1 while Userpilot looks down and the relay probes it one call at a time.",
)
PII_FINDINGS = Counter(
    "userpilot_relay_pii_findings",
    "Metadata values that look like personal data, by kind and what the guard did.",
    ["kind", "action"],
)
VALUES_TOO_LONG = Counter(
    "userpilot_relay_values_too_long",
    "Webhook and backfill string values longer than 65,535 characters, dropped.",
    ["source"],
)
PROPERTY_CONFLICTS = Gauge(
    "userpilot_relay_property_type_conflicts", "Properties seen with more than one type."
)
TYPE_DRIFT_REJECTIONS = Counter(
    "userpilot_relay_type_drift_rejections",
    "Values refused for a type other than the one first recorded for their property.",
)
CATALOGUE_NAMES_REFUSED = Counter(
    "userpilot_relay_catalogue_names_refused",
    "New property names' values not catalogued: the caller's quota reached or the catalogue full.",
    ["caller"],
)
BACKFILL_PAGES = Counter(
    "userpilot_relay_backfill_pages", "Pages read by backfills, by source.", ["source"]
)
BACKFILL_COMPANIES = Counter(
    "userpilot_relay_backfill_companies",
    "Companies read by backfills, by source and outcome.",
    ["source", "outcome"],
)
BACKFILL_ERRORS = Counter(
    "userpilot_relay_backfill_errors",
    "Errors of backfills (answers retried, pages refused), by source and reason.",
    ["source", "reason"],
)
BACKFILL_RUNNING = Gauge(
    "userpilot_relay_backfill_running", "1 while a backfill of that source runs here.", ["source"]
)
ERASURES = Counter(
    "userpilot_relay_erasures", "Erasures ended, by outcome (completed, failed).", ["outcome"]
)
COMPANIES_ERASED = Counter("userpilot_relay_companies_erased", "Companies of completed erasures.")
SUPPRESSED_UPDATES = Counter(
    "userpilot_relay_suppressed_updates",
    "Updates of erased companies dropped at ingest, by source.",
    ["source"],
)
ERASURE_REQUESTS = Counter(
    "userpilot_relay_erasure_requests",
    "Userpilot DELETE /v1/companies calls, by result (accepted, throttled, error, refused).",
    ["result"],
)
ERASURE_OLDEST_RUNNING = Gauge(
    "userpilot_relay_erasure_oldest_running_seconds",
    "Seconds since the oldest running erasure was requested (0 when none runs).",
)
BUILD_INFO = Gauge("userpilot_relay_build_info", "The relay's version.", ["version"])
BUILD_INFO.labels(version=__version__).set(1)
for _status in ("queued", "delivering"):
    QUEUE_DEPTH.labels(status=_status)
for _outcome in ("delivered", "dead"):
    DELIVERIES.labels(outcome=_outcome)
for _outcome in ("completed", "failed"):
    ERASURES.labels(outcome=_outcome)
for _result in ("accepted", "throttled", "error", "refused"):
    ERASURE_REQUESTS.labels(result=_result)
for _source in ("api", "bulk", "hubspot", "stripe", "backfill"):
    SUPPRESSED_UPDATES.labels(source=_source)
