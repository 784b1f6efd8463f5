"""HubSpot's companies, a page at a time, mapped as the webhooks map them.

`GET /crm/v3/objects/companies?limit=100&archived=false&properties=<mapped>,hs_lastmodifieddate
&after=<cursor>`: each company becomes `HUBSPOT_COMPANY_ID_PREFIX` + `id` with its mapped
properties (`""` and null remove the property, as a webhook's empty value does), all stamped
with `hs_lastmodifieddate` as their source time, so that a webhook event applied after that
moment keeps its newer value. A company whose id is unusable is skipped and counted as an
error; the rest of its page is stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from app.domain.models import Primitive
from app.domain.quality import Rules
from app.domain.rules import company_id_problem, parse_ascii_int
from app.domain.values import SeenType
from app.ingest import company_refusal
from app.sources.backfill.client import ListClient, ProviderError, text
from app.sources.backfill.pages import (
    PAGE_SIZE,
    cursor_text,
    encode_cursor,
    epoch,
    list_of,
    map_record,
    note_invalid,
    object_of,
    plausible,
)
from app.sources.mapping import FieldRule
from app.store.backfills import Page, Record

LAST_MODIFIED = "hs_lastmodifieddate"


class HubSpotLister:
    """Pages through HubSpot's companies for one backfill."""

    source = "hubspot"

    def __init__(
        self,
        *,
        client: ListClient,
        rules: Mapping[str, FieldRule],
        prefix: str,
        quality: Rules,
        first_types: Mapping[str, SeenType],
        backfill_id: str,
    ) -> None:
        self._client = client
        self._rules = rules
        self._prefix = prefix
        self._quality = quality
        self._first = first_types  # the catalogue's, kept current by its flushes
        self._backfill_id = backfill_id
        self.properties = ",".join(sorted(set(rules) | {LAST_MODIFIED}))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def total(self) -> int | None:
        """HubSpot's count of companies (one search call, `limit` 1); None when it fails."""
        try:
            answer = await self._client.post(
                "/crm/v3/objects/companies/search", {"limit": 1, "properties": ["hs_object_id"]}
            )
        except ProviderError:
            return None
        total = answer.body.get("total") if isinstance(answer.body, dict) else None
        if isinstance(total, int) and not isinstance(total, bool) and 0 <= total < 2**53:
            return total
        return None

    async def page(self, cursor: dict[str, str] | None) -> Page:
        params = {"limit": str(PAGE_SIZE), "archived": "false", "properties": self.properties}
        if cursor is not None and cursor.get("after"):
            params["after"] = cursor["after"]
        asked = time.time()
        answer = await self._client.get("/crm/v3/objects/companies", params)
        body = object_of(answer.body, "HubSpot")
        results = list_of(body, "results", "HubSpot")
        paging = body.get("paging")
        following: dict[str, str] | None = None
        if paging is not None:
            nxt = paging.get("next") if isinstance(paging, dict) else None
            after = nxt.get("after") if isinstance(nxt, dict) else None
            following = {"after": cursor_text(after, "paging.next.after", "HubSpot")}
        fallback = plausible(answer.date, asked)
        records: list[Record] = []
        skipped = errors = 0
        last_error: str | None = None
        for result in results:
            record, problem = self._record(result, fallback)
            if record is None:
                skipped += 1
                errors += 1
                last_error = f"a HubSpot company was skipped: {problem}"
                continue
            records.append(record)
        return Page(
            number=0,
            cursor=encode_cursor(following),
            records=records,
            read=len(results),
            skipped=skipped,
            errors=errors,
            last_error=last_error,
        )

    def _record(self, result: Any, fallback: float) -> tuple[Record | None, str]:
        if not isinstance(result, dict):
            return None, "a result is not a JSON object"
        raw_id = result.get("id")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id >= 0:
            raw_id = str(raw_id)
        if not isinstance(raw_id, str) or parse_ascii_int(raw_id) is None:
            return None, f"its id {text(raw_id, 40)!r} is not a string of digits within 64 bits"
        company_id = f"{self._prefix}{raw_id}"
        problem = company_id_problem(company_id)
        if problem is not None:
            return None, f"the company id (prefix + id) {problem}"
        refusal = company_refusal(company_id, self._quality)
        if refusal is not None:
            return None, refusal
        properties = result.get("properties")
        if not isinstance(properties, dict):
            return None, f"company {raw_id} has no properties object"
        flat: dict[str, Primitive] = {}
        for name in self._rules:
            if name not in properties:
                continue  # not returned: unknown, so not sent
            value = properties[name]
            if isinstance(value, dict | list):
                continue
            flat[name] = None if value == "" else value
        mapped = map_record(
            self._rules,
            flat,
            epoch_unit="ms",
            quality=self._quality,
            first_types=self._first,
            source=self.source,
        )
        if mapped.invalid:
            note_invalid(self.source, self._backfill_id, company_id, mapped.invalid)
        at = epoch(properties.get(LAST_MODIFIED))
        if at is None:
            at = epoch(result.get("updatedAt"))
        return Record(company_id, mapped.metadata, plausible(at, fallback)), ""
