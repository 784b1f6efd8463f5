"""A small Userpilot client: one pooled `httpx.AsyncClient`, the key in its default headers.

Callers never build URLs or headers. Every call answers an `UpstreamResult`; transport
failures (timeouts, refused or dropped connections) come back as results with no status, so
the dispatcher classifies every outcome in one place.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx
import orjson

from app import __version__
from app.metrics import UPSTREAM_DURATION, UPSTREAM_REQUESTS

API_VERSION = "2020-09-22"
_BULK_PATH = "/v1/companies/bulk_identify"
# A bulk job's statuses that mean Userpilot still works on it (then `completed` or `failed`).
RUNNING = frozenset({"queued", "validating", "processing", "pending_refresh"})
_JOBS_PATH = "/v1/background_jobs"
# `DELETE` here with `{"companies": [ids]}` schedules companies for Userpilot's daily deletion.
_COMPANIES_PATH = "/v1/companies"
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """What Userpilot answered (status None: no HTTP answer at all)."""

    status: int | None
    error: str | None
    request_id: str | None
    retry_after: float | None
    elapsed: float
    # A 2xx answer's JSON object, for the calls that read one (bulk jobs); else None.
    body: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110),
    capped at an hour."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), 3600.0)


def next_deletion_run(accepted_at: float) -> float:
    """When Userpilot executes a deletion accepted at `accepted_at` (unix time): its daily run,
    the next 02:00 UTC at or after the acceptance."""
    day = datetime.fromtimestamp(accepted_at, UTC).replace(
        hour=2, minute=0, second=0, microsecond=0
    )
    run = day.timestamp()
    return run if run >= accepted_at else (day + timedelta(days=1)).timestamp()


def job_status(job: dict[str, object]) -> str | None:
    """A job answer's `status`, lower-cased (None when absent or not a string)."""
    status = job.get("status")
    return status.strip().lower()[:60] if isinstance(status, str) else None


def completed_rows(job: dict[str, object], total: int) -> int | None:
    """A job answer's `completed_rows`, within 0..total (None when absent or not a number)."""
    value = job.get("completed_rows")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(0, min(total, int(value)))


def listed_jobs(body: dict[str, object]) -> list[dict[str, object]] | None:
    """The jobs of a `GET /v1/background_jobs` answer (`jobs` or `data`), None if it has none."""
    for key in ("jobs", "data", "items"):
        items = body.get(key)
        if isinstance(items, list):
            return [item for item in items if isinstance(item, dict)]
    return None


def job_started(job: dict[str, object]) -> float | None:
    """When a listed job was submitted (unix time): `submitted_at` or `start_time`, as an ISO
    8601 text or a number; None when neither is readable."""
    for key in ("submitted_at", "start_time"):
        value = job.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) / (1000 if value > 10**11 else 1)
        if isinstance(value, str) and value:
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return when.timestamp() if when.tzinfo is not None else None
    return None


def _json_object(response: httpx.Response) -> dict[str, object] | None:
    """The answer's JSON object (at most 1 MB of it read), or None."""
    if len(response.content) > 1024 * 1024:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def describe_error(response: httpx.Response) -> str:
    """Userpilot's own error message when its body has one, else the start of the body."""
    text = response.text[:4096]
    try:
        body = orjson.loads(text)
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            parts = [str(first[k]) for k in ("error_code", "message") if first.get(k)]
            if parts:
                return ": ".join(parts)[:_MAX_ERROR_CHARS]
    except orjson.JSONDecodeError:
        pass
    return (text.strip() or response.reason_phrase or "no body")[:_MAX_ERROR_CHARS]


