"""The relay's errors: one base with the answer it becomes, and the domain's own.

```
RelayError                 status, code, message, field errors, headers: any refusal
├── StoreUnavailable       503 store_unavailable: the store cannot be reached
│   └── NothingStored      ... and none of the new updates was stored
├── IdempotencyConflict    422 idempotency_key_reused
├── NotDead                409 not_dead: only a dead delivery is replayed or purged
├── NotConfigured          400 not_configured: a backfill source lacks its setting
├── BackfillConflict       409 backfill_running: one backfill per source at a time
├── SignatureError         401 <reason>: a webhook not proven to come from its provider
└── Malformed              400 malformed_body: a signed webhook body not as documented
```

The ground floor: no FastAPI here. `app/errors.py` renders every one of them, in one handler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel


class FieldError(BaseModel):
    """One offending field: its path in the body (or header/query) and what is wrong."""

    field: str
    message: str


class RelayError(Exception):
    """An error with the status and code the caller gets."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = errors  # answered as `errors`
        self.headers = headers


class StoreUnavailable(RelayError):
    """The store cannot be reached; nothing was stored. `str(exc)` is the store's own detail,
    logged, never answered."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            503,
            "store_unavailable",
            "the relay cannot reach its store; nothing was changed, retry later",
            headers={"Retry-After": "1"},
        )
        self.args = (detail,)


class NothingStored(StoreUnavailable):
    """Storing new updates failed: none of them was stored (the caller may send them again)."""


class IdempotencyConflict(RelayError):
    """The idempotency key was used before with a different request body."""

    def __init__(self, key: str = "") -> None:
        super().__init__(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different body",
        )
        self.args = (key,)


class NotDead(RelayError):
    """Only a dead delivery can be replayed (or purged).

    `status` is where the delivery stands (`queued`, ...), or why it can never be replayed;
    `action` is what was asked of it.
    """

    def __init__(self, status: str, *, action: Literal["replayed", "purged"] = "replayed") -> None:
        super().__init__(
            409, "not_dead", f"only a dead delivery can be {action}; this one is {status}"
        )
        self.args = (status,)
        self.state = status
        self.action = action


class CompanyErased(RelayError):
    """The company was erased: its updates are suppressed until the suppression is lifted."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "company_erased",
            "this company was erased and its updates are suppressed; an admin can lift the "
            "suppression with DELETE /suppressions/{company_id} if it came back",
        )


class NotFound(RelayError):
    """The thing asked for does not exist (or no longer does)."""

    def __init__(self, what: str) -> None:
        super().__init__(404, "not_found", f"{what} not found")


class NotConfigured(RelayError):
    """The source cannot be backfilled here; the message names the setting to set."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "not_configured", message)


class BackfillConflict(RelayError):
    """A backfill of this source runs already (one per source at a time, across replicas)."""

    def __init__(self, source: str, backfill_id: str) -> None:
        super().__init__(
            409,
            "backfill_running",
            f"a backfill of {source} runs already: {backfill_id} (GET /backfills/{backfill_id})",
        )
        self.backfill_id = backfill_id


class SignatureError(RelayError):
    """A webhook not proven to come from its provider; `reason` (the code) labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(401, reason, message)
        self.reason = reason


class Malformed(RelayError):
    """A verified webhook body that is not what the provider documents; `errors` names each
    (field, message), at most 50 of them."""

    def __init__(self, message: str, errors: Sequence[tuple[str, str]] = ()) -> None:
        self.errors = list(errors)
        fields = [FieldError(field=f, message=m) for f, m in self.errors[:50]]
        super().__init__(400, "malformed_body", message, errors=fields or None)
