"""Source field -> Userpilot property mappings, and the type conversions Userpilot expects.

A mapping file is JSON, one per source: sections by object type (`company` for HubSpot;
`customer` and `subscription` for Stripe), each mapping a source field to
`{"property": <Userpilot property>, "type": "string" | "number" | "boolean" | "date"}`.
Keys starting with `_` are comments. Only mapped fields are forwarded: anything else, personal
data included, is dropped and counted. A value that does not convert to its type is reported,
never guessed. Dates become ISO 8601 in UTC (`2024-05-01T12:00:00Z`).

Conversions are total: whatever a signed source sends (5,000 digits, `1e999999`, digits of
other scripts), the answer is a value or a `ConversionError`, never another exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from app.domain.models import Metadata, Primitive
from app.domain.rules import property_name_problem
from app.domain.values import EpochUnit, PropertyType, ValueMismatch, to_type

FieldType = PropertyType

SECTIONS: dict[str, tuple[str, ...]] = {
    "hubspot": ("company",),
    "stripe": ("customer", "subscription"),
}
DEFAULTS_DIR = Path(__file__).resolve().parent / "mappings"
_MAX_FLATTEN_DEPTH = 4


class MappingError(Exception):
    """A mapping file cannot be used; the message names the file and the problem."""


class ConversionError(ValueError):
    """A source value does not convert to the mapped type."""


class FieldRule(BaseModel):
    """Where one source field goes in Userpilot, and as what type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    property: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    type: FieldType = "string"


Section = dict[Annotated[str, StringConstraints(min_length=1, max_length=255)], FieldRule]


class _MappingFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    sections: dict[str, Section] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceMapping:
    """One source's loaded mapping: per section, source field -> rule."""

    source: str
    path: str
    sections: Mapping[str, Mapping[str, FieldRule]]

    def section(self, name: str) -> Mapping[str, FieldRule]:
        return self.sections.get(name, {})


def default_path(source: str) -> Path:
    return DEFAULTS_DIR / f"{source}.json"


def load_mapping(source: str, path: str | Path | None = None) -> SourceMapping:
    """Load and check one source's mapping file (the packaged default when `path` is None)."""
    where = Path(path) if path is not None else default_path(source)
    try:
        raw = where.read_bytes()
    except OSError as exc:
        raise MappingError(f"cannot read the mapping file {where}: {exc.strerror}") from None
    try:
        document = orjson.loads(raw)
    except ValueError as exc:
        raise MappingError(f"the mapping file {where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MappingError(f"the mapping file {where} must hold a JSON object")
    expected = SECTIONS[source]
    unknown = [k for k in document if not k.startswith("_") and k not in expected]
    if unknown:
        raise MappingError(
            f"the mapping file {where} has unknown sections {unknown}; "
            f"a {source} mapping has: {', '.join(expected)}"
        )
    sections = {k: v for k, v in document.items() if not k.startswith("_")}
    try:
        parsed = _MappingFile.model_validate({"sections": sections})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"][1:]) or "(top)"
        raise MappingError(f"the mapping file {where}: {loc}: {first['msg']}") from None
    for name, rules in parsed.sections.items():
        seen: dict[str, str] = {}
        for source_field, rule in rules.items():
            problem = property_name_problem(rule.property)
            if problem is not None:
                raise MappingError(f"the mapping file {where}: {name}: {source_field!r}: {problem}")
            if rule.property in seen:
                raise MappingError(
                    f"the mapping file {where}: {name}: {seen[rule.property]!r} and "
                    f"{source_field!r} both map to the property {rule.property!r}"
                )
            seen[rule.property] = source_field
    return SourceMapping(
        source=source,
        path=str(where),
        sections={name: dict(parsed.sections.get(name, {})) for name in expected},
    )


def sourced_properties(enabled: Mapping[str, str | Path | None]) -> frozenset[str]:
    """Every Userpilot property the enabled sources (source -> its mapping file, None for the
    packaged default) can write: the only properties a source time can ever order."""
    names: set[str] = set()
    for source, path in enabled.items():
        for rules in load_mapping(source, path).sections.values():
            names.update(rule.property for rule in rules.values())
    return frozenset(names)


# conversions ----------------------------------------------------------------------------------
def convert(value: Primitive, kind: FieldType, *, epoch: EpochUnit) -> Primitive:
    """`value` as Userpilot should get it for `kind`; None stays None (removes the property).

    The one conversion module of the relay (`app/domain/values.py`), as the property schema
    uses it, with the source's rules: a number or a bool mapped to a `string` becomes its text,
    and a date given as a number (or a string of digits) is epoch time in the source's unit.
    Raises `ConversionError` when the value does not convert; nothing is guessed.
    """
    try:
        return to_type(value, kind, epoch=epoch, stringify=True)
    except ValueMismatch as exc:
        raise ConversionError(str(exc)) from None


def flatten(obj: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Primitive]:
    """Primitive leaves of a JSON object as dotted paths (`address.country`); lists skipped."""
    out: dict[str, Primitive] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < _MAX_FLATTEN_DEPTH:
                out.update(flatten(value, f"{path}.", depth + 1))
        elif (
            value is None
            or isinstance(value, str | bool | int)
            or (isinstance(value, float) and math.isfinite(value))
        ):
            out[path] = value
    return out


@dataclass(slots=True)
class Mapped:
    """What a mapping made of one source record."""

    metadata: Metadata = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)  # source fields that did not convert
    unmapped: int = 0  # source fields with a value that no rule names


def apply(
    rules: Mapping[str, FieldRule], record: Mapping[str, Primitive], *, epoch: EpochUnit
) -> Mapped:
    """Map a flat source record; a None value is sent as null (it removes the property)."""
    mapped = Mapped()
    for source_field, value in record.items():
        rule = rules.get(source_field)
        if rule is None:
            if value is not None:
                mapped.unmapped += 1
            continue
        try:
            mapped.metadata[rule.property] = convert(value, rule.type, epoch=epoch)
        except ConversionError:
            mapped.invalid.append(source_field)
    return mapped
