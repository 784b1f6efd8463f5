"""The Stripe source as the route sees it: one signed event in, what it means stored.

Verification comes first and covers the raw body: nothing of an unverified request is parsed.
Any `v1` may match any configured secret (several while a secret is rolled), within the
tolerance either way. The source also owns the resolver of parked events, started and stopped
with the relay.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from pydantic import SecretStr

from app.ingest import erase_deleted
from app.sources.common import Ack
from app.sources.signatures import verify_stripe
from app.sources.stripe.customers import StripeResolver
from app.sources.stripe.events import parse_event
from app.sources.stripe.processor import StripeProcessor


class StripeSource:
    """Verifies and stores Stripe events for one relay's settings."""

    def __init__(
        self,
        *,
        processor: StripeProcessor,
        resolver: StripeResolver,
        secrets: Sequence[SecretStr],
        tolerance: int,
        erase_on_delete: bool = False,
    ) -> None:
        self.processor = processor
        self._erase_on_delete = erase_on_delete
        self.resolver = resolver
        self._secrets = list(secrets)
        self._tolerance = tolerance

    async def handle(self, *, headers: Mapping[str, str], body: bytes) -> Ack:
        """Store what an event means; `headers` is looked up with lower-case names.

        Raises `SignatureError` (401), `Malformed` (400) or `StoreUnavailable` (503); in each
        case nothing was stored.
        """
        verify_stripe(
            secrets=[s.get_secret_value() for s in self._secrets],
            header=headers.get("stripe-signature"),
            body=body,
            tolerance=self._tolerance,
            now=time.time(),
        )
        event = parse_event(body)
        _, stored = await self.processor.process(event, body)
        if self._erase_on_delete and event.type == "customer.deleted":
            customer = event.data.object.get("id")
            store = self.processor.store
            if isinstance(customer, str) and customer:
                company = await store.webhooks.company_for_customer(customer)
                if company is not None:  # the company the relay mapped the customer to
                    await erase_deleted(store, [company], source="stripe")
        return Ack(received=1, accepted=stored)

    def start(self) -> None:
        """Start retrying parked events in the background."""
        self.resolver.start()

    async def stop(self) -> None:
        """Stop the retries and close the Stripe API client."""
        await self.resolver.stop()
