"""The HubSpot source as the route sees it: one signed request in, its events stored.

Verification comes first and covers the raw body: nothing of an unverified request is parsed.
The URI HubSpot signs is the public one (`RELAY_PUBLIC_URL`, path prefix included) with the
query string exactly as received, never the address this process listens on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from pydantic import SecretStr

from app.domain.quality import Rules
from app.ingest import commit_events, erase_deleted
from app.sources.common import Ack
from app.sources.hubspot.events import parse_batch, plan_batch
from app.sources.mapping import FieldRule
from app.sources.signatures import hubspot_uri, verify_hubspot
from app.store.store import Store

DELETION = "company.deletion"  # erased with RELAY_ERASE_ON_SOURCE_DELETE


class HubSpotSource:
    """Verifies, maps and stores HubSpot webhook batches for one relay's settings."""

    def __init__(
        self,
        *,
        store: Store,
        rules: Mapping[str, FieldRule],
        secret: SecretStr,
        public_url: str,
        company_id_prefix: str,
        accept_legacy: bool,
        quality: Rules | None = None,
        erase_on_delete: bool = False,
    ) -> None:
        self._store = store
        self._erase_on_delete = erase_on_delete
        self._rules = rules
        self._secret = secret
        self._public_url = public_url
        self._prefix = company_id_prefix
        self._accept_legacy = accept_legacy
        self._quality = quality or Rules(pii="allow")

    async def handle(
        self, *, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Ack:
        """Store what a batch means; `path` is the route's own, `query` as received.

        Raises `SignatureError` (401), `Malformed` (400) or `StoreUnavailable` (503); in each
        case nothing was stored.
        """
        verify_hubspot(
            secret=self._secret.get_secret_value(),
            method=method,
            uri=hubspot_uri(self._public_url, path, query),
            body=body,
            headers=headers,
            now=time.time(),
            accept_legacy=self._accept_legacy,
        )
        events = parse_batch(body)
        result = await commit_events(
            self._store,
            plan_batch(events, self._rules, self._prefix),
            source="hubspot",
            quality=self._quality,
        )
        if self._erase_on_delete:  # RELAY_ERASE_ON_SOURCE_DELETE
            deleted = [
                f"{self._prefix}{e.object_id_text}"
                for e in events
                if e.kind == DELETION and e.object_id_text
            ]
            if deleted:
                await erase_deleted(self._store, deleted, source="hubspot")
        return Ack(received=len(events), accepted=result.stored)
