"""Customer resolution: parked subscription events matched to their company, later.

A subscription event whose customer the relay has not linked to a company waits in the store.
`StripeResolver` retries every parked event at once when poked (a customer was linked, an
event was parked) and otherwise every `STRIPE_UNRESOLVED_RETRY_SECONDS`: through the links
customer events left, else (with `STRIPE_API_KEY`) by reading the customer from Stripe, once
per customer per round. An event still unresolved is parked again with the reason, at the back
of the line; one whose customer stands for no company is skipped as configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from app.lifecycle import cancel_and_wait
from app.metrics import WEBHOOK_EVENTS
from app.sources.common import Malformed
from app.sources.stripe.api import StripeApi, StripeApiError
from app.sources.stripe.events import StripeEvent, customer_id_of, parse_event
from app.sources.stripe.processor import StripeProcessor

log = logging.getLogger("userpilot_relay.webhooks.stripe")

_PARKED_BATCH = 500


# What one customer lookup found: the customer, none (unknown or deleted), or the failure.
_Lookup = dict[str, Any] | None | StripeApiError


class StripeResolver:
    """Retries parked subscription events: at once when poked, else every `interval` s."""

    def __init__(
        self, *, processor: StripeProcessor, api: StripeApi | None, interval: float
    ) -> None:
        self.processor = processor
        self.store = processor.store
        self.api = api
        self.interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        processor.on_change.append(self.poke)

    def poke(self) -> None:
        """Retry now: a customer was linked or an event parked (the processor calls this)."""
        self._wake.set()

    def start(self) -> None:
        """Run the retry loop in the background until `stop`."""
        self._task = asyncio.create_task(self._run(), name="stripe-resolver")

    async def stop(self) -> None:
        """End the retry loop (waiting for it) and close the Stripe API client."""
        if self._task is not None:
            self._stopping = True
            await cancel_and_wait([self._task])
            self._task = None
        if self.api is not None:
            await self.api.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retrying parked stripe events failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)

    async def run_once(self) -> int:
        """Try every parked event once; answer how many left the parking."""
        parked = await self.store.webhooks.parked(source="stripe", limit=_PARKED_BATCH)
        lookups: dict[str, _Lookup] = {}
        done = 0
        for key, payload in parked:
            try:
                event = parse_event(payload)
                customer_id = customer_id_of(event)
            except Malformed:  # verified and parsed once already: cannot happen
                log.error("a parked stripe event no longer parses; dropped", extra={"key": key})
                await self.store.webhooks.unpark(source="stripe", key=key)
                continue
            company_id, reason = await self._resolve(customer_id, lookups)
            if company_id is None and reason == "no_company":
                WEBHOOK_EVENTS.labels(source="stripe", outcome="no_company").inc()
                log.info(
                    "stripe customer without a company id: its subscription event is skipped",
                    extra={"event_id": event.id, "customer_id": customer_id},
                )
            elif company_id is None:
                # Parking again records what the lookup said and sends the event to the back
                # of the line, so a head of unresolvable events never starves the rest.
                await self.store.webhooks.park(
                    source="stripe", key=key, payload=payload, reason=reason
                )
                continue
            else:
                await self.forward_resolved(event, company_id)
            await self.store.webhooks.unpark(source="stripe", key=key)
            done += 1
        waiting = len(parked) - done
        if waiting:
            log.warning(
                "stripe subscription events wait for their customer's company",
                extra={"waiting": waiting, "stripe_api": self.api is not None},
            )
        return done

    async def forward_resolved(self, event: StripeEvent, company_id: str) -> None:
        """Store a parked event under the company found for it, and say so in the log."""
        outcome, _ = await self.processor.forward_resolved(event, company_id)
        log.info(
            "parked stripe event resolved",
            extra={"event_id": event.id, "company_id": company_id, "outcome": outcome},
        )

    async def _resolve(
        self, customer_id: str, lookups: dict[str, _Lookup]
    ) -> tuple[str | None, str]:
        company_id = await self.store.webhooks.company_for_customer(customer_id)
        if company_id is not None:
            return company_id, "linked"
        if self.api is None:
            return None, "unknown_customer"
        if customer_id not in lookups:
            try:
                lookups[customer_id] = await self.api.customer(customer_id=customer_id)
            except StripeApiError as exc:
                log.warning(
                    "stripe customer lookup failed",
                    extra={"customer_id": customer_id, "error": str(exc)},
                )
                lookups[customer_id] = exc
        found = lookups[customer_id]
        if isinstance(found, StripeApiError):
            return None, "stripe_api_error"
        if found is None:
            return None, "customer_not_found"
        company_id = self.processor.company_of(found)
        if company_id is None:
            return None, "no_company"
        await self.store.webhooks.link_customers([(customer_id, company_id)])
        return company_id, "looked_up"
