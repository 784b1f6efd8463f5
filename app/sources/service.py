"""What the webhook routes share at run time: each enabled source's mapping and processor.

Built by the lifespan: `WebhookSources(settings)` loads the mappings (a bad file stops the
start-up), `start()` wires the store and starts the Stripe resolver, `stop()` ends it.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.config import Settings
from app.sources.mapping import FieldRule, SourceMapping, load_mapping
from app.sources.stripe import StripeApi, StripeProcessor, StripeResolver
from app.store.base import Store


class WebhookSources:
    """The enabled sources; a disabled source is None and its route answers 404."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hubspot_rules: Mapping[str, FieldRule] | None = None
        self._stripe_mapping: SourceMapping | None = None
        self.stripe: StripeProcessor | None = None
        self.resolver: StripeResolver | None = None
        if settings.hubspot_client_secret is not None:
            self.hubspot_rules = load_mapping("hubspot", settings.hubspot_mapping_file).section(
                "company"
            )
        if settings.stripe_webhook_secret is not None:
            self._stripe_mapping = load_mapping("stripe", settings.stripe_mapping_file)

    def start(self, *, store: Store) -> None:
        settings = self.settings
        if self._stripe_mapping is None:
            return
        self.stripe = StripeProcessor(
            store=store,
            mapping=self._stripe_mapping,
            metadata_key=settings.stripe_company_id_metadata_key,
            missing=settings.stripe_missing_company,
        )
        api = None
        if settings.stripe_api_key is not None:
            api = StripeApi(
                base_url=settings.stripe_api_base,
                api_key=settings.stripe_api_key.get_secret_value(),
            )
        self.resolver = StripeResolver(
            processor=self.stripe, api=api, interval=settings.stripe_unresolved_retry_seconds
        )
        self.resolver.start()

    async def stop(self) -> None:
        if self.resolver is not None:
            await self.resolver.stop()
            self.resolver = None
