"""Domain errors: raised by the store and the sources, mapped to HTTP answers in `app/errors.py`."""

from __future__ import annotations


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


class StoreUnavailable(Exception):
    """The store cannot be reached; nothing was stored."""


class NotDead(Exception):
    """Only a dead delivery can be replayed."""
