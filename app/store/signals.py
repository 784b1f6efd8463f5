"""What a store tells the process after a commit: new work to deliver, deliveries settled.

Routes and sources only store; the dispatcher waits on `work` instead of being poked by them,
and a request behind `Prefer: wait` waits on its delivery's event. On PostgreSQL the store also
sets `work` when another replica commits new work (`LISTEN/NOTIFY`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

from app.domain.models import Delivery


class Signals:
    """In-process wake-ups, set by the store once a write has committed."""

    def __init__(self) -> None:
        self.work = asyncio.Event()
        self.waited_on = False  # a caller waits for an update just stored (`Prefer: wait`)
        self._settled: dict[str, list[asyncio.Event]] = {}
        self._outcomes: dict[str, Delivery] = {}  # what a watched delivery became, if told

    def work_arrived(self) -> None:
        """Updates became ready to deliver (stored, replayed or handed back)."""
        self.work.set()

    def caller_waits(self) -> None:
        """The work just stored has a caller waiting for its outcome: the dispatcher claims it
        at once rather than after the merge window (it merges whatever else is queued)."""
        self.waited_on = True

    def take_waited_on(self) -> bool:
        """Whether a caller waits on work stored since the last time this was asked."""
        waited, self.waited_on = self.waited_on, False
        return waited

    def settled(self, delivery_ids: Iterable[str], outcomes: Iterable[Delivery] = ()) -> None:
        """These deliveries reached an outcome (delivered or dead); `outcomes`, the rows as
        committed, spare a waiter the read."""
        for delivery in outcomes:
            if delivery.id in self._settled:
                self._outcomes[delivery.id] = delivery
        for delivery_id in delivery_ids:
            for event in self._settled.get(delivery_id, ()):
                event.set()

    def watched(self, delivery_ids: Iterable[str]) -> bool:
        """Whether a request in this process waits for one of these deliveries."""
        return any(delivery_id in self._settled for delivery_id in delivery_ids)

    def outcome(self, delivery_id: str) -> Delivery | None:
        """The watched delivery as its outcome was committed here, if it was."""
        return self._outcomes.get(delivery_id)

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
                self._outcomes.pop(delivery_id, None)
