"""The relay app with a store that stores nothing: the framework's own floor for the benchmark.

Same routes, auth, validation, metrics and logging as `app.main:app`, and the real `Store`, over
an engine that answers every plan's statements with nothing stored: `enqueue` answers ids at
once instead of committing. Run as `uvicorn bench.floor_app:app`.
"""

from __future__ import annotations

import time
from typing import TypeVar

from app.main import service_app
from app.store.deliveries import INSERT_DELIVERY
from app.store.engine import Engine, PlanFactory
from app.store.sql import Dialect, Result, Statement, drive
from app.store.store import Store

T = TypeVar("T")

NULL = Dialect(name="null", now="0", tokens={})
_RESERVED = Result([(0,)], 1)  # a batch's block of sequence numbers
_NOTHING = Result([], 0)
_INSERTED = Result([], 1)  # an update's insert (no suppression stops it)


def _answer(statement: Statement) -> Result:
    """No row exists and none is touched, except that a batch gets its sequence numbers and
    an update's insert reports its row (else it would read as an erased company's)."""
    if statement.sql == "{reserve_seqs}":
        return _RESERVED
    return _INSERTED if statement.sql == INSERT_DELIVERY else _NOTHING


class NullEngine(Engine):
    """An engine with nothing behind it: plans run to their end on empty answers."""

    dialect = NULL

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        return True

    async def write(
        self,
        plan: PlanFactory[T],
        *,
        atomic: bool = True,
        durable: bool = True,
        ingest: bool = False,
    ) -> T:
        return drive(plan(), _answer)

    async def read(self, plan: PlanFactory[T], *, snapshot: bool = False) -> T:
        return drive(plan(), _answer)

    async def reserve_send_slot(self, interval: float) -> float:
        return time.time()

    async def pause_sending(self, until: float, *, reason: str | None = None) -> None: ...

    async def send_pause(self) -> tuple[float, str | None]:
        return 0.0, None


store = Store(NullEngine())
# Nothing is ever stored, so nothing wakes the dispatcher: it sleeps, as it has nothing to send.
store.signals.work_arrived = lambda: None  # type: ignore[method-assign]
app = service_app(store=store)
