"""Wake-ups across replicas: `NOTIFY` when work is committed, `LISTEN` on a connection of its own.

After a commit that stores or re-queues work, the store announces it on the channel; every
replica's listener then sets its store's `work` signal, so its dispatcher claims at once
instead of at its next poll. Announcements are coalesced (one per `ANNOUNCE_DELAY` at most,
sent after the commits it covers) and sent outside the ingest transactions: a NOTIFY inside
each one would serialise every commit on PostgreSQL's notification lock. A lost LISTEN
connection is reopened with a backoff; meanwhile the dispatcher's poll still finds the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg

from app.lifecycle import cancel_and_wait
from app.store.postgres.connection import first_line

log = logging.getLogger("userpilot_relay.store")

CHANNEL = "userpilot_relay_work"
NOTIFY = f"NOTIFY {CHANNEL}"
ANNOUNCE_DELAY = 0.02


class WorkChannel:
    """Calls `on_work` for every notification on the channel; `announce` sends one."""

    def __init__(
        self,
        conninfo: str,
        *,
        on_work: Callable[[], None],
        send: Callable[[], Awaitable[None]],
    ) -> None:
        self._conninfo = conninfo
        self._on_work = on_work
        self._send = send
        self._listening_task: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._pending = False  # committed work not announced yet
        self.listening = asyncio.Event()  # set while LISTEN is in effect

    def start(self) -> None:
        self._listening_task = asyncio.create_task(self._listen(), name="relay-store-listen")

    async def stop(self) -> None:
        tasks = [t for t in (self._listening_task, self._announcing) if t is not None]
        await cancel_and_wait(tasks)
        self._listening_task = self._announcing = None

    def announce(self) -> None:
        """Tell every replica that work was committed (soon, once for a burst of commits)."""
        self._pending = True
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.create_task(self._announce(), name="relay-store-notify")

    async def _announce(self) -> None:
        # Work committed while a NOTIFY is on its way gets one of its own: none goes unsaid.
        while self._pending:
            await asyncio.sleep(ANNOUNCE_DELAY)  # sent after every commit it stands for
            self._pending = False
            try:
                await self._send()
            except Exception as exc:  # the other replicas' poll finds the work instead
                log.debug("NOTIFY failed", extra={"error": first_line(exc)})

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
                    self._on_work()  # work may have arrived while no one listened
                    async for _ in conn.notifies():
                        self._on_work()
            except psycopg.Error as exc:
                log.debug("LISTEN connection lost", extra={"error": first_line(exc)})
            except Exception as exc:  # never let the wake-ups die: the poll alone is slower
                log.warning("LISTEN failed unexpectedly", extra={"error": first_line(exc)})
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
