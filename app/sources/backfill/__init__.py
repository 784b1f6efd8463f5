"""Backfills: every company in HubSpot or Stripe read through their list APIs and stored as
bulk batches, so the dispatcher drains them through Userpilot's bulk jobs (docs/backfills.md).

- `client.py`: the providers' list APIs, paced, with `Retry-After`, backoff and retries;
- `pages.py`: the cursor, the checks a hostile answer fails, a record's mapping;
- `hubspot.py`, `stripe.py`: one provider's pages mapped with the webhooks' mappings and ids;
- `runner.py`: `BackfillRunner`, which starts, drives, resumes and schedules them.

Like the webhook sources, backfills only store (through `store.backfills`, one transaction a
page): they never import the delivery, the routes or the Userpilot client.
"""

from app.domain.errors import NotConfigured
from app.sources.backfill.runner import SOURCES, BackfillRunner, missing_setting

__all__ = ["SOURCES", "BackfillRunner", "NotConfigured", "missing_setting"]