class UserpilotClient:
    """Userpilot's company endpoints, for one API key and one base URL."""

    def __init__(self, *, base_url: str, api_key: str, timeout: float) -> None:
        # httpx's timeout bounds each phase (a slow-drip answer can outlast it): this bounds
        # the whole call, so it always ends well inside the delivery's lease.
        self._total_timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Token {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/plain, */*",
                "X-API-Version": API_VERSION,
                "User-Agent": f"userpilot-relay/{__version__}",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def identify_company(
        self, *, company_id: str, metadata: dict[str, object]
    ) -> UpstreamResult:
        body = orjson.dumps({"company_id": company_id, "metadata": metadata})
        return await self._post("/v1/companies/identify", "companies_identify", body)

    async def bulk_identify_companies(self, body: bytes, *, within: float) -> UpstreamResult:
        """Submit a bulk job: `body` is `{"companies": [...]}` (up to 50 MB: `within` seconds bound
        the whole upload); a 2xx answer's `body` holds the job (`job_id`, `status`)."""
        return await self._call("POST", _BULK_PATH, "companies_bulk_identify", body, within)

    async def background_job(self, job_id: str) -> UpstreamResult:
        """A bulk job's status (the id URL-encoded: Userpilot's contain colons)."""
        path = f"{_JOBS_PATH}/{quote(job_id, safe='')}"
        return await self._call("GET", path, "background_jobs", None)

    async def background_jobs(self) -> UpstreamResult:
        """The environment's bulk jobs (`{"jobs": [...]}`, newest first): to learn whether an
        upload whose answer was lost started a job."""
        return await self._call("GET", _JOBS_PATH, "background_jobs_list", None)

    async def delete_companies(self, company_ids: Sequence[str]) -> UpstreamResult:
        """Schedule companies for deletion (`DELETE /v1/companies`, at most one call every 2 s
        per key: the caller paces); a 2xx answer's `body` holds Userpilot's `message`."""
        body = orjson.dumps({"companies": list(company_ids)})
        return await self._call("DELETE", _COMPANIES_PATH, "companies_delete", body)

    async def _post(self, path: str, endpoint: str, body: bytes) -> UpstreamResult:
        return await self._call("POST", path, endpoint, body)

    async def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        body: bytes | None,
        within: float | None = None,
    ) -> UpstreamResult:
        started = time.perf_counter()
        parsed: dict[str, object] | None = None
        total = self._total_timeout if within is None else within
        try:
            async with asyncio.timeout(total):
                request = self._http.build_request(method, path, content=body)
                if within is not None:  # the per-phase limits too (a large upload's write)
                    request.extensions["timeout"] = httpx.Timeout(within).as_dict()
                response = await self._http.send(request)
                error = None
                if endpoint != "companies_identify" and 200 <= response.status_code < 300:
                    parsed = _json_object(response)
                if not 200 <= response.status_code < 300:
                    error = describe_error(response)
        except (TimeoutError, httpx.TimeoutException) as exc:
            return self._failed(endpoint, started, f"timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return self._failed(endpoint, started, f"connection error: {type(exc).__name__}")
        except httpx.HTTPError as exc:  # an answer httpx could not read (e.g. a bad encoding)
            return self._failed(endpoint, started, f"unreadable answer: {type(exc).__name__}")
        elapsed = time.perf_counter() - started
        status = response.status_code
        UPSTREAM_REQUESTS.labels(endpoint=endpoint, status_class=f"{status // 100}xx").inc()
        UPSTREAM_DURATION.labels(endpoint=endpoint).observe(elapsed)
        if 300 <= status < 400:
            location = response.headers.get("location", "")[:200]
            error = f"redirected to {location or 'nowhere'}: check USERPILOT_ENDPOINT"
        return UpstreamResult(
            status=status,
            error=error,
            request_id=response.headers.get("x-request-id"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            elapsed=elapsed,
            body=parsed if 200 <= status < 300 else None,
        )

    @staticmethod
    def _failed(endpoint: str, started: float, error: str) -> UpstreamResult:
        elapsed = time.perf_counter() - started
        UPSTREAM_REQUESTS.labels(endpoint=endpoint, status_class="error").inc()
        UPSTREAM_DURATION.labels(endpoint=endpoint).observe(elapsed)
        return UpstreamResult(
            status=None, error=error, request_id=None, retry_after=None, elapsed=elapsed
        )
