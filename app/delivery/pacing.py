"""Send pacing as one process sees it, beside the slots the store shares between replicas.

The store hands out send slots `interval` seconds apart across every replica; this keeps the
process's own sends at least as far apart however long a claim took (Userpilot counts
arrivals, not slots), and remembers a 429's pause so that a slot reserved before it is not used.
"""

from __future__ import annotations

import time

# Slots are spaced a little wider than the limit, so that delays between reserving a slot and
# sending (the claim, the event loop) never push a 60 s window past Userpilot's limit.
PACING_MARGIN = 1.02


class Pacer:
    def __init__(self, rate_limit_per_minute: int) -> None:
        self.interval = 60.0 / rate_limit_per_minute * PACING_MARGIN
        self._last_send = 0.0
        self._paused_until = 0.0

    def next_send(self) -> float:
        """When the next call may leave (unix time): now, or one interval after the last."""
        send_at = max(time.time(), self._last_send + self.interval)
        self._last_send = send_at
        return send_at

    def pause(self, seconds: float) -> float:
        """Userpilot said 429: hold sends for `seconds`; answer until when (unix time)."""
        self._paused_until = max(self._paused_until, time.time() + seconds)
        return self._paused_until

    def paused(self) -> bool:
        return self._paused_until > time.time()
