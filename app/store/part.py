"""A store feature's methods over the engine: `StorePart` runs its plans and fires signals.

Each feature module (`deliveries.py`, `claims.py`, `jobs.py`, `webhooks.py`, `backfills.py`,
`catalogue.py`, `console.py`) holds its SQL, its plans and one `StorePart` subclass; `Store`
builds one of each over the same engine, so every part runs the same SQL on both backends.
"""

from __future__ import annotations

from app.store.engine import Engine
from app.store.signals import Signals


class StorePart:
    """Operations over the store's engine: `_write` commits a plan in one transaction (the
    factory may run again when the backend retries it), `_read` runs a plan that only reads."""

    def __init__(self, engine: Engine, signals: Signals) -> None:
        self._engine = engine
        self._signals = signals
        self._write = engine.write  # bound once: no extra frame on the hot path
        self._read = engine.read

    def _work_committed(self) -> None:
        """Work became ready to deliver: wake this process's dispatcher and the other replicas'."""
        self._signals.work_arrived()
        self._engine.announce_work()
