"""Wake-ups across replicas: `LISTEN userpilot_relay_work` on a connection of its own.

Triggers (migration 3) notify the channel when a transaction stores or re-queues work; every
replica's listener then sets its store's `work` signal, so its dispatcher claims at once
instead of at its next poll. A lost connection is reopened with a backoff; meanwhile the
dispatcher's poll still finds the work, only later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from app.lifecycle import cancel_and_wait
from app.store.postgres.connection import first_line

log = logging.getLogger("userpilot_relay.store")

CHANNEL = "userpilot_relay_work"


class WorkListener:
    """Calls `on_work` for every notification on the channel, from a background task."""

    def __init__(self, conninfo: str, on_work: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._on_work = on_work
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while LISTEN is in effect

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="relay-store-listen")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    # Work may have arrived while no one listened.
                    self._on_work()
                    async for _ in conn.notifies():
                        self._on_work()
            except psycopg.Error as exc:
                self.listening.clear()
                log.debug("LISTEN connection lost", extra={"error": first_line(exc)})
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
