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

A problem is (property, reason); the reason never holds the value. A caller of the API gets a
422 for any problem (`refuse=True`); a webhook event is never refused (`refuse=False`): what
does not fit is dropped and counted, and personal data is stripped whatever the policy says,
unless it is `allow`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from app.domain.models import Metadata
from app.domain.pii import PiiKind, find_pii
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


def review(
    metadata: Metadata,
    rules: Rules,
    first_types: Mapping[str, SeenType],
    *,
    refuse: bool,
) -> Reviewed:
    """`metadata` through the schema, type drift and the PII guard (see the module)."""
    if rules.schema is not None:
        checked = check(rules.schema, metadata)
        out = Reviewed(metadata=checked.metadata, problems=checked.problems)
    else:
        out = Reviewed(metadata=dict(metadata))
    if rules.drift == "reject" and refuse and first_types:
        _drift(out, rules, first_types)
    if rules.pii != "allow":
        _guard(out, rules, refuse=refuse)
    return out


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
    found = [(key, kind) for key, value in out.metadata.items() if (kind := find_pii(value))]
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
