"""Stopping background tasks for sure.

On Python 3.11, `asyncio.wait_for` returns the inner result, dropping the cancellation, when
the awaited thing completes in the same loop turn as the cancel (CPython gh-86296); a pooled
connection handed back at that moment can absorb one too. A loop that polls with `wait_for`
then carries on, and a shutdown that cancels it once waits for ever. So: cancel, wait a
moment, and cancel again until every task is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, rounds: int = 20) -> None:
    """Cancel every task and wait until each has ended (re-cancelling a task that ignored it)."""
    everything = list(tasks)
    pending = {t for t in everything if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in everything:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a crash was logged where it happened
