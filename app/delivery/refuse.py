"""Updates the relay itself cannot send: dead-lettered one by one, so the queue moves on.

Those were stored before the relay refused such input at the door (a control character in a
property name, say). Real-time claims and bulk jobs alike take them out before sending.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from app.domain.models import Claim
from app.domain.rules import REFUSED, update_problem
from app.metrics import DELIVERIES
from app.store.store import Store

log = logging.getLogger("userpilot_relay.dispatcher")


async def refuse(
    store: Store,
    claim: Claim,
    reason: str,
    context: dict[str, object],
    status: int | None = None,
) -> bool:
    """Dead-letter every update of the claim with the relay's own reason (False: failed)."""
    try:
        await store.claims.mark_dead(claim, status=status, error=reason, request_id=None)
    except Exception:  # the lease runs out; the next claim refuses it again
        log.exception("dead-lettering a refused delivery failed", extra=context)
        return False
    DELIVERIES.labels(outcome="dead").inc(len(claim.updates))
    log.error("dead-lettered: the relay cannot send this update", extra=context | {"error": reason})
    return True


async def without_unsendable(
    store: Store, claim: Claim, context: dict[str, object], *, strict: bool = False
) -> Claim:
    """The claim less the updates that can be neither sent nor recorded as stored (each
    dead-lettered with the reason); the company's other updates go out as usual. With
    `strict`, a dead-lettering that fails raises: a bulk job marks all its rows at once, so it
    must not go out while one it left out is still in it."""
    bad = [u for u in claim.updates if update_problem(claim.company_id, u.metadata)]
    if not bad:
        return claim
    problem = update_problem(claim.company_id, bad[0].metadata) or "cannot be sent"
    refused = replace(claim, updates=bad)
    context = context | {"delivery_ids": refused.ids[:20]}
    if not await refuse(store, refused, REFUSED + problem, context) and strict:
        raise RuntimeError("dead-lettering an update the relay cannot send failed")
    refused_ids = set(refused.ids)
    return replace(claim, updates=[u for u in claim.updates if u.id not in refused_ids])
