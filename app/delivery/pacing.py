"""Send pacing as one process sees it, beside the slots the store shares between replicas.

The store hands out send slots `interval` seconds apart across every replica; this keeps the
process's own sends at least as far apart however long a claim took (Userpilot counts
arrivals, not slots), and remembers a 429's pause so that a slot reserved before it is not used.
A pause is capped at RELAY_MAX_UPSTREAM_PAUSE_SECONDS, whatever Retry-After says, and logged.
"""

from __future__ import annotations

import logging
import time

from app.metrics import UPSTREAM_PAUSED_UNTIL

log = logging.getLogger("userpilot_relay.pacing")

# Slots are spaced a little wider than the limit, so that delays between reserving a slot and
# sending (the claim, the event loop) never push a 60 s window past Userpilot's limit.
PACING_MARGIN = 1.02


class Pacer:
    def __init__(self, rate_limit_per_minute: int, *, max_pause: float = 300.0) -> None:
        self.interval = 60.0 / rate_limit_per_minute * PACING_MARGIN
        self.max_pause = max_pause
        self._last_send = 0.0
        self._paused_until = 0.0
        self.pause_reason: str | None = None

    def next_send(self) -> float:
        """When the next call may leave (unix time): now, or one interval after the last."""
        send_at = max(time.time(), self._last_send + self.interval)
        self._last_send = send_at
        return send_at

    def capped(self, seconds: float) -> float:
        """A pause Userpilot asked for, within RELAY_MAX_UPSTREAM_PAUSE_SECONDS."""
        return max(0.0, min(seconds, self.max_pause))

    def pause(self, seconds: float, reason: str = "429 from Userpilot") -> float:
        """Userpilot said 429: hold sends for `seconds` (capped); answer until when (unix
        time). Logged at warning with its length, and exported as a gauge."""
        held = self.capped(seconds)
        until = time.time() + held
        cut = f" (Retry-After said {seconds:g} s)" if held < seconds else ""
        self.pause_reason = f"{reason}: {held:g} s{cut}"
        log.warning(
            f"upstream calls paused for {held:g} s: {reason}{cut}",
            extra={"pause_s": round(held, 3), "asked_s": round(seconds, 3), "reason": reason},
        )
        if until > self._paused_until:
            self._paused_until = until
            UPSTREAM_PAUSED_UNTIL.set(until)
        return self._paused_until

    def paused(self) -> bool:
        return self._paused_until > time.time()
