"""Admission of bulk bodies: how many are held in memory, and how many are parsed at once.

Parsing a 20 MB bulk body takes about ten times its size in memory. `RELAY_BULK_CONCURRENCY`
bodies are parsed at a time (in a worker thread, so the event loop keeps answering); a few
more may be read and wait for their turn, up to `RELAY_BULK_QUEUE_SECONDS`. Past that a bulk
request is a 503 `busy` with `Retry-After`, and nothing was stored: the relay's memory stays
bounded whoever sends, and single updates keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Request

from app.config import Settings
from app.errors import RelayError

_WAITING_PER_TURN = 2  # bodies that may be read and wait, per parsing turn


def _busy() -> RelayError:
    return RelayError(
        503,
        "busy",
        "other bulk requests are being stored; nothing was stored, retry shortly",
        headers={"Retry-After": "5"},
    )


class BulkAdmission:
    def __init__(self, *, concurrency: int, queue_seconds: float) -> None:
        self._turns = asyncio.Semaphore(concurrency)
        self._queue_seconds = queue_seconds
        self._held = 0
        self._max_held = concurrency * (1 + _WAITING_PER_TURN)

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """Room to read one body into memory, or a 503 at once when too many are held."""
        if self._held >= self._max_held:
            raise _busy()
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One of the parsing turns, waited for up to the queue time."""
        try:
            await asyncio.wait_for(self._turns.acquire(), timeout=self._queue_seconds)
        except TimeoutError:
            raise _busy() from None
        try:
            yield
        finally:
            self._turns.release()


def bulk_admission(request: Request, settings: Settings) -> BulkAdmission:
    """The app's admission, made on first use (in the event loop that serves the app)."""
    admission: BulkAdmission | None = getattr(request.app.state, "bulk_admission", None)
    if admission is None:
        admission = BulkAdmission(
            concurrency=settings.relay_bulk_concurrency,
            queue_seconds=settings.relay_bulk_queue_seconds,
        )
        request.app.state.bulk_admission = admission
    return admission
