"""Domain errors: raised by the store and the sources, mapped to HTTP answers in `app/errors.py`
(one handler each, registered once: routes let them propagate)."""

from __future__ import annotations

from typing import Literal


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


class StoreUnavailable(Exception):
    """The store cannot be reached; nothing was stored."""


class NothingStored(StoreUnavailable):
    """Storing new updates failed: none of them was stored (the caller may send them again)."""


class NotDead(Exception):
    """Only a dead delivery can be replayed (or purged).

    `status` is where the delivery stands (`queued`, ...), or why it can never be replayed;
    `action` is what was asked of it.
    """

    def __init__(self, status: str, *, action: Literal["replayed", "purged"] = "replayed") -> None:
        super().__init__(status)
        self.status = status
        self.action = action
