"""The property catalogue: what types each property was sent with, how often, when, by whom.

Requests only count in memory (`record`, a dictionary update per property: nothing on the
request path waits for the database); `flush` adds the counts to the shared table, on a timer
and before every read, so `GET /properties` shows every value stored before it was asked, on any
replica that flushed. A process killed hard loses at most its last few seconds of counts (the
catalogue describes the data; the data itself is in the queue). One row per property and type;
a property with two rows is a conflict.

`first_types` (the type each property was first recorded with, the oldest row) is what
`RELAY_TYPE_DRIFT=reject` compares against; it is refreshed from the table by each flush, so a
type another replica recorded first is known here within one flush interval.

Each row keeps the caller that first recorded it (a relay key's name, or `hubspot` / `stripe`);
a name belongs to the caller of its oldest row. A caller holding `names_per_caller` names adds
no new ones (its values of known names still count), so one caller cannot take every name of
the catalogue; what was not recorded is reported through `on_refused`. Replicas learn each
other's names at each flush, so together they may pass a quota by what the others recorded
within one flush interval. `page` reads the catalogue a page of names at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from app.domain.models import Metadata
from app.domain.values import SeenType, seen_type
from app.store.engine import Engine
from app.store.part import StorePart
from app.store.signals import Signals
from app.store.sql import Plan, Row, Statement

log = logging.getLogger("userpilot_relay.catalogue")

SOURCES: tuple[str, ...] = ("api", "bulk", "hubspot", "stripe")
_BITS = {name: 1 << index for index, name in enumerate(SOURCES)}
MAX_PROPERTIES = 10_000  # names kept; past it new names are not recorded (logged once)
NAMES_PER_CALLER = 2_000  # names one caller may add (RELAY_CATALOGUE_NAMES_PER_CALLER)

# `caller` is read before `first_seen` changes (SET sees the row as it was): an older count
# from another replica hands the row to its caller.
UPSERT = """
    INSERT INTO property_catalogue (name, type, seen, first_seen, last_seen, sources, caller)
    VALUES (:name, :type, :seen, :first_seen, :last_seen, :sources, :caller)
    ON CONFLICT (name, type) DO UPDATE SET
        seen = property_catalogue.seen + excluded.seen,
        caller = CASE WHEN excluded.first_seen < property_catalogue.first_seen
                      THEN excluded.caller ELSE property_catalogue.caller END,
        first_seen = LEAST(property_catalogue.first_seen, excluded.first_seen),
        last_seen = GREATEST(property_catalogue.last_seen, excluded.last_seen),
        sources = property_catalogue.sources | excluded.sources
"""
FORGET = "DELETE FROM property_catalogue WHERE name = :name"
ALL_ROWS = """
    SELECT name, type, seen, first_seen, last_seen, sources, caller FROM property_catalogue
    ORDER BY name, first_seen, type
"""
# One page: the first `:names` names after `:after` ('' before the first) that were seen with
# at least `:types` types, every row of each.
PAGE_ROWS = """
    SELECT name, type, seen, first_seen, last_seen, sources, caller FROM property_catalogue
    WHERE name IN (
        SELECT name FROM property_catalogue WHERE name > :after
        GROUP BY name HAVING count(*) >= :types
        ORDER BY name LIMIT :names)
    ORDER BY name, first_seen, type
