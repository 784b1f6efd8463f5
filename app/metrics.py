"""Prometheus metrics, every name prefixed `userpilot_relay_`. Labels stay bounded.

Inbound:
- `userpilot_relay_http_requests_total{route,method,caller,status}`: requests answered; route is
  the template (`/deliveries/{delivery_id}`), caller the relay key's name (`anonymous`,
  `hubspot`, `stripe` otherwise). `/metrics` and the probes are not counted.
- `userpilot_relay_http_request_duration_seconds{route,method,caller}`: their latency.
- `userpilot_relay_updates_accepted_total{source}`: updates stored (`api`, `bulk`, `hubspot`,
  `stripe`).

Upstream:
- `userpilot_relay_upstream_requests_total{endpoint,status_class}`: calls to Userpilot by
  endpoint and `2xx`/`4xx`/`5xx`/`error` (no HTTP answer).
- `userpilot_relay_upstream_request_duration_seconds{endpoint}`: their latency.
- `userpilot_relay_upstream_throttled_total`: 429 answers.
- `userpilot_relay_upstream_auth_failures_total`: 401/403 answers (the Userpilot key is wrong).

Delivery:
- `userpilot_relay_deliveries_total{outcome}`: updates that reached `delivered` or `dead`.
- `userpilot_relay_delivery_retries_total{reason}`: calls retried, by `throttled`,
  `server_error`, `timeout`, `connection_error`.
- `userpilot_relay_updates_merged_total`: updates that rode along in another update's call.
- `userpilot_relay_queue_depth{status}`: updates `queued` or `delivering` now.
- `userpilot_relay_queue_oldest_age_seconds`: how long the oldest waiting update has waited.
- `userpilot_relay_dead_letters`: dead updates waiting for a replay or a purge.
- `userpilot_relay_store_up`: 1 when the store answered its last check.

Bulk jobs and recovery:
- `userpilot_relay_bulk_jobs_total{outcome}`: jobs ended, `completed`, `failed`, `split` (too
  large, or bulk off) or `rejected` (bulk refused for the key, or no bulk API).
- `userpilot_relay_bulk_rows_total{outcome}`: company rows of ended jobs: `delivered`, or
  `resent` (to a smaller job or real-time calls).
- `userpilot_relay_bulk_submissions_total{result}`: bulk uploads by `accepted`, `conflict`
  (409: another job holds the environment's slot), `too_large`, `key_refused` (401/403),
  `unavailable` (no bulk API: 404, 405, 501, a redirect), `throttled`, `error` (no answer, a
  5xx, a 2xx without a job id), `refused` (some row is bad: 400, 422, ...).
- `userpilot_relay_bulk_job_duration_seconds`: from acceptance to the end, per job.
- `userpilot_relay_bulk_job_rows{state}`: the running job's rows, `total` and `completed`.
- `userpilot_relay_upstream_paused_until_seconds`: unix time until which this process holds
  every call after a 429 (0 or past: not paused); the pause is capped at
  RELAY_MAX_UPSTREAM_PAUSE_SECONDS.
- `userpilot_relay_bulk_job_stuck`: 1 while an unfinished job (running, or never accepted) has
  made no progress for RELAY_BULK_STUCK_SECONDS.
- `userpilot_relay_upstream_circuit_open`: 1 while Userpilot looks down and the relay only
  probes it, one call at a time.

Webhooks:
- `userpilot_relay_webhook_events_total{source,outcome}`: verified events by what became of them.
- `userpilot_relay_webhook_rejections_total{source,reason}`: requests refused (signature,
  timestamp, body).
- `userpilot_relay_webhook_unmapped_fields_total{source}`: source fields dropped as unmapped.
- `userpilot_relay_webhook_parked_events`: verified events waiting for their company to be
  known (a Stripe subscription whose customer is not linked yet); retried, never dropped.

Data quality and backfills:
- `userpilot_relay_pii_findings_total{kind,action}`: metadata values that look like personal
  data (`email`, `phone`, `ip_address`, `card_number`), by what the guard did: `rejected` (a
  422), `stripped` (the property removed), `allowed` (the property is cleared for it). Never the
  value, never a company id.
- `userpilot_relay_values_too_long_total{source}`: webhook and backfill string values longer
  than Userpilot's 65,535 characters, dropped (the API refuses them with a 422).
- `userpilot_relay_property_type_conflicts`: properties seen with more than one type.
- `userpilot_relay_type_drift_rejections_total`: values refused (RELAY_TYPE_DRIFT=reject) for
  a type other than the one first recorded for their undeclared property.
- `userpilot_relay_catalogue_names_refused_total{caller}`: values of a new property name the
  catalogue did not record because their caller (a relay key's name, `hubspot`, `stripe`) holds
  RELAY_CATALOGUE_NAMES_PER_CALLER names, or the catalogue is full (the update is still stored).
- `userpilot_relay_backfill_pages_total{source}`, `userpilot_relay_backfill_companies_total
  {source,outcome}` (`enqueued`, `skipped`, `unchanged`), `userpilot_relay_backfill_errors_total
  {source,reason}`: what backfills from HubSpot and Stripe read and did.
- `userpilot_relay_backfill_running{source}`: 1 while a backfill of that source runs here.

Erasures (forgetting a company in Userpilot and in the relay):
- `userpilot_relay_erasures_total{outcome}`: erasures ended, `completed` or `failed`.
- `userpilot_relay_companies_erased_total`: companies of completed erasures.
- `userpilot_relay_suppressed_updates_total{source}`: updates of erased companies dropped at
  ingest (`api`, `bulk`, `hubspot`, `stripe`, `backfill`).
- `userpilot_relay_erasure_requests_total{result}`: `DELETE /v1/companies` calls by `accepted`,
  `throttled`, `error` (no answer, a 5xx), `refused` (a 4xx other than 429).
- `userpilot_relay_erasure_oldest_running_seconds`: age of the oldest running erasure (0: none).

- `userpilot_relay_build_info{version}`: always 1.
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
