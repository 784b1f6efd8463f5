"""The retry policy: which upstream answers are retried, how long to wait, how to label it.

Retried: 408, 425, 429, every 5xx and every failure without an answer. Anything else that is
not a 2xx (400, 401, 403, 404, 413, other 4xx, redirects) is a permanent rejection: the
update is dead-lettered, visible and replayable.
"""

from __future__ import annotations

import random

from app.userpilot.client import UpstreamResult

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
