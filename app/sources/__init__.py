"""Webhook sources: HubSpot and Stripe events verified, mapped and stored as company updates.

- `hubspot/`, `stripe/`: one package per provider; the route calls its one entry point,
  `HubSpotSource.handle` / `StripeSource.handle` (verify the signature, parse, plan, store);
- `service.py`: `WebhookSources`, the enabled sources built from the settings by the lifespan;
- `common.py`: what both share: the malformed-body error, an event's plan, the one commit
  (and the outcome metrics it counts), the answer to a request;
- `signatures.py`: the providers' signature schemes, pure functions;
- `mapping.py`: which source field becomes which Userpilot property, with which type.

Sources only store: they import the domain, the `Store` interface, settings, metrics and the
lifecycle helpers, never a route, the delivery or the Userpilot client.
"""
