"""What may reach Userpilot: the declared types, the PII guard and type drift, in one review.

`review` takes one update's metadata through, in order:

1. the property schema (`schema.check`): declared properties converted to their types, a value
   that does not convert (or an undeclared property the schema refuses) is a problem;
2. type drift, when `drift` is `reject` and the caller can be refused (the API): an undeclared
   property whose value's type (`seen_type`) differs from the type the catalogue first recorded
   for it is a problem. Webhooks and backfills are not checked: their mapping declares every
   property they send, so what they send is never refused on another caller's account;
3. the PII guard (`pii.find_pii`) on every value left, unless the policy is `allow` or the
   property is cleared (`"pii": "allowed"` in the schema, or `RELAY_PII_ALLOWED_PROPERTIES`):
   with `reject` and a caller that can be refused, a problem saying what was found; otherwise
   the property is removed.

Before all of these, unless the policy is `allow`, a property whose NAME is personal data
(`{"bob@example.com": 1}`) is a problem under `reject` for a caller that can be refused (in
`name_problems`, by position: the name is never repeated), else it is removed; and for a
caller that cannot be refused, a string value longer than `MAX_VALUE` is dropped as a problem
(the API refuses it at the door). `company_pii` says whether a company id is personal data: it
cannot be stripped, so the API refuses it and webhooks and backfills skip the record.

A problem is (property, reason); the reason never holds the value. A caller of the API gets a
422 for any problem (`refuse=True`); a webhook event is never refused (`refuse=False`): what
does not fit is dropped and counted, and personal data is stripped whatever the policy says,
unless it is `allow`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal

from app.domain.models import Metadata
from app.domain.pii import MAX_VALUE, PiiKind, card_name, find_pii
from app.domain.schema import PropertySchema, check
from app.domain.values import SeenType, seen_type

PiiPolicy = Literal["reject", "strip", "allow"]
DriftPolicy = Literal["warn", "reject"]
PiiAction = Literal["rejected", "stripped", "allowed"]

# The metric's `kind` label for each kind the guard finds.
PII_LABELS: Mapping[PiiKind, str] = {
    "email address": "email",
    "phone number": "phone",
    "IP address": "ip_address",
    "payment card number": "card_number",
}
_ARTICLE: Mapping[PiiKind, str] = {
    "email address": "an",
    "phone number": "a",
    "IP address": "an",
    "payment card number": "a",
}


def pii_problem(kind: PiiKind) -> str:
    """The reason a field is refused: `looks like an email address`."""
    return f"looks like {_ARTICLE[kind]} {kind}"


@dataclass(frozen=True, slots=True)
class Rules:
    """The data-quality settings of one relay."""

    schema: PropertySchema | None = None
    pii: PiiPolicy = "reject"
    pii_allowed: frozenset[str] = frozenset()
    drift: DriftPolicy = "warn"

    def cleared(self, key: str) -> bool:
        """Whether the property may hold personal data."""
        if key in self.pii_allowed:
            return True
        rule = self.schema.properties.get(key) if self.schema is not None else None
        return rule is not None and rule.pii_allowed

    def declared(self, key: str) -> bool:
        return self.schema is not None and key in self.schema.properties

    @property
    def inert(self) -> bool:
        """Nothing to do for any metadata."""
        return self.schema is None and self.pii == "allow" and self.drift == "warn"


@dataclass(slots=True)
class Reviewed:
    """One update's metadata as the rules make it; what did not fit, and what the guard saw."""

    metadata: Metadata
    problems: list[tuple[str, str]] = field(default_factory=list)
    pii: list[tuple[PiiKind, PiiAction]] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)  # properties removed as personal data
    drifted: int = 0  # values refused for drift
    # Property names that are personal data, refused: (position in the object, from 1, reason).
    name_problems: list[tuple[int, str]] = field(default_factory=list)
    too_long: int = 0  # values dropped for their length (webhooks, backfills)


# What a property name is, remembered: names repeat across updates. (PII in the name, whether
# it names a card.) Bounded: emptied when full. `_CLEAN` holds the names that are neither.
_NAMES: dict[str, tuple[PiiKind | None, bool]] = {}
_CLEAN: set[str] = set()
_NAMES_KEPT = 10_000


def _name(key: str) -> tuple[PiiKind | None, bool]:
    known = _NAMES.get(key)
    if known is None:
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.clear()
            _CLEAN.clear()
        known = _NAMES[key] = (find_pii(key), card_name(key))
        if known == (None, False):
            _CLEAN.add(key)
    return known


def _might_hold(text: str) -> bool:
    """Whether `find_pii` could find anything in `text`: its own first, cheap tests."""
    return len(text) >= 13 or "@" in text or "+" in text or "." in text or ":" in text


def company_pii(company_id: str, rules: Rules) -> PiiKind | None:
    """The kind of personal data a company id is, or None (and None when the policy is
    `allow`). A company id cannot be stripped: the update is refused or skipped."""
    if rules.pii == "allow" or not _might_hold(company_id):
        return None
    return find_pii(company_id)