"""


@dataclass(slots=True)
class _Count:
    seen: int
    first: float
    last: float
    sources: int
    caller: str


@dataclass(frozen=True, slots=True)
class TypeSeen:
    type: SeenType
    seen: int
    first_seen: float
    last_seen: float
    sources: tuple[str, ...]
    caller: str = ""  # the caller that recorded it first ('' before callers were recorded)


@dataclass(frozen=True, slots=True)
class PropertySeen:
    """One property of the catalogue: its types, the first recorded first."""

    name: str
    types: tuple[TypeSeen, ...] = field(default_factory=tuple)

    @property
    def conflict(self) -> bool:
        return len(self.types) > 1

    @property
    def added_by(self) -> str | None:
        """The caller that added the name (its oldest row's), None when not known."""
        return self.types[0].caller or None if self.types else None


@dataclass(frozen=True, slots=True)
class CataloguePage:
    """Some properties by name; `next` is the `after` of the next page, None at the end."""

    properties: list[PropertySeen]
    next: str | None
    conflicts: int  # in the whole catalogue


def _sources(bits: int) -> tuple[str, ...]:
    return tuple(name for name in SOURCES if bits & _BITS[name])


class PropertyCatalogue(StorePart):
    """Per property: the types seen with counts, first and last seen, the sources."""

    def __init__(self, engine: Engine, signals: Signals) -> None:
        super().__init__(engine, signals)
        self._pending: dict[tuple[str, SeenType], _Count] = {}
        self._first: dict[str, SeenType] = {}
        self._types: dict[str, set[SeenType]] = {}  # every type known here, for the warning
        self._warned: set[str] = set()
        self._owners: dict[str, str] = {}  # name -> the caller that added it
        self._owned: Counter[str] = Counter()  # caller -> names it added
        self._full_logged = False
        self._quota_logged: set[str] = set()  # callers (bounded: relay keys and sources)
        self._lock = threading.Lock()  # `record` may run in a worker thread (a bulk request)
        self.names_per_caller = NAMES_PER_CALLER
        self.max_names = MAX_PROPERTIES
        self.on_refused: Callable[[str, int], None] | None = None

    def limit_callers(
        self,
        names_per_caller: int,
        *,
        on_refused: Callable[[str, int], None] | None = None,
        max_names: int = MAX_PROPERTIES,
    ) -> None:
        """How many names one caller may add, and whom to tell (caller, how many values) when
        a caller's new names were not recorded (its quota reached, or the catalogue full)."""
        self.names_per_caller = names_per_caller
        self.on_refused = on_refused
        self.max_names = max_names

    # the request path ----------------------------------------------------------------------
    def first_types(self) -> Mapping[str, SeenType]:
        """The type each property was first recorded with (as of the last flush)."""
        return self._first

    def record(self, updates: Iterable[Metadata], *, source: str, caller: str) -> None:
        """Count the values of stored updates (`null` removes a property: not a type) for
        `caller` (a relay key's name; `hubspot` or `stripe` for their webhooks and backfills)."""
        now = time.time()
        bit = _BITS[source]
        with self._lock:
            refused = self._count(updates, now, bit, caller)
        if refused and self.on_refused is not None:
            self.on_refused(caller, refused)

    def _count(self, updates: Iterable[Metadata], now: float, bit: int, caller: str) -> int:
        pending = self._pending
        refused = 0
        for metadata in updates:
            for name, value in metadata.items():
                if value is None:
                    continue
                kind = seen_type(value)
                count = pending.get((name, kind))
                if count is None:
                    if not self._room(name, caller):
                        refused += 1
                        continue
                    pending[(name, kind)] = _Count(1, now, now, bit, caller)
                    self._new_type(name, kind)
                else:
                    count.seen += 1
                    count.last = now
                    count.sources |= bit
        return refused

    def _room(self, name: str, caller: str) -> bool:
        """Whether `name` is recorded: known already, or a new name the caller may add."""
        if name in self._types:
            return True
        if len(self._types) >= self.max_names:
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "the property catalogue is full: new property names are no longer recorded",
                    extra={"limit": self.max_names},
                )
            return False
        if self._owned[caller] >= self.names_per_caller:
            if caller not in self._quota_logged:
                self._quota_logged.add(caller)
                log.warning(
                    "a caller reached its property catalogue quota: "
                    "its new property names are no longer recorded",
                    extra={"caller": caller, "limit": self.names_per_caller},
                )
            return False
        self._owners[name] = caller
        self._owned[caller] += 1
        return True

    def _new_type(self, name: str, kind: SeenType) -> None:
        types = self._types.setdefault(name, set())
        if kind in types:
            return
        types.add(kind)
        self._first.setdefault(name, kind)
        self._warn(name, types)

    def _warn(self, name: str, types: set[SeenType]) -> None:
        """Once per property (in this process): the moment it is known to be a conflict."""
        if len(types) >= 2 and name not in self._warned:
            self._warned.add(name)
            log.warning(
                "a property is being sent with more than one type",
                extra={"property": name, "types": sorted(types)},
            )

    # the table -----------------------------------------------------------------------------
    async def flush(self) -> int:
        """Add the pending counts to the table and refresh what is known from it; answers the
        number of conflicting properties. Counts stay pending when the write fails."""
        with self._lock:
            pending, self._pending = self._pending, {}
        rows = [
            {
                "name": name,
                "type": kind,
                "seen": c.seen,
                "first_seen": c.first,
                "last_seen": c.last,
                "sources": c.sources,
                "caller": c.caller,
            }
            for (name, kind), c in sorted(pending.items())  # one order: no deadlock between
        ]
        try:
            properties = await self._write(lambda: _flush(rows))
        except BaseException:
            with self._lock:  # put them back, merged with what came meanwhile
                for key, c in pending.items():
                    self._merge(key, c)
            raise
        with self._lock:
            self._learn(properties)
        return sum(1 for p in properties if p.conflict)

    async def properties(self) -> list[PropertySeen]:
        """Every property of the table, after this process's pending counts."""
        await self.flush()
        return await self._read(_all)

    async def page(self, *, after: str | None, limit: int, conflicts: bool) -> CataloguePage:
        """Up to `limit` properties by name after `after` (after this process's pending counts);
        with `conflicts`, only those seen with more than one type."""
        total = await self.flush()
        found = await self._read(lambda: _page(after or "", limit + 1, 2 if conflicts else 1))
        more = len(found) > limit
        properties = found[:limit]
        return CataloguePage(
            properties=properties,
            next=properties[-1].name if more else None,
            conflicts=total,
        )

    def _merge(self, key: tuple[str, SeenType], c: _Count) -> None:
        now = self._pending.get(key)
        if now is None:
            self._pending[key] = c
            return
        now.seen += c.seen
        if c.first < now.first:
            now.caller = c.caller
        now.first = min(now.first, c.first)
        now.last = max(now.last, c.last)
        now.sources |= c.sources

    def _learn(self, properties: list[PropertySeen]) -> None:
        """What the table holds (every replica's counts), with what is pending here: the first
        types and known types are rebuilt from it, so a property forgotten by any replica is
        forgotten here too. `_first` is changed in place: readers hold it."""
        types: dict[str, set[SeenType]] = {p.name: {t.type for t in p.types} for p in properties}
        first = {p.name: p.types[0].type for p in properties if p.types}
        owners = {p.name: p.types[0].caller for p in properties if p.types}
        for (name, kind), count in self._pending.items():
            types.setdefault(name, set()).add(kind)
            first.setdefault(name, kind)
            owners.setdefault(name, count.caller)
        for name in [n for n in self._first if n not in first]:
            del self._first[name]
        self._first.update(first)
        self._types = types
        self._owners = owners
        self._owned = Counter(owners.values())
        self._warned &= set(types)
        for name, known in types.items():
            self._warn(name, known)

    async def forget(self, name: str) -> bool:
        """Remove a property from the catalogue (its counts and first type) on every replica
        (the others within a flush); True when it was recorded."""
        with self._lock:
            pending = [k for k in self._pending if k[0] == name]
            for key in pending:
                del self._pending[key]
        result = await self._write(lambda: _forget(name)) or bool(pending)
        with self._lock:
            self._types.pop(name, None)
            self._first.pop(name, None)
            self._warned.discard(name)
            owner = self._owners.pop(name, None)
            if owner is not None:
                self._owned[owner] -= 1
        return result


def _flush(rows: list[dict[str, object]]) -> Plan[list[PropertySeen]]:
    if rows:
        yield Statement(UPSERT, rows, many=True)
    return (yield from _all())


def _forget(name: str) -> Plan[bool]:
    result = yield Statement(FORGET, {"name": name})
    return result.rowcount > 0


def _all() -> Plan[list[PropertySeen]]:
    result = yield Statement(ALL_ROWS)
    return _grouped(result.rows)


def _page(after: str, names: int, types: int) -> Plan[list[PropertySeen]]:
    result = yield Statement(PAGE_ROWS, {"after": after, "names": names, "types": types})
    return _grouped(result.rows)


def _grouped(rows: list[Row]) -> list[PropertySeen]:
    grouped: dict[str, list[TypeSeen]] = {}
    for name, kind, seen, first, last, bits, caller in rows:
        grouped.setdefault(name, []).append(
            TypeSeen(
                type=kind,
                seen=int(seen),
                first_seen=float(first),
                last_seen=float(last),
                sources=_sources(int(bits)),
                caller=str(caller),
            )
        )
    return [PropertySeen(name=name, types=tuple(types)) for name, types in grouped.items()]
