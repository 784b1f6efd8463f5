"""The data-quality rules at the door: schema, type drift, the PII guard (`domain/quality.py`).

Every update of `POST /companies` and `POST /companies/bulk` is reviewed before it is stored:
declared properties are converted to their types (`"1000"` for a `number` is stored as 1000),
and a value that does not convert, an undeclared property the schema refuses, a value whose type
drifted (RELAY_TYPE_DRIFT=reject) or personal data (RELAY_PII_POLICY=reject) is a 422 naming
each field and what is wrong, never the value, and nothing is stored. With `strip`, personal data
is removed and the rest stored. A company id that is personal data is a 422 under `reject` and
`strip` alike (it cannot be stripped), naming `company_id`; a property NAME that is personal data
is a 422 naming `metadata` and the name's position (never the name) under `reject`, and is
removed under `strip`. What the guard found is counted in
`userpilot_relay_pii_findings_total{kind,action}`. Webhook updates go through the same review in
`app/sources/common.py`, where what does not fit is dropped and counted instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.domain.models import Metadata
from app.domain.pii import PiiKind
from app.domain.quality import (
    PII_LABELS,
    PiiAction,
    Rules,
    all_plain,
    company_pii,
    pii_problem,
    plain,
    review,
)
from app.domain.values import SeenType
from app.errors import FieldError, RelayError, field_path
from app.metrics import PII_FINDINGS, TYPE_DRIFT_REJECTIONS

Companies = list[tuple[str, Metadata]]
MAX_ERRORS = 1000  # named at most in one answer


@dataclass(slots=True)
class Findings:
    """What the guard saw in one request, counted once the request's fate is known."""

    pii: dict[tuple[PiiKind, PiiAction], int] = field(default_factory=dict)
    drifted: int = 0

    def count(self) -> None:
        for (kind, action), n in self.pii.items():
            PII_FINDINGS.labels(kind=PII_LABELS[kind], action=action).inc(n)
        if self.drifted:
            TYPE_DRIFT_REJECTIONS.inc(self.drifted)


def reviewed(
    companies: Companies,
    rules: Rules,
    first_types: Mapping[str, SeenType],
    *,
    bulk: bool,
) -> Companies:
    """The companies as the rules make them, or a 422 naming every field that does not fit."""
    if rules.inert:
        return companies
    out: Companies = []
    errors: list[FieldError] = []
    findings = Findings()
    # Only the PII guard to apply: most updates pass its cheap tests and are kept as they are.
    guard_only = rules.schema is None and (rules.drift == "warn" or not first_types)
    if guard_only and all_plain(companies):
        return companies
    for index, (company_id, metadata) in enumerate(companies):
        prefix: tuple[str | int, ...] = ("companies", index) if bulk else ()
        kind = company_pii(company_id, rules)
        if kind is not None:
            findings.pii[(kind, "rejected")] = findings.pii.get((kind, "rejected"), 0) + 1
            if len(errors) < MAX_ERRORS:
                path = field_path((*prefix, "company_id"))
                errors.append(FieldError(field=path, message=pii_problem(kind)))
        if guard_only and plain(metadata):
            out.append((company_id, metadata))
            continue
        reviewed = review(metadata, rules, first_types, refuse=True)
        for position, why in reviewed.name_problems:
            if len(errors) < MAX_ERRORS:
                path = field_path((*prefix, "metadata"))
                errors.append(FieldError(field=path, message=f"{why} (property #{position})"))
        for key, why in reviewed.problems:
            loc = ("companies", index, "metadata", key) if bulk else ("metadata", key)
            if len(errors) < MAX_ERRORS:
                errors.append(FieldError(field=field_path(loc), message=why))
        for found in reviewed.pii:
            findings.pii[found] = findings.pii.get(found, 0) + 1
        findings.drifted += reviewed.drifted
        out.append((company_id, reviewed.metadata))
    findings.count()
    if errors:
        first = f"{errors[0].field}: {errors[0].message}"
        more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
        raise RelayError(422, "invalid_payload", f"invalid payload: {first}{more}", errors=errors)
    return out
