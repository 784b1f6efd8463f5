"""HubSpot webhooks: `HubSpotSource.handle` is what the route calls.

- `events.py`: a batch parsed and each event planned as a company update (pure);
- `source.py`: a signed request verified, parsed, planned and stored.
"""

from app.sources.hubspot.events import MAX_EVENTS
from app.sources.hubspot.source import HubSpotSource

__all__ = ["MAX_EVENTS", "HubSpotSource"]
