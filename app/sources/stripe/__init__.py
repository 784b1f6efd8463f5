"""Stripe webhooks: `StripeSource.handle` is what the route calls.

- `events.py`: the event envelope parsed, and which customer and company it is about;
- `revenue.py`: a subscription's MRR, plan names and the flat record the mapping reads;
- `processor.py`: customer and subscription events planned and stored (links, parking);
- `customers.py`: parked events matched to their company later (links, Stripe's API);
- `api.py`: the Stripe API client (read one customer);
- `source.py`: a signed request verified, parsed and stored; the resolver's lifecycle.
"""

from app.sources.stripe.source import StripeSource

__all__ = ["StripeSource"]
