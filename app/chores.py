"""The relay's background chores that are no route's business, started by the lifespan
(`app/main.py`): the property catalogue's flush and the count of names it refused."""

from __future__ import annotations

import asyncio
import logging

from app.metrics import CATALOGUE_NAMES_REFUSED, PROPERTY_CONFLICTS
from app.store.store import Store

log = logging.getLogger("userpilot_relay.catalogue")

FLUSH_SECONDS = 5.0


def count_refused_names(caller: str, values: int) -> None:
    """The catalogue did not record `values` values of new names from `caller` (a relay key's
    name or a source: bounded)."""
    CATALOGUE_NAMES_REFUSED.labels(caller=caller).inc(values)


async def flush_catalogue(store: Store, *, every: float = FLUSH_SECONDS) -> None:
    """Add this process's counts to the shared catalogue every few seconds (until cancelled),
    and keep the conflicts gauge current; a failed flush keeps its counts for the next."""
    while True:
        await asyncio.sleep(every)
        try:
            PROPERTY_CONFLICTS.set(await store.catalogue.flush())
        except Exception as exc:  # the store is down: readiness says so; counts are kept
            log.debug("property catalogue flush failed", extra={"error": type(exc).__name__})
