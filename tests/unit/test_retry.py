"""Retrying: backoff, the outcome of an upstream answer, Retry-After."""

from __future__ import annotations

import pytest

from app.delivery.retry import backoff_delay, classify
from app.userpilot.client import UpstreamResult, parse_retry_after


def test_backoff_grows_caps_and_jitters() -> None:
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (20, 30)]:
        delays = [backoff_delay(attempt, base=1, cap=30) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def _result(status: int | None) -> UpstreamResult:
    return UpstreamResult(status=status, error=None, request_id=None, retry_after=None, elapsed=0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (408, "retry"),
        (None, "retry"),
        (400, "dead"),
        (401, "dead"),
        (403, "dead"),
        (404, "dead"),
        (413, "dead"),
    ],
)
def test_classify(status: int | None, outcome: str) -> None:
    assert classify(_result(status)) == outcome


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate

    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == 30
    assert parse_retry_after(formatdate(999_000, usegmt=True), now=1_000_000) == 0
    assert parse_retry_after("99999") == 3600
