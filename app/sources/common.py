"""What both webhook sources share: the malformed-body error, parsing a verified body, the answer.

An event's plan (`EventPlan`) and its commit live in the ingest service (`app/ingest.py`); the
outcomes it is counted under are documented in docs/webhooks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.domain.errors import Malformed as Malformed
from app.ingest import EventPlan as EventPlan
from app.ingest import Outcome as Outcome
from app.ingest import Source as Source


def load_json(body: bytes) -> Any:
    """A verified body parsed, or `Malformed` saying it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not valid JSON ({exc})") from None


@dataclass(frozen=True, slots=True)
class Ack:
    """What one webhook request became: the events it held and the updates stored from them."""

    received: int
    accepted: int
