"""Logging: httpx never writes request URLs (they may carry secrets)."""

from __future__ import annotations

import logging

import httpx
import pytest

from app.logs import configure_logging


def test_httpx_never_logs_request_urls(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging("DEBUG")
    try:
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        with (
            caplog.at_level(logging.DEBUG),
            httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client,
        ):
            client.get("http://127.0.0.1:9/v1/secret-path?token=abc")
        assert not [r for r in caplog.records if r.name.startswith("httpx")]
    finally:
        configure_logging("INFO")
