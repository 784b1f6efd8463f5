"""What the operator console reads that no route did: the delivery search and the recent rate.

`search` finds deliveries by company, status, source, caller and arrival time, newest first, a
page at a time (`before`: the sequence number of the last row shown). `rate` counts the
updates delivered in each minute of the last hour. Both are plain reads, the same SQL on
SQLite and PostgreSQL; a bulk request's updates show once the dispatcher has expanded them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.domain.models import Delivery
from app.store.part import StorePart
from app.store.rows import DELIVERY_COLUMNS, row_to_delivery
from app.store.sql import Plan, Statement

# Optional filters are written whole: `(:x IS NULL OR col = :x)`, the parameter cast where it
# is only tested for NULL (PostgreSQL must know its type).
_MATCHING = """
    WHERE (CAST(:company AS TEXT) IS NULL OR company_id = :company)
      AND (CAST(:status AS TEXT) IS NULL OR status = :status)
      AND (CAST(:source AS TEXT) IS NULL OR source = :source)
      AND (CAST(:caller AS TEXT) IS NULL OR caller = :caller)
      AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR created_at >= :since)
      AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR created_at < :until)
"""
SEARCH = f"""
    SELECT {DELIVERY_COLUMNS} FROM deliveries {_MATCHING}
      AND (CAST(:before AS BIGINT) IS NULL OR seq < :before)
    ORDER BY seq DESC LIMIT :limit
"""
COUNT = f"SELECT count(*) FROM deliveries {_MATCHING}"
# Whole milliseconds, divided as integers: the same minute on both engines (a float cast
# rounds on PostgreSQL and truncates on SQLite; only a value within 1 ms of a minute's edge
# may land in the neighbouring minute).
RATE = """
    SELECT (CAST(delivered_at * 1000 AS BIGINT) - :since_ms) / 60000 AS minute, count(*)
    FROM deliveries
    WHERE status = 'delivered' AND delivered_at >= :since
    GROUP BY minute
"""
MINUTES = 60


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """What the search looks for; None: any."""

    company_id: str | None = None
    status: str | None = None
    source: str | None = None
    caller: str | None = None
    since: float | None = None  # arrived at or after (unix time)
    until: float | None = None  # arrived before (unix time)


@dataclass(frozen=True, slots=True)
class Rate:
    """Updates delivered per minute, the oldest minute first; `start` is the first minute's."""

    start: float
    per_minute: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.per_minute)


class ConsoleReads(StorePart):
    """The console's reads (see the module docstring)."""

    async def search(
        self, where: DeliveryFilter, *, before: int | None, limit: int
    ) -> list[Delivery]:
        """Deliveries matching `where`, newest first, older than sequence `before`."""
        params = {**_params(where), "before": before, "limit": limit}
        return await self._read(lambda: _search(params))

    async def count(self, where: DeliveryFilter) -> int:
        """How many deliveries match `where` now."""
        params = _params(where)
        return await self._read(lambda: _count(params))

    async def rate(self, *, now: float | None = None) -> Rate:
        """Updates delivered in each of the last `MINUTES` minutes, the current one last."""
        current = int(time.time() if now is None else now) // 60 * 60
        start = current - (MINUTES - 1) * 60
        counts = await self._read(lambda: _rate(start))
        return Rate(start=float(start), per_minute=tuple(counts.get(m, 0) for m in range(MINUTES)))


def _params(where: DeliveryFilter) -> dict[str, object]:
    return {
        "company": where.company_id,
        "status": where.status,
        "source": where.source,
        "caller": where.caller,
        "since": where.since,
        "until": where.until,
    }


def _count(params: dict[str, object]) -> Plan[int]:
    row = (yield Statement(COUNT, params)).one()
    return 0 if row is None else int(row[0])


def _search(params: dict[str, object]) -> Plan[list[Delivery]]:
    rows = (yield Statement(SEARCH, params)).rows
    return [row_to_delivery(r) for r in rows]


def _rate(start: int) -> Plan[dict[int, int]]:
    params = {"since": float(start), "since_ms": start * 1000}
    rows = (yield Statement(RATE, params)).rows
    return {int(minute): int(n) for minute, n in rows}
