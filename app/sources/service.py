"""The webhook sources of one relay, built from its settings; what the routes reach at run time.

Built by the lifespan in two steps so that a bad mapping file stops the start-up before the
store is opened: `WebhookSources(settings)` loads the mappings, `start(store=...)` builds the
enabled sources over the store and starts the Stripe resolver, `stop()` ends it. The sources
only store: the store itself signals the dispatcher after each commit.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.config import Settings
from app.sources.hubspot import HubSpotSource
from app.sources.mapping import FieldRule, SourceMapping, load_mapping
from app.sources.stripe import StripeSource
from app.sources.stripe.api import StripeApi
from app.sources.stripe.customers import StripeResolver
from app.sources.stripe.processor import StripeProcessor
from app.store.store import Store


class WebhookSources:
    """The enabled sources; a disabled one is None (before `start` too) and its route is 404."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hubspot: HubSpotSource | None = None
        self.stripe: StripeSource | None = None
        self._hubspot_rules: Mapping[str, FieldRule] | None = None
        self._stripe_mapping: SourceMapping | None = None
        if settings.hubspot_client_secret is not None:
            self._hubspot_rules = load_mapping("hubspot", settings.hubspot_mapping_file).section(
                "company"
            )
        if settings.stripe_webhook_secret is not None:
            self._stripe_mapping = load_mapping("stripe", settings.stripe_mapping_file)
        self._quality = settings.quality_rules()  # the schema was checked with the settings

    def start(self, *, store: Store) -> None:
        """Build the enabled sources over `store` and start the Stripe resolver."""
        settings = self.settings
        secret = settings.hubspot_client_secret
        if (
            secret is not None
            and self._hubspot_rules is not None
            and settings.relay_public_url is not None
        ):
            self.hubspot = HubSpotSource(
                store=store,
                rules=self._hubspot_rules,
                secret=secret,
                public_url=settings.relay_public_url,
                company_id_prefix=settings.hubspot_company_id_prefix,
                accept_legacy=settings.hubspot_accept_legacy_signatures,
                quality=self._quality,
                erase_on_delete=settings.relay_erase_on_source_delete,
            )
        if self._stripe_mapping is not None and settings.stripe_webhook_secrets:
            processor = StripeProcessor(
                store=store,
                mapping=self._stripe_mapping,
                metadata_key=settings.stripe_company_id_metadata_key,
                missing=settings.stripe_missing_company,
                quality=self._quality,
            )
            api = None
            if settings.stripe_api_key is not None:
                api = StripeApi(
                    base_url=settings.stripe_api_base,
                    api_key=settings.stripe_api_key.get_secret_value(),
                )
            self.stripe = StripeSource(
                processor=processor,
                resolver=StripeResolver(
                    processor=processor,
                    api=api,
                    interval=settings.stripe_unresolved_retry_seconds,
                ),
                secrets=settings.stripe_webhook_secrets,
                tolerance=settings.stripe_webhook_tolerance_seconds,
                erase_on_delete=settings.relay_erase_on_source_delete,
            )
            self.stripe.start()

    async def stop(self) -> None:
        """Stop the Stripe resolver and close its API client."""
        if self.stripe is not None:
            await self.stripe.stop()
