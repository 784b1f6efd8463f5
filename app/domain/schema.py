"""The optional property schema (`RELAY_PROPERTY_SCHEMA_FILE`): declared types per property.

The file is JSON::

    {"properties": {"monthly_spend": {"type": "number"},
                    "renewal_date": {"type": "date"},
                    "billing_email": {"type": "string", "pii": "allowed"}},
     "unknown_properties": "allow"}

with types `string`, `number`, `boolean`, `date` (see `values.py` for what converts), `"pii":
"allowed"` for a property cleared to hold personal data, and `unknown_properties` `allow`
(default) or `reject`. `parse_schema` refuses a malformed file with one line that says what to
fix; `check` converts one update's metadata and names each property that does not fit.

Applied to every door's updates by the ingest service (`app/ingest.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from app.domain.models import Metadata
from app.domain.rules import printable, property_name_problem
from app.domain.values import PROPERTY_TYPES, PropertyType, ValueMismatch, to_type

MAX_SCHEMA_BYTES = 1024 * 1024
MAX_PROPERTIES = 10_000
Unknown = Literal["allow", "reject"]


class SchemaError(ValueError):
    """The schema file cannot be used; the message says what to fix (one line)."""


@dataclass(frozen=True, slots=True)
class PropertyRule:
    type: PropertyType
    pii_allowed: bool = False


@dataclass(frozen=True, slots=True)
class PropertySchema:
    properties: Mapping[str, PropertyRule] = field(default_factory=dict)
    unknown_properties: Unknown = "allow"


@dataclass(slots=True)
class Checked:
    """One update's metadata as declared types make it, and what did not fit (property,
    reason; the reason never holds the value)."""

    metadata: Metadata
    problems: list[tuple[str, str]] = field(default_factory=list)


def load_schema(path: str | Path) -> PropertySchema:
    where = Path(path)
    try:
        raw = where.read_bytes()
    except OSError as exc:
        raise SchemaError(f"cannot read {where}: {exc.strerror or type(exc).__name__}") from None
    return parse_schema(raw, where=str(where))


def parse_schema(raw: bytes, *, where: str = "the schema") -> PropertySchema:
    if len(raw) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"{where}: larger than {MAX_SCHEMA_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SchemaError(f'{where}: must be a JSON object {{"properties": {{...}}}}')
    extra = sorted(set(data) - {"properties", "unknown_properties"})
    if extra:
        raise SchemaError(f"{where}: unknown key {printable(extra[0], 64)!r}")
    unknown = data.get("unknown_properties", "allow")
    if unknown not in ("allow", "reject"):
        raise SchemaError(f'{where}: "unknown_properties" must be "allow" or "reject"')
    properties = data.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaError(f'{where}: "properties" must be an object of property rules')
    if len(properties) > MAX_PROPERTIES:
        raise SchemaError(f"{where}: more than {MAX_PROPERTIES} properties")
    rules: dict[str, PropertyRule] = {}
    for name, rule in properties.items():
        rules[name] = _rule(name, rule, where)
    return PropertySchema(properties=rules, unknown_properties=unknown)


def _rule(name: str, rule: object, where: str) -> PropertyRule:
    label = f"{where}: property {printable(name, 64)!r}"
    problem = property_name_problem(name)
    if problem:
        raise SchemaError(f"{label}: {problem}")
    if not isinstance(rule, dict):
        raise SchemaError(f'{label}: must be an object like {{"type": "number"}}')
    extra = sorted(set(rule) - {"type", "pii"})
    if extra:
        raise SchemaError(f"{label}: unknown key {printable(extra[0], 64)!r}")
    kind = rule.get("type")
    if kind not in PROPERTY_TYPES:
        raise SchemaError(f'{label}: "type" must be one of {", ".join(PROPERTY_TYPES)}')
    pii = rule.get("pii")
    if pii not in (None, "allowed"):
        raise SchemaError(f'{label}: "pii" can only be "allowed"')
    return PropertyRule(type=kind, pii_allowed=pii == "allowed")


def check(schema: PropertySchema, metadata: Metadata) -> Checked:
    """The metadata with each declared property converted to its type; the properties that do
    not convert (or are not declared, when unknown properties are refused) are named, and left
    out of the answer's metadata."""
    checked = Checked(metadata={})
    for key, value in metadata.items():
        rule = schema.properties.get(key)
        if rule is not None and rule.type == "string" and type(value) is str:
            checked.metadata[key] = value  # what to_type answers, without the call
            continue
        if rule is None:
            if schema.unknown_properties == "reject":
                checked.problems.append((key, "is not a declared property"))
            else:
                checked.metadata[key] = value
            continue
        try:
            checked.metadata[key] = to_type(value, rule.type)
        except ValueMismatch as exc:
            checked.problems.append((key, str(exc)))
    return checked