def plain(metadata: Metadata) -> bool:
    """True when no name or value of `metadata` can be personal data, by the cheap tests
    `find_pii` starts with: the common case skips the review's copies and calls."""
    clean = _CLEAN
    for key, value in metadata.items():
        if key not in clean and _name(key) != (None, False):
            return False
        if type(value) is str and (
            len(value) >= 13 or "@" in value or "+" in value or "." in value or ":" in value
        ):  # `_might_hold`, inline: this loop runs for every value of a bulk request
            return False
    return True


def all_plain(updates: Sequence[tuple[str, Metadata]]) -> bool:
    """True when no company id, property name or value of any update can be personal data
    (`plain`'s tests, for a whole bulk request at once: a set test over every name and one
    search of all the texts joined, so ordinary data costs a few milliseconds per 10,000)."""
    if not _CLEAN.issuperset(chain.from_iterable([metadata for _, metadata in updates])):
        return all(plain(metadata) for _, metadata in updates) and _plain_ids(updates)
    return _plain_ids(updates) and _plain_texts(
        [v for _, metadata in updates for v in metadata.values() if type(v) is str]
    )


def _plain_ids(updates: Sequence[tuple[str, Metadata]]) -> bool:
    return _plain_texts([company_id for company_id, _ in updates])


def _plain_texts(texts: list[str]) -> bool:
    if not texts:
        return True
    if max(map(len, texts)) >= 13:
        return False
    joined = "\x00".join(texts)
    return not ("@" in joined or "+" in joined or "." in joined or ":" in joined)


def review(
    metadata: Metadata,
    rules: Rules,
    first_types: Mapping[str, SeenType],
    *,
    refuse: bool,
) -> Reviewed:
    """`metadata` through the schema, type drift and the PII guard (see the module)."""
    guard = rules.pii != "allow"
    before = Reviewed(metadata=metadata)
    if guard:
        before.metadata = metadata = _names(before, metadata, rules, refuse=refuse)
    if not refuse:
        before.metadata = metadata = _lengths(before, metadata)
    if rules.schema is not None:
        checked = check(rules.schema, metadata)
        out = Reviewed(metadata=checked.metadata, problems=before.problems + checked.problems)
    else:
        out = Reviewed(metadata=dict(metadata), problems=before.problems)
    out.name_problems, out.pii, out.stripped = before.name_problems, before.pii, before.stripped
    out.too_long = before.too_long
    if rules.drift == "reject" and refuse and first_types:
        _drift(out, rules, first_types)
    if guard:
        _guard(out, rules, refuse=refuse)
    return out


def _names(out: Reviewed, metadata: Metadata, rules: Rules, *, refuse: bool) -> Metadata:
    """`metadata` without the properties whose name is personal data (noted in `out`)."""
    found = [
        (position, key, kind)
        for position, key in enumerate(metadata, start=1)
        if (kind := _name(key)[0]) is not None and not rules.cleared(key)
    ]
    if not found:
        return metadata
    kept = dict(metadata)
    for position, key, kind in found:
        del kept[key]
        if refuse and rules.pii == "reject":
            out.name_problems.append((position, f"a property name {pii_problem(kind)}"))
            out.pii.append((kind, "rejected"))
        else:
            out.stripped.append(f"(property name #{position})")  # the name is not repeated
            out.pii.append((kind, "stripped"))
    return kept


def _lengths(out: Reviewed, metadata: Metadata) -> Metadata:
    """`metadata` without string values longer than Userpilot keeps (noted in `out`)."""
    long = [k for k, v in metadata.items() if type(v) is str and len(v) > MAX_VALUE]
    if not long:
        return metadata
    for key in long:
        out.problems.append((key, f"is longer than {MAX_VALUE:,} characters"))
    out.too_long += len(long)
    return {k: v for k, v in metadata.items() if k not in long}


def _drift(out: Reviewed, rules: Rules, first_types: Mapping[str, SeenType]) -> None:
    for key, value in list(out.metadata.items()):
        first = first_types.get(key)
        if first is None or value is None or rules.declared(key):
            continue
        now = seen_type(value)
        if now != first:
            del out.metadata[key]
            out.problems.append((key, f"was first sent as a {first}, got a {now}"))
            out.drifted += 1


def _guard(out: Reviewed, rules: Rules, *, refuse: bool) -> None:
    found = [(key, kind) for key, value in out.metadata.items() if (kind := find_pii(value, key))]
    for key, kind in found:
        if rules.cleared(key):
            out.pii.append((kind, "allowed"))
        elif refuse and rules.pii == "reject":
            del out.metadata[key]
            out.problems.append((key, pii_problem(kind)))
            out.pii.append((kind, "rejected"))
        else:
            del out.metadata[key]
            out.stripped.append(key)
            out.pii.append((kind, "stripped"))
