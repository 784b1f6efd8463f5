"""The circuit breaker: while Userpilot is down, probe it one call at a time.

Each delivery backs off on its own after a failure; without this, an outage spends the send
slots on calls bound to fail, and after it the deliveries whose next attempt lies minutes ahead
wait for it while slots go unused. After `FAILURES_TO_OPEN` failures in a row that say Userpilot
is unreachable or failing (no answer, a 5xx, 408/425; a 429 says it is up), the breaker opens:
one call at a time, at most one every `PROBE_INTERVAL` seconds. The first success closes it and
the dispatcher brings every delivery waiting out a backoff forward: full pace within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.metrics import CIRCUIT_OPEN
from app.userpilot.client import UpstreamResult

log = logging.getLogger("userpilot_relay.dispatcher")

FAILURES_TO_OPEN = 5
PROBE_INTERVAL = 1.0


def signals_outage(result: UpstreamResult) -> bool:
    """An answer (or its absence) that says Userpilot is unreachable or failing."""
    if result.status is None:
        return not (result.error or "").startswith("relay error")  # our bug, not an outage
    return result.status >= 500 or result.status in (408, 425)


class Breaker:
    def __init__(self, *, failures_to_open: int = FAILURES_TO_OPEN) -> None:
        self.failures_to_open = failures_to_open
        self.open = False
        self._failures = 0
        self._probing = False
        self._last_probe = 0.0
        self._changed = asyncio.Event()
        CIRCUIT_OPEN.set(0)

    async def turn(self) -> bool:
        """Wait until a call may leave; True when it is a probe (the breaker is open)."""
        while self.open:
            wait = self._last_probe + PROBE_INTERVAL - time.monotonic()
            if not self._probing and wait <= 0:
                self._probing = True
                self._last_probe = time.monotonic()
                return True
            self._changed.clear()
            timeout = max(wait, 0.05) if not self._probing else None
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return False

    def probe_unused(self) -> None:
        """The probe's turn found nothing to send."""
        self._probing = False
        self._changed.set()

    def record(self, result: UpstreamResult, *, probe: bool) -> bool:
        """Count one answer; True when it closed the breaker (Userpilot is back)."""
        if probe:
            self._probing = False
        outage = signals_outage(result)
        if outage:
            self._failures += 1
            if not self.open and self._failures >= self.failures_to_open:
                self.open = True
                CIRCUIT_OPEN.set(1)
                log.warning(
                    "Userpilot looks down: probing it one call at a time",
                    extra={"failures": self._failures, "error": result.error},
                )
            self._changed.set()
            return False
        self._failures = 0
        if not self.open:
            return False
        self.open = False
        CIRCUIT_OPEN.set(0)
        log.info("Userpilot answers again: delivery back to full pace")
        self._changed.set()
        return True
