"""The providers' list APIs as one small client: paced, patient with 429s, 5xx and outages.

Requests start at most `requests_per_second` apart (well under the provider's limit, which the
account's other integrations share). A 429 waits what `Retry-After` says (else a backoff); a
5xx, a timeout or a connection error backs off exponentially with jitter; after `attempts`
tries the page fails with a `ProviderError`, as does any other answer (401, 403, 404...) at
once. The token is sent only as `Authorization: Bearer …`: no error, log line or metric of this
module ever holds it, nor a URL with a query (HubSpot's cursors are opaque).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from app import __version__
from app.domain.rules import printable
from app.metrics import BACKFILL_ERRORS

MAX_BODY = 32 * 1024 * 1024  # a list page is a few hundred kB; anything past this is no page
MAX_RETRY_AFTER = 600.0
_NAMES = {"hubspot": "HubSpot", "stripe": "Stripe"}

Sleep = Callable[[float], Awaitable[None]]


class ProviderError(Exception):
    """The provider did not give a usable page; `reason` labels the error metric (counted once,
    by the runner, when the backfill fails for it; answers retried are counted here)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer, and the provider's clock when it answered (its `Date` header)."""

    body: Any
    date: float | None


def retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (delta or HTTP date), bounded; None when absent or unreadable."""
    if value is None or len(value) > 64:
        return None
    text = value.strip()
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else None
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return max(0.0, min(MAX_RETRY_AFTER, seconds))


def _date(value: str | None) -> float | None:
    if value is None or len(value) > 64:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


class ListClient:
    """One provider's API for one backfill: `get` a JSON page, `post` a JSON query."""

    def __init__(
        self,
        *,
        source: str,
        base_url: str,
        token: str,
        requests_per_second: float,
        sleep: Sleep = asyncio.sleep,
        attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        self.source = source
        self.name = _NAMES.get(source, source)
        self._interval = 1.0 / requests_per_second
        self._next = 0.0
        self._sleep = sleep
        self._attempts = attempts
        self._base = backoff_base
        self._max = backoff_max
        self._whole = timeout  # for a whole answer: a trickled one is cut off at this
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"userpilot-relay/{__version__}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, params: Mapping[str, str]) -> Answer:
        return await self._call("GET", path, params=params)

    async def post(self, path: str, body: Any) -> Answer:
        return await self._call("POST", path, json=body)

    async def _pace(self) -> None:
        now = time.monotonic()
        wait = self._next - now
        self._next = max(now, self._next) + self._interval
        if wait > 0:
            await self._sleep(wait)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._max, self._base * 2**attempt) * (0.5 + random.random() / 2))

    async def _call(self, method: str, path: str, **kwargs: Any) -> Answer:
        problem = ""
        for attempt in range(self._attempts):
            await self._pace()
            try:
                async with asyncio.timeout(self._whole):
                    status, headers, body = await self._send(method, path, **kwargs)
            except (httpx.HTTPError, TimeoutError) as exc:
                what = "no whole answer in time" if isinstance(exc, TimeoutError) else None
                problem = f"{what or type(exc).__name__} reaching {self.name}"
                self._count("connection")
                await self._sleep(self._backoff(attempt))
                continue
            if status == 200:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    raise ProviderError(
                        "invalid_answer", f"{self.name} answered something other than JSON"
                    ) from None
                return Answer(parsed, _date(headers.get("date")))
            if status == 429:
                problem = f"{self.name} answered 429 (rate limited)"
                self._count("rate_limited")
                wait = retry_after(headers.get("retry-after"))
                await self._sleep(self._backoff(attempt) if wait is None else wait)
                continue
            if status >= 500:
                problem = f"{self.name} answered {status}"
                self._count("server_error")
                await self._sleep(self._backoff(attempt))
                continue
            raise ProviderError(
                "unauthorized" if status in (401, 403) else "refused", self._refusal(status)
            )
        raise ProviderError(
            "gave_up", f"{problem or self.name + ' did not answer'}, {self._attempts} times"
        )

    async def _send(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, httpx.Headers, bytes]:
        async with self._http.stream(method, path, **kwargs) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    raise ProviderError(
                        "invalid_answer", f"{self.name} answered a page over {MAX_BODY} bytes"
                    )
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _refusal(self, status: int) -> str:
        setting = "HUBSPOT_ACCESS_TOKEN" if self.source == "hubspot" else "STRIPE_API_KEY"
        if status in (401, 403):
            return (
                f"{self.name} refused the credentials ({status}): check {setting} and its "
                "scopes (HubSpot: crm.objects.companies.read; Stripe: read access)"
            )
        return f"{self.name} refused the request ({status})"

    def _count(self, reason: str) -> None:
        BACKFILL_ERRORS.labels(source=self.source, reason=reason).inc()


def text(value: object, limit: int = 200) -> str:
    """A provider's value, safe to show and store (control characters replaced, bounded)."""
    return printable(value, limit)
