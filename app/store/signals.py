"""What a store tells the process after a commit: new work to deliver, deliveries settled.

Routes and sources only store; the dispatcher waits on `work` instead of being poked by them,
and a request behind `Prefer: wait` waits on its delivery's event. On PostgreSQL the store also
sets `work` when another replica commits new work (`LISTEN/NOTIFY`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator


class Signals:
    """In-process wake-ups, set by the store once a write has committed."""

    def __init__(self) -> None:
        self.work = asyncio.Event()
        self._settled: dict[str, list[asyncio.Event]] = {}

    def work_arrived(self) -> None:
        """Updates became ready to deliver (stored, replayed or handed back)."""
        self.work.set()

    def settled(self, delivery_ids: Iterable[str]) -> None:
        """These deliveries reached an outcome (delivered or dead)."""
        for delivery_id in delivery_ids:
            for event in self._settled.get(delivery_id, ()):
                event.set()

    @contextlib.contextmanager
    def watching(self, delivery_id: str) -> Iterator[asyncio.Event]:
        """An event set when the delivery settles in this process, for the `with` block."""
        event = asyncio.Event()
        waiters = self._settled.setdefault(delivery_id, [])
        waiters.append(event)
        try:
            yield event
        finally:
            waiters.remove(event)
            if not waiters:
                del self._settled[delivery_id]
