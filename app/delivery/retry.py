"""The retry policy: which upstream answers are retried, how long to wait, how to label it.

A real-time call is retried on 408, 425, 429, every 5xx and every failure without an answer.
Anything else that is not a 2xx (400, 401, 403, 404, 413, other 4xx, redirects) is a permanent
rejection: the update is dead-lettered, visible and replayable. A bulk upload's answers mean
other things (`classify_upload`): a refusal there sends rows to smaller jobs or real-time calls.
"""

from __future__ import annotations

import random
from typing import Literal

from app.domain.rules import printable
from app.userpilot.client import UpstreamResult

# What a bulk upload's answer means (the label it counts under).
Upload = Literal[
    "accepted",
    "conflict",
    "too_large",
    "key_refused",
    "unavailable",
    "throttled",
    "error",
    "refused",
]

_RETRYABLE_4XX = frozenset({408, 425, 429})


def backoff_delay(attempts: int, *, base: float, cap: float) -> float:
    """Capped exponential backoff with jitter: base * 2^(attempts-1), then 50-100% of it."""
    exponent = min(max(attempts - 1, 0), 30)
    return float(min(cap, base * (2**exponent)) * random.uniform(0.5, 1.0))


def classify(result: UpstreamResult) -> str:
    """`delivered`, `retry` or `dead` for one upstream answer."""
    if result.ok:
        return "delivered"
    if result.status is None or result.status >= 500 or result.status in _RETRYABLE_4XX:
        return "retry"
    return "dead"


def retry_reason(result: UpstreamResult) -> str:
    if result.status == 429:
        return "throttled"
    if result.status in (408, 425):
        return "request_timeout"
    if result.status is not None:
        return "server_error"
    if result.error and result.error.startswith("timeout"):
        return "timeout"
    return "connection_error"


def classify_upload(result: UpstreamResult) -> tuple[Upload, str | None]:
    """What Userpilot's answer to a bulk upload means, with its job id when accepted.

    Any 2xx with a usable `job_id` is accepted (one without is retried: nothing can be
    polled); 409 another job holds the slot; 413 too large; 401/403 the key is refused for bulk;
    404/405/501 or a redirect: this endpoint has no bulk API; 429 throttled; no answer, 5xx,
    408/425 retried; any other refusal (400, 422, ...) means some row is bad.
    """
    if result.ok:
        job_id = (result.body or {}).get("job_id")
        if isinstance(job_id, str) and usable_job_id(job_id):
            return "accepted", job_id
        return "error", None
    status = result.status
    if status == 409:
        return "conflict", None
    if status == 413:
        return "too_large", None
    if status in (401, 403):
        return "key_refused", None
    if status == 429:
        return "throttled", None
    if status in (404, 405, 501) or (status is not None and 300 <= status < 400):
        return "unavailable", None
    if classify(result) == "retry":
        return "error", None
    return "refused", None


def usable_job_id(job_id: str) -> bool:
    """An id the relay can store and poll: printable, bounded, not a path step (`.`, `..`)."""
    return 0 < len(job_id) <= 256 and printable(job_id, 256) == job_id and job_id.strip(".") != ""
