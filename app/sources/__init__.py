"""Webhook sources: HubSpot and Stripe events verified, mapped and turned into company updates.

- `signatures.py`: the providers' signature schemes, pure functions.
- `mapping.py`: which source field becomes which Userpilot property, with which type.
- `hubspot.py`, `stripe.py`: each provider's payloads turned into `NewUpdate`s.
- `common.py`: the event outcomes (metric labels) and the one commit both sources use.
- `service.py`: what the routes share at run time (mappings, the unresolved-event retrier).
"""
